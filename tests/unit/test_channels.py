"""Channels in the hub, without a server: audiences, per-channel numbering, resume, bounds.

Every client here is a real :class:`~sidecar.core.client.Client` over a recording transport;
every join is a real registration or subscription, so what is checked is what a client reads.
"""

from __future__ import annotations

import os
import sys
import threading
from types import FrameType
from typing import Any

import pytest

from sidecar import frames
from sidecar.core import hub as hub_module
from sidecar.core.channels import Channels, Verdict
from sidecar.core.hub import Hub
from sidecar.core.resume import ChannelRequest
from sidecar.core.stream import (
    Delivered,
    LocalSequencer,
    Numbered,
    Position,
    Restart,
    StreamTracker,
    Take,
)
from sidecar.envelope import encode, with_seq
from sidecar.protocol import PublishRefused, Since
from tests.unit.conftest import Blocker, HubFactory, sync
from tests.unit.fakes import FakeClock, FakeTransport, new_client, tick

P1, C9 = "project:p1", "chat:c9"


def join(
    hub: Hub, *channels: str, since: dict[str, Since] | None = None, default: bool = True
) -> tuple[Any, FakeTransport]:
    """Register a client on ``channels`` (and the default one unless ``default=False``)."""
    since = since or {}
    requests = [ChannelRequest("", since.get(""))] if default else []
    requests += [ChannelRequest(name, since.get(name)) for name in channels]
    client, transport = new_client()
    assert hub.register(client, requests=requests)
    sync(hub)
    return client, transport


def events(transport: FakeTransport) -> list[tuple[str | None, int, int]]:
    """``(channel, seq, i)`` of every event a client got (status and notices left out)."""
    return [
        (m.get("channel"), m["seq"], m["payload"]["i"]) for m in transport.messages() if "seq" in m
    ]


def status(transport: FakeTransport) -> dict[str, Any]:
    first = transport.messages()[0]
    assert first["type"] == "connection:status"
    payload: dict[str, Any] = first["payload"]
    return payload


# -- audiences -----------------------------------------------------------------------------------


def test_each_window_gets_only_its_channels_with_their_own_seqs(make_hub: HubFactory) -> None:
    hub = make_hub()
    _, first = join(hub, P1)
    _, second = join(hub, C9)
    assert hub.publish([tick(1), tick(2)], P1) == [1, 2]
    assert hub.publish([tick(3)], C9) == [1]
    assert hub.publish([tick(4)]) == [1]  # the default channel: its own numbering
    assert hub.publish([tick(5)], P1) == [3]
    sync(hub)
    assert events(first) == [(P1, 1, 1), (P1, 2, 2), (None, 1, 4), (P1, 3, 5)]
    assert events(second) == [(C9, 1, 3), (None, 1, 4)]


