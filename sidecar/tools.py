"""``sidecar publish`` and ``sidecar tail``: developer tools talking to a running sidecar.

The main thread runs them; ``sidecar tail`` is a :class:`sidecar.client.Subscriber` (its I/O
thread reads; the main thread prints). URL and token come from options or ``SIDECAR_URL`` /
``SIDECAR_TOKEN`` (the token never from argv). ``sidecar publish --broker URL`` (or
``SIDECAR_BROKER``) publishes through Redis with a :class:`~sidecar.broker.Publisher`
instead, with no HTTP and no running sidecar needed; either way it prints the envelope as
broadcast, with the ``seq`` it was given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import broker_url_problem
from .protocol import RESERVED_NAMESPACES

if TYPE_CHECKING:
    from .client import Resync

DEFAULT_URL = "http://127.0.0.1:3008"
#: How to install what ``sidecar tail`` needs.
CLIENT_EXTRA = "pip install 'sidecar-hub[client]'"
#: The exit status of a bad option or value (what argparse uses).
BAD_USAGE = 2


def _setting(given: str | None, var: str, flag: str) -> tuple[str | None, str]:
    """A tool's setting and its name: the flag's value, else the variable's, else ``None``.

    An empty value is refused (``ValueError``), as ``sidecar serve`` refuses one: it never
    stands for "the default" (``SIDECAR_BROKER=`` must not quietly mean HTTP).
    """
    if given is not None:
        if not given.strip():
            raise ValueError(f"{flag} is empty: give a value, or leave it out")
        return given, flag
    text = os.environ.get(var)
    if text is not None and not text.strip():
        raise ValueError(f"{var} is empty: give a value, or unset it")
    return text, var


def _base_url(args: argparse.Namespace) -> str:
    """The sidecar's base URL (``--url``, ``SIDECAR_URL``, the default), as ``http(s)://…``.

    The ready line's WebSocket URL works too (``ws://127.0.0.1:41231/ws`` is
    ``http://127.0.0.1:41231``); anything else raises ``ValueError`` with one line.
    """
    given, label = _setting(args.url, "SIDECAR_URL", "--url")
    raw = (given or DEFAULT_URL).strip()
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = urlsplit("")
    scheme = parts.scheme.lower()
    path = parts.path.rstrip("/")
    if scheme in ("ws", "wss"):
        scheme = {"ws": "http", "wss": "https"}[scheme]
        path = path.removesuffix("/ws")
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{label} must be the sidecar's URL, http://HOST:PORT (the ready line's url or "
            f"ws), got {raw!r}"
        )
    return f"{scheme}://{parts.netloc}{path}"


def _token() -> str | None:
    return _setting(None, "SIDECAR_TOKEN", "")[0]


def _fail(message: str, status: int = 1) -> int:
    print(f"sidecar: {message}", file=sys.stderr)
    return status


def publish(args: argparse.Namespace) -> int:
    """Publish one event; print the broadcast envelope (with its ``seq``); exit 0 or 1.

    Over HTTP (POST, 0 on 202), or through the broker with ``--broker``/``SIDECAR_BROKER``.
    """
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        return _fail(f"payload is not JSON: {exc}")
    try:
        broker, label = _setting(args.broker, "SIDECAR_BROKER", "--broker")
        if broker is not None:
            prefix = _setting(args.broker_prefix, "SIDECAR_BROKER_PREFIX", "--broker-prefix")[0]
            return _publish_to_broker(args, (broker, label), prefix or "sidecar", payload)
        base, token = _base_url(args), _token()
    except ValueError as exc:
        return _fail(str(exc), BAD_USAGE)
    item: dict[str, Any] = {"type": args.type, "payload": payload}
    channel = getattr(args, "channel", None)
    if channel:
        item["channel"] = channel
    body = json.dumps(item).encode()
    request = urllib.request.Request(
        base + "/api/v1/events",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        return _fail(f"{exc.code} {exc.reason}: {detail}")
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"cannot reach {base}: {getattr(exc, 'reason', exc)}")
    for event in answer.get("events", []):
        print(json.dumps(event, ensure_ascii=False))
    return 0


def _publish_to_broker(
    args: argparse.Namespace, broker: tuple[str, str], prefix: str, payload: Any
) -> int:
    url, label = broker
    channel = getattr(args, "channel", None)
    if (problem := broker_url_problem(url)) is not None:
        return _fail(f"{label} {problem}", BAD_USAGE)
    try:
        from .broker.publisher import Publisher, checked_events
    except ImportError as exc:
        return _fail(str(exc))
    from .core.hub import PublishRefused
    from .protocol import PublishOutcomeUnknown

    try:
        publisher = Publisher(url, prefix=prefix, timeout=args.timeout)
    except ValueError as exc:  # what the driver refuses in the URL
        return _fail(f"{label} cannot be used: {exc}", BAD_USAGE)
    try:
        event = checked_events([(args.type, payload)], publisher.max_event_bytes, channel)[0]
        (seq,) = publisher.publish_many([event], channel=channel)
    except PublishOutcomeUnknown as exc:  # sent, and Redis did not answer in time
        return _fail(f"outcome unknown (it may have been published): {exc}")
    except (ValueError, PublishRefused) as exc:  # refused by the catalog, or Redis is down
        return _fail(f"not published: {exc}")
    finally:
        publisher.close()
    sent = {**event.to_dict(), "seq": seq, **({"channel": event.channel} if event.channel else {})}
    print(json.dumps(sent, ensure_ascii=False))
    return 0


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, ``#seq`` (``channel#seq`` on a named channel), type, payload."""
    stamp = str(event.get("timestamp", ""))
    try:
        stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00")).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        pass
    seq = event.get("seq")
    channel = event.get("channel")
    payload = json.dumps(event.get("payload"), ensure_ascii=False, separators=(",", ":"))
    number = f"#{seq}" if seq is not None else "-"
    if isinstance(channel, str) and channel:
        number = f"{channel}{number}"
    return f"{stamp}  {number:>7}  {event.get('type')}  {payload}"


