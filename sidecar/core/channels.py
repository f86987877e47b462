"""The hub thread's channels: each one's position, replay window and subscribers.

Owned by the hub thread (no locks). Other threads read only what is published whole: a
:class:`Channel`'s ``position`` (a :class:`~sidecar.core.stream.Position` replaced after each
change) and its window's ``span``, through :meth:`Channels.peek` (one dict lookup).

Bounds
    * each window: ``history_size`` events and ``history_bytes`` bytes (per channel: a burst
      on one channel never evicts another's history by itself);
    * every window together: ``total_bytes``; beyond it the largest windows are cut down
      (water-filling to 90 % of the bound), so a quiet channel keeps its history;
    * ``max_states`` named channels; a named channel with no subscriber here and no event
      for ``ttl`` seconds is forgotten (it comes back with a new epoch); above 90 % of the
      bound (and whenever a new one needs room) the least recently used channels without
      subscribers go first.

The default channel (``""``, today's stream) is always there and never forgotten.
Forgetting a channel also needs its numbering owner's consent (``may_forget``: the local
sequencer agrees only when nothing of the channel is in flight).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..protocol import DEFAULT_CHANNEL
from .history import History
from .stream import Numbered, Position

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("sidecar.hub")

#: Named channels looked at when one must be evicted to make room for another.
EVICTION_SCAN = 64
#: Above this share of ``max_states``, idle channels are forgotten (least recently used
#: first) down to :data:`LOW_WATER`, so that a local sequencer always has room for new ones.
HIGH_WATER = 0.9
LOW_WATER = 0.8
#: Most channels forgotten in one :meth:`Channels.shrink` (the hub thread's time is shared).
SHRINK_BATCH = 1024
#: What the water-filling trim leaves of the total window bound (hysteresis).
TRIM_TARGET = 0.9


class Channel:
    """One channel as the hub thread keeps it."""

    __slots__ = ("name", "position", "subscribers", "touched", "window")

    def __init__(self, name: str, position: Position, window: History, now: float) -> None:
        self.name = name
        #: The channel's epoch and last ``seq`` fanned out (replaced whole: others read it).
        self.position = position
        self.window = window
        #: The clients that get its events (hub thread only).
        self.subscribers: set[Client] = set()
        #: When it last had an event, or lost its last subscriber.
        self.touched = now

    @property
    def epoch(self) -> str:
        return self.position.epoch

    @property
    def seq(self) -> int:
        return self.position.seq

    def __repr__(self) -> str:
        return f"<Channel {self.name or '(default)'} {self.position.epoch}:{self.position.seq}>"


class Verdict:
    """What :meth:`Channels.accept` decided for an item (identity-compared constants)."""

    TAKE = "take"
    DUPLICATE = "duplicate"
    #: Its channel broke (another epoch, a gap): subscribers must resume; then it is taken.
    BROKE = "broke"
    #: No room for a new channel: nobody here subscribes to it, so nothing is lost.
    NO_ROOM = "no-room"


class Channels:
    """Every channel the hub thread knows (see the module docstring for the bounds)."""

    def __init__(
        self,
        *,
        history_size: int,
        history_bytes: int,
        total_bytes: int,
        max_states: int,
        ttl: float,
        clock: Callable[[], float],
        may_forget: Callable[[str, Position], bool] = lambda _name, _position: True,
    ) -> None:
        self.history_size = history_size
        self.history_bytes = history_bytes
        self.total_bytes_bound = max(total_bytes, history_bytes)
        self.max_states = max_states
        self.ttl = ttl
        self._clock = clock
        self._may_forget = may_forget
        self._named: OrderedDict[str, Channel] = OrderedDict()  # least recently used first
        self.total_bytes = 0
        self.forgotten = 0
        self.trims = 0
        self.default = self._new(DEFAULT_CHANNEL, Position("", 0))

    def _new(self, name: str, position: Position) -> Channel:
        window = History(self.history_size, self.history_bytes)
        return Channel(name, position, window, self._clock())

    # -- lookups (peek: any thread) --------------------------------------------------------
    def peek(self, name: str) -> Channel | None:
        """The channel, if known (any thread: read only ``position`` and ``window.span``)."""
        return self.default if name == DEFAULT_CHANNEL else self._named.get(name)

    def __len__(self) -> int:
        """Named channels held."""
        return len(self._named)

    def __iter__(self) -> Iterator[Channel]:
        yield self.default
        yield from self._named.values()

    # -- hub thread ------------------------------------------------------------------------
    def ensure(self, name: str, origin: Position) -> Channel | None:
        """The channel, created at ``origin`` if unknown; ``None`` if there is no room."""
        channel = self.peek(name)
        if channel is not None:
            return channel
        if len(self._named) >= self.max_states and not self._evict_one():
            return None
        channel = self._named[name] = self._new(name, origin)
        return channel

    def accept(self, item: Numbered) -> tuple[str, Channel | None]:
        """Decide what to do with a delivered ``item`` of its channel (see :class:`Verdict`).

        A broken channel is restarted at the item (its window cleared) before returning.
        """
        channel = self.peek(item.channel)
        if channel is None:
            channel = self.ensure(item.channel, Position(item.epoch, item.seq - 1))
            if channel is None:
                return Verdict.NO_ROOM, None
        position = channel.position
        if item.epoch == position.epoch:
            if item.seq <= position.seq:
                return Verdict.DUPLICATE, channel
            if item.seq == position.seq + 1:
                return Verdict.TAKE, channel
        self.restart(channel, Position(item.epoch, item.seq - 1))
        return Verdict.BROKE, channel

    def append(self, channel: Channel, item: Numbered, frame: bytes) -> None:
        """Record ``item`` (accepted with :attr:`Verdict.TAKE`) as the channel's last event."""
        channel.position = Position(item.epoch, item.seq)
        channel.touched = self._clock()
        if channel.name:
            self._named.move_to_end(channel.name)
        self.total_bytes += channel.window.append(item.seq, frame, item.pos)
        if self.total_bytes > self.total_bytes_bound:
            self._trim()

    def restart(self, channel: Channel, position: Position) -> None:
        """Go on from ``position``; the window is cleared."""
        self.total_bytes -= channel.window.clear()
        channel.position = position

    def clear_named(self) -> None:
        """Forget every named channel (the stream itself restarted)."""
        for channel in self._named.values():
            self.total_bytes -= channel.window.clear()
        self._named.clear()

    def left(self, channel: Channel) -> None:
        """A subscriber left ``channel``: its idle time starts when the last one leaves."""
        if not channel.subscribers:
            channel.touched = self._clock()
            if channel.name:
                self._named.move_to_end(channel.name)

    def sweep(self) -> int:
        """Forget named channels idle for ``ttl`` with no subscriber; how many went."""
        now, gone = self._clock(), 0
        for _ in range(len(self._named)):
            name, channel = next(iter(self._named.items()))
            if now - channel.touched < self.ttl:
                break  # the rest were touched later
            if channel.subscribers or not self._forget(channel):
                self._named.move_to_end(name)  # looked at again after a ttl
                continue
            gone += 1
        return gone

    def shrink(self) -> int:
        """Above :data:`HIGH_WATER` of the bound, forget idle channels (least recently used
        first, none with a subscriber) down to :data:`LOW_WATER`; how many went."""
        if len(self._named) <= self.max_states * HIGH_WATER:
            return 0
        excess = min(SHRINK_BATCH, len(self._named) - int(self.max_states * LOW_WATER))
        gone = 0
        for channel in list(self._named.values())[: excess + EVICTION_SCAN]:
            if gone >= excess:
                break
            if not channel.subscribers and self._forget(channel):
                gone += 1
        return gone

    def _evict_one(self) -> bool:
        for channel in list(self._named.values())[:EVICTION_SCAN]:
            if not channel.subscribers and self._forget(channel):
                return True
        return False

    def _forget(self, channel: Channel) -> bool:
        if not self._may_forget(channel.name, channel.position):
            return False
        self.total_bytes -= channel.window.clear()
        del self._named[channel.name]
        self.forgotten += 1
        return True

    def _trim(self) -> None:
        """Cut the largest windows down until all fit in :data:`TRIM_TARGET` of the bound."""
        windows = sorted((c.window for c in self), key=lambda w: w.total_bytes, reverse=True)
        target = int(self.total_bytes_bound * TRIM_TARGET)
        # the cap: the largest size every window can keep with the total within target
        rest, cap = self.total_bytes, 0
        for index, window in enumerate(windows):
            rest -= window.total_bytes
            share = (target - rest) // (index + 1)
            following = windows[index + 1].total_bytes if index + 1 < len(windows) else 0
            if share >= following:
                cap = max(0, share)
                break
        for window in windows:
            if window.total_bytes <= cap:
                break
            self.total_bytes -= window.trim_to(cap)
        self.trims += 1
        log.debug("windows cut to %d bytes each (%d in all)", cap, self.total_bytes)
