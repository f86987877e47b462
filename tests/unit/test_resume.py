"""Resume planning with a broker, without one: positions, the catch-up wait, backfill, cost.

The broker and the hub are small doubles with the behaviour their protocols promise (a broker
that holds a channel's events ``1..last`` of one epoch, a hub at a position with a window); what
is checked is what a resuming client would get: which events the backfill holds (and so
whether it recovers), how many round trips and bytes that took, how long it waited.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from sidecar.core import resume
from sidecar.core.resume import BACKFILL_OVERLAP, BACKFILL_PAGE, ChannelRequest, Limits
from sidecar.core.stream import Numbered, Position
from sidecar.protocol import Since

P1, C9 = "project:p1", "chat:c9"
KNOWN = (P1, C9, "x:1")


class Broker:
    """Holds ``first..last`` of each channel in ``epoch`` (events of ``size`` bytes)."""

    def __init__(self, epoch: str = "e", last: int = 1000, first: int = 1, size: int = 1) -> None:
        self.epoch, self.first, self.last, self.size = epoch, first, last, size
        self.head_calls: list[list[str]] = []
        #: ``(channel, epoch, after_seq, limit, max_bytes)`` of each read.
        self.reads: list[tuple[str, str, int, int, int]] = []

    def heads(self, channels: Sequence[str]) -> list[Position]:
        self.head_calls.append(list(channels))
        return [Position(self.epoch, self.last) for _ in channels]

    def read_channel(
        self, channel: str, epoch: str, after_seq: int, limit: int, max_bytes: int
    ) -> list[Numbered] | None:
        self.reads.append((channel, epoch, after_seq, limit, max_bytes))
        if epoch != self.epoch or after_seq > self.last or after_seq + 1 < self.first:
            return None
        page: list[Numbered] = []
        size = 0
        for seq in range(after_seq + 1, min(self.last, after_seq + limit) + 1):
            page.append(Numbered(seq, channel, epoch, seq, b"x" * self.size))
            size += self.size
            if size > max_bytes:
                break
        return page


class Trimmed(Broker):
    """A broker whose stream is trimmed past everything between the first two reads."""

    def read_channel(
        self, channel: str, epoch: str, after_seq: int, limit: int, max_bytes: int
    ) -> list[Numbered] | None:
        page = super().read_channel(channel, epoch, after_seq, limit, max_bytes)
        self.first = self.last + 1
        return page


class View:
    """A hub seen from a request thread: one position and window span for each channel it
    knows (those of these tests), nothing for any other."""

    def __init__(
        self, position: Position | None = None, span: tuple[int, int, int] | None = None
    ) -> None:
        self.position, self.span = position, span
        self.waits: list[tuple[str, str, int, float]] = []
        #: Called with each wait's timeout (a test moves its clock there).
        self.on_wait = lambda _timeout: None

    def channel_position(self, channel: str) -> Position | None:
        return self.position if channel in KNOWN else None

    def window_span(self, channel: str = "") -> tuple[int, int, int] | None:
        return self.span if channel in KNOWN else None

    def wait_for(self, channel: str, epoch: str, seq: int, timeout: float) -> bool:
        self.waits.append((channel, epoch, seq, timeout))
        self.on_wait(timeout)
        return False


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The request thread's monotonic clock, moved by the test (and by a :class:`View`)."""
    clock = [500.0]
    monkeypatch.setattr(resume.time, "monotonic", lambda: clock[0])
    yield clock


def seqs_of(backfill: Sequence[Numbered]) -> list[int]:
    return [item.seq for item in backfill]


def backfill(view: View, broker: Broker, since: int, *, size: int = 1000, **kw: Any) -> list[int]:
    request = ChannelRequest(P1, Since("e", since), origin=Position("e", broker.last))
    [done] = resume.fill(view, broker, [request], Limits(size, kw.get("max_bytes", 10**9)))
    return seqs_of(done.backfill)


# -- locate: the broker's position, and the catch-up wait ---------------------------------------


def test_without_a_broker_requests_are_planned_as_given() -> None:
    requests = [ChannelRequest(P1, Since("e", 3)), ChannelRequest(C9)]
    view = View(Position("e", 1))
    assert resume.locate(view, None, requests) == requests
    assert resume.fill(view, None, requests, Limits(10, 100)) == requests
    assert view.waits == []


def test_locate_reads_every_head_in_one_round_trip() -> None:
    broker, view = Broker(last=7), View(Position("e", 7))
    requests = [ChannelRequest(P1), ChannelRequest(C9, Since("e", 2))]
    located = resume.locate(view, broker, requests)
    assert broker.head_calls == [[P1, C9]]
    assert [(r.channel, r.since, r.origin) for r in located] == [
        (P1, None, Position("e", 7)),
        (C9, Since("e", 2), Position("e", 7)),
    ]
    assert view.waits == []  # this hub is there already


