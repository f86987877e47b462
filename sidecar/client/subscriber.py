"""``Subscriber``: a synchronous, threaded client of the hub that reconnects, resumes every
channel and never goes silently stale (the Python sibling of ``sidecar-client.js``).

Threads and what they own:

* **the I/O thread** (``sidecar-subscriber``, a daemon) owns the connection: it connects,
  reads, writes (pings, the application's messages, paced ``channel:*`` messages), applies
  each frame to the :class:`~sidecar.client.session.Session` and appends what it means to the
  delivery queue. Between connections it waits out the backoff.
* **the callback thread** (``sidecar-subscriber-callbacks``), started by the first
  :meth:`Subscriber.on`: it takes items from the queue, in order, and calls the handlers.
  Every handler of one subscriber runs on this one thread, never on the I/O thread and never
  on the application's threads (a Qt app emits a signal from it; Qt queues it to the GUI).
* **the application's threads** call :meth:`Subscriber.subscribe`, :meth:`~Subscriber.send`,
  :meth:`~Subscriber.close` and pull with :meth:`~Subscriber.next` /
  :meth:`~Subscriber.events`.

One condition (``_cond``, over one lock) guards the session, the delivery queue, the
outgoing messages, the state and the waiters; nobody blocks while holding it except in
``wait``. The delivery queue is bounded (items and bytes): when the application does not keep
up, the I/O thread stops reading, the hub eventually drops the connection as a slow consumer
(4008), and the subscriber resumes from where it stopped. Nothing is dropped or reordered.

There is no asyncio twin: the project is synchronous and threaded by design.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random as _random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from ..protocol import (
    CONNECTION_STATUS,
    RESERVED_NAMESPACES,
    SUBPROTOCOL,
    CloseCode,
    Since,
    parse_since,
    should_reconnect,
)
from .policy import DEFAULT_BACKOFF, Backoff, RateLimit, backoff_delay, retry_after_refusal
from .session import (
    MAX_TARGET,
    ChannelError,
    Event,
    Joined,
    Output,
    Position,
    Resync,
    Session,
    TokenSource,
)
from .transport import Connection, Ended, Refused, Unreachable, Waker, connect

__all__ = ["ChannelRefused", "State", "StateChange", "Subscriber", "SubscriberClosed"]

log = logging.getLogger("sidecar.client")

State: TypeAlias = Literal["connecting", "open", "reconnecting", "closed"]
Item: TypeAlias = "Event[Any] | Resync | ChannelError | StateChange"
#: Queue cost of an item that is not an envelope (a resync, a state change, an error).
_SMALL = 64
#: The application's messages waiting for the I/O thread (beyond: ``send`` returns False).
MAX_SENDS = 256
#: Seconds :meth:`Subscriber.close` waits for the I/O thread.
CLOSE_WAIT = 5.0
#: ``next(channel=…)``'s default: any channel (``*`` is never a channel name).
ANY_CHANNEL = "*"


@dataclass(frozen=True, slots=True)
class StateChange:
    """The subscriber's connection state changed. ``attempt``: consecutive failed attempts;
    ``delay``: seconds until the next one (``reconnecting``); ``code``/``reason``: why the
    last connection ended (a close code; 1006 without one) or why connecting failed."""

    state: State
    previous: State | None
    attempt: int = 0
    delay: float | None = None
    code: int | None = None
    reason: str = ""


class SubscriberClosed(Exception):
    """The subscriber stopped for good: ``close()``, a "do not reconnect" close code (1008,
    4500-4999; ``code``), a refused handshake (``status``, e.g. 401 for a wrong token), or
    the first close with ``reconnect=False``. ``reason`` says which, in words."""

    def __init__(self, reason: str, *, code: int | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status


class ChannelRefused(Exception):
    """``subscribe(..., wait=…)``: the hub refused the channel (``error`` says how)."""

    def __init__(self, error: ChannelError) -> None:
        super().__init__(f"{error.channel}: {error.code}: {error.message}")
        self.error = error


def _ws_url(url: str) -> tuple[str, str]:
    """``(origin part, target)`` of the hub's WebSocket URL; http(s) becomes ws(s), and a URL
    without a path gets ``/ws`` (the URL of the sidecar's ready line works as it is)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a hub URL (ws://, wss://, http:// or https://): {url[:100]!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    target = path + (f"?{parts.query}" if parts.query else "")
    return urlunsplit((scheme, parts.netloc, "", "", "")), target


def _since(value: str | Mapping[str | None, str | Since] | None) -> dict[str, Since]:
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_since(value)
    return {
        (name or ""): point if isinstance(point, Since) else Since.parse(point)
        for name, point in value.items()
    }


class Subscriber:
    """A client of the hub that reconnects with full-jitter backoff, resumes every channel
    from its position, reports what it could not resume, and delivers every event once.

    ``url``: the hub's WebSocket URL (``ws://127.0.0.1:PORT/ws``; the ready line's ``url``
    works too). ``token``: the sidecar token, or a function returning it, called before every
    connection attempt (credentials that must be refreshed). ``channels``: named channels to
    join besides the default one. ``since``: where to resume from, ``"<epoch>:<seq>"`` for the
    default channel and ``"<channel>@<epoch>:<seq>"`` items for named ones (comma-separated,
    as on the wire), or a mapping ``{None or channel: "<epoch>:<seq>"}``.

    ``resync_on_first_connect``: report the first position of each channel as a resync
    (reason ``initial``), so that the application loads its state in one place.
    ``reconnect=False``: stop for good at the first close (tests). ``states=True``: deliver
    :class:`StateChange` items too (``on("state", fn)`` turns it on). ``start=False``: do not
    connect before :meth:`start` (to register handlers first).
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource = None,
        channels: Iterable[str] = (),
        since: str | Mapping[str | None, str | Since] | None = None,
        resync_on_first_connect: bool = False,
        reconnect: bool = True,
        states: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_queue: int = 4096,
        max_queue_bytes: int = 64 * 1024 * 1024,
        max_url_length: int = MAX_TARGET,
        headers: Iterable[str] = (),
        origin: str | None = None,
        sslopt: Mapping[str, Any] | None = None,
        random: Callable[[], float] = _random.random,
        rate: RateLimit | None = None,
        start: bool = True,
        name: str = "sidecar-subscriber",
    ) -> None:
        self._base, self._target = _ws_url(url)
        self._token = token
        self._headers = list(headers)
        self._origin, self._sslopt = origin, sslopt
        self.reconnect = reconnect
        self.backoff = backoff
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.connect_timeout = connect_timeout
        self.max_queue, self.max_queue_bytes = max_queue, max_queue_bytes
        self._random = random
        self._name = name
        self._session = Session(
            channels,
            _since(since),
            resync_on_first_connect=resync_on_first_connect,
            max_target=max_url_length,
            rate=rate,
            backoff=backoff,
            random=random,
        )
        self._cond = threading.Condition()
        self._items: deque[tuple[Item, int]] = deque()
        self._items_bytes = 0
        self._sends: deque[str] = deque()
        self._state: State | None = None
        self._opened = 0
        self._open_at = 0.0
        self._handled = 0  # text frames read and delivered (what stats["frames"] says)
        self._closing = False
        self._done = False
        self._states = states
        self._handlers: dict[str, list[Callable[[Any], object]]] = {}
        self._mode: Literal["push", "pull"] | None = None
        self._waiters: dict[str, list[_Waiter]] = {}
        #: Why the subscriber stopped for good (``None`` while it runs, or after ``close()``).
        self.error: SubscriberClosed | None = None
        self._waker = Waker()
        self._io: threading.Thread | None = None
        self._callbacks: threading.Thread | None = None
        if start:
            self.start()

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> Subscriber:
        """Start connecting (once; the constructor does it unless ``start=False``)."""
        with self._cond:
            if self._io is None and not self._closing:
                self._io = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._io.start()
        return self

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (1000) and stop for good; what was not delivered is dropped.
        Idempotent; waits up to 5 s for the I/O thread (not when called from a handler)."""
        with self._cond:
            self._closing = True
            self._items.clear()
            self._items_bytes = 0
            self._cond.notify_all()
        self._waker.wake()
        io = self._io
        if io is not None and io is not threading.current_thread():
            io.join(CLOSE_WAIT)  # (a connection attempt in progress ends at its timeout)
        self._finish(None)

    # -- what it knows -----------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``connecting`` (first attempt), ``open``, ``reconnecting`` or ``closed``."""
        return self._state or "connecting"

    @property
    def status(self) -> dict[str, Any] | None:
        """The last ``connection:status`` payload (``None`` before the first)."""
        with self._cond:
            return self._session.status

    @property
    def channels(self) -> list[str]:
        """The named channels subscribed (or being subscribed), in the order asked."""
        with self._cond:
            return self._session.channels

    def positions(self) -> dict[str | None, Position]:
        """Each channel's position (``None``: the default channel): where a resume starts."""
        with self._cond:
            return self._session.positions()

    def position(self, channel: str | None = None) -> Position | None:
        """One channel's position (``None``: the default channel), if known."""
        with self._cond:
            return self._session.position(channel)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: connections opened, text frames received, duplicates dropped, gaps,
        frames ignored, events of channels not subscribed, items waiting for delivery."""
        with self._cond:
            s = self._session
            return {
                "connections": self._opened,
                "frames": self._handled,
                "duplicates": s.duplicates,
                "gaps": s.gaps,
                "ignored": s.ignored,
                "unwanted": s.unwanted,
                "queued": len(self._items),
            }

    def wait_open(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until a connection is open; its ``connection:status`` payload.

        Raises :class:`SubscriberClosed` if it stopped for good, ``TimeoutError``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state != "open" or self._session.status is None:
                if self._done or self._closing:
                    raise self.error or SubscriberClosed("closed by the application")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"not connected within {timeout} s (state {self.state})")
                self._cond.wait(remaining)
            return dict(self._session.status)

    # -- channels and messages ---------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        *,
        since: str | Since | None = None,
        token: TokenSource = None,
        wait: float | None = None,
    ) -> Position | None:
        """Join ``channel`` (resuming from ``since``, ``"<epoch>:<seq>"``, if given; with a
        subscription ``token`` or a function returning one). Returns at once unless ``wait``
        is given: then it waits that long for the hub's answer and returns the channel's
        position, or raises :class:`ChannelRefused`, ``TimeoutError``. Subscribing to a
        channel already subscribed does nothing. ``ValueError`` for a bad name."""
        point = Since.parse(since) if isinstance(since, str) else since
        waiter = _Waiter() if wait is not None else None
        with self._cond:
            self._session.subscribe(channel, point, token)
            if waiter is not None:
                if self._session.joined(channel):
                    return self._session.position(channel)
                self._waiters.setdefault(channel, []).append(waiter)
        self._waker.wake()
        if waiter is None:
            return None
        return waiter.result(channel, wait or 0.0, self)

    def unsubscribe(self, channel: str) -> bool:
        """Leave ``channel``: nothing of it is delivered after this call returns, and its
        position is forgotten. ``False`` if it was not subscribed."""
        with self._cond:
            left = self._session.unsubscribe(channel)
            self._items = deque(
                (item, size)
                for item, size in self._items
                if not (isinstance(item, Event) and item.channel == channel and item.seq)
            )
            self._items_bytes = sum(size for _, size in self._items)
            self._cond.notify_all()
        self._waker.wake()
        return left

    def send(self, type: str, payload: Mapping[str, Any]) -> bool:
        """Send a client->server event (e.g. ``chat:send``) if the connection is open; whether
        it was handed to the connection (nothing is kept for a later connection).

        ``ValueError`` for the hub's own namespaces (``channel:``, ``connection:``: use
        :meth:`subscribe`).
        """
        if type.partition(":")[0] in RESERVED_NAMESPACES:
            raise ValueError(f"{type!r} is the hub's own namespace (use subscribe/unsubscribe)")
        text = json.dumps({"type": type, "payload": dict(payload)}, ensure_ascii=False)
        with self._cond:
            if self._state != "open" or len(self._sends) >= MAX_SENDS:
                return False
            self._sends.append(text)
        self._waker.wake()
        return True

    # -- pull --------------------------------------------------------------------------------

    def next(
        self,
        type: str | None = None,
        *,
        channel: str | None = ANY_CHANNEL,
        match: Callable[[Event[Any]], bool] | None = None,
        timeout: float = 5.0,
    ) -> Event[Any]:
        """The next event (of ``type``; of ``channel`` if given, ``None`` being the default
        channel; for which ``match(event)`` is true if given). Items that do not match stay
        queued, in order, for later calls.

        Raises ``TimeoutError`` (naming what it waited for) or :class:`SubscriberClosed` once
        the subscriber stopped for good and nothing queued matches.
        """

        def wanted(item: Item) -> bool:
            if not isinstance(item, Event):
                return False
            return (
                (type is None or item.type == type)
                and (channel == ANY_CHANNEL or item.channel == channel)
                and (match is None or match(item))
            )

        what = f"{type!r} event" if type else "event"
        what += "" if channel == ANY_CHANNEL else f" on {channel or 'the default channel'}"
        item = self._take(wanted, timeout, what)
        assert isinstance(item, Event)
        return item

    def events(self, timeout: float | None = None) -> Iterator[Item]:
        """Every item as it arrives: events, :class:`Resync` (reload that channel's state),
        :class:`ChannelError`, and :class:`StateChange` with ``states=True``. Ends when no
        item came for ``timeout`` seconds (``None``: never), or after ``close()``; raises
        :class:`SubscriberClosed` when the subscriber stopped for good on its own."""
        while True:
            try:
                item = self._take(lambda _item: True, timeout, "item")
            except TimeoutError:
                return
            except SubscriberClosed:
                if self.error is None:
                    return
                raise
            yield item

    def _take(self, wanted: Callable[[Item], bool], timeout: float | None, what: str) -> Item:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._set_mode("pull")
            while True:
                for index, (item, size) in enumerate(self._items):
                    if wanted(item):
                        del self._items[index]
                        self._items_bytes -= size
                        self._cond.notify_all()
                        return item
                if self._done or self._closing:
                    raise self.error or SubscriberClosed("closed by the application")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(self._waited(what, timeout))
                self._cond.wait(remaining)

    def _waited(self, what: str, timeout: float | None) -> str:
        said = f"no {what} within {timeout:g} s" if timeout is not None else f"no {what}"
        if not self._items:
            return said
        kinds = Counter(_kind(item) for item, _ in self._items)
        kept = ", ".join(f"{name} x{n}" for name, n in kinds.most_common(5))
        return f"{said}; kept for later calls: {kept}"

    # -- push --------------------------------------------------------------------------------

    def on(self, type: str, fn: Callable[[Any], object]) -> Callable[[], None]:
        """Call ``fn(item)`` for each item of ``type``, on the callback thread: an event type
        (``"stream:created"``), ``"*"`` (every event), ``"resync"``, ``"error"``
        (:class:`ChannelError`) or ``"state"`` (:class:`StateChange`). Returns a function
        that removes it. A subscriber is pushed to or pulled from, not both."""
        with self._cond:
            self._set_mode("push")
            self._handlers.setdefault(type, []).append(fn)
            if type == "state":
                self._states = True
            if self._callbacks is None:
                self._callbacks = threading.Thread(
                    target=self._dispatch, name=f"{self._name}-callbacks", daemon=True
                )
                self._callbacks.start()
        return lambda: self.off(type, fn)

    def off(self, type: str, fn: Callable[[Any], object]) -> None:
        """Remove a handler added with :meth:`on`."""
        with self._cond, contextlib.suppress(ValueError):
            self._handlers.get(type, []).remove(fn)

    def _set_mode(self, mode: Literal["push", "pull"]) -> None:
        if self._mode is not None and self._mode != mode:
            raise RuntimeError("a subscriber is either pushed to (on) or pulled from, not both")
        self._mode = mode

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._items and not (self._done or self._closing):
                    self._cond.wait()
                if not self._items:
                    return
                item, size = self._items.popleft()
                self._items_bytes -= size
                self._cond.notify_all()
                handlers = list(self._handlers.get(_kind(item), ()))
                if isinstance(item, Event):
                    handlers += self._handlers.get("*", ())
            for fn in handlers:
                try:
                    fn(item)
                except Exception:
                    log.exception("a subscriber handler for %s raised", _kind(item))

    # -- the I/O thread ----------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        self._set_state("connecting")
        try:
            while not self._closing:
                opened = self._opened
                ended = self._connection()
                if self._closing or ended is None:
                    return
                delay, code, reason = ended
                lasted = time.monotonic() - self._open_at
                if self._opened > opened and lasted >= self.backoff.stable_after:
                    attempt = 0
                if delay is None:
                    return
                delay = max(delay, backoff_delay(attempt, self.backoff, self._random))
                attempt += 1
                details = {"attempt": attempt, "delay": delay, "code": code, "reason": reason}
                self._set_state("reconnecting", **details)
                log.info("sidecar subscriber: %s; reconnecting in %.2f s", reason, delay)
                self._waker.wait(delay)
        except Exception as exc:  # a bug: say so, stop for good
            log.exception("sidecar subscriber: the I/O thread failed")
            self._finish(SubscriberClosed(f"the subscriber failed: {exc!r}"))
        finally:
            self._finish(None)
            self._waker.close()

    def _connection(self) -> tuple[float | None, int | None, str] | None:
        """One connection attempt and its life: ``(wait at least, code, reason)`` before the
        next attempt (``wait`` ``None``: stop), or ``None`` when the subscriber stopped."""
        try:
            conn = self._open()
        except Refused as exc:
            self._no_connection()
            wait = retry_after_refusal(exc.status, exc.retry_after) if self.reconnect else None
            if wait is None:
                self._finish(SubscriberClosed(f"the hub refused: {exc}", status=exc.status))
            return wait, None, f"the hub refused: {exc}"
        except Unreachable as exc:
            self._no_connection()
            if not (exc.retry and self.reconnect):
                self._finish(SubscriberClosed(f"cannot connect: {exc}"))
                return None
            return 0.0, CloseCode.ABNORMAL, f"cannot connect: {exc}"
        except _TokenFailed as exc:
            return 0.0, None, f"the token hook failed: {exc.__cause__!r}"
        code, reason = self._serve(conn)
        self._no_connection()
        if self._closing:
            return None
        if not (self.reconnect and should_reconnect(code)):
            text = f"closed by the hub: {code} {reason}".strip()
            self._finish(SubscriberClosed(text, code=code))
            return None
        return 0.0, code, f"connection ended: {code} {reason}".strip()

    def _no_connection(self) -> None:
        """The connection attempt failed, or the connection ended."""
        with self._cond:
            self._session.lost()

    def _open(self) -> Connection:
        try:
            token = self._token() if callable(self._token) else self._token
        except Exception as exc:
            raise _TokenFailed() from exc
        headers = list(self._headers)
        if token:
            headers.append(f"Authorization: Bearer {token}")
        with self._cond:
            target = self._session.connect_target(self._target)
        return connect(
            self._base + target,
            headers=headers,
            subprotocols=[SUBPROTOCOL],
            timeout=self.connect_timeout,
            origin=self._origin,
            sslopt=self._sslopt,
            waker=self._waker,
        )

    def _serve(self, conn: Connection) -> tuple[int, str]:
        """Read and write until the connection ends; its close code and reason."""
        clock = time.monotonic
        heard, pinged = clock(), None
        try:
            while not self._closing:
                self._flush(conn, clock())
                now = clock()
                due = heard + self.ping_interval if pinged is None else pinged + self.ping_timeout
                with self._cond:
                    message_due = self._session.next_message_due(now)
                if message_due is not None:
                    due = min(due, message_due)
                if conn.wait(max(0.0, due - now)):
                    text = conn.recv()
                    heard, pinged = clock(), None
                    if text is not None:
                        self._handle(text, len(text.encode()))
                elif pinged is not None and clock() >= pinged + self.ping_timeout:
                    conn.abort()
                    return CloseCode.ABNORMAL, f"no answer to a ping in {self.ping_timeout} s"
                elif pinged is None and clock() >= heard + self.ping_interval:
                    conn.ping()
                    pinged = clock()
        except Ended as ended:
            conn.abort()
            return ended.code, ended.reason
        conn.close(CloseCode.NORMAL, "client closed")
        return CloseCode.NORMAL, "closed by the application"

    def _flush(self, conn: Connection, now: float) -> None:
        with self._cond:
            messages, errors = self._session.take_messages(now)
            sends = list(self._sends)
            self._sends.clear()
        self._deliver(list(errors), 0)
        for message in messages:
            conn.send_text(json.dumps(message, separators=(",", ":")))
        for text in sends:
            conn.send_text(text)

    def _handle(self, text: str, size: int) -> None:
        with self._cond:
            outputs = self._session.receive(text, time.monotonic())
        if outputs and isinstance(outputs[0], Event) and outputs[0].type == CONNECTION_STATUS:
            self._opened += 1
            self._open_at = time.monotonic()
            self._set_state("open")
        self._deliver(outputs, size)
        with self._cond:
            self._handled += 1

    def _deliver(self, outputs: list[Output], size: int) -> None:
        for output in outputs:
            if isinstance(output, Joined):
                self._resolve(output.channel, output.position)
                continue
            if isinstance(output, ChannelError) and not output.retrying:
                self._resolve(output.channel, output)
            self._put(output, size if isinstance(output, Event) else _SMALL)

    def _put(self, item: Item, size: int, *, wait: bool = True) -> None:
        """Queue ``item``, waiting while the queue is full (the application is behind)."""
        with self._cond:
            while (
                wait
                and self._items
                and (
                    len(self._items) >= self.max_queue
                    or self._items_bytes + size > self.max_queue_bytes
                )
            ):
                if self._closing:
                    return
                self._cond.wait()
            if self._closing:
                return
            self._items.append((item, size))
            self._items_bytes += size
            self._cond.notify_all()

    def _resolve(self, channel: str, answer: Position | ChannelError | None) -> None:
        with self._cond:
            waiters = self._waiters.pop(channel, [])
        for waiter in waiters:
            waiter.set(answer)

    def _set_state(self, state: State, **details: Any) -> None:
        with self._cond:
            previous = self._state
            self._state = state
            self._cond.notify_all()
            announce = self._states
        if announce:
            change = StateChange(state, previous, **details)
            self._put(change, _SMALL, wait=state != "closed")

    def _finish(self, error: SubscriberClosed | None) -> None:
        """Stop for good (idempotent): state ``closed``, ``error`` kept, waiters woken."""
        with self._cond:
            if self._done:
                return
            if error is not None:
                self.error = error
                log.warning("sidecar subscriber stopped: %s", error.reason)
            waiters, self._waiters = self._waiters, {}
            closing = self._closing
        reason = error.reason if error else "closed by the application"
        code = error.code if error else CloseCode.NORMAL
        if not closing:
            self._set_state("closed", code=code, reason=reason)
        else:
            with self._cond:
                self._state = "closed"
        with self._cond:
            self._done = True
            self._cond.notify_all()
        for channel_waiters in waiters.values():
            for waiter in channel_waiters:
                waiter.set(None, closed=True)


class _TokenFailed(Exception):
    """The application's token function raised (the cause is attached)."""


def _kind(item: Item) -> str:
    if isinstance(item, Event):
        return item.type
    if isinstance(item, Resync):
        return "resync"
    if isinstance(item, ChannelError):
        return "error"
    return "state"


class _Waiter:
    """One ``subscribe(..., wait=…)`` call waiting for the hub's answer."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._answer: Position | ChannelError | None = None
        self._closed = False

    def set(self, answer: Position | ChannelError | None, *, closed: bool = False) -> None:
        """The hub's answer: where the channel stands, or its refusal; or the end."""
        self._answer, self._closed = answer, closed
        self._event.set()

    def result(self, channel: str, timeout: float, subscriber: Subscriber) -> Position | None:
        if not self._event.wait(timeout):
            raise TimeoutError(f"no answer for {channel} within {timeout} s")
        if isinstance(self._answer, ChannelError):
            raise ChannelRefused(self._answer)
        if self._closed:
            raise subscriber.error or SubscriberClosed("closed by the application")
        return self._answer
