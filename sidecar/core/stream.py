"""The numbered stream: what a sequencer assigns, the local sequencer, the continuity tracker.

Every event the hub fans out is a :class:`Numbered`: its channel, that channel's epoch and
``seq``, a global position ``pos`` that fixes one order across channels, and the envelope
bytes with ``seq`` (and ``channel``) spliced in. One of two sequencers numbers events, and the
hub has one numbered input either way (:meth:`sidecar.core.hub.Hub.deliver`):

* **in one process**, :class:`LocalSequencer`: numbers under its lock and hands the batch to
  the hub's inbox under the same lock, so that the inbox order is the ``pos`` order;
* **across processes**, a broker (Redis): its script numbers, and its relay thread hands the
  numbered events to the hub.

Threads and state
    * :class:`LocalSequencer`: any publishing thread (and request threads asking for a
      channel's position) under ``lock``, which guards ``_channels`` (each channel's epoch and
      last ``seq`` assigned), ``_pos`` and ``_recent`` (the idempotency keys of recent
      publishes); the hub thread takes it briefly to forget a channel.
    * :class:`StreamTracker`: the hub thread only (a pure decision object, no locks).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..envelope import with_seq
from ..protocol import (
    DEFAULT_CHANNEL,
    IDEMPOTENCY_MAX_KEYS,
    IDEMPOTENCY_WINDOW,
    PublishedSeqs,
    PublishRefused,
)
from .idempotency import RecentKeys


class Position(NamedTuple):
    """Where a channel is: its epoch and its last ``seq`` (0: nothing published yet)."""

    epoch: str
    seq: int


class Numbered(NamedTuple):
    """One event with its place in the stream."""

    #: The global position: one order across channels (dense within a stream epoch).
    pos: int
    #: The channel (``""``: the default channel).
    channel: str
    #: The channel's epoch.
    epoch: str
    #: The channel's ``seq`` (dense within the channel's epoch).
    seq: int
    #: The envelope, ``seq`` (and ``channel``) spliced in: byte for byte what clients get.
    data: bytes


def on_default(epoch: str, items: Sequence[tuple[int, bytes]]) -> list[Numbered]:
    """``(seq, envelope)`` pairs of the default channel as numbered events (position = seq,
    as in a stream that carries the default channel alone)."""
    return [Numbered(seq, DEFAULT_CHANNEL, epoch, seq, data) for seq, data in items]


class Revocation(NamedTuple):
    """A revocation in the stream (with a broker): take ``user`` off ``channel`` on every
    worker, at this point of the stream's order."""

    pos: int
    user: str
    channel: str


#: What the hub takes from a sequencer: events, and (with a broker) revocations.
Delivered = Numbered | Revocation

#: One event to number: its channel (``""``: the default) and its encoded envelope.
Item = tuple[str, bytes]


class Sequencer(Protocol):
    """Numbers events for the hub: in this process, or for every process (a broker)."""

    def publish_items(self, items: Sequence[Item], idempotency_key: str | None = None) -> list[int]:
        """Number ``items`` (in order) and hand them on; return each one's channel ``seq``,
        once per ``idempotency_key`` within its window (a :class:`PublishedSeqs` says whether
        this was a repeat).

        Raises :class:`~sidecar.protocol.PublishRefused` when nothing was accepted, and its
        subclass :class:`~sidecar.protocol.PublishOutcomeUnknown` when the items may have been
        accepted (a broker that did not answer).
        """
        ...

    def heads(self, channels: Sequence[str]) -> list[Position]:
        """Each channel's position as numbered now (created when unknown).

        Raises :class:`~sidecar.protocol.PublishRefused` (unreachable, or no room).
        """
        ...

    def revoke(self, user: str, channel: str) -> None:
        """Take ``user`` off ``channel`` on every hub, in stream order (PublishRefused)."""
        ...


def new_epoch() -> str:
    """A fresh channel epoch: 11 characters of ``A-Za-z0-9_-``."""
    return secrets.token_urlsafe(8)


#: Hands a numbered batch to the hub's inbox (raises PublishRefused): ``(stream epoch, items)``.
Submit = Callable[[str, tuple[Delivered, ...]], None]


