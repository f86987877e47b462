"""Edges of channels in the hub: what a client reads when its requests are refused, batches over
several channels with clients in one or several of them, a broker's stream restarting with
named channels first, and the public calls on a stopped hub.

Every client is a real :class:`~sidecar.core.client.Client` over a recording transport.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sidecar.core.client import Client
from sidecar.core.connection import SendResult
from sidecar.core.hub import Hub
from sidecar.core.resume import ChannelRequest
from sidecar.core.stream import Numbered, Position
from sidecar.envelope import Event, encode, with_seq
from sidecar.protocol import ChannelErrorCode, CloseCode, PublishRefused, Since
from tests.unit.conftest import Blocker, HubFactory, got, join, sync
from tests.unit.fakes import PATIENCE, FakeClock, FakeTransport, tick

P1, C9 = "project:p1", "chat:c9"


def stall(client: Client, transport: FakeTransport) -> None:
    """Nothing more fits: the next offer to ``client`` is refused."""
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    client.queue_size = 0


def error(channel: str, code: str, message: str) -> tuple[str, dict[str, str]]:
    return ("channel:error", {"channel": channel, "code": code, "message": message})


# -- refused requests: what the client reads -------------------------------------------------------


def test_each_refusal_says_why_and_is_counted(make_hub: HubFactory) -> None:
    hub = make_hub(max_channels=1)
    client, transport = join(hub, P1)
    for request in (P1, C9):
        assert hub.subscribe(client, ChannelRequest(request))
    for name in ("", "x:1"):
        assert hub.unsubscribe(client, name)
    sync(hub)
    assert got(transport) == [
        error(P1, ChannelErrorCode.ALREADY_SUBSCRIBED, f"already in {P1}"),
        error(C9, ChannelErrorCode.LIMIT, "at most 1 channels per connection"),
        error("", ChannelErrorCode.NOT_SUBSCRIBED, "not in ?"),
        error("x:1", ChannelErrorCode.NOT_SUBSCRIBED, "not in x:1"),
    ]
    assert hub.snapshot()["channel_errors"] == 4
    hub.publish([tick(1)])
    sync(hub)
    assert got(transport)[-1] == ("app:tick", (None, 1))  # still on the default channel


def test_leaving_a_channel_one_is_not_on_is_refused_while_others_stay_on_it(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    join(hub, P1)
    client, transport = join(hub)
    assert hub.unsubscribe(client, P1)
    sync(hub)
    assert got(transport) == [error(P1, ChannelErrorCode.NOT_SUBSCRIBED, f"not in {P1}")]
    assert hub.snapshot()["unsubscribes"] == 0


def test_subscribes_and_unsubscribes_are_counted_and_undone(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = join(hub)
    for _ in range(2):
        assert hub.subscribe(client, ChannelRequest(P1))
        assert hub.unsubscribe(client, P1)
    assert hub.subscribe(client, ChannelRequest(C9))
    hub.publish([tick(1)], P1)
    hub.publish([tick(2)], C9)
    sync(hub)
    kinds = [kind for kind, _ in got(transport)]
    assert kinds == ["channel:subscribed", "channel:unsubscribed"] * 2 + [
        "channel:subscribed",
        "app:tick",
    ]
    assert got(transport)[-1] == ("app:tick", (C9, 1))
    snapshot = hub.snapshot()
    assert (snapshot["subscribes"], snapshot["unsubscribes"]) == (3, 2)


@pytest.mark.parametrize("action", ["subscribe", "already", "unsubscribe", "not-in"])
def test_a_slow_client_is_evicted_by_an_answer_that_does_not_fit(
    make_hub: HubFactory, action: str
) -> None:
    hub = make_hub()
    client, transport = join(hub, P1)
    stall(client, transport)
    if action == "subscribe":
        hub.subscribe(client, ChannelRequest(C9))
    elif action == "already":
        hub.subscribe(client, ChannelRequest(P1))
    elif action == "unsubscribe":
        hub.unsubscribe(client, P1)
    else:
        hub.unsubscribe(client, C9)
    sync(hub)
    assert transport.aborts == [(CloseCode.SLOW_CONSUMER, "slow consumer")]
    assert hub.snapshot()["evicted"] == 1 and hub.client_count() == 0


def test_a_stopped_hub_takes_no_channel_request(clock: FakeClock) -> None:
    hub = Hub(clock=clock, ping_interval=0)
    hub.start()
    client, _transport = join(hub)
    assert hub.stop()
    assert hub.subscribe(client, ChannelRequest(P1)) is False
    assert hub.unsubscribe(client, P1) is False


def test_the_window_of_an_unknown_channel_is_none(make_hub: HubFactory) -> None:
    hub = make_hub()
    assert hub.window_span("nobody:1") is None and hub.window_start("nobody:1") is None


# -- batches over several channels -----------------------------------------------------------------


def test_a_client_on_one_channel_of_a_batch_gets_all_of_its_frames(make_hub: HubFactory) -> None:
    hub = make_hub()
    _a, on_p1 = join(hub, P1)
    _b, on_c9 = join(hub, C9)
    _c, on_both = join(hub, P1, C9)
    items = [(P1, encode(tick(1))), (P1, encode(tick(2))), (C9, encode(tick(3)))]
    items += [(P1, encode(tick(4)))]
    hub.publish_items(items)
    sync(hub)
    assert got(on_p1) == [("app:tick", (P1, s)) for s in (1, 2, 3)]
    assert got(on_c9) == [("app:tick", (C9, 1))]
    assert got(on_both) == [
        ("app:tick", (P1, 1)),
        ("app:tick", (P1, 2)),
        ("app:tick", (C9, 1)),
        ("app:tick", (P1, 3)),
    ]
    snapshot = hub.snapshot()
    assert (snapshot["broadcasts"], snapshot["deliveries"]) == (4, 3 + 1 + 4)


@pytest.mark.parametrize("channels", [(P1,), (P1, C9)])
def test_a_slow_client_in_a_batch_of_several_channels_is_evicted(
    make_hub: HubFactory, channels: tuple[str, ...]
) -> None:
    hub = make_hub()
    slow, stalled = join(hub, *channels)
    _fast, fine = join(hub, *channels)
    stall(slow, stalled)
    hub.publish_items([(P1, encode(tick(1))), (C9, encode(tick(2)))])
    sync(hub)
    assert stalled.aborts == [(CloseCode.SLOW_CONSUMER, "slow consumer")]
    assert fine.aborts == [] and len(got(fine)) == len(channels)
    assert hub.snapshot()["evicted"] == 1


def test_broadcasts_go_to_the_channel_they_name(make_hub: HubFactory) -> None:
    hub = make_hub()
    _a, on_p1 = join(hub, P1)
    _b, elsewhere = join(hub)
    assert hub.broadcast(b'{"type":"app:raw","payload":{}}', P1)
    assert hub.broadcast_event(tick(1), P1)
    assert hub.broadcast_many([tick(2), tick(3)], P1) == 2
    sync(hub)
    assert [seq for _kind, seq in got(on_p1)] == [(P1, s) for s in (1, 2, 3, 4)]
    assert got(elsewhere) == []


def test_broadcast_data_naming_its_own_channel_is_refused(make_hub: HubFactory) -> None:
    hub = make_hub()
    with pytest.raises(ValueError, match=r"^broadcast data must not carry channel: pass channel=$"):
        hub.broadcast(b'{"type":"app:raw","channel":"a:1","payload":{}}')


# -- a broker's stream restarting ------------------------------------------------------------------


class Broker:
    """A sequencer that numbers nothing itself: events come back through ``Hub.deliver``."""

    def publish_items(self, items: Any, idempotency_key: Any = None) -> list[int]:
        raise PublishRefused("not published in these tests")

    def heads(self, channels: Any) -> list[Position]:
        return [Position("e1", 0) for _channel in channels]

    def revoke(self, user: str, channel: str) -> None:
        raise PublishRefused("not revoked in these tests")


@pytest.fixture
def brokered(clock: FakeClock) -> Any:
    hub = Hub(clock=clock, sequencer=Broker(), ping_interval=0)
    hub.start()
    yield hub
    assert hub.stop()


def event(pos: int, seq: int, channel: str, epoch: str) -> Numbered:
    return Numbered(pos, channel, epoch, seq, with_seq(encode(tick(seq)), seq, channel))


def test_a_new_stream_that_starts_on_a_named_channel_goes_on_in_the_default_one(
    brokered: Hub,
) -> None:
    hub = brokered
    assert hub.deliver("E2", [event(1, 5, P1, "p"), event(2, 1, "", "E2")], timeout=1.0)
    sync(hub)
    assert (hub.epoch, hub.seq) == ("E2", 1)
    snapshot = hub.snapshot()
    assert (snapshot["channel_resets"], snapshot["duplicates_dropped"]) == (0, 0)
    transport = FakeTransport()
    assert hub.register(Client(transport, remote="test"), Since("E2", 0))
    sync(hub)
    assert transport.messages()[0]["payload"]["recovered"] is True
    assert [m["seq"] for m in transport.messages()[1:]] == [1]


def test_a_new_stream_without_default_events_starts_that_channel_at_zero(brokered: Hub) -> None:
    hub = brokered
    assert hub.deliver("E2", [event(1, 5, P1, "p")], timeout=1.0)
    assert hub.deliver("E2", [event(2, 1, "", "E2")], timeout=1.0)
    sync(hub)
    assert (hub.epoch, hub.seq) == ("E2", 1)
    snapshot = hub.snapshot()
    assert (snapshot["channel_resets"], snapshot["duplicates_dropped"]) == (0, 0)


def test_a_new_stream_whose_default_channel_starts_later_goes_on_from_there(
    brokered: Hub,
) -> None:
    hub = brokered
    assert hub.deliver("E2", [event(7, 2, P1, "p"), event(8, 4, "", "E2")], timeout=1.0)
    sync(hub)
    assert (hub.epoch, hub.seq) == ("E2", 4)
    assert hub.snapshot()["channel_resets"] == 0


def test_a_reset_to_another_position_than_the_seq_goes_on_from_the_position(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    hub.reset("fresh", 3, "start", pos=10)
    sync(hub)
    _client, transport = join(hub)
    assert hub.deliver("fresh", [event(11, 4, "", "fresh")], timeout=1.0)
    sync(hub)
    assert got(transport) == [("app:tick", (None, 4))]
    assert transport.closes == [] and hub.snapshot()["resets"] == 1


# -- what the log says about a drop ----------------------------------------------------------------


def test_a_drop_is_logged_with_the_client_its_peer_and_the_close(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub()
    client, transport = join(hub)
    client.remote = "10.0.0.7:5000"
    stall(client, transport)
    caplog.set_level(logging.WARNING, logger="sidecar.hub")
    hub.publish([tick(1)])
    sync(hub)
    [record] = [r for r in caplog.records if r.name == "sidecar.hub"]
    fields = {key: getattr(record, key, None) for key in ("client", "peer", "code", "reason")}
    assert fields == {
        "client": client.id,
        "peer": "10.0.0.7:5000",
        "code": CloseCode.SLOW_CONSUMER,
        "reason": "slow consumer",
    }


# -- registration ---------------------------------------------------------------------------------


def test_notices_follow_the_status_and_come_before_the_replay(make_hub: HubFactory) -> None:
    hub = make_hub()
    hub.publish([tick(1)])
    sync(hub)
    transport = FakeTransport()
    notice = Event("app:notice", {"n": 1})
    assert hub.register(Client(transport, remote="test"), Since(hub.epoch, 0), notices=[notice])
    sync(hub)
    assert [m["type"] for m in transport.messages()] == [
        "connection:status",
        "app:notice",
        "app:tick",
    ]


def test_a_client_registered_without_greeting_still_gets_its_channels_events(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    hub.publish([tick(0)], P1)  # the channel is known
    sync(hub)
    transport = FakeTransport()
    requests = [ChannelRequest(""), ChannelRequest(P1)]
    assert hub.register(Client(transport, remote="test"), requests=requests, greet=False)
    sync(hub)
    hub.publish([tick(1)], P1)
    hub.publish([tick(2)])
    sync(hub)
    assert [(m.get("channel"), m["seq"]) for m in transport.messages()] == [(P1, 2), (None, 1)]


def test_a_client_off_the_default_channel_is_told_it_did_not_recover_it(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    transport = FakeTransport()
    assert hub.register(Client(transport, remote="test"), requests=[ChannelRequest(P1)])
    sync(hub)
    assert transport.messages()[0]["payload"]["recovered"] is False


def test_a_broker_hub_refuses_one_channel_of_a_join_and_grants_the_next(clock: FakeClock) -> None:
    hub = Hub(clock=clock, sequencer=Broker(), ping_interval=0, max_channel_states=1)
    hub.start()
    try:
        origin = Position("e1", 0)
        join_first = [ChannelRequest("a:1", origin=origin)]
        assert hub.register(Client(FakeTransport(), remote="test"), requests=join_first)
        transport = FakeTransport()
        requests = [ChannelRequest("b:1", origin=origin), ChannelRequest("a:1", origin=origin)]
        assert hub.register(Client(transport, remote="test"), requests=requests)
        sync(hub)
        status, refusal = transport.messages()
        assert list(status["payload"]["channels"]) == ["a:1"]
        assert refusal["payload"]["channel"] == "b:1"
    finally:
        assert hub.stop()


def test_the_snapshot_reports_the_stream_position_and_the_cuts(make_hub: HubFactory) -> None:
    hub = make_hub(history_bytes=2000, history_total_bytes=2000)
    snapshot = hub.snapshot()
    assert (snapshot["pos"], snapshot["channelTrims"], snapshot["gcFullCollections"]) == (0, 0, 0)
    hub.publish([tick(i) for i in range(40)], P1)
    hub.publish([tick(i) for i in range(40)], C9)
    sync(hub)
    snapshot = hub.snapshot()
    assert snapshot["pos"] == 80 and snapshot["channelTrims"] >= 1
    assert snapshot["channelHistoryBytes"] <= 2000


def test_a_resume_of_channels_of_different_rates_replays_in_publish_order(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    p1, c9 = hub.position(P1).epoch, hub.position(C9).epoch
    for i, channel in enumerate((P1, P1, P1, C9, P1)):
        hub.publish([tick(i)], channel)
    transport = FakeTransport()
    requests = [ChannelRequest(P1, Since(p1, 0)), ChannelRequest(C9, Since(c9, 0))]
    assert hub.register(Client(transport, remote="test"), requests=requests)
    sync(hub)
    order = [(m["channel"], m["payload"]["i"]) for m in transport.messages()[1:]]
    assert order == [(P1, 0), (P1, 1), (P1, 2), (C9, 3), (P1, 4)]


def test_a_client_on_one_channel_of_a_batch_gets_both_of_its_frames(make_hub: HubFactory) -> None:
    hub = make_hub()
    _a, on_p1 = join(hub, P1)
    _b, on_c9 = join(hub, C9)
    hub.publish_items([(P1, encode(tick(1))), (C9, encode(tick(2))), (P1, encode(tick(3)))])
    sync(hub)
    assert got(on_p1) == [("app:tick", (P1, 1)), ("app:tick", (P1, 2))]
    assert got(on_c9) == [("app:tick", (C9, 1))]


def test_a_gap_in_the_default_channel_closes_its_subscribers_and_says_so(
    brokered: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = brokered
    epoch = hub.epoch
    _client, transport = join(hub)
    assert hub.deliver(epoch, [event(1, 1, "", epoch), event(2, 3, "", epoch)], timeout=1.0)
    sync(hub)
    assert [c for c, _r, _b in transport.closes] == [CloseCode.RESUME]
    line = f"channel (default) broke at {epoch}:3: closing 1 subscribers with 4001 so they resume"
    assert line in [r.getMessage() for r in caplog.records]
    assert hub.deliver(epoch, [event(3, 5, "", epoch)], timeout=1.0)  # and again
    sync(hub)
    assert hub.snapshot()["channel_resets"] == 2


def test_events_before_a_broken_channel_in_one_batch_still_go_out(brokered: Hub) -> None:
    hub = brokered
    origin = Position("e1", 0)
    on_c9 = FakeTransport()
    assert hub.register(Client(on_c9, remote="test"), requests=[ChannelRequest(C9, origin=origin)])
    assert hub.register(
        Client(FakeTransport(), remote="t"), requests=[ChannelRequest(P1, origin=origin)]
    )
    sync(hub)
    items = [event(1, 1, C9, "e1"), event(2, 2, P1, "e1")]  # P1 skips its 1: it breaks
    assert hub.deliver(hub.epoch, items, timeout=1.0)
    sync(hub)
    assert [(m["channel"], m["seq"]) for m in on_c9.messages()[1:]] == [(C9, 1)]


def test_every_duplicate_of_a_channel_is_counted(brokered: Hub) -> None:
    hub = brokered
    items = [event(1, 1, P1, "e1"), event(2, 2, P1, "e1")]
    assert hub.deliver(hub.epoch, items, timeout=1.0)
    again = [event(3, 1, P1, "e1"), event(4, 2, P1, "e1"), event(5, 3, P1, "e1")]
    assert hub.deliver(hub.epoch, again, timeout=1.0)
    sync(hub)
    assert hub.snapshot()["duplicates_dropped"] == 2
    assert hub.channel_position(P1) == Position("e1", 3)


def test_a_broker_hub_sends_the_notices_of_a_registration(brokered: Hub) -> None:
    transport = FakeTransport()
    notice = Event("app:notice", {"n": 1})
    assert brokered.register(Client(transport, remote="test"), notices=[notice])
    sync(brokered)
    assert [m["type"] for m in transport.messages()] == ["connection:status", "app:notice"]


def test_a_client_still_waiting_to_register_when_the_hub_stops_is_told_why(
    clock: FakeClock,
) -> None:
    hub = Hub(clock=clock, ping_interval=0)
    hub.start()
    blocker = Blocker(hub)
    assert not hub.stop(timeout=0)  # the stop waits behind the blocker
    transport = FakeTransport()
    assert hub.register(Client(transport, remote="test"))  # queued after the stop
    blocker.release()
    assert hub.stop(timeout=PATIENCE)
    transport.wait_closed()
    assert transport.closes[0][:2] == (CloseCode.GOING_AWAY, "server shutting down")


def test_after_a_new_epoch_with_events_the_next_batch_follows_on(brokered: Hub) -> None:
    """The restart moved the tracker back to just before a new epoch's first events after
    take() had moved it past them: the next batch read as a gap and reset everyone again."""
    hub = brokered
    assert hub.deliver("E2", [event(1, 1, "", "E2")], timeout=1.0)
    sync(hub)
    transport = FakeTransport()
    assert hub.register(Client(transport, remote="test"), Since("E2", 1))  # resumed there
    sync(hub)
    assert hub.deliver("E2", [event(2, 2, "", "E2")], timeout=1.0)
    sync(hub)
    assert transport.closes == [] and hub.snapshot()["resets"] == 1
    assert [m["seq"] for m in transport.messages()[1:]] == [2]
