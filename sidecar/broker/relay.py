"""The relay: one thread per broker that reads the stream and feeds a :class:`Sink`.

Each round pipelines ``XREAD BLOCK`` (from the last seq delivered, ``COUNT read_count``)
with ``HMGET`` of the epoch and the last seq assigned, on the relay's own connection. Redis
runs the two back to back, so the epoch read after the entries tells whether they still
belong to the relay's epoch (an epoch never comes back once it has changed). Then:

* a different epoch (Redis lost its data, or was flushed): :meth:`Sink.reset` to the new
  epoch and its last seq; the entries read are dropped, they are older than that point;
* entries that do not start at ``last + 1`` (the stream was trimmed past the relay while it
  was behind or away) or have a hole: the contiguous part is delivered, then a reset to the
  current last seq;
* otherwise the entries go to :meth:`Sink.deliver`, retried while it returns False.

A failed round (Redis unreachable, or anything raised) starts an outage: one warning, then
retries with capped exponential backoff; the first round that succeeds logs one info line.
After an outage the relay simply continues from its last seq, so nothing is lost unless
the stream was trimmed or the epoch changed meanwhile, which the round detects as above.

Threads and state
    * **the relay thread** (``sidecar-broker-relay``) owns everything here: its client (one
      connection, closed when the thread ends), ``epoch``/``last`` (where it is), the
      backoff, and ``stats``, an immutable :class:`RelayStats` it replaces after each change.
      Other threads read ``stats`` without a lock (one reference, always a whole snapshot).
    * **any thread** calls :meth:`Relay.stop`, which sets ``_stopping`` (an Event) and joins.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import redis

from ..core.stream import on_default
from . import BrokerUnavailable, Sink

if TYPE_CHECKING:
    from .redis import RedisBroker

log = logging.getLogger("sidecar.broker")


def parse_entries(entries: Iterable[Any]) -> list[tuple[int, bytes]]:
    """``(seq, data)`` of stream entries as redis-py returns them (``(id, {field: value})``)."""
    return [(int(entry_id.split(b"-", 1)[0]), fields[b"d"]) for entry_id, fields in entries]


@dataclass(frozen=True, slots=True)
class RelayStats:
    """A snapshot of the relay's state and counters.

    ``last_published_seq - last_delivered_seq`` is the relay lag (both in ``epoch``).
    ``outages`` counts outages begun (one warning each), ``reconnects`` the recoveries (one
    info line each), ``failed_attempts`` every failed round, ``resets`` the Sink resets.
    """

    running: bool = False
    connected: bool = False
    epoch: str = ""
    last_delivered_seq: int = 0
    last_published_seq: int = 0
    delivered: int = 0
    resets: int = 0
    outages: int = 0
    reconnects: int = 0
    failed_attempts: int = 0


class Backoff:
    """Exponential delays from ``low`` to at most ``high`` seconds, with jitter (half to all)."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = max(low, high)
        self._next = low

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = self._next
        self._next = min(self._next * 2, self.high)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Start again from ``low`` (after a success)."""
        self._next = self.low


class Relay:
    """Feeds ``sink`` every event of ``broker``'s stream after ``(epoch, seq)``, in order."""

    def __init__(self, broker: RedisBroker, sink: Sink, epoch: str, seq: int) -> None:
        self._broker, self._sink = broker, sink
        #: The stream position delivered so far (relay thread only).
        self.epoch, self.last = epoch, seq
        self.stats = RelayStats(
            running=True,
            connected=True,
            epoch=epoch,
            last_delivered_seq=seq,
            last_published_seq=seq,
        )
        self._stopping = threading.Event()
        self._backoff = Backoff(*broker.backoff)
        self._down_since: float | None = None
        self._client = broker.connect(broker.block + broker.timeout, "sidecar-relay")
        self._thread = threading.Thread(target=self._run, name="sidecar-broker-relay", daemon=True)

    def start(self) -> None:
        """Start the relay thread."""
        self._thread.start()

    def alive(self) -> bool:
        """Whether the relay thread was started and has not ended yet."""
        return self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Ask the relay thread to end and wait up to ``timeout``; whether it ended.

        It ends within about ``block`` seconds (its longest wait), or within the connect
        timeout (the socket timeout) while Redis does not answer a connection attempt (a
        command) at all.
        """
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _update(self, **changes: Any) -> None:
        self.stats = replace(self.stats, **changes)

    # -- the relay thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._round()
                except Exception as exc:
                    if self._stopping.is_set():
                        break
                    self._failed(exc)
                else:
                    self._recovered()
        finally:
            self._client.close()
            self._client.connection_pool.disconnect()
            self._update(running=False, connected=False)

    def _read(self) -> tuple[list[tuple[int, bytes]], str, int]:
        """One round trip: the entries after ``last``, then the current epoch and last seq."""
        broker = self._broker
        pipe = self._client.pipeline(transaction=False)
        pipe.xread(
            {broker.stream_key: f"{self.last}-0"},
            count=broker.read_count,
            block=max(1, int(broker.block * 1000)),
        )
        pipe.hmget(broker.meta_key, ["epoch", "seq"])
        reply, (epoch, head) = pipe.execute()
        if epoch is None:  # Redis lost the data and nobody has published since: start anew
            epoch_now, head_now = broker.run_script((), client=self._client)
            return [], epoch_now, head_now
        if isinstance(reply, dict):  # RESP3: {stream: [entries]}
            groups = [entries for value in reply.values() for entries in value]
        else:  # RESP2: [[stream, entries]]
            groups = [entries for _stream, entries in reply]
        items = [item for entries in groups for item in parse_entries(entries)]
        return items, epoch.decode(), int(head)

    def _round(self) -> None:
        items, epoch, head = self._read()
        self._update(last_published_seq=head)
        if epoch != self.epoch:
            self._reset(epoch, head, f"epoch changed from {self.epoch} (Redis lost its data)")
            return
        if head < self.last:
            self._reset(epoch, head, f"seq went back from {self.last} to {head}")
            return
        good = 0
        while good < len(items) and items[good][0] == self.last + 1 + good:
            good += 1
        if good and not self._deliver(items[:good]):
            return  # stopping
        if good < len(items):
            missing = f"{self.last + 1}..{items[good][0] - 1}"
            self._reset(epoch, head, f"events {missing} are no longer in the stream")

    def _deliver(self, items: Sequence[tuple[int, bytes]]) -> bool:
        """Hand ``items`` to the sink, retrying the same items; False if stopped first."""
        while not self._stopping.is_set():
            if self._sink.deliver(self.epoch, on_default(self.epoch, items), self._broker.block):
                self.last = items[-1][0]
                delivered = self.stats.delivered + len(items)
                self._update(last_delivered_seq=self.last, delivered=delivered)
                return True
        return False

    def _reset(self, epoch: str, seq: int, reason: str) -> None:
        log.warning("relay: %s; continuing from %s:%d (clients must resume)", reason, epoch, seq)
        self._sink.reset(epoch, seq, reason)
        self.epoch, self.last = epoch, seq
        self._update(epoch=epoch, last_delivered_seq=seq, resets=self.stats.resets + 1)

    def _failed(self, exc: Exception) -> None:
        """Count a failed round; log the first of an outage; wait before the next."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._update(connected=False, outages=self.stats.outages + 1)
            retry = f"relay retrying with backoff up to {self._backoff.high:g} s"
            if isinstance(exc, redis.RedisError):
                log.warning("%s; %s", self._broker.describe(exc), retry)
            elif isinstance(exc, BrokerUnavailable):
                log.warning("%s; %s", exc, retry)
            else:
                log.error("relay failed: %r; %s", exc, retry, exc_info=exc)
        self._update(failed_attempts=self.stats.failed_attempts + 1)
        self._client.connection_pool.disconnect()
        self._stopping.wait(self._backoff.next())

    def _recovered(self) -> None:
        """After a successful round: end the outage, if there was one (one info line)."""
        if self._down_since is None:
            return
        log.info(
            "redis broker %s reachable again after %.1f s; relay continues after %s:%d",
            self._broker.safe_url,
            time.monotonic() - self._down_since,
            self.epoch,
            self.last,
        )
        self._down_since = None
        self._backoff.reset()
        self._update(connected=True, reconnects=self.stats.reconnects + 1)
