"""The hub: one thread owns the set of clients and the broadcast sequence (gorilla's design).

Threads and what they own
    * **hub thread** (``sidecar-hub``, :meth:`Hub.run`): the only reader of the inbox and the
      only thread that touches ``_clients``, ``_seq``, ``_history`` and the counters in
      :class:`HubStats`. It assigns each broadcast its ``seq``, builds its frame once, records
      it in the history and hands the same bytes to every client (:meth:`Client.offer`).
      It never blocks on a client: a client whose queue is full is dropped (close 4008).
      It also keeps clients alive: every ``ping_interval`` it pings each client that has no
      ping outstanding (through the same :meth:`Client.offer` path as data) and drops one
      whose ping has gone unanswered for ``ping_timeout`` seconds (close 1011; by default
      the timeout equals the interval, so a silent peer goes within two intervals).
    * **any thread** calls the public API. Everything reaches the hub thread through the
      inbox (a ``queue.Queue``). ``broadcast*`` and ``send_to_client`` never block and are
      refused (``False``) once ``inbox_limit`` events are waiting; ``_pending_lock`` guards
      that count (``_pending``). Register/unregister/stop are always accepted (they are
      bounded by the number of connections).

Consecutive broadcasts waiting in the inbox are handled as one batch: every client gets one
write (or one queue item) carrying all of their frames, in ``seq`` order.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from . import frames
from .client import Client
from .connection import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_SLOW_CONSUMER
from .envelope import Event, encode, is_event_name, with_seq
from .events import new_connection_status_event

log = logging.getLogger("sidecar.hub")

MessageHandler = Callable[[Client, dict[str, Any]], None]

_BROADCAST, _SEND, _REGISTER, _UNREGISTER, _STOP, _CALL = range(6)
_MAX_BATCH = 256
_PING_FRAME = frames.frame(frames.OP_PING, b"")
_SINCE_RE = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,18})")


@dataclass
class HubStats:
    """Counters, written by the hub thread only (other threads read a snapshot)."""

    broadcasts: int = 0
    deliveries: int = 0
    sent_to_client: int = 0
    registered: int = 0
    unregistered: int = 0
    evicted: int = 0
    refused_broadcasts: int = 0
    keepalive_drops: int = 0
    replays: int = 0
    replayed_events: int = 0
    unrecovered_resumes: int = 0


@dataclass(frozen=True)
class Since:
    """A resume point: the last ``seq`` a client saw in hub run ``epoch``."""

    epoch: str
    seq: int

    @classmethod
    def parse(cls, text: str) -> Since:
        """Parse ``<epoch>:<seq>`` (ASCII letters, digits, ``-``, ``_``; a decimal seq).

        Raises ``ValueError`` with a one-line reason.
        """
        match = _SINCE_RE.fullmatch(text)
        if match is None:
            raise ValueError("since must look like <epoch>:<seq>, e.g. 3f2a9c1d:42")
        return cls(match[1], int(match[2]))


class Hub:
    """Fan-out of events to every connected client, with sequence numbers and a replay window.

    ``history_size`` events and at most ``history_bytes`` bytes of frames are kept for
    clients that resume with ``since`` (0 turns history off). Every ``ping_interval`` seconds
    (0: never) each client is pinged; one whose ping stays unanswered for ``ping_timeout``
    seconds (default: the interval) is dropped with 1011.
    """

    def __init__(
        self,
        *,
        ping_interval: float = 25.0,
        ping_timeout: float | None = None,
        history_size: int = 1024,
        history_bytes: int = 8 << 20,
        inbox_limit: int = 65536,
        max_event_bytes: int = 1 << 20,
    ) -> None:
        self.epoch = secrets.token_hex(8)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_interval if ping_timeout is None else ping_timeout
        self.history_size = history_size
        self.history_bytes = history_bytes
        self.inbox_limit = inbox_limit
        self.max_event_bytes = max_event_bytes
        self.stats = HubStats()
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._clients: set[Client] = set()  # hub thread only
        self._count = 0  # hub thread writes; anyone reads
        self._seq = 0  # hub thread only
        self._history: deque[tuple[int, bytes]] = deque()  # hub thread only
        self._history_total = 0  # hub thread only
        self._handler: MessageHandler | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._refusals_logged = 0
        self._pending_lock = threading.Lock()  # guards _pending (events in the inbox)
        self._pending = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Run the hub in its own daemon thread; returns once it accepts commands."""
        if self._thread is not None:
            raise RuntimeError("hub already started")
        self._thread = threading.Thread(target=self.run, name="sidecar-hub", daemon=True)
        self._running.set()
        self._thread.start()

    def run(self) -> None:
        """The hub loop; returns after :meth:`stop`. Call it directly only instead of start()."""
        self._running.set()
        try:
            self._loop()
        finally:
            self._running.clear()
            self._stopped.set()

    def stop(
        self,
        code: int = CLOSE_GOING_AWAY,
        reason: str = "server shutting down",
        timeout: float = 2.0,
    ) -> bool:
        """Close every client with ``code`` and end the hub thread; wait up to ``timeout``.

        Returns whether the hub thread ended in time. Clients are asked to close (their
        writer threads flush, send the close frame and wait for the peer's reply).
        """
        if self._running.is_set():
            self._inbox.put((_STOP, code, reason))
        return self._stopped.wait(timeout) if self._thread is not None else True

    def is_running(self) -> bool:
        """Whether the hub accepts broadcasts."""
        return self._running.is_set()

    def client_count(self) -> int:
        """Number of registered clients."""
        return self._count

    @property
    def seq(self) -> int:
        """The last broadcast sequence number assigned (a snapshot)."""
        return self._seq

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for monitoring (a snapshot, no locks)."""
        return {
            **asdict(self.stats),
            "clients": self._count,
            "seq": self._seq,
            "epoch": self.epoch,
            "historyEvents": len(self._history),
            "historyBytes": self._history_total,
            "pending": self._pending,
        }

    # -- publishing (any thread, never blocks) --------------------------------------------
    def broadcast(self, data: bytes | str) -> bool:
        """Broadcast an already-encoded envelope (a JSON object with a ``type``) to everyone.

        Returns ``False`` if the hub is not running or is overloaded (counted and logged).
        Raises ``ValueError`` if ``data`` is not such an object.
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"broadcast data is not JSON: {exc}") from None
        if not isinstance(obj, dict) or not is_event_name(obj.get("type")):
            raise ValueError(
                "broadcast data must be a JSON object with a namespace:kebab-case type"
            )
        if "seq" in obj:
            raise ValueError("broadcast data must not carry seq: the hub assigns it")
        return self._submit((_BROADCAST, [raw.strip()]))

    def broadcast_event(self, event: Event) -> bool:
        """Encode ``event`` once and broadcast it to every client.

        Returns ``False`` if the hub is stopped or overloaded; raises ``ValueError`` if the
        encoded event is larger than ``max_event_bytes`` (a caller's bug, not a load condition).
        """
        return self._submit((_BROADCAST, [encode(event)]))

    def broadcast_many(self, events: Iterable[Event]) -> int:
        """Broadcast several events, in order, as one batch: all are accepted or none (0)."""
        encoded = [encode(event) for event in events]
        if not encoded:
            return 0
        return len(encoded) if self._submit((_BROADCAST, encoded)) else 0

    def send_to_client(self, client: Client, event: Event) -> bool:
        """Send ``event`` (without ``seq``) to one client. Never blocks, never raises.

        ``False`` if the client is gone, its queue is full, the hub is overloaded, or the
        event is larger than ``max_event_bytes`` (logged).
        """
        if not client.registered or client.backlog() >= client.queue_size:
            return False
        try:
            return self._submit((_SEND, client, frames.text_frame(encode(event))))
        except ValueError as exc:
            log.warning("send_to_client(%s, %s) refused: %s", client.id, event.type, exc)
            return False

    def send_frame(self, client: Client, frame: bytes) -> bool:
        """Send pre-built frame bytes to one client through the hub (see :meth:`send_to_client`)."""
        if not client.registered or client.backlog() >= client.queue_size:
            return False
        return self._submit((_SEND, client, frame))

    def _submit(self, command: tuple[Any, ...]) -> bool:
        payload = command[-1]
        items = payload if isinstance(payload, list) else (payload,)
        for data in items:
            if len(data) > self.max_event_bytes + 16:
                raise ValueError(f"event larger than {self.max_event_bytes} bytes")
        if not self._running.is_set():
            return False
        with self._pending_lock:
            if self._pending + len(items) > self.inbox_limit:
                refused = True
            else:
                refused = False
                self._pending += len(items)
                self._inbox.put(command)
        if refused:
            self._refused()
        return not refused

    def _refused(self) -> None:
        self.stats.refused_broadcasts += 1  # benign race: a monitoring counter
        if self._refusals_logged in (0, 1000) or self._refusals_logged % 100_000 == 0:
            log.warning("hub inbox full (%d waiting): broadcast refused", self.inbox_limit)
        self._refusals_logged += 1

    # -- clients (request threads) ---------------------------------------------------------
    def register(self, client: Client, since: Since | None = None, *, greet: bool = True) -> bool:
        """Add ``client``; the hub sends it ``connection:status`` first (then any replay).

        ``greet=False`` registers without that first frame (the conformance echo endpoint,
        whose peer expects only its own messages back).
        """
        if not self._running.is_set():
            return False
        # Set here, not by the hub thread: a reply to a message the client sends before the
        # hub thread has registered it must not be refused (the SEND queues behind REGISTER).
        client.registered = True
        self._inbox.put((_REGISTER, client, since, greet))
        return True

    def unregister(self, client: Client) -> None:
        """Remove ``client`` (idempotent)."""
        if self._running.is_set():
            self._inbox.put((_UNREGISTER, client))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the hub thread (for tests and tools that need its view)."""
        self._inbox.put((_CALL, fn))

    def set_message_handler(self, handler: MessageHandler | None) -> None:
        """Set the function that receives client→server events (runs on the reader thread)."""
        self._handler = handler

    def handle_client_message(self, client: Client, event: dict[str, Any]) -> None:
        """Pass a client→server event to the message handler, or log it at debug level."""
        handler = self._handler
        if handler is None:
            log.debug("client %s sent %s (no message handler)", client.id, event.get("type"))
            return
        handler(client, event)

    # -- hub thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        get = self._inbox.get
        get_nowait = self._inbox.get_nowait
        interval = self.ping_interval if self.ping_interval > 0 else None
        next_ping = time.monotonic() + interval if interval else None
        held: tuple[Any, ...] | None = None  # a command taken while collecting a batch
        while True:
            command = held
            held = None
            if command is None:
                try:
                    timeout = None if next_ping is None else max(0.0, next_ping - time.monotonic())
                    command = get(timeout=timeout)
                except queue.Empty:
                    command = None
            if next_ping is not None and time.monotonic() >= next_ping:
                self._keepalive()
                next_ping = time.monotonic() + interval  # type: ignore[operator]
            if command is None:
                continue
            kind = command[0]
            if kind == _BROADCAST:
                batch = list(command[1])
                while len(batch) < _MAX_BATCH:
                    try:
                        following = get_nowait()
                    except queue.Empty:
                        break
                    if following[0] != _BROADCAST:
                        held = following
                        break
                    batch.extend(following[1])
                self._broadcast(batch)
                with self._pending_lock:
                    self._pending -= len(batch)
            elif kind == _SEND:
                with self._pending_lock:
                    self._pending -= 1
                client = command[1]
                if client in self._clients:
                    self.stats.sent_to_client += 1
                    if not client.offer(command[2]):
                        self._evict(client)
            elif kind == _REGISTER:
                self._register(command[1], command[2], command[3])
            elif kind == _UNREGISTER:
                self._remove(command[1])
            elif kind == _CALL:
                try:
                    command[1]()
                except Exception:
                    log.exception("hub.call(%r) failed", command[1])
            elif kind == _STOP:
                self._running.clear()
                self._close_all(command[1], command[2])
                return

    def _keepalive(self) -> None:
        """Ping every client with no ping outstanding; drop those silent for ``ping_timeout``."""
        now = time.monotonic()
        silent = []
        slow = []
        for client in self._clients:
            conn = client.conn
            if not conn.pong_received and client.ping_sent_at is not None:
                if now - client.ping_sent_at >= self.ping_timeout:
                    silent.append(client)
                continue  # its ping is still outstanding
            conn.pong_received = False
            client.ping_sent_at = now
            if not client.offer(_PING_FRAME):
                slow.append(client)
        for client in silent:
            why = f"no pong within {self.ping_timeout:g} s"
            if self._drop(client, CLOSE_INTERNAL_ERROR, "keepalive timeout", why):
                self.stats.keepalive_drops += 1
        for client in slow:
            self._evict(client)

    def _broadcast(self, batch: list[bytes]) -> None:
        out = []
        seq = self._seq
        for data in batch:
            seq += 1
            frame = frames.text_frame(with_seq(data, seq))
            out.append(frame)
            self._remember(seq, frame)
        self._seq = seq
        blob = out[0] if len(out) == 1 else b"".join(out)
        slow = [client for client in self._clients if not client.offer(blob)]
        for client in slow:
            self._evict(client)
        self.stats.broadcasts += len(batch)
        self.stats.deliveries += len(batch) * (len(self._clients))

    def _remember(self, seq: int, frame: bytes) -> None:
        if self.history_size <= 0 or self.history_bytes <= 0:
            return
        history = self._history
        history.append((seq, frame))
        self._history_total += len(frame)
        while len(history) > self.history_size or self._history_total > self.history_bytes:
            self._history_total -= len(history.popleft()[1])

    def _replay(self, since: Since | None) -> tuple[bool, list[bytes]]:
        if since is None:
            return False, []
        if since.epoch != self.epoch or since.seq > self._seq:
            return False, []
        if since.seq == self._seq:
            return True, []
        history = self._history
        if not history or history[0][0] > since.seq + 1:
            return False, []
        start = since.seq + 1 - history[0][0]
        return True, [history[i][1] for i in range(start, len(history))]

    def _register(self, client: Client, since: Since | None, greet: bool) -> None:
        if greet and not self._greet(client, since):
            client.registered = False
            client.abort(CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        self._clients.add(client)
        self._count = len(self._clients)
        self.stats.registered += 1
        log.debug("client %s registered (%d clients)", client.id, self._count)

    def _greet(self, client: Client, since: Since | None) -> bool:
        """Offer ``connection:status`` (and the replay ``since`` asks for) as one item."""
        recovered, replay = self._replay(since)
        if since is not None:
            if recovered:
                self.stats.replays += 1
                self.stats.replayed_events += len(replay)
            else:
                self.stats.unrecovered_resumes += 1
        status = new_connection_status_event(
            "connected", epoch=self.epoch, seq=self._seq, recovered=recovered
        )
        first = frames.text_frame(encode(status))
        return client.offer(b"".join([first, *replay]) if replay else first)

    def _remove(self, client: Client) -> bool:
        if client not in self._clients:
            return False
        self._clients.discard(client)
        client.registered = False
        self._count = len(self._clients)
        self.stats.unregistered += 1
        return True

    def _evict(self, client: Client) -> None:
        why = f"slow consumer ({client.backlog()} frames queued)"
        if self._drop(client, CLOSE_SLOW_CONSUMER, "slow consumer", why):
            self.stats.evicted += 1

    def _drop(self, client: Client, code: int, reason: str, why: str) -> bool:
        """Give up on ``client``: remove it, log once, close without blocking; whether it was in."""
        if not self._remove(client):
            return False
        log.warning("client %s (%s) dropped: %s, close %d", client.id, client.remote, why, code)
        client.abort(code, reason)
        return True

    def _close_all(self, code: int, reason: str) -> None:
        for client in self._clients:
            client.registered = False
            client.request_close(code, reason)  # never blocks: at once, or by a writer thread
        self._clients.clear()
        self._count = 0
