"""The subscriber's protocol state: what it asked for, where each channel stands, what it
delivers. The rules of ``sidecar-client.js``, in Python, checked by the same shared vectors.

Pure: no I/O, no threads and no clock of its own (``now`` is passed in). A :class:`Session`
belongs to one :class:`~sidecar.client.Subscriber`, whose lock guards every call (its I/O
thread applies frames; the application's threads subscribe and unsubscribe).

**Positions.** Every channel the subscriber is on (the default one, key ``""``, and each
named one) has a position ``(epoch, seq)``: the last event delivered, or where the hub said
the channel stood. A reconnect resumes each from there (``since``). A position is never taken
from an answer that says ``recovered: true``: that answer's ``seq`` is the latest one, and the
replay that follows is older.

**Resync.** When the hub cannot replay what a channel missed (``recovered: false`` after a
resume, reasons ``new-epoch`` or ``not-recovered``) or a ``seq`` is skipped on a live
connection (``gap``), the session reports a :class:`Resync` for that channel: the application
must reload that channel's state. A first subscription is not a resync unless
``resync_on_first_connect`` (reason ``initial``).

**Granted channels.** A channel the hub subscribes the connection to by itself (an identity's
own ``user:<id>`` channel, its granted channels) is in ``connection:status`` without having
been asked for: the session takes it on like one of its own (delivered, resumed with the next
connection), unless the application left it, in which case it leaves it again.

**Connect plan.** Channels go in the URL (``channels=`` and their ``since`` items) while it
stays under ``max_target`` bytes (gunicorn refuses request lines over 4094 bytes); the others,
and every channel with a subscription token (tokens never go in a URL), are subscribed with
``channel:subscribe`` messages once the connection is open, paced under the hub's rate limit.
"""

from __future__ import annotations

import json
import random as _random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from ..protocol import (
    CHANNEL_ERROR,
    CHANNEL_SUBSCRIBE,
    CHANNEL_SUBSCRIBED,
    CHANNEL_UNSUBSCRIBE,
    CHANNEL_UNSUBSCRIBED,
    CHANNELS_PARAM,
    CONNECTION_STATUS,
    DEFAULT_CHANNEL,
    SINCE_PARAM,
    Since,
    check_channel,
)
from .policy import DEFAULT_BACKOFF, Backoff, RateLimit, backoff_delay

__all__ = [
    "ChannelError",
    "Event",
    "Joined",
    "Output",
    "Position",
    "Resync",
    "ResyncReason",
    "Session",
    "TokenSource",
]

#: The ``channel:error`` code the hub sends when it cannot plan a subscribe right now (the
#: broker is unreachable): the session subscribes again after a backoff.
UNAVAILABLE = "unavailable"
#: Codes the session reports itself (never sent by the hub).
UNSUPPORTED = "unsupported"
TOKEN_FAILED = "token"
#: Gunicorn refuses a request line over 4094 bytes (``GET <target> HTTP/1.1``).
MAX_TARGET = 4000

ResyncReason: TypeAlias = Literal["initial", "new-epoch", "not-recovered", "gap"]
#: A subscription token, or a function returning one (called before each subscribe).
TokenSource: TypeAlias = str | Callable[[], str | None] | None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a channel stands: the epoch of its history and the last ``seq`` (each may be
    unknown: a hub without delivery guarantees sends neither)."""

    epoch: str | None
    seq: int | None

    def since(self) -> str | None:
        """``<epoch>:<seq>``, or ``None`` when either is unknown."""
        if self.epoch is None or self.seq is None:
            return None
        return f"{self.epoch}:{self.seq}"


P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Event(Generic[P]):
    """One envelope from the hub, as received: ``connection:status``, ``channel:*`` answers,
    the application's events. ``channel`` is ``None`` for the default channel; ``seq`` is
    ``None`` for messages sent to this connection only. ``raw`` is the whole envelope.

    Generic in its payload, so that the catalog's payload types apply where the type is
    known: ``created: Event[StreamCreatedPayload] = sub.next("stream:created")`` (the
    ``TypedDict`` classes are in :mod:`sidecar.events`).
    """

    type: str
    payload: P
    timestamp: str | None
    seq: int | None
    channel: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a plain dict, exactly as it arrived."""
        return dict(self.raw)


