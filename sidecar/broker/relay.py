"""The relay: one thread per broker that reads the stream and feeds a :class:`Sink`.

The stream holds every channel's events (and revocations) in one order: entry IDs are global
positions ``<pos>-0``. Each round pipelines ``XREAD BLOCK`` (after the cursor, ``COUNT
read_count``) with ``HMGET`` of the meta's epoch, last position and default seq, on the
relay's own connection, and with ``positions.lua``, which reads the positions (``ch:`` keys)
of the named channels of the same entries; Redis runs them in that order, so the epoch read
after the entries tells whether they are still of the relay's epoch (an epoch never comes
back), and the positions and seqs read after them are at least those ``publish.lua`` gave
them. One round trip a round: only a channel the script did not see (Redis had lost the
script, or a trim took entries in between) costs one more, for its position. Then:

* another epoch (Redis lost its data, or was flushed): :meth:`Sink.reset` to the head;
* the stream is input: an entry :func:`~sidecar.broker.entries.parse_entry` refuses, whose
  position or seq is beyond what was read after it, or whose seq does not follow its
  channel's last one (:class:`ChannelSeqs`) is skipped, counted by kind in
  :class:`RelayStats` (``/metrics``, ``/api/v1/hub``) and logged at most once per kind every
  :data:`LOG_INTERVAL` seconds;
* entries that do not start at ``last + 1`` (trimmed past a relay that fell behind, or a
  malformed entry took a position) or have a hole: the part in a row, then a reset;
* otherwise :meth:`Sink.deliver`, retried while it returns False; each hub fans out to its
  own subscribers.

The cursor (the last entry consumed: delivered, skipped or dropped by a reset) only moves
forward, except at a reset to another epoch or a position gone back (each a change in Redis):
a round waits in ``XREAD BLOCK`` or consumes an entry, never reads the same ones in a loop.
Keys that cannot be read as ours run the script, which starts a new epoch. A failed round
starts an outage: one warning, retries with capped exponential backoff, one info line when a
round succeeds again; the relay then goes on from its last position (a trim or a new epoch
meanwhile is found as above).

Threads and state
    * **the relay thread** (``sidecar-broker-relay``) owns everything here: its client (one
      connection, closed when the thread ends), ``epoch``/``last`` (where it is), the cursor,
      each channel's last seq (:class:`ChannelSeqs`), the backoff, the log limiter, and
      ``stats``, an immutable :class:`RelayStats` it replaces after each change.
      Other threads read ``stats`` without a lock (one reference, always a whole snapshot).
    * **any thread** calls :meth:`Relay.stop`, which sets ``_stopping`` (an Event) and joins.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import redis

from ..core.stream import Delivered, Numbered, Position, Revocation
from ..logs import LogLimiter
from ..protocol import DEFAULT_CHANNEL, MAX_CHANNEL_BYTES, is_channel_name
from . import BrokerError, Sink
from .entries import (
    Entry,
    Head,
    Malformed,
    entry_position,
    parse_entry,
    parse_head,
    parse_position,
)

if TYPE_CHECKING:
    from .redis import RedisBroker

log = logging.getLogger("sidecar.broker")

#: Seconds between two log lines about malformed entries of one kind.
LOG_INTERVAL = 10.0
#: Channels whose last seq the relay remembers to check the next one (the least recently
#: seen are forgotten first): the hub's default bound on channel states held.
TRACKED_CHANNELS = 16384
#: A raw stream entry as redis-py returns it: ``(id, {field: value})``.
RawEntry = tuple[bytes, Any]


@dataclass(frozen=True, slots=True)
class RelayStats:
    """A snapshot of the relay's state and counters.

    ``last_published_seq - last_delivered_seq`` is the relay lag (both in ``epoch``).
    ``outages`` counts outages begun (one warning each), ``reconnects`` the recoveries (one
    info line each), ``failed_attempts`` every failed round, ``resets`` the Sink resets.
    ``malformed`` counts the entries skipped, by :class:`~sidecar.broker.entries.Malformed`
    kind (only kinds seen; never changed in place: a new dict with each change).
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
    malformed: dict[str, int] = field(default_factory=dict)


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


