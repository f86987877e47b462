"""Resume planning, in one place: what a join or a subscribe replays, and what it costs.

A client joins a channel with or without a resume point (``since``). Two halves:

* **the request thread** (:func:`locate`, :func:`replay_cost`, :func:`fill`), before the hub
  sees the request: with a broker, it reads each channel's position from the broker (the
  numbering owner, so that a resume right after Redis lost its data is never
  ``recovered``), waits (bounded) for a hub whose relay is behind what the client already
  saw, and reads from the broker what the local window no longer holds (the backfill: in
  bounded pages, given up past a byte bound). It estimates the replay's cost for the replay
  budget. It never blocks without a deadline.
* **the hub thread** (:func:`replay`), when it handles the request: ``recovered`` and the
  frames that recover it, from the channel's window and the backfill. Never a partial
  replay: ``recovered`` is true only if every event after ``since`` follows.

The broker is seen through :class:`BrokerPort` only. No thread owns state here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .. import frames
from ..protocol import DEFAULT_CHANNEL, Since
from .channels import Channel
from .stream import Numbered, Position

#: Longest a resume waits for this process's relay to reach what the client already saw.
CATCH_UP_TIMEOUT = 1.0
#: Events a broker backfill reaches into the local window, so that the window may move on
#: between the request thread's read and the hub thread's registration.
BACKFILL_OVERLAP = 64
#: Events read from the broker per round trip of a backfill.
BACKFILL_PAGE = 256

#: One replayed frame and its global position (replays of several channels merge by it).
Entry = tuple[int, bytes]


class BrokerPort(Protocol):
    """What resume planning needs of a broker (the Redis one implements it)."""

    def heads(self, channels: Sequence[str]) -> list[Position]:
        """Each channel's current position (``seq`` 0 with a fresh epoch when it has none).

        Raises :class:`~sidecar.broker.BrokerUnavailable`.
        """
        ...

    def read_channel(
        self, channel: str, epoch: str, after_seq: int, limit: int, max_bytes: int
    ) -> list[Numbered] | None:
        """Up to ``limit`` events of ``channel`` after ``after_seq`` in ``epoch``, in order,
        stopping once ``max_bytes`` of envelopes are exceeded (the last one included).

        ``[]`` when ``after_seq`` is the last; ``None`` when they cannot all be had (another
        epoch, trimmed, ahead). Raises :class:`~sidecar.broker.BrokerUnavailable`.
        """
        ...


class HubView(Protocol):
    """What the request thread may read of the hub (snapshots) and wait for."""

    def channel_position(self, channel: str) -> Position | None: ...

    def window_span(self, channel: str = DEFAULT_CHANNEL) -> tuple[int, int, int] | None: ...

    def wait_for(self, channel: str, epoch: str, seq: int, timeout: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """One channel a client joins: at connect (``?channels=``) or by ``channel:subscribe``."""

    channel: str
    #: Where the client resumes from, or ``None`` (a plain join: no replay).
    since: Since | None = None
    #: The numbering owner's position of the channel when the request was made (a broker's
    #: head, or the local sequencer's, read in inbox order); a hub that does not know the
    #: channel starts it here, and one in another epoch does not recover.
    origin: Position | None = None
    #: Events older than the local window, from the broker, contiguous from ``since + 1``.
    backfill: tuple[Numbered, ...] = ()


# -- the request thread ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of a resume's planning."""

    #: Most events a backfill reads (the history size).
    history_size: int
    #: A backfill larger than this is given up (the client's queue would not hold it).
    max_bytes: int


def locate(
    hub: HubView,
    broker: BrokerPort | None,
    requests: Sequence[ChannelRequest],
    timeout: float = CATCH_UP_TIMEOUT,
) -> list[ChannelRequest]:
    """``requests`` with the broker's position of each channel (one round trip), after
    waiting (at most ``timeout`` in all) for this hub where its relay is behind a resume.

    Without a broker they are returned as given. Raises
    :class:`~sidecar.broker.BrokerUnavailable` when the broker cannot be reached.
    """
    if broker is None or not requests:
        return list(requests)
    heads = broker.heads([request.channel for request in requests])
    deadline = time.monotonic() + timeout
    done = []
    for request, head in zip(requests, heads, strict=True):
        if request.since is not None:
            _catch_up(hub, request.channel, request.since, head, deadline)
        done.append(replace(request, origin=head))
    return done