def test_a_client_without_channels_gets_todays_bytes(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, legacy = new_client()
    hub.register(client)  # no channel named: the default channel only
    hub.publish([tick(9)], P1)  # never reaches it, nor uses up a seq
    hub.publish([tick(1)])
    sync(hub)
    status_frame, event = legacy.frames()
    assert event.payload == with_seq(encode(tick(1)), 1)  # byte for byte, no channel key
    assert set(status(legacy)) == {"status", "epoch", "seq", "recovered"}
    assert status_frame.opcode == frames.OP_TEXT


def test_a_named_channel_event_carries_its_channel_after_its_seq(make_hub: HubFactory) -> None:
    hub = make_hub()
    _, transport = join(hub, P1)
    hub.publish([tick(1)], P1)
    sync(hub)
    raw = transport.frames()[-1].payload
    assert raw == encode(tick(1))[:-1] + b',"seq":1,"channel":"project:p1"}'


def test_one_write_per_client_merges_its_channels_in_publish_order(make_hub: HubFactory) -> None:
    hub = make_hub()
    _, both = join(hub, P1, C9)
    _, one = join(hub, C9)
    blocker = threading.Event()
    hub.call(lambda: blocker.wait(5))  # the next publishes wait in the inbox: one batch
    hub.publish_items([(P1, encode(tick(1))), (C9, encode(tick(2))), (P1, encode(tick(3)))])
    blocker.set()
    sync(hub)
    assert events(both) == [(P1, 1, 1), (C9, 1, 2), (P1, 2, 3)]
    assert events(one) == [(C9, 1, 2)]
    writes = both.try_sends
    assert writes == 2  # the status, then the whole batch in one write


def test_fan_out_work_follows_the_audience(make_hub: HubFactory) -> None:
    hub = make_hub()
    listeners = [join(hub, P1)[1] for _ in range(3)]
    others = [join(hub, C9)[1] for _ in range(20)]
    before = [t.try_sends for t in others]
    deliveries = hub.snapshot()["deliveries"]
    hub.publish([tick(1)], P1)
    sync(hub)
    assert hub.snapshot()["deliveries"] - deliveries == 3
    assert [t.try_sends for t in others] == before  # nobody else was even offered it
    assert all(events(t) == [(P1, 1, 1)] for t in listeners)


def _hub_lines_for_a_batch(make_hub: HubFactory, count: int) -> int:
    """Lines of :mod:`sidecar.core` the hub thread runs to fan out one batch of ``count``
    events, each on its own channel with one subscriber (counted with a line tracer)."""
    hub = make_hub()
    names = [f"room:r{i}" for i in range(count)]
    for name in names:
        join(hub, name, default=False)
    core = os.path.dirname(hub_module.__file__)
    counted = [0]

    def tracer(frame: FrameType, event: str, _arg: object) -> Any:
        if not frame.f_code.co_filename.startswith(core):
            return None
        counted[0] += event == "line"
        return tracer

    previous: list[Any] = []

    def start() -> None:
        previous.append(sys.gettrace())
        sys.settrace(tracer)

    blocker = Blocker(hub)
    assert hub.call(start)
    hub.publish_items([(name, encode(tick(i))) for i, name in enumerate(names)])
    blocker.release()
    assert hub.call(lambda: sys.settrace(previous[0] if previous else None))
    sync(hub)
    assert hub.snapshot()["deliveries"] == count  # one batch reached every subscriber
    return counted[0]


def test_a_batch_over_many_channels_costs_work_in_proportion_to_its_size(
    make_hub: HubFactory,
) -> None:
    # fan-out follows the audience: 4x the events over 4x the channels is about 4x the work
    # (the grouping of a batch by channel once scanned the whole batch for each channel)
    small, large = (_hub_lines_for_a_batch(make_hub, count) for count in (32, 128))
    assert large <= 5 * small


# -- subscribe and unsubscribe after connect --------------------------------------------------


def answers(transport: FakeTransport, kind: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in transport.messages() if m["type"] == kind]


def test_subscribe_answers_then_live_events_follow(make_hub: HubFactory) -> None:
    hub = make_hub()
    hub.publish([tick(1), tick(2)], P1)
    client, transport = join(hub)
    hub.subscribe(client, ChannelRequest(P1))
    hub.publish([tick(3)], P1)
    sync(hub)
    [answer] = answers(transport, "channel:subscribed")
    assert answer == {"channel": P1, "epoch": hub.position(P1).epoch, "seq": 2, "recovered": False}
    assert events(transport) == [(P1, 3, 3)]


def test_subscribe_with_since_replays_then_goes_live(make_hub: HubFactory) -> None:
    hub = make_hub()
    epoch = hub.position(P1).epoch
    hub.publish([tick(i) for i in range(1, 6)], P1)
    client, transport = join(hub)
    hub.subscribe(client, ChannelRequest(P1, Since(epoch, 2)))
    hub.publish([tick(6)], P1)
    sync(hub)
    assert answers(transport, "channel:subscribed")[0]["recovered"] is True
    assert [seq for _c, seq, _i in events(transport)] == [3, 4, 5, 6]


def test_unsubscribe_answers_and_nothing_follows(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = join(hub, P1)
    hub.publish([tick(1)], P1)
    hub.unsubscribe(client, P1)
    hub.publish([tick(2)], P1)
    sync(hub)
    assert answers(transport, "channel:unsubscribed") == [{"channel": P1, "reason": "client"}]
    assert events(transport) == [(P1, 1, 1)]
    types = [m["type"] for m in transport.messages()]
    assert types[-1] == "channel:unsubscribed"


@pytest.mark.parametrize(
    ("action", "code"),
    [("subscribe-twice", "already_subscribed"), ("unsubscribe-other", "not_subscribed")],
)
def test_refused_requests_are_channel_errors(make_hub: HubFactory, action: str, code: str) -> None:
    hub = make_hub()
    client, transport = join(hub, P1)
    if action == "subscribe-twice":
        hub.subscribe(client, ChannelRequest(P1))
    else:
        hub.unsubscribe(client, C9)
    sync(hub)
    [error] = answers(transport, "channel:error")
    assert (error["channel"], error["code"]) == ((P1 if action == "subscribe-twice" else C9), code)
    assert transport.is_open
    assert hub.snapshot()["channel_errors"] == 1  # counted once per refusal


def test_the_per_connection_limit_refuses_one_more(make_hub: HubFactory) -> None:
    hub = make_hub(max_channels=2)
    client, transport = join(hub, "a:1", "a:2")
    hub.subscribe(client, ChannelRequest("a:3"))
    hub.unsubscribe(client, "a:1")
    hub.subscribe(client, ChannelRequest("a:4"))  # room again
    sync(hub)
    [error] = answers(transport, "channel:error")
    assert (error["channel"], error["code"]) == ("a:3", "limit")
    assert [a["channel"] for a in answers(transport, "channel:subscribed")] == ["a:4"]


def test_subscribing_while_another_thread_publishes_loses_and_repeats_nothing(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    client, transport = join(hub)
    stop = threading.Event()
    published: list[int] = []

    def publish() -> None:
        while not stop.is_set() and len(published) < 5000:
            published.extend(hub.publish([tick(len(published))], P1))

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        hub.subscribe(client, ChannelRequest(P1))
    finally:
        stop.set()
        thread.join(5)
    sync(hub)
    [answer] = answers(transport, "channel:subscribed")
    got = [seq for _c, seq, _i in events(transport)]
    assert got == list(range(answer["seq"] + 1, published[-1] + 1))


# -- resume per channel ------------------------------------------------------------------------


def test_resume_recovers_each_channel_on_its_own(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=3)
    p1, c9 = hub.position(P1).epoch, hub.position(C9).epoch
    hub.publish([tick(i) for i in range(1, 4)], P1)  # within the window of 3
    hub.publish([tick(i) for i in range(1, 6)], C9)  # 1 and 2 are gone
    since = {P1: Since(p1, 1), C9: Since(c9, 1), "": Since("another-run", 0)}
    _, transport = join(hub, P1, C9, since=since)
    state = status(transport)
    assert state["recovered"] is False  # the default channel: another epoch
    assert state["channels"] == {
        P1: {"epoch": p1, "seq": 3, "recovered": True},
        C9: {"epoch": c9, "seq": 5, "recovered": False},
    }
    assert events(transport) == [(P1, 2, 2), (P1, 3, 3)]  # no partial replay of c9


def test_a_resume_of_several_channels_replays_in_publish_order(make_hub: HubFactory) -> None:
    hub = make_hub()
    p1, c9 = hub.position(P1).epoch, hub.position(C9).epoch
    for i in range(6):
        hub.publish([tick(i)], P1 if i % 2 else C9)
    _, transport = join(hub, P1, C9, since={P1: Since(p1, 0), C9: Since(c9, 0)})
    assert [i for _c, _s, i in events(transport)] == list(range(6))


def test_a_position_then_a_resume_from_it_misses_nothing(make_hub: HubFactory) -> None:
    hub = make_hub()
    hub.publish([tick(1)], P1)
    epoch, seq = hub.position(P1)  # the app loads its state here
    hub.publish([tick(2)], P1)
    _, transport = join(hub, P1, since={P1: Since(epoch, seq)})
    assert status(transport)["channels"][P1]["recovered"] is True
    assert events(transport) == [(P1, 2, 2)]


# -- bounds ---------------------------------------------------------------------------------------


def test_a_burst_on_one_channel_does_not_evict_a_quiet_ones_history(make_hub: HubFactory) -> None:
    size = len(frames.text_frame(with_seq(encode(tick(0)), 1, P1)))
    hub = make_hub(history_bytes=100 * size, history_total_bytes=120 * size)
    quiet = hub.position(P1).epoch
    hub.publish([tick(i) for i in range(10)], P1)
    hub.publish([tick(i) for i in range(1000)], C9)  # a burst: far over the total
    sync(hub)
    assert hub.snapshot()["channelHistoryBytes"] <= 120 * size
    _, transport = join(hub, P1, since={P1: Since(quiet, 0)})
    assert status(transport)["channels"][P1]["recovered"] is True  # all ten are still there
    assert len(events(transport)) == 10


def test_idle_unsubscribed_channels_are_forgotten_after_the_ttl(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(channel_ttl=60)
    first = hub.position(P1).epoch
    hub.publish([tick(1)], P1)
    client, _transport = join(hub, C9)
    hub.publish([tick(1)], C9)
    clock.advance(61)
    hub.publish([tick(2)])  # wakes the hub thread after the sweep is due
    sync(hub)
    sync(hub)
    assert hub.channel_position(P1) is None  # forgotten
    assert hub.channel_position(C9) is not None  # subscribed: kept
    assert hub.position(P1).epoch != first  # it comes back with a new epoch
    assert hub.snapshot()["channelsForgotten"] == 1
    hub.unregister(client)


def test_channel_states_are_bounded_and_subscribed_ones_stay(make_hub: HubFactory) -> None:
    hub = make_hub(max_channel_states=10)
    _client, transport = join(hub, "kept:a")
    for i in range(40):  # one event each on 40 channels nobody listens to
        hub.publish([tick(i)], f"user:{i}")
        sync(hub)
    assert hub.snapshot()["channels"] <= 10
    assert hub.channel_position("kept:a") is not None
    assert hub.channel_position("user:39") is not None  # the most recent ones stay
    hub.publish([tick(99)], "kept:a")
    sync(hub)
    assert events(transport) == [("kept:a", 1, 99)]


def test_publishing_to_a_new_channel_is_refused_while_none_can_go(make_hub: HubFactory) -> None:
    hub = make_hub(max_channel_states=2)
    join(hub, "a:1", "a:2")  # both held, both subscribed
    with pytest.raises(PublishRefused, match="too many channels"):
        hub.publish([tick(0)], "b:1")
    assert hub.publish([tick(0)], "a:1") == [1]  # known channels still take events


# -- the pieces ---------------------------------------------------------------------------------


def item(pos: int, seq: int, channel: str = "", epoch: str = "e") -> Numbered:
    return Numbered(pos, channel, epoch, seq, b"{}")


def test_the_tracker_takes_what_follows_and_restarts_on_a_gap_or_epoch() -> None:
    tracker = StreamTracker("e")
    assert tracker.take("e", [item(1, 1), item(2, 2)]) == [Take((item(1, 1), item(2, 2)))]
    assert tracker.take("e", [item(2, 2)]) == [] and tracker.duplicates == 1
    gap = tracker.take("e", [item(5, 5)])
    assert gap == [Restart("e", 4, "gap in the stream before 5"), Take((item(5, 5),))]
    other = tracker.take("f", [item(1, 1, epoch="f")])
    assert other[0] == Restart("f", 0, "new epoch") and tracker.pos == 1


def test_channels_accept_per_channel_continuity() -> None:
    channels = Channels(
        history_size=10,
        history_bytes=1000,
        total_bytes=1000,
        max_states=10,
        ttl=60,
        clock=FakeClock(),
    )
    assert channels.accept(item(1, 7, P1))[0] is Verdict.TAKE  # unknown: starts at it
    channel = channels.peek(P1)
    assert channel is not None
    channels.append(channel, item(1, 7, P1), b"x")
    assert channels.accept(item(2, 7, P1))[0] is Verdict.DUPLICATE
    assert channels.accept(item(3, 9, P1))[0] is Verdict.BROKE  # a gap in this channel
    assert channel.position == Position("e", 8) and channel.window.span is None


def test_the_local_sequencer_numbers_nothing_it_could_not_hand_over() -> None:
    refuse = [True]

    def submit(_epoch: str, _items: tuple[Delivered, ...]) -> None:
        if refuse[0]:
            raise PublishRefused("full")

    sequencer = LocalSequencer("e", submit, max_channels=2)
    with pytest.raises(PublishRefused):
        sequencer.publish_items([(P1, b"{}")])
    refuse[0] = False
    assert sequencer.publish_items([(P1, b"{}"), ("", b"{}"), (P1, b"{}")]) == [1, 1, 2]
    position = sequencer.heads([P1])[0]
    assert not sequencer.forget(P1, Position(position.epoch, 1))  # not where it is: kept
    assert sequencer.forget(P1, position)
    assert sequencer.heads([P1])[0].epoch != position.epoch


class Broker:
    """A sequencer that numbers nothing itself: events come back through ``Hub.deliver``."""

    def publish_items(self, items: Any, idempotency_key: Any = None) -> list[int]:
        raise AssertionError("not published in these tests")

    def heads(self, channels: Any) -> list[Position]:
        return [Position("e1", 5) for _channel in channels]

    def revoke(self, user: str, channel: str) -> None:
        raise AssertionError("not revoked in these tests")


def test_a_channels_duplicate_is_dropped_counted_and_the_batch_goes_on(clock: FakeClock) -> None:
    hub = Hub(clock=clock, sequencer=Broker(), ping_interval=0)
    hub.start()
    try:
        client, transport = new_client()
        hub.register(client, requests=[ChannelRequest(P1, origin=Position("e1", 5))])
        items = [
            Numbered(p, P1, "e1", s, with_seq(encode(tick(s)), s, P1)) for p, s in [(1, 4), (2, 6)]
        ]
        assert hub.deliver(hub.epoch, items, timeout=1.0)
        sync(hub)
        assert [m.get("seq") for m in transport.messages()[1:]] == [6]
        assert hub.snapshot()["duplicates_dropped"] == 1
    finally:
        assert hub.stop()


def test_after_a_restart_the_tracker_takes_what_follows_in_the_new_epoch() -> None:
    tracker = StreamTracker("e")
    tracker.take("e", [item(1, 1)])
    assert tracker.take("f", [item(5, 5, epoch="f")])[0] == Restart("f", 4, "new epoch")
    assert tracker.take("f", [item(6, 6, epoch="f")]) == [Take((item(6, 6, epoch="f"),))]
    assert (tracker.epoch, tracker.pos) == ("f", 6)