@dataclass(frozen=True, slots=True)
class Resync:
    """Events of ``channel`` (``None``: the default channel) may have been missed: reload its
    state. ``epoch``/``seq`` is where the channel stands now; ``previous_*`` where it was."""

    channel: str | None
    reason: ResyncReason
    epoch: str | None
    seq: int | None
    previous_epoch: str | None
    previous_seq: int | None


@dataclass(frozen=True, slots=True)
class ChannelError:
    """The hub refused ``channel`` (its ``channel:error`` code and message), or unsubscribed
    it on its own (``code`` is then the reason, e.g. ``revoked``). ``retrying``: the session
    subscribes again by itself (``unavailable``); otherwise the channel was dropped from the
    subscription (subscribe again to retry)."""

    channel: str
    code: str
    message: str
    retrying: bool


@dataclass(frozen=True, slots=True)
class Joined:
    """Internal: ``channel`` is subscribed on this connection, at ``position`` (for waiters;
    never delivered)."""

    channel: str
    position: Position | None = None


Output: TypeAlias = "Event[Any] | Resync | ChannelError | Joined"


@dataclass(slots=True)
class _Wanted:
    """A named channel the application subscribed to."""

    token: TokenSource = None
    attempts: int = 0  # consecutive ``unavailable`` answers
    not_before: float = 0.0  # when the next subscribe may be sent


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _event(frame: Mapping[str, Any]) -> Event[Any]:
    payload = frame.get("payload")
    channel = frame.get("channel")
    timestamp = frame.get("timestamp")
    return Event(
        type=frame["type"],
        payload=payload if isinstance(payload, dict) else {},
        timestamp=timestamp if isinstance(timestamp, str) else None,
        seq=_count(frame.get("seq")),
        channel=channel if isinstance(channel, str) and channel else None,
        raw=frame,
    )


def _state(value: object) -> tuple[str, int, bool] | None:
    """``(epoch, seq, recovered)`` of a channel's entry in an answer, if well formed."""
    if not isinstance(value, Mapping):
        return None
    epoch, seq = value.get("epoch"), _count(value.get("seq"))
    if not isinstance(epoch, str) or seq is None:
        return None
    return epoch, seq, value.get("recovered") is True


