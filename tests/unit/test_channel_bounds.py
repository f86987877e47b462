"""The bounds of :class:`~sidecar.core.channels.Channels`, on its own (the hub thread's object).

What is checked is what a resuming client and the monitoring would see: which events each
channel's window still holds (its ``span``), which channels are still known, and the
counters ``/api/v1/hub`` reports (``channelHistoryBytes``, ``channelsForgotten``,
``channelTrims``).
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar.core.channels import EVICTION_SCAN, Channel, Channels, Verdict
from sidecar.core.stream import Numbered, Position
from tests.unit.fakes import FakeClock

#: Every frame here is this long, so that byte bounds count frames.
SIZE = 10


def make(
    clock: FakeClock | None = None,
    *,
    total: int = 1000,
    size: int = 100,
    states: int = 10,
    ttl: float = 60,
    **kw: Any,
) -> Channels:
    return Channels(
        history_size=size,
        history_bytes=1000,
        total_bytes=total,
        max_states=states,
        ttl=ttl,
        clock=clock or FakeClock(),
        **kw,
    )


def fill(channels: Channels, name: str, count: int, *, epoch: str = "e") -> Channel:
    """Append ``count`` events to ``name`` (created at 0 if unknown)."""
    channel = channels.ensure(name, Position(epoch, 0))
    assert channel is not None
    for _ in range(count):
        seq = channel.seq + 1
        item = Numbered(seq, name, channel.epoch, seq, b"{}")
        assert channels.accept(item) == (Verdict.TAKE, channel)
        channels.append(channel, item, b"x" * SIZE)
    return channel


def held(channel: Channel) -> tuple[int, int] | None:
    """``(first, last)`` seq of what the channel's window holds."""
    span = channel.window.span
    return None if span is None else (span[0], span[1])


def test_windows_are_cut_evenly_from_the_largest_down_to_ninety_percent() -> None:
    channels = make()  # a total of 1000 bytes: 100 frames
    quiet = fill(channels, "", 10)
    a = fill(channels, "a:1", 40)
    b = fill(channels, "b:1", 50)
    assert (channels.total_bytes, channels.trims) == (1000, 0)  # at the bound: nothing cut
    fill(channels, "b:1", 1)
    assert channels.trims == 1
    assert (held(b), held(a), held(quiet)) == ((12, 51), (1, 40), (1, 10))
    assert channels.total_bytes == 900


def test_a_cut_shares_the_target_among_the_windows_above_it() -> None:
    channels = make()
    quiet = fill(channels, "", 11)
    a = fill(channels, "a:1", 44)
    b = fill(channels, "b:1", 46)  # 1010 bytes: cut to 900, two windows of 39 frames
    assert channels.trims == 1
    assert (held(b), held(a), held(quiet)) == ((8, 46), (6, 44), (1, 11))
    assert channels.total_bytes == 890
    assert sum(c.window.total_bytes for c in channels) == channels.total_bytes


def test_equal_windows_are_cut_alike_and_a_small_one_is_left_alone() -> None:
    channels = make(total=20)  # the bound is at least one window's (1000 bytes)
    assert channels.total_bytes_bound == 1000
    channels = make(total=1000, size=1000)
    for name in ("", "a:1", "b:1", "c:1"):
        fill(channels, name, 25)  # 1000 bytes
    fill(channels, "d:1", 1)  # 1010: four windows of 250 and one of 10
    assert sorted(c.window.total_bytes for c in channels) == [10, 220, 220, 220, 220]
    assert channels.total_bytes == 890


def test_restarting_and_clearing_channels_frees_their_bytes() -> None:
    channels = make()
    default = fill(channels, "", 5)
    a = fill(channels, "a:1", 3)
    fill(channels, "b:1", 2)
    assert channels.total_bytes == 100
    channels.restart(a, Position("f", 7))
    assert (a.position, held(a), channels.total_bytes) == (Position("f", 7), None, 70)
    channels.clear_named()
    assert (len(channels), channels.total_bytes, held(default)) == (0, 50, (1, 5))
    assert channels.peek("b:1") is None and list(channels) == [default]


def test_idle_channels_go_after_the_ttl_unless_subscribed_or_in_flight(
    clock: FakeClock,
) -> None:
    in_flight = {"c:1"}
    channels = make(clock, may_forget=lambda name, _position: name not in in_flight)
    for name in ("a:1", "b:1", "c:1", "d:1"):
        fill(channels, name, 2)
        clock.advance(1)
    listener: Any = object()
    channels.peek("a:1").subscribers.add(listener)  # type: ignore[union-attr]
    clock.advance(57)  # a:1 and b:1 idle for 60 s, c:1 for 59
    assert channels.sweep() == 1  # b:1 (a:1 is subscribed)
    assert [c.name for c in channels] == ["", "c:1", "d:1", "a:1"]
    assert channels.total_bytes == 60 and channels.forgotten == 1
    clock.advance(2)
    assert channels.sweep() == 1  # d:1 (c:1 is in flight), a:1 looked at again later
    assert [c.name for c in channels] == ["", "c:1", "a:1"]
    in_flight.clear()
    clock.advance(60)
    assert channels.sweep() == 1 and [c.name for c in channels] == ["", "a:1"]
    assert channels.forgotten == 3 and channels.total_bytes == 20