class ChannelSeqs:
    """The last seq the relay handed on of each channel, to check that the next one follows.

    ``publish.lua`` numbers each channel densely in the stream's order, so within one stream
    epoch an event of a channel follows its last one (``seq + 1``), or starts a new epoch of
    the channel at seq 1 (its position expired or was lost). Anything else was not written by
    a publish: handed on, it would make every hub take the channel as moved on and drop its
    later real events as duplicates. At most ``limit`` channels are remembered (least
    recently seen forgotten first); a channel not remembered is taken as it comes. Cleared
    at every reset. Relay thread only.
    """

    def __init__(self, limit: int = TRACKED_CHANNELS) -> None:
        self.limit = limit
        self._last: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def follows(self, item: Entry, pending: Mapping[str, tuple[str, int]]) -> bool:
        """Whether ``item`` may follow its channel's last event (``pending``: the events taken
        since the last :meth:`record`, by channel)."""
        last = pending.get(item.channel) or self._last.get(item.channel)
        if last is None:
            return True
        return item.seq == (last[1] + 1 if item.epoch == last[0] else 1)

    def record(self, taken: Mapping[str, tuple[str, int]]) -> None:
        """Remember each channel's last ``(epoch, seq)`` handed on."""
        for channel, last in taken.items():
            self._last[channel] = last
            self._last.move_to_end(channel)
        while len(self._last) > self.limit:
            self._last.popitem(last=False)

    def clear(self) -> None:
        """Forget every channel (the stream goes on from a new point)."""
        self._last.clear()

    def __len__(self) -> int:
        return len(self._last)