def format_resync(resync: Resync, as_json: bool) -> str:
    """The line ``sidecar tail`` prints when events may have been missed."""
    if as_json:
        fields = {
            "channel": resync.channel,
            "reason": resync.reason,
            "epoch": resync.epoch,
            "seq": resync.seq,
            "previousEpoch": resync.previous_epoch,
            "previousSeq": resync.previous_seq,
        }
        return json.dumps({"resync": fields}, ensure_ascii=False)
    where = resync.channel or "the default channel"
    was = f"{resync.previous_epoch}:{resync.previous_seq}" if resync.previous_epoch else "-"
    return (
        f"-- resync ({resync.reason}) on {where}: now {resync.epoch}:{resync.seq}, was {was};"
        " events may have been missed"
    )


def tail(args: argparse.Namespace) -> int:
    """Print events as they arrive, reconnecting and resuming (every channel) after a drop,
    with a resync line when the hub could not replay what was missed; until Ctrl-C,
    ``--count`` events, or a close that ends the subscriber for good (exit 1)."""
    try:
        from .client import ChannelError, Event, Resync, StateChange, Subscriber
        from .client import SubscriberClosed as Closed
    except ImportError as exc:  # pragma: no cover (the client extra is missing)
        return _fail(f"sidecar tail needs the client extra ({CLIENT_EXTRA}): {exc}")
    try:
        base, token = _base_url(args), _token()
    except ValueError as exc:
        return _fail(str(exc), BAD_USAGE)
    try:
        sub = Subscriber(
            base + "/ws",
            token=token,
            channels=args.channel or (),
            since=args.since,
            states=True,
            connect_timeout=args.timeout,
            start=False,
        )
    except ValueError as exc:
        return _fail(str(exc))
    seen = 0
    try:
        with sub:
            for item in sub.events():
                if isinstance(item, Event):
                    raw = item.to_dict()
                    print(json.dumps(raw, ensure_ascii=False) if args.json else format_event(raw))
                    seen += item.type.partition(":")[0] not in RESERVED_NAMESPACES
                elif isinstance(item, Resync):
                    print(format_resync(item, args.json))
                elif isinstance(item, ChannelError):
                    _warn(f"channel {item.channel} refused: {item.code} {item.message}".strip())
                elif isinstance(item, StateChange) and item.state == "reconnecting":
                    _warn(f"{item.reason}; reconnecting in {item.delay or 0:.1f} s")
                sys.stdout.flush()
                if args.count is not None and seen >= args.count:
                    return 0
    except Closed as exc:
        return _fail(exc.reason)
    except KeyboardInterrupt:
        pass
    return 0


def _warn(message: str) -> None:
    print(f"sidecar: {message}", file=sys.stderr, flush=True)
