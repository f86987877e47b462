"""The replay window (its two bounds, ``after()`` at every edge, ``span``) and the commands."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.core import commands
from sidecar.core.history import History
from sidecar.core.resume import ChannelRequest
from sidecar.core.stream import Numbered
from sidecar.protocol import Since


def frame(seq: int, size: int = 10) -> bytes:
    return bytes([seq % 256]) * size


def filled(history: History, first: int, last: int, size: int = 10) -> History:
    for seq in range(first, last + 1):
        history.append(seq, frame(seq, size))
    return history


def test_the_event_bound_keeps_the_newest() -> None:
    history = filled(History(3, 1000), 1, 5)
    assert len(history) == 3
    assert history.span == (3, 5, 30)
    assert history.after(2) == (frame(3), frame(4), frame(5))


def test_the_byte_bound_keeps_the_newest_that_fit() -> None:
    history = filled(History(100, 25), 1, 5)
    assert history.span == (4, 5, 20)
    history = filled(History(100, 30), 1, 5)  # exactly at the bound: kept
    assert history.span == (3, 5, 30)
    assert history.total_bytes == 30


def test_a_frame_larger_than_the_byte_bound_empties_the_window() -> None:
    history = filled(History(100, 25), 1, 2)
    history.append(3, frame(3, 26))
    assert (len(history), history.span, history.total_bytes) == (0, None, 0)
    assert history.after(0) is None


@pytest.mark.parametrize(("events", "size"), [(0, 100), (100, 0), (0, 0)])
def test_a_zero_bound_keeps_nothing(events: int, size: int) -> None:
    history = filled(History(events, size), 1, 3)
    assert not history.enabled
    assert (len(history), history.span) == (0, None)
    assert history.after(0) is None


def test_after_at_every_edge() -> None:
    assert History(10, 1000).after(0) is None  # empty: nothing can be replayed
    history = filled(History(3, 1000), 4, 6)
    assert history.after(6) == ()  # up to date
    assert history.after(9) == ()  # (callers never ask from ahead)
    assert history.after(5) == (frame(6),)
    assert history.after(3) == (frame(4), frame(5), frame(6))  # the exact edge
    assert history.after(2) is None  # 3 is gone


def test_the_frames_are_shared_not_copied() -> None:
    history = History(3, 1000)
    data = frame(1)
    history.append(1, data)
    assert history.after(0) == (data,) and history.after(0)[0] is data  # type: ignore[index]


def test_a_break_in_the_sequence_starts_the_window_again() -> None:
    history = filled(History(10, 1000), 1, 3)
    history.append(7, frame(7))
    assert history.span == (7, 7, 10)
    assert history.after(6) == (frame(7),) and history.after(3) is None


def test_clear_forgets_everything() -> None:
    history = filled(History(10, 1000), 1, 3)
    history.clear()
    assert (len(history), history.span, history.total_bytes) == (0, None, 0)
    filled(history, 1, 2)
    assert history.span == (1, 2, 20)


def test_span_follows_every_append() -> None:
    history = History(2, 1000)
    spans = []
    for seq in range(1, 4):
        history.append(seq, frame(seq, seq))
        spans.append(history.span)
    assert spans == [(1, 1, 1), (1, 2, 3), (2, 3, 5)]


def test_commands_are_frozen_and_slotted() -> None:
    command = commands.Stop(1001, "bye")
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.code = 1000  # type: ignore[misc]
    assert not hasattr(command, "__dict__")
    request = ChannelRequest("", Since("e", 1))
    register = commands.Register(client=None, requests=(request,), greet=True)  # type: ignore[arg-type]
    assert register.notices == () and request.backfill == () and request.origin is None
    item = Numbered(1, "", "e", 1, b"a")
    assert commands.Deliver("e", (item,)) == commands.Deliver("e", (item,))


def test_a_channels_window_is_cut_by_seq_whatever_the_positions() -> None:
    # a named channel's events sit at positions of the whole stream, which may be behind its
    # seqs (its epoch began before this stream's): the replay still goes by seq
    history = History(10, 1000)
    for seq, pos in ((7, 2), (8, 3), (9, 4)):
        history.append(seq, frame(seq), pos)
    assert history.span == (7, 9, 30)
    assert history.entries_after(7) == ((3, frame(8)), (4, frame(9)))
    assert history.entries_after(9) == () and history.entries_after(5) is None


def test_without_a_position_an_event_is_placed_at_its_seq() -> None:
    history = filled(History(10, 1000), 1, 3)
    assert history.entries_after(1) == ((2, frame(2)), (3, frame(3)))


def test_a_window_that_keeps_nothing_counts_no_bytes() -> None:
    assert History(0, 1000).append(1, frame(1)) == 0
    assert History(10, 0).append(1, frame(1)) == 0