class Relay:
    """Feeds ``sink`` every event of ``broker``'s stream after ``(epoch, seq)``, in order."""

    def __init__(self, broker: RedisBroker, sink: Sink, epoch: str, seq: int) -> None:
        self._broker, self._sink = broker, sink
        #: The stream position delivered so far (relay thread only).
        self.epoch, self.last = epoch, seq
        #: The ID of the last entry consumed, as ``(ms, seq)``: the next read is after it.
        self.cursor = (seq, 0)
        #: Each channel's last seq handed on (relay thread only).
        self.seqs = ChannelSeqs()
        self._log_limit = LogLimiter(LOG_INTERVAL, max_keys=len(Malformed))
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

    def _read(self) -> tuple[list[RawEntry], Head, Any]:
        """One round trip: the entries after the cursor, then the stream's head, then the
        positions of the named channels of those entries (``positions.lua``'s answer, or
        the error in its place).

        A meta hash that is missing or not as publish.lua writes it, or a read refused (a key
        of another type), runs the script on the relay's own connection: it starts a new
        epoch if the keys cannot be continued. A refused read is then raised all the same
        unless the epoch changed (so that the round fails and waits, never spins).
        """
        broker = self._broker
        pipe = self._client.pipeline(transaction=False)
        pipe.xread(
            {broker.stream_key: f"{self.cursor[0]}-{self.cursor[1]}"},
            count=broker.read_count,
            block=max(1, int(broker.block * 1000)),
        )
        pipe.hmget(broker.meta_key, ["epoch", "pos", "seq"])
        first = f"{self.cursor[0]}-{self.cursor[1] + 1}"  # (the XREAD reads after the cursor)
        script, prefix = broker.positions_script, broker.position_prefix
        pipe.evalsha(script.sha, 1, broker.stream_key, first, broker.read_count, prefix)
        reply, meta, positions = pipe.execute(raise_on_error=False)
        head = None if isinstance(meta, Exception) else parse_head(*meta)
        if head is None or isinstance(reply, Exception):
            now = broker.stream_head(self._client)
            if isinstance(reply, Exception) and now.epoch == self.epoch:
                raise reply
            return [], now, []
        if isinstance(reply, dict):  # RESP3: {stream: [entries]}
            groups = [entries for value in reply.values() for entries in value]
        else:  # RESP2: [[stream, entries]]
            groups = [entries for _stream, entries in reply]
        return [entry for entries in groups for entry in entries], head, positions

    def _positions(self, entries: list[RawEntry], answer: Any) -> dict[str, Position | None]:
        """The position of each named channel whose events ``entries`` hold, read after them:
        at least every seq publish.lua gave those events, in the channel's epoch; ``None``
        for a channel without a readable position (its events are taken as they come).

        ``answer`` is what ``positions.lua`` returned in the round's pipeline (the error in
        its place when it failed): the positions of the channels of the entries it read
        after the XREAD. A channel it does not name (Redis had lost the script, or a trim
        took entries in between) is read here, in one more round trip.
        """
        found = self._answered(answer)
        names: dict[str, None] = {}
        for _entry_id, fields in entries:
            name = fields.get(b"c") if isinstance(fields, dict) and b"d" in fields else None
            if not isinstance(name, bytes) or len(name) > MAX_CHANNEL_BYTES:
                continue
            text = name.decode("latin-1")  # (any byte: is_channel_name takes ASCII only)
            if text not in found and is_channel_name(text):
                names[text] = None
        if not names:
            return found
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._broker.position_key(name), ["epoch", "seq"])
        for name, (epoch, seq) in zip(names, pipe.execute(), strict=True):
            found[name] = parse_position(epoch, seq)
        return found

    def _answered(self, answer: Any) -> dict[str, Position | None]:
        """``positions.lua``'s answer by channel (``None``: the channel has no readable
        position). Redis without the script loaded gets it loaded for the next round."""
        if isinstance(answer, redis.exceptions.NoScriptError):
            self._client.script_load(self._broker.positions_script.text)
            return {}
        if not isinstance(answer, list) or len(answer) % 3:
            return {}  # (an error: the entries' read failed too, or a script not ours)
        found: dict[str, Position | None] = {}
        for i in range(0, len(answer), 3):
            name = answer[i]
            if isinstance(name, bytes):
                found[name.decode("latin-1")] = parse_position(answer[i + 1], answer[i + 2])
        return found

    def _round(self) -> None:
        entries, head, answer = self._read()
        self._update(last_published_seq=head.pos)
        if head.epoch != self.epoch:
            why = f"epoch changed from {self.epoch} (Redis lost its data)"
            self._reset(head, why)
            return
        if head.pos < self.last:
            self._reset(head, f"the position went back from {self.last} to {head.pos}")
            return
        batch: list[Delivered] = []
        taken: dict[str, tuple[str, int]] = {}  # each channel's last event in the batch
        cursor = self.cursor
        heads = self._positions(entries, answer) if entries else {}
        for entry_id, fields in entries:
            position = entry_position(entry_id)
            expected = self.last + len(batch) + 1  # (never more: the cursor is past it)
            item = self._check(entry_id, fields, head, heads, expected, taken)
            if isinstance(item, Malformed):
                self._skip(entry_id, item)
                if position[1] == 0 and expected <= position[0] <= head.pos:  # it took a pos
                    self._gap(batch, cursor, head, position[0], "missing or malformed", taken)
                    return
            elif item.pos == expected:
                batch.append(_numbered(item, self.epoch))
                if isinstance(item, Entry):
                    taken[item.channel] = (item.epoch, item.seq)
            else:
                self._gap(batch, cursor, head, item.pos - 1, "no longer in the stream", taken)
                return
            cursor = position
        if batch:
            self._deliver(batch, cursor, taken)
        elif not self._stopping.is_set():
            self.cursor = cursor  # only skipped entries: consumed all the same

    def _check(
        self,
        entry_id: bytes,
        fields: Any,
        head: Head,
        heads: Mapping[str, Position | None],
        expected: int,
        taken: Mapping[str, tuple[str, int]],
    ) -> Entry | Revocation | Malformed:
        """One entry as :func:`parse_entry` reads it, then against the head (and the named
        channels' ``heads``) read after it and, at the ``expected`` position, its channel's
        last event."""
        item = parse_entry(entry_id, fields, self._broker.max_event_bytes)
        if isinstance(item, Malformed):
            return item
        if item.pos > head.pos:
            return Malformed.AHEAD
        if isinstance(item, Entry):
            last = head.seq if item.channel == DEFAULT_CHANNEL else None
            known = heads.get(item.channel)
            if known is not None and known.epoch == item.epoch:
                last = known.seq
            if last is not None and item.seq > last:
                return Malformed.AHEAD  # a seq no publish assigned
            if item.pos == expected and not self.seqs.follows(item, taken):
                return Malformed.OUT_OF_ORDER  # (after a hole, the reset clears the seqs)
        return item

    def _gap(
        self,
        batch: list[Delivered],
        cursor: tuple[int, int],
        head: Head,
        lost: int,
        why: str,
        taken: Mapping[str, tuple[str, int]],
    ) -> None:
        """Deliver what is in a row, then reset to ``head``: events up to ``lost`` are gone."""
        if batch and not self._deliver(batch, cursor, taken):
            return  # stopping
        self._reset(head, f"events {self.last + 1}..{lost} are {why}")

    def _skip(self, entry_id: bytes, kind: Malformed) -> None:
        """Count a malformed entry; log the first of its kind in an interval, then a count."""
        counts = dict(self.stats.malformed)
        counts[kind.value] = counts.get(kind.value, 0) + 1
        self._update(malformed=counts)
        suppressed = self._log_limit.check(kind)
        if suppressed is not None:
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.warning(
                "relay: skipped stream entry %s: %s%s",
                entry_id.decode(errors="replace")[:48],
                _MALFORMED_WHY[kind],
                more,
            )

    def _deliver(
        self,
        items: Sequence[Delivered],
        cursor: tuple[int, int],
        taken: Mapping[str, tuple[str, int]],
    ) -> bool:
        """Hand ``items`` to the sink, retrying the same items, then move the cursor to
        ``cursor`` (the last entry consumed with them) and record each channel's last event
        (``taken``); False if stopped first."""
        while not self._stopping.is_set():
            if self._sink.deliver(self.epoch, items, self._broker.block):
                self.last, self.cursor = items[-1].pos, cursor
                self.seqs.record(taken)
                delivered = self.stats.delivered + len(items)
                self._update(last_delivered_seq=self.last, delivered=delivered)
                return True
        return False

    def _reset(self, head: Head, reason: str) -> None:
        log.warning(
            "relay: %s; continuing from %s:%d (clients must resume)", reason, head.epoch, head.pos
        )
        self._sink.reset(head.epoch, head.seq, reason, pos=head.pos)
        self.epoch, self.last = head.epoch, head.pos
        self.cursor = (head.pos, 0)  # (entries above it are read, and skipped if beyond the head)
        self.seqs.clear()
        self._update(epoch=head.epoch, last_delivered_seq=head.pos, resets=self.stats.resets + 1)

    def _failed(self, exc: Exception) -> None:
        """Count a failed round; log the first of an outage; wait before the next."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._update(connected=False, outages=self.stats.outages + 1)
            retry = f"relay retrying with backoff up to {self._backoff.high:g} s"
            if isinstance(exc, redis.RedisError):
                log.warning("%s; %s", self._broker.describe(exc), retry)
            elif isinstance(exc, BrokerError):
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


def _numbered(item: Entry | Revocation, stream_epoch: str) -> Delivered:
    """An entry as the hub takes it (a default-channel event has the stream's epoch)."""
    if isinstance(item, Revocation):
        return item
    return Numbered(item.pos, item.channel, item.epoch or stream_epoch, item.seq, item.data)


#: What the log line says about each kind of malformed entry.
_MALFORMED_WHY = {
    Malformed.ID: "its ID is not <pos>-0 (written by something other than a publish)",
    Malformed.FIELDS: "its fields are not those of an event (d, s[, c, e]) or a revocation",
    Malformed.TOO_LARGE: "its data is larger than max_event_bytes",
    Malformed.NOT_JSON: "its data is not strict UTF-8 JSON",
    Malformed.NOT_ENVELOPE: "its data is not an object with a namespace:kebab-case type",
    Malformed.RESERVED_TYPE: "its type is the hub's own or a client-to-server one",
    Malformed.SEQ_MISMATCH: "the seq in its data is not the one of its fields",
    Malformed.CHANNEL_MISMATCH: "the channel in its data is not the one of its fields",
    Malformed.AHEAD: "its position or seq is beyond the last one assigned (no publish wrote it)",
    Malformed.OUT_OF_ORDER: "its seq does not follow the last one of its channel",
}
