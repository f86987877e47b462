"""The hub: one thread owns the clients, the channels and the numbered stream (gorilla's design).

Threads and what they own
    * **hub thread** (``sidecar-hub``, :meth:`Hub.run`): the only reader of the inbox and the
      only thread that touches ``_clients``, each client's ``channels``, the channels
      (:class:`~sidecar.core.channels.Channels`: positions, windows, subscribers), the stream
      tracker and :class:`HubStats`. It builds each event's frame once, records it in its
      channel's window and hands the same bytes to every subscriber (:meth:`Client.offer`).
      It never blocks on a client: a client whose queue is full is dropped (4008). It also
      keeps clients alive: every ``ping_interval`` after it registered it pings each client
      with no ping outstanding and drops one silent for ``ping_timeout`` seconds since its
      ping (1011). Each client keeps its own phase (``_ping_due``, in registration order):
      pinging everyone at one instant made every reader thread wake for its pong at once,
      a stall of seconds for the whole process at 10,000 connections.
    * **any thread** calls the public API; everything reaches the hub thread through the
      inbox (a ``queue.Queue`` of :mod:`sidecar.core.commands`). ``_pending_lock`` guards
      ``_pending`` (events in the inbox) and ``_refused``. Publishing never blocks and is
      refused once ``inbox_limit`` events are waiting. Register, subscribe, unregister and
      stop are always accepted (bounded by connections and their rate-limited messages).
    * ``_start_lock`` guards starting the hub thread (explicitly, or lazily with
      ``autostart`` in the process that uses it: never before a fork).
    * ``_advanced`` (a Condition) guards ``_waiters``, the request threads waiting in
      :meth:`Hub.wait_for`; the hub thread notifies it after a batch or a reset only while
      someone waits (one attribute read per batch otherwise), and when it stops.

Numbering has one home per mode (:mod:`sidecar.core.stream`): in one process the
:class:`~sidecar.core.stream.LocalSequencer` numbers under its lock and puts the batch in the
inbox under that lock (lock order: the sequencer's, then ``_pending_lock``); with a broker,
Redis numbers and the relay thread hands the events back through :meth:`Hub.deliver`. Either
way the hub thread takes numbered events (:class:`~sidecar.core.stream.Numbered`) and a
:class:`~sidecar.core.stream.StreamTracker` decides: events it already has are dropped (a
replayed read), and a gap or another epoch is a reset: every client is closed with 4001 and
resumes, so that no live connection ever skips. Resume planning lives in
:mod:`sidecar.core.resume`.

Consecutive events waiting in the inbox are handled as one batch: every subscriber gets one
write (or one queue item) carrying all the frames of its channels, in stream order.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import secrets
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import frames
from ..config import Config
from ..envelope import Event, EventLike, as_event, encode, loads_strict
from ..protocol import (
    DEFAULT_CHANNEL,
    MAX_FRAME_HEADER,
    ChannelErrorCode,
    CloseCode,
    PublishedSeqs,
    PublishRefused,
    Since,
    channel_error,
    channel_subscribed,
    channel_unsubscribed,
    check_broadcast_type,
    check_channel,
    check_idempotency_key,
    connection_status,
    splice_max,
)
from .channels import Channel, Channels, Verdict
from .client import Client
from .commands import (
    Call,
    Command,
    Deliver,
    DropAll,
    Register,
    Reset,
    Send,
    Stop,
    Subscribe,
    Unregister,
    Unsubscribe,
)
from .gcpolicy import GcPolicy
from .identity import MAX_TOKEN_TTL
from .resume import ChannelRequest, Entry, replay
from .stream import (
    Delivered,
    Item,
    LocalSequencer,
    Numbered,
    Position,
    Restart,
    Revocation,
    Sequencer,
    Step,
    StreamTracker,
    Take,
)

__all__ = ["Hub", "HubStats", "PublishRefused", "Sequencer", "check_broadcast_type"]

log = logging.getLogger("sidecar.hub")

_MAX_BATCH = 256
_PING_FRAME = frames.frame(frames.OP_PING, b"")
#: Longest time between two sweeps of idle channels.
_SWEEP_INTERVAL = 30.0
#: Revocations remembered (a subscription token issued before one is refused), at most.
_MAX_REVOCATIONS = 65536

StatusFactory = Callable[..., Event]


def _broadcastable(events: Iterable[EventLike]) -> list[Event]:
    """``events`` as a list of events (:func:`~sidecar.envelope.as_event`), each checked by
    :func:`check_broadcast_type`."""
    checked = [as_event(event) for event in events]
    for event in checked:
        check_broadcast_type(event.type)
    return checked


def _channel(channel: str | None) -> str:
    """The channel a publisher named (``None``: the default), checked."""
    return DEFAULT_CHANNEL if channel is None else check_channel(channel)


def _frame_of(event: Event) -> bytes:
    return frames.text_frame(encode(event))


@dataclass
class HubStats:
    """Counters, written by the hub thread only (other threads read a snapshot)."""

    broadcasts: int = 0
    deliveries: int = 0
    sent_to_client: int = 0
    registered: int = 0
    unregistered: int = 0
    evicted: int = 0
    keepalive_drops: int = 0
    replays: int = 0
    replayed_events: int = 0
    unrecovered_resumes: int = 0
    resets: int = 0
    reset_drops: int = 0
    duplicates_dropped: int = 0
    subscribes: int = 0
    unsubscribes: int = 0
    channel_errors: int = 0
    channel_resets: int = 0
    revoked: int = 0
    expired: int = 0


class Hub:
    """Fan-out of events to the subscribers of their channels, numbered, with replay windows.

    Settings come from ``config`` (a :class:`~sidecar.config.Config`; keyword ``options`` are
    applied on top, e.g. ``Hub(ping_interval=5)``): each channel keeps ``history_size`` events
    and at most ``history_bytes`` bytes of frames for clients that resume with ``since``,
    all channels together at most ``history_total_bytes``; every ``ping_interval`` seconds
    (0: never) each client is pinged, and one silent for ``ping_timeout`` seconds after its
    ping (default: the interval) is dropped with 1011.

    ``status`` builds the ``connection:status`` event; ``clock`` is the keepalive's and the
    channels' clock (the connections' ``last_received`` must use the same one);
    ``sequencer`` (a broker) turns on broker mode; ``autostart`` starts the hub thread on
    first use in each process.
    """

    def __init__(
        self,
        config: Config | None = None,
        /,
        *,
        status: StatusFactory = connection_status,
        clock: Callable[[], float] = time.monotonic,
        sequencer: Sequencer | None = None,
        autostart: bool = False,
        **options: Any,
    ) -> None:
        self.config = (config or Config()).with_options(**options)
        self.ping_interval = self.config.ping_interval
        self.ping_timeout = self.config.effective_ping_timeout
        self.inbox_limit = self.config.inbox_limit
        self.max_event_bytes = self.config.max_event_bytes
        self.max_channels = self.config.max_channels
        self._status = status
        self._clock = clock
        self._broker = sequencer
        self._autostart = autostart
        #: Whether the hub thread manages the garbage collector (:meth:`manage_gc`).
        self._manage_gc = False
        self._reset_state()
        if sys.platform != "win32":  # Windows has no fork
            os.register_at_fork(after_in_child=_forked(weakref.ref(self)))

    def _reset_state(self) -> None:
        """Fresh inbox, locks, channels and clients: at construction, and in a forked child."""
        config = self.config
        epoch = secrets.token_hex(8)
        self.stats = HubStats()
        self._inbox: queue.Queue[Command] = queue.Queue()
        self._clients: set[Client] = set()
        self._count = 0
        self._local: LocalSequencer | None = None
        self._numbering: Sequencer
        if self._broker is None:
            self._local = LocalSequencer(
                epoch, self._submit, config.max_channel_states, clock=self._clock
            )
            self._numbering = self._local
        else:
            self._numbering = self._broker
        self._channels = Channels(
            history_size=config.history_size,
            history_bytes=config.history_bytes,
            total_bytes=config.history_total_bytes,
            max_states=config.max_channel_states,
            ttl=config.channel_ttl,
            clock=self._clock,
            may_forget=self._local.forget if self._local is not None else _always,
        )
        self._channels.default.position = Position(epoch, 0)
        self._tracker = StreamTracker(epoch)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._closed = False
        self._pending_lock = threading.Lock()
        self._room = threading.Condition(self._pending_lock)
        self._pending = 0
        self._refused = 0
        self._advanced = threading.Condition(threading.Lock())
        self._waiters = 0
        #: The garbage-collection policy, once :meth:`manage_gc` (hub thread only).
        self._gc: GcPolicy | None = None
        #: ``(deadline on the hub's clock, client id, client)`` of identities that expire.
        self._expiries: list[tuple[float, int, Client]] = []
        #: ``(when its next ping is due, client)``, oldest first: appended at registration and
        #: after each check with ``now + ping_interval``, so it stays sorted. A weak reference:
        #: a client that left is freed at once, its entry dropped when it comes up (or when
        #: entries outnumber clients twice over). Hub thread only.
        self._ping_due: deque[tuple[float, weakref.ref[Client]]] = deque()
        #: ``(user, channel)`` -> when it was revoked (Unix time); hub thread writes.
        self._revoked: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Run the hub in its own daemon thread; returns once it accepts commands."""
        with self._start_lock:
            if self._thread is not None:
                raise RuntimeError("hub already started")
            self._start_locked()

    def _start_locked(self) -> None:
        self._thread = threading.Thread(target=self.run, name="sidecar-hub", daemon=True)
        self._running.set()
        self._thread.start()

    def _ensure_started(self) -> None:
        if self._autostart and self._thread is None and not self._closed:
            with self._start_lock:
                if self._thread is None and not self._closed:
                    self._start_locked()

    def run(self) -> None:
        """The hub loop; returns after :meth:`stop`. Call it directly only instead of start()."""
        self._running.set()
        try:
            if self._manage_gc:
                self._start_gc()
            self._loop()
        finally:
            self._running.clear()
            with self._room:
                self._room.notify_all()
            self._stopped.set()
            with self._advanced:
                self._advanced.notify_all()

    def stop(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        timeout: float = 2.0,
    ) -> bool:
        """Close every client with ``code`` and end the hub thread; wait up to ``timeout``.

        Returns whether the hub thread ended in time. Clients are asked to close (their
        writer threads flush, send the close frame and wait for the peer's reply).
        """
        self._closed = True
        if self._running.is_set():
            self._inbox.put(Stop(code, reason))
        return self._stopped.wait(timeout) if self._thread is not None else True

    def manage_gc(self) -> None:
        """Let the hub thread keep long-lived objects out of full garbage collections
        (:mod:`sidecar.core.gcpolicy`): for a process the sidecar owns (the CLI, a gunicorn
        worker), or an app that wants it. Process-wide; idempotent; survives a fork."""
        self._manage_gc = True
        self.call(self._start_gc)

    def _start_gc(self) -> None:
        if self._gc is None:
            self._gc = GcPolicy()
            self._gc.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`stop` has been called (a read that never starts the hub thread)."""
        return self._closed

    def is_running(self) -> bool:
        """Whether the hub accepts broadcasts (starting it first with ``autostart``)."""
        self._ensure_started()
        return self._running.is_set()

    def client_count(self) -> int:
        """Number of registered clients."""
        return self._count

    @property
    def epoch(self) -> str:
        """The default channel's (and the stream's) epoch (a snapshot)."""
        return self._channels.default.position.epoch

    @property
    def seq(self) -> int:
        """The last ``seq`` of the default channel delivered to clients (a snapshot)."""
        return self._channels.default.position.seq

    def channel_position(self, channel: str) -> Position | None:
        """Where this hub is in ``channel`` (a snapshot), ``None`` if it does not know it."""
        known = self._channels.peek(channel)
        return None if known is None else known.position

    def wait_for(self, channel: str, epoch: str, seq: int, timeout: float) -> bool:
        """Wait up to ``timeout`` until the hub has fanned out ``seq`` of ``epoch`` in
        ``channel`` (for a resume that saw events on a faster process: its relay is behind).

        Returns whether the hub got there (``False`` at the deadline, or once it stops).
        Never on the hub thread.
        """
        deadline = time.monotonic() + timeout

        def there() -> bool:
            position = self.channel_position(channel)
            return position is not None and position.epoch == epoch and position.seq >= seq

        with self._advanced:
            self._waiters += 1
            try:
                while not there():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._running.is_set():
                        return False
                    self._advanced.wait(remaining)
                return True
            finally:
                self._waiters -= 1

    def wait_for_seq(self, epoch: str, seq: int, timeout: float) -> bool:
        """:meth:`wait_for` on the default channel."""
        return self.wait_for(DEFAULT_CHANNEL, epoch, seq, timeout)

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for monitoring (a consistent copy of each part)."""
        with self._pending_lock:
            pending, refused = self._pending, self._refused
        span = self._channels.default.window.span
        channels = self._channels
        return {
            **asdict(self.stats),
            "refused_broadcasts": refused,
            "clients": self._count,
            "seq": self.seq,
            "epoch": self.epoch,
            # the stream position fanned out (the tracker's int, replaced whole: a snapshot)
            "pos": self._tracker.pos,
            "historyEvents": 0 if span is None else span[1] - span[0] + 1,
            "historyBytes": 0 if span is None else span[2],
            "pending": pending,
            "channels": len(channels),
            "channelHistoryBytes": channels.total_bytes,
            "channelsForgotten": channels.forgotten,
            "channelTrims": channels.trims,
            "gcFreezes": 0 if self._gc is None else self._gc.freezes,
            "gcFullCollections": 0 if self._gc is None else self._gc.full_collections,
        }

    # -- publishing (any thread, never blocks) --------------------------------------------
    def broadcast(self, data: bytes | str, channel: str | None = None) -> bool:
        """Broadcast an already-encoded envelope (a JSON object with a ``type``) on
        ``channel`` (``None``: the default channel, every client).

        Returns ``False`` if the hub is not running or is overloaded (counted and logged).
        Raises ``ValueError`` if ``data`` is not such an object, or is too large.
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        try:
            obj = loads_strict(raw)  # what a broker's relay accepts back, and every client reads
        except ValueError as exc:
            raise ValueError(f"broadcast data is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("broadcast data must be a JSON object with a type")
        check_broadcast_type(obj.get("type"))
        if "seq" in obj:
            raise ValueError("broadcast data must not carry seq: the hub assigns it")
        if "channel" in obj:
            raise ValueError("broadcast data must not carry channel: pass channel=")
        return self._publish_quietly([raw.strip()], channel)

    def broadcast_event(self, event: EventLike, channel: str | None = None) -> bool:
        """Encode ``event`` (an :class:`Event` or a ``{type, payload}`` dict) once and
        broadcast it to the subscribers of ``channel``.

        Returns ``False`` if the hub is stopped or overloaded; raises ``ValueError`` if the
        encoded event is larger than ``max_event_bytes``, is not an envelope, its type may not
        be broadcast (:func:`check_broadcast_type`) or ``channel`` is not a channel name: a
        caller's bug, not a load condition.
        """
        encoded = [encode(checked) for checked in _broadcastable([event])]
        return self._publish_quietly(encoded, channel)

    def broadcast_many(self, events: Iterable[EventLike], channel: str | None = None) -> int:
        """Broadcast several events, in order, as one batch: all are accepted or none (0)."""
        encoded = [encode(event) for event in _broadcastable(events)]
        return len(encoded) if encoded and self._publish_quietly(encoded, channel) else 0

    def publish(
        self,
        events: Sequence[EventLike],
        channel: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> PublishedSeqs:
        """Broadcast ``events`` on ``channel`` as one batch and return their ``seq`` numbers
        (that channel's).

        Raises :class:`PublishRefused` (nothing was broadcast), its subclass
        :class:`~sidecar.protocol.PublishOutcomeUnknown` (a broker that got the publish and
        did not answer: the events may have been broadcast; retry with the same
        ``idempotency_key``), or ``ValueError`` (too large, a type that may not be broadcast,
        a bad channel name, a malformed key).

        ``idempotency_key`` (see :func:`~sidecar.protocol.check_idempotency_key`): a second
        publish with the same key within :data:`~sidecar.protocol.IDEMPOTENCY_WINDOW` seconds
        broadcasts nothing and returns the seqs of the first (a :class:`PublishedSeqs` whose
        ``duplicate`` is set); :class:`~sidecar.protocol.IdempotencyKeyReused` (a
        ``ValueError``) if the first had another number of events. Without a broker the hub
        remembers at most :data:`~sidecar.protocol.IDEMPOTENCY_MAX_KEYS` keys.
        """
        encoded = [encode(event) for event in _broadcastable(events)]
        return self.publish_encoded(encoded, channel, idempotency_key=idempotency_key)

    def publish_encoded(
        self,
        encoded: Sequence[bytes],
        channel: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> PublishedSeqs:
        """:meth:`publish` for envelopes already encoded by :func:`sidecar.envelope.encode`."""
        name = _channel(channel)
        return self.publish_items([(name, data) for data in encoded], idempotency_key)

    def publish_items(
        self, items: Sequence[Item], idempotency_key: str | None = None
    ) -> PublishedSeqs:
        """Publish encoded envelopes, each on its own channel (``""``: the default), as one
        batch in this order; returns each one's seq in its channel (idempotency and errors as
        :meth:`publish`)."""
        for name, data in items:
            if len(data) + splice_max(name) > self.max_event_bytes:
                raise ValueError(f"event larger than {self.max_event_bytes} bytes")
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        if not items:
            return PublishedSeqs()
        seqs = self._numbering.publish_items(items, key)
        return seqs if isinstance(seqs, PublishedSeqs) else PublishedSeqs(seqs)

    def position(self, channel: str | None = None) -> Position:
        """``(epoch, seq)`` of ``channel`` as numbered now: load the app's state, then have a
        client subscribe with ``since`` at this position, and nothing falls between.

        Raises :class:`PublishRefused` (a broker that cannot be reached, or no room for one
        more channel) and ``ValueError`` for a bad channel name.
        """
        return self._numbering.heads([_channel(channel)])[0]

    def _submit(self, epoch: str, items: tuple[Delivered, ...]) -> None:
        """Put a numbered batch in the inbox (the local sequencer, under its lock)."""
        self._ensure_started()
        with self._pending_lock:
            if not self._running.is_set():
                raise PublishRefused("the hub is stopped")
            if self._pending + len(items) <= self.inbox_limit:
                self._pending += len(items)
                self._inbox.put(Deliver(epoch, items))
                return
            self._refused += 1
            refusals = self._refused
        if refusals in (1, 1000) or refusals % 100_000 == 0:
            log.warning("hub inbox full (%d waiting): broadcast refused", self.inbox_limit)
        raise PublishRefused(f"the hub is overloaded ({self.inbox_limit} events waiting)")

    def _publish_quietly(self, encoded: Sequence[bytes], channel: str | None) -> bool:
        try:
            self.publish_encoded(encoded, channel)
        except PublishRefused:
            return False
        return True

    def send_to_client(self, client: Client, event: EventLike) -> bool:
        """Send ``event`` (an :class:`Event` or a ``{type, payload}`` dict; without ``seq``)
        to one client. Never blocks.

        ``False`` if the client is gone, its queue is full, the hub is overloaded, or the
        event is larger than ``max_event_bytes`` (logged). Raises only for what is not an
        event at all (:func:`~sidecar.envelope.as_event`: a caller's bug).
        """
        event = as_event(event)
        data = encode(event)
        if len(data) > self.max_event_bytes:
            log.warning(
                "send_to_client(%s, %s) refused: event larger than %d bytes",
                client.id,
                event.type,
                self.max_event_bytes,
            )
            return False
        return self.send_frame(client, frames.text_frame(data))

    def send_frame(self, client: Client, frame: bytes) -> bool:
        """Send pre-built frame bytes to one client through the hub (see :meth:`send_to_client`).

        Raises ``ValueError`` for a frame larger than ``max_event_bytes`` plus its header.
        """
        if len(frame) > self.max_event_bytes + MAX_FRAME_HEADER:
            raise ValueError(f"frame larger than {self.max_event_bytes} bytes")
        if client.gone or client.backlog() >= client.queue_size:
            return False
        self._ensure_started()
        with self._pending_lock:
            if not self._running.is_set() or self._pending + 1 > self.inbox_limit:
                return False
            self._pending += 1
            self._inbox.put(Send(client, frame))
        return True

    # -- the broker's side (the relay thread) ---------------------------------------------
    def deliver(self, epoch: str, items: Sequence[Delivered], timeout: float) -> bool:
        """Take events numbered by the broker (in stream order, contiguous).

        Blocks up to ``timeout`` while the inbox is full; ``False`` if the hub is stopped or
        the time ran out (the relay then offers the same items again).
        """
        self._ensure_started()
        deadline = time.monotonic() + timeout
        with self._room:  # a stopped hub also makes the relay wait: it must not spin
            while not self._running.is_set() or self._pending + len(items) > self.inbox_limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._room.wait(remaining)
            self._pending += len(items)
            self._inbox.put(Deliver(epoch, tuple(items)))
        return True

    def reset(self, epoch: str, seq: int, reason: str, *, pos: int | None = None) -> None:
        """Go on from stream position ``pos`` (default ``seq``) of ``epoch``, where the
        default channel is at ``seq``: every client is closed with 4001 so that it resumes."""
        self._ensure_started()
        self._inbox.put(Reset(epoch, seq if pos is None else pos, seq, reason))

    # -- clients (request threads) ---------------------------------------------------------
    def register(
        self,
        client: Client,
        since: Since | None = None,
        *,
        greet: bool = True,
        backfill: Sequence[Numbered] = (),
        requests: Sequence[ChannelRequest] | None = None,
        notices: Sequence[Event] = (),
    ) -> bool:
        """Add ``client``; the hub sends it ``connection:status`` first, then ``notices``,
        then the replays of the channels it joins (in stream order), then live events.

        ``requests`` are the channels it joins (:class:`~sidecar.core.resume.ChannelRequest`,
        the default one among them unless it is left out); by default, only the default
        channel, resumed from ``since`` with ``backfill`` (events older than the local window,
        read from a broker). ``greet=False`` registers without the first frame and replay
        (the conformance echo endpoint, whose peer expects only its own messages back).
        """
        if not self.is_running():
            return False
        if requests is None:
            requests = [ChannelRequest(DEFAULT_CHANNEL, since, backfill=tuple(backfill))]
        notes = [_frame_of(event) for event in notices]
        if self._local is None:
            return self._put_while_running(Register(client, tuple(requests), greet, tuple(notes)))
        with self._local.lock:  # origins read in inbox order
            granted = self._local_origins(requests, notes)
            return self._put_while_running(Register(client, granted, greet, tuple(notes)))

    def _put_while_running(self, command: Command) -> bool:
        """Queue ``command`` unless the hub has stopped (the stop drains what was queued
        before it under the same lock, so nothing queued is left unanswered)."""
        with self._pending_lock:
            if not self._running.is_set():
                return False
            self._inbox.put(command)
            return True

    def _local_origins(
        self, requests: Sequence[ChannelRequest], notes: list[bytes]
    ) -> tuple[ChannelRequest, ...]:
        """``requests`` with the local sequencer's positions (its lock held); a channel with
        no room left is refused with a ``channel:error`` added to ``notes``."""
        assert self._local is not None
        granted = []
        for request in requests:
            if request.channel == DEFAULT_CHANNEL:
                granted.append(request)
                continue
            origin = self._local.position(request.channel)
            if origin is None:
                notes.append(_frame_of(_no_room(request.channel)))
                continue
            granted.append(replace(request, origin=origin))
        return tuple(granted)

    def subscribe(self, client: Client, request: ChannelRequest) -> bool:
        """Join ``client`` to one more channel (``channel:subscribed``, replay, then live)."""
        if not self._running.is_set():
            return False
        if self._local is None:
            self._inbox.put(Subscribe(client, request))
            return True
        notes: list[bytes] = []
        with self._local.lock:
            granted = self._local_origins([request], notes)
            if granted:
                self._inbox.put(Subscribe(client, granted[0]))
        for note in notes:
            self.send_frame(client, note)
        return True

    def unsubscribe(self, client: Client, channel: str, reason: str = "client") -> bool:
        """Take ``client`` off ``channel`` (``channel:unsubscribed {channel, reason}``)."""
        if not self._running.is_set():
            return False
        self._inbox.put(Unsubscribe(client, channel, reason))
        return True

    def revoke(self, user: str, channel: str) -> None:
        """Take every connection of ``user`` off ``channel`` (``channel:unsubscribed {channel,
        reason: "revoked"}``), in this process or, with a broker, on every worker; nothing of
        it arrives after. Tokens issued before now for it are refused from then on.

        Raises :class:`PublishRefused` when that cannot be done (the hub is stopped, the
        broker unreachable): a revocation is never dropped silently.
        """
        self._numbering.revoke(user, channel)

    def revoked_at(self, user: str, channel: str) -> float | None:
        """When ``user`` was last revoked from ``channel`` (a Unix time), if it was."""
        return self._revoked.get((user, channel))

    def unregister(self, client: Client) -> None:
        """Remove ``client`` (idempotent)."""
        if self._running.is_set():
            self._inbox.put(Unregister(client))

    def call(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the hub thread, after everything submitted before; whether queued."""
        if not self._running.is_set():
            return False
        self._inbox.put(Call(fn))
        return True

    def drop_all(self, code: int, reason: str, *, abrupt: bool = False) -> bool:
        """Drop every client after what was submitted before: close ``code`` without waiting.

        ``abrupt`` shuts the sockets down without a close frame (as a network failure would).
        Clients reconnect and resume; whether the command was queued.
        """
        if not self._running.is_set():
            return False
        self._inbox.put(DropAll(code, reason, abrupt))
        return True

    def window_start(self, channel: str = DEFAULT_CHANNEL) -> int | None:
        """The first ``seq`` in a channel's window (a snapshot), ``None`` when it is empty."""
        span = self.window_span(channel)
        return None if span is None else span[0]

    def window_span(self, channel: str = DEFAULT_CHANNEL) -> tuple[int, int, int] | None:
        """``(first seq, last seq, bytes)`` of a channel's window (a snapshot), or ``None``."""
        known = self._channels.peek(channel)
        return None if known is None else known.window.span

    # -- hub thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        get, clock = self._inbox.get, self._clock
        due = self._ping_due
        sweep_every = min(_SWEEP_INTERVAL, max(self._channels.ttl / 4, 0.001))
        next_sweep = clock() + sweep_every
        held: Command | None = None  # a command taken while collecting a batch
        while True:
            command, held = held, None
            if command is None:
                if self._gc is not None and self._inbox.empty():
                    self._gc.idle(self._count)  # nothing waits: the time to freeze or collect
                wake = next_sweep if not due else min(due[0][0], next_sweep)
                if self._expiries:
                    wake = min(wake, self._expiries[0][0])
                try:
                    command = get(timeout=max(0.0, wake - clock()))
                except queue.Empty:
                    command = None
            now = clock()
            if due and now >= due[0][0]:
                self._keepalive(now)
            if now >= next_sweep:
                self._channels.sweep()
                next_sweep = now + sweep_every
            if self._expiries and now >= self._expiries[0][0]:
                self._expire(now)
            if isinstance(command, Deliver):
                held = self._fan_out(command)
            elif isinstance(command, Stop):
                self._stop(command)
                return
            elif command is not None:
                self._dispatch(command)

    def _stop(self, stop: Stop) -> None:
        """Close every client, and every one still waiting in the inbox to register."""
        with self._pending_lock:
            self._running.clear()  # from here on nothing more is queued to register
        self._close_all(stop.code, stop.reason)
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Register):
                command.client.gone = True
                command.client.request_close(stop.code, stop.reason)
        self._wake_waiters()  # a resume waiting for a seq gives up now

    def _dispatch(self, command: Command) -> None:
        match command:
            case Send(client=client, frame=frame):
                self._done(1)
                if client in self._clients:
                    self.stats.sent_to_client += 1
                    if not client.offer(frame):
                        self._evict(client)
            case Register(client=client, requests=requests, greet=greet, notices=notices):
                self._register(client, requests, greet, notices)
            case Subscribe(client=client, request=request):
                self._subscribe(client, request)
            case Unsubscribe(client=client, channel=channel, reason=reason):
                self._unsubscribe(client, channel, reason)
            case Unregister(client=client):
                self._remove(client)
            case Call(fn=fn):
                self._call(fn)
            case Reset(epoch=epoch, pos=pos, seq=seq, reason=reason):
                self._tracker.restart(epoch, pos)
                self._restart(epoch, pos, seq, reason)
            case DropAll(code=code, reason=reason, abrupt=abrupt):
                for client in list(self._clients):
                    if abrupt and self._remove(client):
                        client.conn.shutdown()
                    else:
                        self._drop(client, code, reason, f"dropped by the app ({reason})")

    def _done(self, n: int) -> None:
        with self._room:
            self._pending -= n
            self._room.notify()

    def _call(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # a caller's function: log its failure, keep the hub running
            log.exception("hub.call(%r) failed", fn)

    def _fan_out(self, first: Deliver) -> Command | None:
        """Fan out ``first`` and every delivery right behind it, as one batch.

        Returns the command that ended the batch, to be handled next.
        """
        taken: list[Delivered] = []
        command: Command | None = first
        held: Command | None = None
        while command is not None:
            if not isinstance(command, Deliver):
                held = command
                break
            self._done(len(command.items))
            duplicates = self._tracker.duplicates
            steps = self._tracker.take(command.epoch, command.items)
            self.stats.duplicates_dropped += self._tracker.duplicates - duplicates
            for step in steps:
                if isinstance(step, Restart):
                    self._send(taken)
                    taken = []
                    self._restart(step.epoch, step.pos, _default_seq(steps), step.reason)
                else:
                    taken.extend(step.items)
            if len(taken) >= _MAX_BATCH:
                break
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                command = None
        self._send(taken)
        return held

    def _send(self, items: list[Delivered]) -> None:
        """Record ``items`` in their channels and hand each subscriber its frames, once; a
        revocation takes effect at its place in the stream."""
        if not items:
            return
        batch: list[tuple[Channel, bytes]] = []
        accept, append, text_frame = self._channels.accept, self._channels.append, frames.text_frame
        for item in items:
            if isinstance(item, Revocation):
                self._offer_batch(batch)
                batch = []
                self._revoke(item.user, item.channel)
                continue
            verdict, channel = accept(item)
            if verdict is Verdict.TAKE:
                assert channel is not None
            elif verdict is Verdict.BROKE:
                assert channel is not None
                self._offer_batch(batch)
                batch = []
                self._broke(channel, item)
            else:
                self.stats.duplicates_dropped += verdict is Verdict.DUPLICATE
                continue
            frame = text_frame(item.data)
            append(channel, item, frame)
            batch.append((channel, frame))
        self._offer_batch(batch)
        self._channels.shrink()
        if self._waiters:
            self._wake_waiters()

    def _offer_batch(self, batch: list[tuple[Channel, bytes]]) -> None:
        """Hand each subscriber of the batch's channels its frames, in order, in one offer.

        The work is one pass over the batch plus one offer per subscriber of its channels:
        it follows the audience, never the number of channels or of connections.
        """
        if not batch:
            return
        grouped: dict[Channel, list[bytes]] = {}
        for channel, frame in batch:
            frames_of = grouped.get(channel)
            if frames_of is None:
                grouped[channel] = [frame]
            else:
                frames_of.append(frame)
        slow: list[Client] = []
        if len(grouped) == 1:
            channel, frames_of = next(iter(grouped.items()))
            blob = frames_of[0] if len(frames_of) == 1 else b"".join(frames_of)
            slow = [client for client in channel.subscribers if not client.offer(blob)]
            deliveries = len(frames_of) * len(channel.subscribers)
        else:
            deliveries = self._offer_merged(batch, grouped, slow)
        for client in slow:
            self._evict(client)
        self.stats.broadcasts += len(batch)
        self.stats.deliveries += deliveries

    def _offer_merged(
        self,
        batch: list[tuple[Channel, bytes]],
        grouped: dict[Channel, list[bytes]],
        slow: list[Client],
    ) -> int:
        """:meth:`_offer_batch` for a batch of several channels; returns the deliveries.

        A client in one of them gets that channel's frames; one in several gets its frames
        picked from the batch in stream order.
        """
        owner: dict[Client, Channel] = {}
        several: set[Client] = set()
        for channel in grouped:
            for client in channel.subscribers:
                if owner.setdefault(client, channel) is not channel:
                    several.add(client)
        blobs = {c: f[0] if len(f) == 1 else b"".join(f) for c, f in grouped.items()}
        deliveries = 0
        for client, channel in owner.items():
            if client in several:
                mine = [f for ch, f in batch if ch.name in client.channels]
                deliveries += len(mine)
                ok = client.offer(b"".join(mine))
            else:
                deliveries += len(grouped[channel])
                ok = client.offer(blobs[channel])
            if not ok:
                slow.append(client)
        return deliveries

    def _broke(self, channel: Channel, item: Numbered) -> None:
        """``channel`` lost continuity at ``item``: its subscribers resume (4001)."""
        if channel.subscribers:
            log.warning(
                "channel %s broke at %s:%d: closing %d subscribers with %d so they resume",
                channel.name or "(default)",
                item.epoch,
                item.seq,
                len(channel.subscribers),
                CloseCode.RESUME,
            )
        self.stats.channel_resets += 1
        for client in list(channel.subscribers):
            self._remove(client)
            client.request_close(CloseCode.RESUME, "events may have been missed: resume")

    def _wake_waiters(self) -> None:
        with self._advanced:
            self._advanced.notify_all()

    def _keepalive(self, now: float) -> None:
        """Check each client whose turn has come: ping it if it has no ping outstanding, drop
        it if it has been silent for ``ping_timeout`` since its ping; its next turn is one
        interval later."""
        due, interval = self._ping_due, self.ping_interval
        silent, slow = [], []
        while due and due[0][0] <= now:
            ref = due.popleft()[1]
            client = ref()
            if client is None or client.gone:
                continue
            sent = client.ping_sent_at
            if sent is not None and client.conn.last_received < sent:
                if now - sent >= self.ping_timeout:
                    silent.append(client)
                else:  # its ping is still outstanding: looked at again in one interval
                    due.append((now + interval, ref))
                continue
            client.ping_sent_at = now
            due.append((now + interval, ref))
            if not client.offer(_PING_FRAME):
                slow.append(client)
        for client in silent:
            why = f"nothing received within {self.ping_timeout:g} s of a ping"
            if self._drop(client, CloseCode.INTERNAL_ERROR, "keepalive timeout", why):
                self.stats.keepalive_drops += 1
        for client in slow:
            self._evict(client)

    def _join(
        self, client: Client, request: ChannelRequest
    ) -> tuple[Channel | None, bool, tuple[Entry, ...]]:
        """Find (or start, at the request's origin) the channel; whether it recovers, and its
        replay. Counts resumes. ``None``: no room for the channel."""
        channel = self._channels.peek(request.channel)
        if channel is None and request.origin is not None:
            channel = self._channels.ensure(request.channel, request.origin)
        if channel is None:
            return None, False, ()
        recovered, entries = replay(channel, request)
        if request.since is not None:
            if recovered:
                self.stats.replays += 1
                self.stats.replayed_events += len(entries)
            else:
                self.stats.unrecovered_resumes += 1
        return channel, recovered, entries

    def _register(
        self,
        client: Client,
        requests: tuple[ChannelRequest, ...],
        greet: bool,
        notices: tuple[bytes, ...],
    ) -> None:
        joined: list[Channel] = []
        states: dict[str, dict[str, object]] = {}
        replays: list[tuple[Entry, ...]] = []
        default_recovered = False
        out = list(notices)
        for request in requests:
            channel, recovered, entries = (
                self._join(client, request)
                if greet
                else (self._channels.peek(request.channel), False, ())
            )
            if channel is None:
                out.append(_frame_of(_no_room(request.channel)))
                continue
            joined.append(channel)
            replays.append(entries)
            if channel.name:
                position = channel.position
                states[channel.name] = {
                    "epoch": position.epoch,
                    "seq": position.seq,
                    "recovered": recovered,
                }
            else:
                default_recovered = recovered
        if greet:
            default = self._channels.default.position
            args = (default.epoch, default.seq, default_recovered)
            status = self._status(*args, states) if states else self._status(*args)
            out.insert(0, _frame_of(status))
            out.extend(_merged(replays))
            if not client.offer(tuple(out) if len(out) > 1 else out[0]):
                client.gone = True
                client.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
                return
        for channel in joined:
            channel.subscribers.add(client)
            client.channels.add(channel.name)
        self._clients.add(client)
        self._count = len(self._clients)
        self.stats.registered += 1
        if self.ping_interval > 0:
            due = self._ping_due
            due.append((self._clock() + self.ping_interval, weakref.ref(client)))
            if len(due) > 2 * self._count + 64:  # entries of clients that left, in place
                kept = [e for e in due if (c := e[1]()) is not None and not c.gone]
                due.clear()
                due.extend(kept)
        if self._gc is not None:
            self._gc.joined_one()
        expires_at = client.identity.expires_at
        if expires_at is not None:
            deadline = self._clock() + (expires_at - time.time())
            heapq.heappush(self._expiries, (deadline, client.id, client))
            if len(self._expiries) > 2 * self._count + 64:  # drop those of gone clients
                self._expiries = [e for e in self._expiries if e[2] in self._clients]
                heapq.heapify(self._expiries)
        log.debug("client %s registered (%d clients)", client.id, self._count)

    def _refuse(self, client: Client, channel: str, code: str, message: str) -> None:
        self.stats.channel_errors += 1
        if not client.offer(_frame_of(channel_error(channel, code, message))):
            self._evict(client)

    def _subscribe(self, client: Client, request: ChannelRequest) -> None:
        if client not in self._clients:
            return
        name = request.channel
        if name in client.channels:
            self._refuse(client, name, ChannelErrorCode.ALREADY_SUBSCRIBED, f"already in {name}")
            return
        if len(client.channels - {DEFAULT_CHANNEL}) >= self.max_channels:
            message = f"at most {self.max_channels} channels per connection"
            self._refuse(client, name, ChannelErrorCode.LIMIT, message)
            return
        channel, recovered, entries = self._join(client, request)
        if channel is None:
            error = _no_room(name)
            self._refuse(client, name, ChannelErrorCode.LIMIT, str(error.payload["message"]))
            return
        position = channel.position
        answer = _frame_of(channel_subscribed(name, position.epoch, position.seq, recovered))
        data = (answer, *(frame for _pos, frame in entries)) if entries else answer
        if not client.offer(data):
            self._evict(client)
            return
        channel.subscribers.add(client)
        client.channels.add(name)
        self.stats.subscribes += 1

    def _unsubscribe(self, client: Client, name: str, reason: str) -> None:
        if client not in self._clients:
            return
        channel = self._channels.peek(name)
        if not name or name not in client.channels or channel is None:
            self._refuse(client, name, ChannelErrorCode.NOT_SUBSCRIBED, f"not in {name or '?'}")
            return
        client.channels.discard(name)
        channel.subscribers.discard(client)
        self._channels.left(channel)
        self.stats.unsubscribes += 1
        if not client.offer(_frame_of(channel_unsubscribed(name, reason))):
            self._evict(client)

    def _revoke(self, user: str, name: str) -> None:
        self._revoked[(user, name)] = time.time()
        self._revoked.move_to_end((user, name))
        while len(self._revoked) > _MAX_REVOCATIONS:
            self._revoked.popitem(last=False)
        oldest = next(iter(self._revoked.values()))
        while oldest < time.time() - MAX_TOKEN_TTL:  # tokens from before have expired
            self._revoked.popitem(last=False)
            oldest = next(iter(self._revoked.values()), time.time())
        channel = self._channels.peek(name)
        if channel is None:
            return
        for client in [c for c in channel.subscribers if c.identity.user == user]:
            client.channels.discard(name)
            channel.subscribers.discard(client)
            self.stats.revoked += 1
            if not client.offer(_frame_of(channel_unsubscribed(name, "revoked"))):
                self._evict(client)
        self._channels.left(channel)

    def _expire(self, now: float) -> None:
        """Close every client whose identity has expired (4401: authenticate again)."""
        while self._expiries and self._expiries[0][0] <= now:
            _deadline, _id, client = heapq.heappop(self._expiries)
            if client in self._clients:  # counted before the close frame can be read
                self.stats.expired += 1
                why = "its identity expired"
                self._drop(client, CloseCode.IDENTITY_EXPIRED, "identity expired", why)

    def _remove(self, client: Client) -> bool:
        if client not in self._clients:
            return False
        self._clients.discard(client)
        for name in client.channels:
            channel = self._channels.peek(name)
            if channel is not None:
                channel.subscribers.discard(client)
                self._channels.left(channel)
        client.channels.clear()
        client.gone = True
        self._count = len(self._clients)
        self.stats.unregistered += 1
        if self._gc is not None:
            self._gc.left_one()
        return True

    def _evict(self, client: Client) -> None:
        why = f"slow consumer ({client.backlog()} writes queued)"
        if self._drop(client, CloseCode.SLOW_CONSUMER, "slow consumer", why):
            self.stats.evicted += 1

    def _drop(self, client: Client, code: int, reason: str, why: str) -> bool:
        """Give up on ``client``: remove it, log once, close without blocking; whether it was in."""
        if not self._remove(client):
            return False
        log.warning(
            "client %s (%s) dropped: %s, close %d",
            client.id,
            client.remote,
            why,
            code,
            extra={"client": client.id, "peer": client.remote, "code": code, "reason": reason},
        )
        client.abort(code, reason)
        return True

    def _restart(self, epoch: str, pos: int, seq: int, reason: str) -> None:
        """The stream goes on from ``(epoch, pos)`` with the default channel at ``seq``: every
        client resumes (4001). The tracker is the caller's: a :class:`Restart` step has moved
        it past the events that follow already (moving it back made the next batch a gap and
        reset everyone a second time)."""
        if self._clients:
            log.warning(
                "stream continuity broke (%s): closing %d clients with %d so they resume",
                reason,
                len(self._clients),
                CloseCode.RESUME,
            )
        self.stats.reset_drops += len(self._clients)
        self._close_all(CloseCode.RESUME, "events may have been missed: resume")
        self._channels.clear_named()
        self._channels.restart(self._channels.default, Position(epoch, seq))
        self.stats.resets += 1
        if self._waiters:
            self._wake_waiters()

    def _close_all(self, code: int, reason: str) -> None:
        if self._gc is not None:
            self._gc.left += len(self._clients)
        for client in self._clients:
            client.gone = True
            client.channels.clear()
            client.request_close(code, reason)  # never blocks: at once, or by a writer thread
        for channel in self._channels:
            channel.subscribers.clear()
        self._clients.clear()
        self._count = 0


def _merged(replays: list[tuple[Entry, ...]]) -> list[bytes]:
    """The frames of several channels' replays, in stream order (each is in order already)."""
    present = [entries for entries in replays if entries]
    if len(present) <= 1:
        return [frame for entries in present for _pos, frame in entries]
    return [frame for _pos, frame in sorted(e for entries in present for e in entries)]


def _default_seq(steps: list[Step]) -> int:
    """Where the default channel stands before a restart's events: just before its first
    one among them (0 when there is none: its next event tells, and a gap then is a reset
    of that channel alone)."""
    for step in steps:
        if isinstance(step, Take):
            for item in step.items:
                if isinstance(item, Numbered) and item.channel == DEFAULT_CHANNEL:
                    return item.seq - 1
    return 0


def _no_room(channel: str) -> Event:
    return channel_error(channel, ChannelErrorCode.LIMIT, "too many channels on this server")


def _always(_name: str, _position: Position) -> bool:
    return True


def _forked(ref: weakref.ReferenceType[Hub]) -> Callable[[], None]:
    """An at-fork handler: in the child, a hub that ran before the fork starts afresh on use."""

    def after_in_child() -> None:
        hub = ref()
        if hub is not None and hub._thread is not None:
            hub._reset_state()
            hub._autostart = True

    return after_in_child