def test_a_subscriber_leaving_starts_the_idle_time(clock: FakeClock) -> None:
    channels = make(clock)
    a = fill(channels, "a:1", 1)
    fill(channels, "b:1", 1)
    listener: Any = object()
    a.subscribers.add(listener)
    clock.advance(100)
    channels.left(a)  # one still there: it stays busy
    assert channels.sweep() == 1 and channels.peek("a:1") is a
    a.subscribers.clear()
    channels.left(a)
    clock.advance(59)
    assert channels.sweep() == 0 and channels.peek("a:1") is a
    clock.advance(1)
    assert channels.sweep() == 1 and channels.peek("a:1") is None


def test_a_new_channel_takes_the_place_of_the_least_recently_used_idle_one() -> None:
    channels = make(states=3)
    a, b, c = (fill(channels, name, 1) for name in ("a:1", "b:1", "c:1"))
    listener: Any = object()
    a.subscribers.add(listener)
    fill(channels, "b:1", 1)  # b:1 is used again: c:1 is the idle one used least recently
    assert channels.ensure("d:1", Position("e", 0)) is not None
    assert [ch.name for ch in channels] == ["", "a:1", "b:1", "d:1"]
    assert (channels.forgotten, channels.total_bytes) == (1, 30)
    b.subscribers.add(listener)
    channels.peek("d:1").subscribers.add(listener)  # type: ignore[union-attr]
    assert channels.ensure("e:1", Position("e", 0)) is None  # every one is subscribed
    assert channels.accept(Numbered(9, "e:1", "e", 1, b"{}")) == (Verdict.NO_ROOM, None)
    assert len(channels) == 3 and channels.peek(c.name) is None


def test_a_channel_in_flight_is_not_evicted_for_a_new_one() -> None:
    channels = make(states=1, may_forget=lambda _name, _position: False)
    fill(channels, "a:1", 1)
    assert channels.ensure("b:1", Position("e", 0)) is None
    assert channels.forgotten == 0 and channels.total_bytes == 10


def test_eviction_looks_at_a_bounded_number_of_channels() -> None:
    channels = make(states=EVICTION_SCAN + 1)
    listener: Any = object()
    for i in range(EVICTION_SCAN):
        fill(channels, f"busy:{i}", 0).subscribers.add(listener)
    channels.ensure("idle:1", Position("e", 0))
    assert channels.ensure("new:1", Position("e", 0)) is None  # idle:1 is past the scan
    assert channels.peek("idle:1") is not None


def test_above_the_high_water_idle_channels_go_down_to_the_low_water() -> None:
    channels = make(states=10)
    listener: Any = object()
    for i in range(9):
        fill(channels, f"u:{i}", 1)
    assert channels.shrink() == 0  # 9 is not above 90 %
    channels.peek("u:0").subscribers.add(listener)  # type: ignore[union-attr]
    fill(channels, "u:9", 1)
    assert channels.shrink() == 2  # 10 -> 8, the subscribed one kept
    assert [c.name for c in channels][1:4] == ["u:0", "u:3", "u:4"]
    assert channels.forgotten == 2 and channels.total_bytes == 80


def test_a_channel_shows_its_name_and_place() -> None:
    channels = make()
    assert repr(fill(channels, "a:1", 2)) == "<Channel a:1 e:2>"
    assert repr(channels.default) == "<Channel (default) :0>"


def test_a_window_cut_to_a_size_frees_the_oldest() -> None:
    channels = make()
    a = fill(channels, "a:1", 5)
    assert a.window.trim_to(30) == 20  # 50 bytes, 30 kept
    assert held(a) == (3, 5) and a.window.total_bytes == 30
    assert a.window.trim_to(29) == 10
    assert held(a) == (4, 5) and a.window.total_bytes == 20
    assert a.window.trim_to(20) == 0 and a.window.trim_to(0) == 20
    assert held(a) is None and a.window.trim_to(0) == 0


def test_each_cut_is_counted_and_logged(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, "sidecar.hub")
    channels = make()
    fill(channels, "", 10)
    fill(channels, "a:1", 40)
    fill(channels, "b:1", 51)  # the first cut: to 400 bytes each (900 in all)
    fill(channels, "c:1", 21)  # 1110: the second
    assert channels.trims == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.hub"]
    assert lines[0] == "windows cut to 400 bytes each (900 in all)"
    assert len(lines) == 2


def test_two_windows_alike_are_cut_alike_down_to_the_last() -> None:
    channels = make()
    quiet = fill(channels, "", 50)
    busy = fill(channels, "a:1", 51)  # 1010: both cut to 450 bytes
    assert (held(busy), held(quiet)) == ((7, 51), (6, 50))
    assert channels.total_bytes == 900


def test_one_sweep_forgets_every_idle_channel_at_once(clock: FakeClock) -> None:
    channels = make(clock)
    for name in ("a:1", "b:1", "c:1"):
        fill(channels, name, 1)
    clock.advance(60)
    assert channels.sweep() == 3 and len(channels) == 0