class LocalSequencer:
    """Numbers events in one process, as Redis's script does across processes.

    ``epoch`` is the stream's (and the default channel's) epoch. A named channel gets a new
    epoch when it is first numbered (or asked for) and keeps it until the hub forgets it
    (:meth:`forget`). At most ``max_channels`` named channels are held; a publish or a
    position that would need one more is refused until the hub forgets some. Idempotency keys
    are remembered for :data:`~sidecar.protocol.IDEMPOTENCY_WINDOW` seconds on ``clock``, at
    most :data:`~sidecar.protocol.IDEMPOTENCY_MAX_KEYS` of them.
    """

    def __init__(
        self,
        epoch: str,
        submit: Submit,
        max_channels: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epoch = epoch
        self.lock = threading.Lock()
        self.max_channels = max_channels
        self._submit = submit
        self._channels: dict[str, list[str | int]] = {DEFAULT_CHANNEL: [epoch, 0]}
        self._pos = 0
        self._recent = RecentKeys(IDEMPOTENCY_WINDOW, IDEMPOTENCY_MAX_KEYS, clock)

    def publish_items(
        self, items: Sequence[Item], idempotency_key: str | None = None
    ) -> PublishedSeqs:
        """Number ``items`` and put them in the hub's inbox, atomically; their seqs. A key
        seen within the window publishes nothing and returns the first publish's seqs (a
        refused publish leaves its key unused)."""
        with self.lock:
            if idempotency_key is not None:
                seen = self._recent.recall(idempotency_key, len(items))
                if seen is not None:
                    return seen
            seqs = PublishedSeqs(self.publish_locked(items))
            if idempotency_key is not None:
                self._recent.remember(idempotency_key, seqs)
            return seqs

    def publish_locked(self, items: Sequence[Item]) -> list[int]:
        """:meth:`publish` with ``lock`` held (nothing is numbered unless the hub takes it)."""
        pending: dict[str, list[str | int]] = {}
        numbered = []
        pos = self._pos
        for channel, data in items:
            state = pending.get(channel)
            if state is None:
                state = list(self._channels.get(channel) or self._create(channel, pending))
                pending[channel] = state
            state[1] = seq = int(state[1]) + 1
            pos += 1
            epoch = str(state[0])
            numbered.append(Numbered(pos, channel, epoch, seq, with_seq(data, seq, channel)))
        self._submit(self.epoch, tuple(numbered))
        self._pos = pos
        self._channels.update(pending)
        return [item.seq for item in numbered]

    def _create(self, channel: str, pending: dict[str, list[str | int]]) -> list[str | int]:
        if len(self._channels) - 1 + len(pending) >= self.max_channels:
            raise PublishRefused(f"too many channels (at most {self.max_channels} held)")
        return [new_epoch(), 0]

    def position(self, channel: str, *, create: bool = True) -> Position | None:
        """The channel's position (``lock`` must be held); created when unknown and ``create``.

        ``None`` when it is unknown and cannot (or may not) be created.
        """
        state = self._channels.get(channel)
        if state is None:
            if not create or len(self._channels) - 1 >= self.max_channels:
                return None
            state = self._channels[channel] = [new_epoch(), 0]
        return Position(str(state[0]), int(state[1]))

    def revoke(self, user: str, channel: str) -> None:
        """Put a revocation in the stream, in order with the events (PublishRefused)."""
        with self.lock:
            self._submit(self.epoch, (Revocation(self._pos + 1, user, channel),))
            self._pos += 1

    def heads(self, channels: Sequence[str]) -> list[Position]:
        """Each channel's position (created when unknown); PublishRefused when no room."""
        with self.lock:
            positions = [self.position(channel) for channel in channels]
        if any(position is None for position in positions):
            raise PublishRefused(f"too many channels (at most {self.max_channels} held)")
        return [position for position in positions if position is not None]

    def forget(self, channel: str, position: Position) -> bool:
        """Drop ``channel`` if it is still at ``position`` (nothing of it in flight); whether
        it was dropped. The hub thread calls this when it forgets the channel itself."""
        with self.lock:
            state = self._channels.get(channel)
            if channel == DEFAULT_CHANNEL or state is None:
                return state is None
            if (state[0], state[1]) != (position.epoch, position.seq):
                return False
            del self._channels[channel]
            return True

    def held(self) -> int:
        """Named channels numbered and not forgotten (a snapshot)."""
        return len(self._channels) - 1


@dataclass(frozen=True, slots=True)
class Take:
    """Items that follow the stream: fan them out."""

    items: tuple[Delivered, ...]


@dataclass(frozen=True, slots=True)
class Restart:
    """Continuity broke: close every client (4001) and go on from ``(epoch, pos)``."""

    epoch: str
    pos: int
    reason: str


Step = Take | Restart


class StreamTracker:
    """Where the hub is in the stream, and what to do with each delivered batch (hub thread).

    A batch of the tracker's epoch is taken from the first item after ``pos``: items at or
    below it were fanned out already (a replayed read) and are counted in ``duplicates``. A
    gap, or another epoch, is a :class:`Restart` (clients resume), after which the items
    start the stream anew.
    """

    def __init__(self, epoch: str, pos: int = 0) -> None:
        self.epoch = epoch
        self.pos = pos
        self.duplicates = 0

    def take(self, epoch: str, items: Sequence[Delivered]) -> list[Step]:
        """The steps for ``items`` delivered in ``epoch`` (contiguous among themselves)."""
        if epoch == self.epoch:
            skip = 0
            while skip < len(items) and items[skip].pos <= self.pos:
                skip += 1
            self.duplicates += skip
            items = items[skip:]
            if not items:
                return []
            if items[0].pos == self.pos + 1:
                self.pos = items[-1].pos
                return [Take(tuple(items))]
        elif not items:
            return []
        why = "new epoch" if epoch != self.epoch else f"gap in the stream before {items[0].pos}"
        restart = Restart(epoch, items[0].pos - 1, why)
        self.restart(epoch, items[0].pos - 1)
        self.pos = items[-1].pos
        return [restart, Take(tuple(items))]

    def restart(self, epoch: str, pos: int) -> None:
        """Go on from ``(epoch, pos)`` (a reset from the relay, or a restart step)."""
        self.epoch, self.pos = epoch, pos