class Session:
    """The protocol state of one subscriber (see the module docstring)."""

    def __init__(
        self,
        channels: Iterable[str] = (),
        since: Mapping[str, Since] | None = None,
        *,
        resync_on_first_connect: bool = False,
        max_target: int = MAX_TARGET,
        rate: RateLimit | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.resync_on_first_connect = resync_on_first_connect
        self.max_target = max_target
        self._rate = rate or RateLimit()
        self._backoff = backoff
        self._random = random
        self._wanted: dict[str, _Wanted] = {}
        self._positions: dict[str, Position] = {}
        self._answered: set[str] = set()  # channels the hub gave a position at least once
        self._declined: set[str] = set()  # channels the application left
        # this connection's state
        self._connecting = False  # a connection is being made or is open (after connect_target)
        self._connected = False  # its connection:status arrived
        self._in_url: list[str] = []
        self._queue: list[tuple[str, str]] = []  # ("subscribe" | "unsubscribe", channel)
        self._awaiting: set[str] = set()  # asked for on this connection, no answer yet
        self._joined: set[str] = set()  # subscribed on this connection
        #: The last ``connection:status`` payload.
        self.status: dict[str, Any] | None = None
        #: Frames dropped: duplicates (a ``seq`` already delivered), events of channels not
        #: subscribed (any more), frames that are not envelopes; and ``seq`` gaps seen.
        self.duplicates = 0
        self.unwanted = 0
        self.ignored = 0
        self.gaps = 0
        #: Text frames received, over every connection.
        self.frames = 0
        for name in channels:
            self.subscribe(name)
        for name, point in (since or {}).items():
            if name and name not in self._wanted:
                raise ValueError(f"since names {name!r}, which is not in channels")
            self._positions[name] = Position(point.epoch, point.seq)

    # -- what the application sees ---------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """The named channels subscribed (or being subscribed), in the order asked."""
        return list(self._wanted)

    def positions(self) -> dict[str | None, Position]:
        """Every channel's position (``None``: the default channel)."""
        return {(name or None): pos for name, pos in self._positions.items()}

    def position(self, channel: str | None = None) -> Position | None:
        """One channel's position (``None``: the default channel), if known."""
        return self._positions.get(channel or DEFAULT_CHANNEL)

    def joined(self, channel: str) -> bool:
        """Whether ``channel`` is subscribed on the current connection."""
        return channel in self._joined

    def subscribe(
        self, channel: str, since: Since | None = None, token: TokenSource = None
    ) -> bool:
        """Add ``channel`` (resuming from ``since`` if given); ``False`` if already there.

        Raises ``ValueError`` for a name that is not a channel name.
        """
        check_channel(channel)
        if channel in self._wanted:
            return False
        self._declined.discard(channel)
        self._wanted[channel] = _Wanted(token)
        if since is not None:
            self._positions[channel] = Position(since.epoch, since.seq)
        if self._connecting:  # too late for this connection's URL: by message, once open
            self._queue.append((CHANNEL_SUBSCRIBE, channel))
        return True

    def unsubscribe(self, channel: str) -> bool:
        """Leave ``channel`` (its position is forgotten); ``False`` if it was not subscribed."""
        if channel not in self._wanted:
            return False
        del self._wanted[channel]
        self._declined.add(channel)
        self._positions.pop(channel, None)
        self._answered.discard(channel)
        pending = (CHANNEL_SUBSCRIBE, channel)
        if pending in self._queue:
            self._queue.remove(pending)  # never sent: nothing to undo
        elif channel in self._awaiting or channel in self._joined:
            self._queue.append((CHANNEL_UNSUBSCRIBE, channel))
        return True

    # -- connecting ------------------------------------------------------------------------

    def connect_target(self, target: str) -> str:
        """The request target of the next connection (``target`` is the hub's path and query;
        its own ``channels``/``since`` are replaced). Starts a new connection's state: the
        channels that do not fit are queued as messages."""
        self.lost()
        self._connecting = True
        path, _, query = target.partition("?")
        params = [p for p in query.split("&") if p and p.split("=")[0] not in _OURS]
        items = []
        default = self._positions.get(DEFAULT_CHANNEL)
        if default is not None and default.since() is not None:
            items.append(str(default.since()))
        names: list[str] = []
        full = False  # once one channel does not fit, the rest go by message too (in order)
        for name, wanted in self._wanted.items():
            position = self._positions.get(name)
            item = f"{name}@{position.since()}" if position and position.since() else None
            trial = _target(path, params, [*names, name], [*items, item] if item else items)
            full = full or (wanted.token is None and len(trial.encode()) > self.max_target)
            if wanted.token is None and not full:
                names.append(name)
                items += [item] if item else []
            else:
                self._queue.append((CHANNEL_SUBSCRIBE, name))
        self._in_url = names
        self._awaiting = set(names)
        return _target(path, params, names, items)

    def lost(self) -> None:
        """The connection ended: forget what belonged to it (positions stay)."""
        self._connecting = False
        self._connected = False
        self._in_url = []
        self._queue.clear()
        self._awaiting.clear()
        self._joined.clear()
        self._rate.clear()

    # -- frames ------------------------------------------------------------------------------

    def receive(self, text: str, now: float) -> list[Output]:
        """What one text frame from the hub means: the outputs to deliver, in order."""
        self.frames += 1
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.ignored += 1
            return []
        kind = frame["type"]
        if kind == CONNECTION_STATUS and "seq" not in frame:
            return self._on_status(frame)
        if kind in (CHANNEL_SUBSCRIBED, CHANNEL_UNSUBSCRIBED, CHANNEL_ERROR) and "seq" not in frame:
            payload = frame.get("payload")
            if isinstance(payload, dict) and isinstance(payload.get("channel"), str):
                return self._on_channel_frame(kind, frame, payload, now)
        return self._on_event(frame)

    def _on_status(self, frame: dict[str, Any]) -> list[Output]:
        event = _event(frame)
        payload = event.payload
        self._connected = True
        self.status = payload
        out: list[Output] = [event]
        resyncs = [self._apply(DEFAULT_CHANNEL, _state(payload))]
        states = payload.get("channels")
        errors: list[Output] = []
        for name in self._in_url:
            if name not in self._wanted:
                continue  # unsubscribed while connecting: the unsubscribe is queued
            state = _state(states.get(name)) if isinstance(states, Mapping) else None
            if state is not None:
                self._join(name)
                resyncs.append(self._apply(name, state))
                out.append(Joined(name, self._positions.get(name)))
            elif not isinstance(states, Mapping):  # a hub without channels ignored them
                errors.append(self._drop(name, UNSUPPORTED, _NO_CHANNELS))
            # else: refused at connect; its channel:error follows
        for name, value in states.items() if isinstance(states, Mapping) else ():
            state = _state(value)
            if name in self._in_url or state is None or not isinstance(name, str):
                continue
            if name in self._declined:  # the app left it: leave it again
                self._queue.append((CHANNEL_UNSUBSCRIBE, name))
                continue
            if name not in self._wanted:  # granted by the hub (identity): kept, resumed
                self._wanted[name] = _Wanted()
            elif (CHANNEL_SUBSCRIBE, name) in self._queue:  # granted before it was asked for
                self._queue.remove((CHANNEL_SUBSCRIBE, name))
            self._join(name)
            resyncs.append(self._apply(name, state))
            out.append(Joined(name, self._positions.get(name)))
        return out + [r for r in resyncs if r is not None] + errors

    def _on_channel_frame(
        self, kind: str, frame: dict[str, Any], payload: dict[str, Any], now: float
    ) -> list[Output]:
        name: str = payload["channel"]
        out: list[Output] = [_event(frame)]
        wanted = name in self._wanted
        if kind == CHANNEL_SUBSCRIBED:
            state = _state(payload)
            if wanted and name in self._awaiting and state is not None:
                self._join(name)
                resync = self._apply(name, state)
                out.append(Joined(name, self._positions.get(name)))
                out += [resync] if resync else []
            return out
        message = payload.get("message")
        message = message if isinstance(message, str) else ""
        self._awaiting.discard(name)
        if kind == CHANNEL_UNSUBSCRIBED:
            self._joined.discard(name)
            reason = payload.get("reason")
            if wanted and reason != "client":
                reason = reason if isinstance(reason, str) and reason else "unsubscribed"
                out.append(self._drop(name, reason, f"unsubscribed by the hub ({reason})"))
            return out
        code = payload.get("code")
        code = code if isinstance(code, str) else "unknown"
        if not wanted or code == "already_subscribed":
            out.append(ChannelError(name, code, message, retrying=False))
        elif code == UNAVAILABLE:
            out.append(self._retry_later(name, message, now))
        else:
            out.append(self._drop(name, code, message))
        return out

    def _on_event(self, frame: dict[str, Any]) -> list[Output]:
        event = _event(frame)
        name = event.channel or DEFAULT_CHANNEL
        if name and (name not in self._wanted or name not in self._joined):
            self.unwanted += 1
            return []
        seq = event.seq
        if seq is None:
            return [event]
        known = self._positions.get(name)
        if known is None or known.seq is None:
            self._positions[name] = Position(known.epoch if known else None, seq)
            return [event]
        if seq <= known.seq:
            self.duplicates += 1
            return []
        self._positions[name] = Position(known.epoch, seq)
        if seq == known.seq + 1:
            return [event]
        self.gaps += 1
        gap = Resync(name or None, "gap", known.epoch, seq, known.epoch, known.seq)
        return [gap, event]

    # -- positions ---------------------------------------------------------------------------

    def _join(self, name: str) -> None:
        self._awaiting.discard(name)
        self._joined.add(name)
        self._wanted[name].attempts = 0

    def _apply(self, name: str, state: tuple[str, int, bool] | None) -> Resync | None:
        """The hub says where ``name`` stands (``state``; ``None``: a hub without positions):
        update its position, and say whether the application must reload the channel."""
        previous = self._positions.get(name)
        fresh = name not in self._answered
        self._answered.add(name)
        if state is None:
            self._positions[name] = Position(None, None)
            return self._initial(name) if fresh else self._resync(name, "not-recovered", previous)
        epoch, seq, recovered = state
        resumed = previous is not None and previous.since() is not None
        if recovered and resumed:
            return None  # the replay follows; the position stays where it was
        self._positions[name] = Position(epoch, seq)
        if previous is None or not resumed:
            return self._initial(name) if fresh else self._resync(name, "not-recovered", previous)
        reason: ResyncReason = "new-epoch" if epoch != previous.epoch else "not-recovered"
        return self._resync(name, reason, previous)

    def _initial(self, name: str) -> Resync | None:
        return self._resync(name, "initial", None) if self.resync_on_first_connect else None

    def _resync(self, name: str, reason: ResyncReason, previous: Position | None) -> Resync:
        now = self._positions[name]
        before = previous or Position(None, None)
        return Resync(name or None, reason, now.epoch, now.seq, before.epoch, before.seq)

    def _drop(self, name: str, code: str, message: str) -> ChannelError:
        if (CHANNEL_SUBSCRIBE, name) in self._queue:  # a retry that must not go out any more
            self._queue.remove((CHANNEL_SUBSCRIBE, name))
        self._wanted.pop(name, None)
        self._positions.pop(name, None)
        self._answered.discard(name)
        self._joined.discard(name)
        self._awaiting.discard(name)
        return ChannelError(name, code, message, retrying=False)

    def _retry_later(self, name: str, message: str, now: float) -> ChannelError:
        wanted = self._wanted[name]
        wanted.not_before = now + backoff_delay(wanted.attempts, self._backoff, self._random)
        wanted.attempts += 1
        self._queue.append((CHANNEL_SUBSCRIBE, name))
        return ChannelError(name, UNAVAILABLE, message, retrying=True)

    # -- messages ----------------------------------------------------------------------------

    def take_messages(self, now: float) -> tuple[list[dict[str, Any]], list[ChannelError]]:
        """The ``channel:*`` messages that may be sent now (paced), and the errors of those
        that cannot be sent at all (a token hook that failed)."""
        if not self._connected:
            return [], []
        messages: list[dict[str, Any]] = []
        errors: list[ChannelError] = []
        for kind, name in list(self._queue):
            wanted = self._wanted.get(name)
            if kind == CHANNEL_SUBSCRIBE and wanted is not None and wanted.not_before > now:
                continue
            if self._rate.next_allowed(now) > now:
                break
            self._queue.remove((kind, name))
            if kind == CHANNEL_UNSUBSCRIBE:
                message: dict[str, Any] = {"channel": name}
            elif wanted is None:
                continue
            else:
                try:
                    message = self._subscribe_payload(name, wanted)
                except Exception as exc:  # the application's token hook
                    errors.append(self._drop(name, TOKEN_FAILED, f"token hook failed: {exc}"))
                    continue
                self._awaiting.add(name)
            self._rate.record(now)
            messages.append({"type": kind, "payload": message})
        return messages, errors

    def _subscribe_payload(self, name: str, wanted: _Wanted) -> dict[str, Any]:
        payload: dict[str, Any] = {"channel": name}
        position = self._positions.get(name)
        if position is not None and position.since() is not None:
            payload["since"] = position.since()
        token = wanted.token() if callable(wanted.token) else wanted.token
        if token is not None:
            if not isinstance(token, str):
                raise TypeError(f"a token is a string, not {type(token).__name__}")
            payload["token"] = token
        return payload

    def next_message_due(self, now: float) -> float | None:
        """When :meth:`take_messages` will have something to send (``None``: nothing)."""
        if not self._connected or not self._queue:
            return None
        due = [
            w.not_before if kind == CHANNEL_SUBSCRIBE and (w := self._wanted.get(name)) else now
            for kind, name in self._queue
        ]
        return max(min(due), self._rate.next_allowed(now))


_OURS = (CHANNELS_PARAM, SINCE_PARAM)
_NO_CHANNELS = "the hub did not answer for channels (a hub without channels?)"


def _target(path: str, params: list[str], names: list[str], items: list[str]) -> str:
    query = list(params)
    if names:
        query.append(f"{CHANNELS_PARAM}={','.join(names)}")
    if items:
        query.append(f"{SINCE_PARAM}={','.join(items)}")
    return f"{path}?{'&'.join(query)}" if query else path