def test_locating_nothing_asks_the_broker_nothing() -> None:
    broker = Broker()
    assert resume.locate(View(), broker, []) == []
    assert broker.head_calls == []


@pytest.mark.parametrize("saw", [6, 9])
def test_a_hub_behind_what_the_client_saw_is_waited_for(now: list[float], saw: int) -> None:
    broker, view = Broker(last=9), View(Position("e", 4))
    resume.locate(view, broker, [ChannelRequest(P1, Since("e", saw))], timeout=0.5)
    assert view.waits == [(P1, "e", saw, 0.5)]


@pytest.mark.parametrize(
    ("position", "since"),
    [
        (Position("e", 6), Since("e", 6)),  # there already
        (Position("e", 8), Since("e", 6)),  # past it
        (None, Since("e", 6)),  # a channel this hub never had: it starts at the head
        (Position("e", 4), Since("e", 10)),  # the client is ahead of the broker itself
        (Position("e", 4), Since("old", 6)),  # another epoch: the broker cannot recover it
    ],
)
def test_no_wait_where_waiting_cannot_help(
    position: Position | None, since: Since, now: list[float]
) -> None:
    broker, view = Broker(last=9), View(position)
    [located] = resume.locate(view, broker, [ChannelRequest(P1, since)], timeout=0.5)
    assert view.waits == [] and located.origin == Position("e", 9)


def test_a_hub_in_another_epoch_is_waited_for_into_the_brokers(now: list[float]) -> None:
    broker, view = Broker(epoch="new", last=9), View(Position("old", 20))
    resume.locate(view, broker, [ChannelRequest(P1, Since("new", 3))], timeout=0.5)
    assert view.waits == [(P1, "new", 3, 0.5)]


def test_the_waits_of_one_resume_share_one_deadline(now: list[float]) -> None:
    broker, view = Broker(last=9), View(Position("e", 1))

    def waited(timeout: float) -> None:
        now[0] += timeout * 0.75  # each wait takes most of what it was given

    view.on_wait = waited
    requests = [ChannelRequest(name, Since("e", 5)) for name in (P1, C9, "x:1")]
    resume.locate(view, broker, requests, timeout=1.0)
    assert [wait[3] for wait in view.waits] == pytest.approx([1.0, 0.25, 0.0625])
    now[0] += 5  # past the deadline: the next wait is for nothing, never negative
    resume.locate(view, broker, requests[:1], timeout=-1.0)
    assert view.waits[-1][3] == 0.0


# -- fill: the backfill from the broker ---------------------------------------------------------


def test_a_channel_this_hub_does_not_hold_is_backfilled_from_the_broker() -> None:
    broker = Broker(last=300)
    assert backfill(View(), broker, 290) == list(range(291, 301))
    assert broker.reads == [(P1, "e", 290, BACKFILL_PAGE, 10**9), (P1, "e", 300, 256, 10**9 - 10)]


def test_the_backfill_reaches_into_the_window_by_the_overlap_in_pages() -> None:
    broker = Broker(last=1000)
    view = View(Position("e", 1000), span=(701, 1000, 300))
    assert backfill(view, broker, 400) == list(range(401, 701 + BACKFILL_OVERLAP))
    count = 700 + BACKFILL_OVERLAP - 400
    assert [read[2:4] for read in broker.reads] == [
        (400, BACKFILL_PAGE),
        (400 + BACKFILL_PAGE, count - BACKFILL_PAGE),
    ]


def test_a_window_reaching_back_far_enough_needs_no_backfill() -> None:
    broker = Broker(last=1000)
    view = View(Position("e", 1000), span=(701, 1000, 300))
    assert backfill(view, broker, 700 + BACKFILL_OVERLAP) == []
    assert backfill(view, broker, 699 + BACKFILL_OVERLAP) == [700 + BACKFILL_OVERLAP]
    assert [read[2:4] for read in broker.reads] == [(699 + BACKFILL_OVERLAP, 1)]


@pytest.mark.parametrize(
    ("position", "span"),
    [(Position("old", 1000), (701, 1000, 300)), (Position("e", 1000), None), (None, None)],
)
def test_a_window_of_no_use_leaves_the_backfill_to_the_history_size(
    position: Position | None, span: tuple[int, int, int] | None
) -> None:
    broker = Broker(last=1000)
    assert backfill(View(position, span), broker, 400, size=50) == list(range(401, 451))
    assert [read[2:4] for read in broker.reads] == [(400, 50)]


