"""The hub: one thread owns the set of clients and the numbered stream (gorilla's design).

Threads and what they own
    * **hub thread** (``sidecar-hub``, :meth:`Hub.run`): the only reader of the inbox and the
      only thread that touches ``_clients``, ``_seq`` (the last ``seq`` delivered),
      ``_history``, ``epoch`` and :class:`HubStats`. It builds each broadcast's frame once,
      records it in the history and hands the same bytes to every client
      (:meth:`Client.offer`). It never blocks on a client: a client whose queue is full is
      dropped (4008). It also keeps clients alive: every ``ping_interval`` it pings each
      client with no ping outstanding and drops one that has sent nothing for
      ``ping_timeout`` seconds since its ping (1011).
    * **any thread** calls the public API; everything reaches the hub thread through the
      inbox (a ``queue.Queue`` of :mod:`sidecar.core.commands`). ``_pending_lock`` guards
      ``_pending`` (events in the inbox), ``_next_seq`` (the next ``seq`` to assign when the
      hub numbers events itself) and ``_refused``; assigning ``seq`` and putting the command
      in the inbox happen under it, so the inbox order is the ``seq`` order. Publishing never
      blocks and is refused once ``inbox_limit`` events are waiting. Register, unregister and
      stop are always accepted (they are bounded by the number of connections).
    * ``_start_lock`` guards starting the hub thread (explicitly, or lazily with
      ``autostart`` in the process that uses it: never before a fork).
    * ``_advanced`` (a Condition) guards ``_waiters``, the request threads waiting in
      :meth:`Hub.wait_for_seq`; the hub thread notifies it after a batch or a reset only
      while someone waits (one attribute read per batch otherwise), and when it stops.

Numbering: without a sequencer the hub assigns ``seq`` itself. With one (a broker), publishing
goes to the sequencer, which assigns ``seq`` for every process, and a relay thread hands the
numbered envelopes back through :meth:`Hub.deliver` (the :class:`sidecar.broker.Sink` side).
The hub fans out a delivered event only if it is the next one (``seq`` = its last + 1, same
epoch): events it already has are dropped (a replayed read), and a gap or another epoch is a
reset: every client is closed with 4001 and resumes, so that no live connection ever skips.

Consecutive broadcasts waiting in the inbox are handled as one batch: every client gets one
write (or one queue item) carrying all their frames, in ``seq`` order.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .. import frames
from ..config import Config
from ..envelope import Event, encode, is_event_name, with_seq
from ..protocol import (
    CLIENT_EVENT_TYPES,
    MAX_FRAME_HEADER,
    RESERVED_NAMESPACES,
    SEQ_SPLICE_MAX,
    CloseCode,
    PublishRefused,
    Since,
    connection_status,
)
from .client import Client
from .commands import (
    Broadcast,
    Call,
    Command,
    Deliver,
    DropAll,
    Register,
    Reset,
    Send,
    Stop,
    Unregister,
)
from .history import History

log = logging.getLogger("sidecar.hub")

_MAX_BATCH = 256
_PING_FRAME = frames.frame(frames.OP_PING, b"")

StatusFactory = Callable[[str, int, bool], Event]


def check_broadcast_type(name: object) -> None:
    """``ValueError`` unless ``name`` is a type anyone but the hub may broadcast.

    It must be ``namespace:kebab-case`` as a whole string (no trailing newline), outside the
    hub's own namespaces (``connection:*``) and not a client-to-server type (``chat:send``):
    a client library would take a broadcast ``connection:status`` for its own.
    """
    if not is_event_name(name):
        raise ValueError(f"event type {name!r:.80} is not namespace:kebab-case")
    assert isinstance(name, str)
    if name.partition(":")[0] in RESERVED_NAMESPACES:
        raise ValueError(f"{name} is sent by the hub itself, never broadcast")
    if name in CLIENT_EVENT_TYPES:
        raise ValueError(f"{name} is a client-to-server event, never broadcast")


def _broadcastable(events: Iterable[Event]) -> list[Event]:
    """``events`` as a list, each checked by :func:`check_broadcast_type`."""
    checked = list(events)
    for event in checked:
        check_broadcast_type(event.type)
    return checked


class Sequencer(Protocol):
    """Assigns ``seq`` for every process (the broker); the hub then delivers what comes back."""

    def publish(self, encoded: Sequence[bytes]) -> list[int]:
        """Number and store ``encoded`` envelopes (in order); raise ``PublishRefused``."""
        ...


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


class Hub:
    """Fan-out of events to every connected client, with sequence numbers and a replay window.

    Settings come from ``config`` (a :class:`~sidecar.config.Config`; keyword ``options`` are
    applied on top, e.g. ``Hub(ping_interval=5)``): ``history_size`` events and at most
    ``history_bytes`` bytes of frames are kept for clients that resume with ``since``; every
    ``ping_interval`` seconds (0: never) each client is pinged, and one silent for
    ``ping_timeout`` seconds after its ping (default: the interval) is dropped with 1011.

    ``status`` builds the ``connection:status`` event; ``clock`` is the keepalive's clock (the
    connections' ``last_received`` must use the same one); ``sequencer`` turns on broker mode;
    ``autostart`` starts the hub thread on first use in each process.
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
        self._status = status
        self._clock = clock
        self._sequencer = sequencer
        self._autostart = autostart
        self._reset_state()
        if sys.platform != "win32":  # Windows has no fork
            os.register_at_fork(after_in_child=_forked(weakref.ref(self)))

    def _reset_state(self) -> None:
        """Fresh inbox, locks and clients: at construction, and in a forked child."""
        self.epoch = secrets.token_hex(8)
        self.stats = HubStats()
        self._inbox: queue.Queue[Command] = queue.Queue()
        self._clients: set[Client] = set()
        self._count = 0
        self._seq = 0
        self._history = History(self.config.history_size, self.config.history_bytes)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._closed = False
        self._pending_lock = threading.Lock()
        self._room = threading.Condition(self._pending_lock)
        self._pending = 0
        self._next_seq = 1
        self._refused = 0
        self._advanced = threading.Condition(threading.Lock())
        self._waiters = 0

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
    def seq(self) -> int:
        """The last ``seq`` delivered to clients (a snapshot)."""
        return self._seq

    def wait_for_seq(self, epoch: str, seq: int, timeout: float) -> bool:
        """Wait up to ``timeout`` until the hub has fanned out ``seq`` of ``epoch``.

        For a resume that saw events on a faster process than this one: its relay is behind
        the broker. Returns whether the hub got there (``False`` at the deadline, or once the
        hub stops). Never on the hub thread.
        """
        deadline = time.monotonic() + timeout
        with self._advanced:
            self._waiters += 1
            try:
                while not (self.epoch == epoch and self._seq >= seq):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._running.is_set():
                        return False
                    self._advanced.wait(remaining)
                return True
            finally:
                self._waiters -= 1

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for monitoring (a consistent copy of each part)."""
        with self._pending_lock:
            pending, refused = self._pending, self._refused
        span = self._history.span
        return {
            **asdict(self.stats),
            "refused_broadcasts": refused,
            "clients": self._count,
            "seq": self._seq,
            "epoch": self.epoch,
            "historyEvents": 0 if span is None else span[1] - span[0] + 1,
            "historyBytes": 0 if span is None else span[2],
            "pending": pending,
        }

    # -- publishing (any thread, never blocks) --------------------------------------------
    def broadcast(self, data: bytes | str) -> bool:
        """Broadcast an already-encoded envelope (a JSON object with a ``type``) to everyone.

        Returns ``False`` if the hub is not running or is overloaded (counted and logged).
        Raises ``ValueError`` if ``data`` is not such an object, or is too large.
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"broadcast data is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("broadcast data must be a JSON object with a type")
        check_broadcast_type(obj.get("type"))
        if "seq" in obj:
            raise ValueError("broadcast data must not carry seq: the hub assigns it")
        return self._publish_quietly([raw.strip()])

    def broadcast_event(self, event: Event) -> bool:
        """Encode ``event`` once and broadcast it to every client.

        Returns ``False`` if the hub is stopped or overloaded; raises ``ValueError`` if the
        encoded event is larger than ``max_event_bytes`` or its type may not be broadcast
        (:func:`check_broadcast_type`): a caller's bug, not a load condition.
        """
        check_broadcast_type(event.type)
        return self._publish_quietly([encode(event)])

    def broadcast_many(self, events: Iterable[Event]) -> int:
        """Broadcast several events, in order, as one batch: all are accepted or none (0)."""
        encoded = [encode(event) for event in _broadcastable(events)]
        return len(encoded) if encoded and self._publish_quietly(encoded) else 0

    def publish(self, events: Sequence[Event]) -> list[int]:
        """Broadcast ``events`` as one batch and return their ``seq`` numbers.

        Raises :class:`PublishRefused` (nothing was broadcast) or ``ValueError`` (too large,
        or a type that may not be broadcast: :func:`check_broadcast_type`).
        """
        return self.publish_encoded([encode(event) for event in _broadcastable(events)])

    def publish_encoded(self, encoded: Sequence[bytes]) -> list[int]:
        """:meth:`publish` for envelopes already encoded by :func:`sidecar.envelope.encode`."""
        for data in encoded:
            if len(data) + SEQ_SPLICE_MAX > self.max_event_bytes:
                raise ValueError(f"event larger than {self.max_event_bytes} bytes")
        if not encoded:
            return []
        if self._sequencer is not None:
            return self._sequencer.publish(encoded)
        self._ensure_started()
        with self._pending_lock:
            if not self._running.is_set():
                raise PublishRefused("the hub is stopped")
            if self._pending + len(encoded) > self.inbox_limit:
                self._refused += 1
                refusals = self._refused
            else:
                first = self._next_seq
                self._next_seq += len(encoded)
                self._pending += len(encoded)
                self._inbox.put(Broadcast(first, tuple(encoded)))
                return list(range(first, first + len(encoded)))
        if refusals in (1, 1000) or refusals % 100_000 == 0:
            log.warning("hub inbox full (%d waiting): broadcast refused", self.inbox_limit)
        raise PublishRefused(f"the hub is overloaded ({self.inbox_limit} events waiting)")

    def _publish_quietly(self, encoded: Sequence[bytes]) -> bool:
        try:
            self.publish_encoded(encoded)
        except PublishRefused:
            return False
        return True

    def send_to_client(self, client: Client, event: Event) -> bool:
        """Send ``event`` (without ``seq``) to one client. Never blocks, never raises.

        ``False`` if the client is gone, its queue is full, the hub is overloaded, or the
        event is larger than ``max_event_bytes`` (logged).
        """
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
    def deliver(self, epoch: str, items: Sequence[tuple[int, bytes]], timeout: float) -> bool:
        """Take envelopes numbered by the broker (contiguous, each carrying its ``seq``).

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

    def reset(self, epoch: str, seq: int, reason: str) -> None:
        """Go on from ``(epoch, seq)``: every client is closed with 4001 so that it resumes."""
        self._ensure_started()
        self._inbox.put(Reset(epoch, seq, reason))

    # -- clients (request threads) ---------------------------------------------------------
    def register(
        self,
        client: Client,
        since: Since | None = None,
        *,
        greet: bool = True,
        backfill: Sequence[tuple[int, bytes]] = (),
    ) -> bool:
        """Add ``client``; the hub sends it ``connection:status`` first (then any replay).

        ``greet=False`` registers without that first frame (the conformance echo endpoint,
        whose peer expects only its own messages back). ``backfill`` carries events older than
        the local window, read from a broker (see :class:`~sidecar.core.commands.Register`).
        """
        if not self.is_running():
            return False
        self._inbox.put(Register(client, since, greet, tuple(backfill)))
        return True

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

    def replay_estimate(self, since: Since) -> int:
        """Bytes a resume from ``since`` would replay from the local window (an estimate)."""
        span = self._history.span
        if span is None or since.epoch != self.epoch or since.seq >= span[1]:
            return 0
        first, last, total = span
        return total * (last - max(since.seq, first - 1)) // (last - first + 1)

    def window_start(self) -> int | None:
        """The first ``seq`` in the local window (a snapshot), ``None`` when it is empty."""
        span = self._history.span
        return None if span is None else span[0]

    def window_span(self) -> tuple[int, int, int] | None:
        """``(first seq, last seq, bytes)`` of the local window (a snapshot), or ``None``."""
        return self._history.span

    # -- hub thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        get, clock = self._inbox.get, self._clock
        interval = self.ping_interval if self.ping_interval > 0 else None
        next_ping = clock() + interval if interval else None
        held: Command | None = None  # a command taken while collecting a batch
        while True:
            command, held = held, None
            if command is None:
                try:
                    timeout = None if next_ping is None else max(0.0, next_ping - clock())
                    command = get(timeout=timeout)
                except queue.Empty:
                    command = None
            if next_ping is not None and clock() >= next_ping:
                self._keepalive()
                next_ping = clock() + self.ping_interval
            match command:
                case None:
                    continue
                case Broadcast() | Deliver():
                    held = self._fan_out(command)
                case Send(client=client, frame=frame):
                    self._done(1)
                    if client in self._clients:
                        self.stats.sent_to_client += 1
                        if not client.offer(frame):
                            self._evict(client)
                case Register(client=client, since=since, greet=greet, backfill=backfill):
                    self._register(client, since, greet, backfill)
                case Unregister(client=client):
                    self._remove(client)
                case Call(fn=fn):
                    self._call(fn)
                case Reset(epoch=epoch, seq=seq, reason=reason):
                    self._reset(epoch, seq, reason)
                case DropAll(code=code, reason=reason, abrupt=abrupt):
                    for client in list(self._clients):
                        if abrupt and self._remove(client):
                            client.conn.shutdown()
                        else:
                            self._drop(client, code, reason, f"dropped by the app ({reason})")
                case Stop(code=code, reason=reason):
                    self._running.clear()
                    self._close_all(code, reason)
                    self._wake_waiters()  # a resume waiting for a seq gives up now
                    return

    def _done(self, n: int) -> None:
        with self._room:
            self._pending -= n
            self._room.notify()

    def _call(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # a caller's function: log its failure, keep the hub running
            log.exception("hub.call(%r) failed", fn)

    def _fan_out(self, first: Broadcast | Deliver) -> Command | None:
        """Broadcast ``first`` and every numbered command right behind it, as one batch.

        Returns the command that ended the batch, to be handled next.
        """
        batch: list[tuple[int, bytes]] = []
        command: Command | None = first
        held: Command | None = None
        while command is not None:
            match command:
                case Broadcast(first_seq=seq, events=events):
                    batch.extend((seq + i, with_seq(e, seq + i)) for i, e in enumerate(events))
                    self._done(len(events))
                case Deliver(epoch=epoch, items=items):
                    self._done(len(items))
                    batch = self._take(batch, epoch, items)
                case _:
                    held = command
                    break
            if len(batch) >= _MAX_BATCH:
                break
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                command = None
        self._broadcast(batch)
        return held

    def _take(
        self, batch: list[tuple[int, bytes]], epoch: str, items: Sequence[tuple[int, bytes]]
    ) -> list[tuple[int, bytes]]:
        """Add delivered ``items`` to ``batch``: only what follows it, in the hub's epoch.

        Items at or below the last seq (already fanned out) are dropped and counted. A gap,
        or another epoch, ends the batch: it goes out, then a reset (clients resume), and the
        items start the next one.
        """
        expected = (batch[-1][0] if batch else self._seq) + 1
        if epoch == self.epoch:
            skip = 0
            while skip < len(items) and items[skip][0] < expected:
                skip += 1
            if skip:
                self.stats.duplicates_dropped += skip
                items = items[skip:]
            if not items or items[0][0] == expected:
                batch.extend(items)
                return batch
        if not items:
            return batch
        self._broadcast(batch)
        why = "new epoch" if epoch != self.epoch else f"gap in the stream before {items[0][0]}"
        self._reset(epoch, items[0][0] - 1, why)
        return list(items)

    def _broadcast(self, batch: list[tuple[int, bytes]]) -> None:
        if not batch:
            return
        out = []
        for seq, data in batch:
            frame = frames.text_frame(data)
            out.append(frame)
            self._history.append(seq, frame)
        self._seq = batch[-1][0]
        blob = out[0] if len(out) == 1 else b"".join(out)
        for client in [client for client in self._clients if not client.offer(blob)]:
            self._evict(client)
        self.stats.broadcasts += len(batch)
        self.stats.deliveries += len(batch) * len(self._clients)
        if self._waiters:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        with self._advanced:
            self._advanced.notify_all()

    def _keepalive(self) -> None:
        """Ping every client with no ping outstanding; drop those silent for ``ping_timeout``."""
        now = self._clock()
        silent, slow = [], []
        for client in self._clients:
            sent = client.ping_sent_at
            if sent is not None and client.conn.last_received < sent:
                if now - sent >= self.ping_timeout:
                    silent.append(client)
                continue  # its ping is still outstanding
            client.ping_sent_at = now
            if not client.offer(_PING_FRAME):
                slow.append(client)
        for client in silent:
            why = f"nothing received within {self.ping_timeout:g} s of a ping"
            if self._drop(client, CloseCode.INTERNAL_ERROR, "keepalive timeout", why):
                self.stats.keepalive_drops += 1
        for client in slow:
            self._evict(client)

    def _replay(
        self, since: Since | None, backfill: tuple[tuple[int, bytes], ...]
    ) -> tuple[bool, tuple[bytes, ...]]:
        """Whether ``since`` can be recovered, and the frames that recover it (shared)."""
        if since is None or since.epoch != self.epoch or since.seq > self._seq:
            return False, ()
        if since.seq == self._seq:
            return True, ()
        local = self._history.after(since.seq)
        if local is not None:
            return True, local
        if not backfill or backfill[0][0] != since.seq + 1:
            return False, ()
        # the broker may be ahead of this hub: what it has not fanned out yet comes live
        backfill = backfill[: self._seq - since.seq]  # since.seq < self._seq here
        last = backfill[-1][0]
        rest = self._history.after(last) if last < self._seq else ()
        if rest is None or last - backfill[0][0] + 1 != len(backfill):
            return False, ()
        return True, (*(frames.text_frame(data) for _seq, data in backfill), *rest)

    def _register(
        self,
        client: Client,
        since: Since | None,
        greet: bool,
        backfill: tuple[tuple[int, bytes], ...],
    ) -> None:
        if greet:
            recovered, replay = self._replay(since, backfill)
            if since is not None:
                if recovered:
                    self.stats.replays += 1
                    self.stats.replayed_events += len(replay)
                else:
                    self.stats.unrecovered_resumes += 1
            status = frames.text_frame(encode(self._status(self.epoch, self._seq, recovered)))
            if not client.offer((status, *replay) if replay else status):
                client.gone = True
                client.abort(CloseCode.SLOW_CONSUMER, "slow consumer")
                return
        self._clients.add(client)
        self._count = len(self._clients)
        self.stats.registered += 1
        log.debug("client %s registered (%d clients)", client.id, self._count)

    def _remove(self, client: Client) -> bool:
        if client not in self._clients:
            return False
        self._clients.discard(client)
        client.gone = True
        self._count = len(self._clients)
        self.stats.unregistered += 1
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

    def _reset(self, epoch: str, seq: int, reason: str) -> None:
        if self._clients:
            log.warning(
                "stream continuity broke (%s): closing %d clients with %d so they resume",
                reason,
                len(self._clients),
                CloseCode.RESUME,
            )
        self.stats.reset_drops += len(self._clients)
        self._close_all(CloseCode.RESUME, "events may have been missed: resume")
        self.epoch, self._seq = epoch, seq
        self._history.clear()
        self.stats.resets += 1
        if self._waiters:
            self._wake_waiters()

    def _close_all(self, code: int, reason: str) -> None:
        for client in self._clients:
            client.gone = True
            client.request_close(code, reason)  # never blocks: at once, or by a writer thread
        self._clients.clear()
        self._count = 0


def _forked(ref: weakref.ReferenceType[Hub]) -> Callable[[], None]:
    """An at-fork handler: in the child, a hub that ran before the fork starts afresh on use."""

    def after_in_child() -> None:
        hub = ref()
        if hub is not None and hub._thread is not None:
            hub._reset_state()
            hub._autostart = True

    return after_in_child