def fill(
    hub: HubView,
    broker: BrokerPort | None,
    requests: Sequence[ChannelRequest],
    limits: Limits,
) -> list[ChannelRequest]:
    """``requests`` (from :func:`locate`) with what the broker holds beyond the local windows.

    Raises :class:`~sidecar.broker.BrokerUnavailable` when the broker cannot be reached.
    """
    if broker is None:
        return list(requests)
    return [
        replace(request, backfill=_backfill(hub, broker, request, limits))
        if request.since is not None and request.origin is not None
        else request
        for request in requests
    ]


def _catch_up(hub: HubView, channel: str, since: Since, head: Position, deadline: float) -> None:
    """Wait (until ``deadline``) for this hub to reach what the broker has and the client saw.

    A client that saw ``since`` on a faster process, or a new epoch after Redis lost its
    data, would otherwise get ``recovered: false`` here from a relay that is behind.
    """
    if since.epoch != head.epoch or since.seq > head.seq:
        return  # the broker itself cannot recover it: nothing to wait for
    position = hub.channel_position(channel)
    if position is None or (position.epoch == head.epoch and position.seq >= since.seq):
        return
    hub.wait_for(channel, head.epoch, since.seq, max(0.0, deadline - time.monotonic()))


def _backfill(
    hub: HubView, broker: BrokerPort, request: ChannelRequest, limits: Limits
) -> tuple[Numbered, ...]:
    """Events older than the local window, from the broker (``()``: not needed, or gone).

    Reads up to :data:`BACKFILL_OVERLAP` events into the window, never more than the history
    size, in pages of :data:`BACKFILL_PAGE`, and gives up (``()``: ``recovered: false``)
    once ``limits.max_bytes`` is exceeded: a replay larger than the client's queue may hold
    would only get it dropped, and memory taken by one resume stays bounded.
    """
    since, head = request.since, request.origin
    assert since is not None and head is not None
    limit = limits.history_size
    if since.epoch != head.epoch or since.seq >= head.seq or limit <= 0:
        return ()
    position = hub.channel_position(request.channel)
    span = hub.window_span(request.channel)
    if position is not None and position.epoch == since.epoch and span is not None:
        start = span[0]
        if since.seq + 1 >= start + BACKFILL_OVERLAP:
            return ()  # the window reaches back far enough
        limit = min(limit, start + BACKFILL_OVERLAP - since.seq - 1)
    items: list[Numbered] = []
    size, after = 0, since.seq
    while len(items) < limit:
        page = broker.read_channel(
            request.channel,
            since.epoch,
            after,
            min(BACKFILL_PAGE, limit - len(items)),
            limits.max_bytes - size,
        )
        if not page:
            return () if page is None else tuple(items)
        items.extend(page)
        size += sum(len(item.data) for item in page)
        if size > limits.max_bytes:
            return ()
        after = page[-1].seq
    return tuple(items)


def replay_cost(hub: HubView, request: ChannelRequest, history_size: int) -> int:
    """Bytes a join will replay (an estimate): the local window's part, and the backfill's
    (already read, or, without one yet, estimated at the window's average frame size)."""
    since = request.since
    if since is None:
        return 0
    position = hub.channel_position(request.channel)
    span = hub.window_span(request.channel)
    if position is None or span is None or since.epoch != position.epoch:
        return sum(len(item.data) for item in request.backfill)
    first, last, total = span
    if since.seq >= last:
        return 0
    cost = total * (last - max(since.seq, first - 1)) // (last - first + 1)
    if request.backfill:
        return cost + sum(len(item.data) for item in request.backfill)
    if request.origin is not None and since.seq + 1 < first:
        cost += total // (last - first + 1) * min(first - since.seq - 1, history_size)
    return cost


# -- the hub thread ----------------------------------------------------------------------------


def replay(channel: Channel, request: ChannelRequest) -> tuple[bool, tuple[Entry, ...]]:
    """Whether ``request`` recovers on ``channel``, and the frames that recover it (shared)."""
    since, position = request.since, channel.position
    if since is None or since.epoch != position.epoch or since.seq > position.seq:
        return False, ()
    if request.origin is not None and request.origin.epoch != position.epoch:
        return False, ()  # the numbering owner has moved on: this hub is stale
    if since.seq == position.seq:
        return True, ()
    local = channel.window.entries_after(since.seq)
    if local is not None:
        return True, local
    backfill = request.backfill
    if not backfill or backfill[0].seq != since.seq + 1:
        return False, ()
    # the broker may be ahead of this hub: what it has not fanned out yet comes live
    backfill = backfill[: position.seq - since.seq]  # since.seq < position.seq here
    last = backfill[-1].seq
    rest = channel.window.entries_after(last) if last < position.seq else ()
    if rest is None or last - backfill[0].seq + 1 != len(backfill):
        return False, ()
    return True, (*((item.pos, frames.text_frame(item.data)) for item in backfill), *rest)