def test_the_history_size_caps_the_overlap_too() -> None:
    broker = Broker(last=1000)
    view = View(Position("e", 1000), span=(701, 1000, 300))
    assert backfill(view, broker, 690, size=5) == list(range(691, 696))
    assert backfill(View(), broker, 690, size=1) == [691]  # a history of one event


def test_the_byte_bound_holds_over_every_page_read() -> None:
    broker = Broker(last=1000, size=2)  # pages of 512 bytes, then what is left
    assert backfill(View(), broker, 100, size=700, max_bytes=2 * 512 + 10) == []
    assert [read[4] for read in broker.reads] == [1034, 522, 10]


@pytest.mark.parametrize(
    ("since", "size"),
    [
        (Since("e", 1000), 1000),  # at the head: nothing to read
        (Since("e", 1001), 1000),  # ahead of it
        (Since("old", 10), 1000),  # another epoch
        (Since("e", 10), 0),  # history off
    ],
)
def test_no_backfill_where_none_can_recover(since: Since, size: int) -> None:
    broker = Broker(last=1000)
    request = ChannelRequest(P1, since, origin=Position("e", 1000))
    [done] = resume.fill(View(), broker, [request], Limits(size, 10**9))
    assert done.backfill == () and broker.reads == []


def test_requests_without_a_resume_point_or_a_head_are_not_filled() -> None:
    broker = Broker(last=1000)
    requests = [ChannelRequest(P1), ChannelRequest(C9, Since("e", 3))]
    assert resume.fill(View(), broker, requests, Limits(10, 100)) == requests
    assert broker.reads == []


def test_a_backfill_over_the_byte_bound_is_given_up() -> None:
    broker = Broker(last=1000, size=10)
    assert backfill(View(), broker, 990, max_bytes=99) == []
    assert backfill(View(), broker, 990, max_bytes=100) == list(range(991, 1001))


def test_each_page_is_given_what_is_left_of_the_byte_bound() -> None:
    broker = Broker(last=1000, size=2)
    assert len(backfill(View(), broker, 600, size=400, max_bytes=800)) == 400
    assert [read[4] for read in broker.reads] == [800, 800 - 2 * BACKFILL_PAGE]


def test_a_backfill_the_broker_no_longer_holds_whole_is_given_up() -> None:
    broker = Broker(last=1000, first=500)
    assert backfill(View(), broker, 400) == []
    short = Trimmed(last=1000)
    assert backfill(View(), short, 400) == []


def test_a_backfill_stops_where_the_broker_ends() -> None:
    broker = Broker(last=1000)
    request = ChannelRequest(P1, Since("e", 995), origin=Position("e", 2000))
    [done] = resume.fill(View(), broker, [request], Limits(1000, 10**9))
    assert seqs_of(done.backfill) == list(range(996, 1001))


# -- replay_cost: what the replay budget is charged -----------------------------------------------


def cost(since: int | None, *, backfill: int = 0, origin: bool = False, size: int = 1000) -> int:
    """A window of 11..20 (1005 bytes: 100.5 each), ``backfill`` events of 7 bytes read."""
    view = View(Position("e", 20), span=(11, 20, 1005))
    items = tuple(Numbered(s, P1, "e", s, b"x" * 7) for s in range(backfill))
    request = ChannelRequest(
        P1,
        None if since is None else Since("e", since),
        origin=Position("e", 20) if origin else None,
        backfill=items,
    )
    return resume.replay_cost(view, request, size)


def test_the_cost_of_a_replay_from_the_window() -> None:
    assert cost(None) == 0
    assert cost(15) == 502  # whole bytes
    assert cost(10) == cost(3) == 1005  # the whole window, no more without a head
    assert cost(20) == cost(25) == 0


def test_the_cost_of_a_replay_beyond_the_window() -> None:
    assert cost(10, origin=True) == 1005  # the window starts right after
    assert cost(11, origin=True) == 904  # inside the window: nothing more
    assert cost(9, origin=True) == 1105  # one more, at the window's average (whole bytes)
    assert cost(5, origin=True) == 1505
    assert cost(5, origin=True, size=3) == 1305  # never more than the history holds
    assert cost(5, origin=True, backfill=2) == 1019  # read already: its own size
    assert cost(20, backfill=2) == 0  # nothing after the window's end is replayed
    assert all(isinstance(cost(s, origin=True), int) for s in (3, 9, 15))


def test_the_cost_without_a_usable_window_is_the_backfill() -> None:
    items = tuple(Numbered(s, P1, "e", s, b"x" * 7) for s in range(3))
    for view in (View(), View(Position("e", 20)), View(Position("old", 20), (11, 20, 1000))):
        request = ChannelRequest(P1, Since("e", 5), backfill=items)
        assert resume.replay_cost(view, request, 1000) == 21
