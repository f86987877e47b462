"""Who stays on a channel, in the hub: revocations, identities that expire, channels that break
or find no room, and a broker's channels that are forgotten.

Every client is a real :class:`~sidecar.core.client.Client` over a recording transport; what is
checked is what it reads (events, ``channel:unsubscribed``, ``channel:error``), the close code
it gets, and the counters of ``/api/v1/hub``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.core import hub as hub_module
from sidecar.core.client import Client
from sidecar.core.connection import SendResult
from sidecar.core.hub import Hub
from sidecar.core.identity import MAX_TOKEN_TTL
from sidecar.core.resume import ChannelRequest
from sidecar.core.stream import Delivered, LocalSequencer, Numbered, Position, Revocation
from sidecar.envelope import encode, with_seq
from sidecar.protocol import ChannelErrorCode, CloseCode, PublishRefused, Since
from tests.unit.conftest import HubFactory, got, join, sync
from tests.unit.fakes import FakeClock, FakeTransport, tick

P1, C9 = "project:p1", "chat:c9"


def closes(transport: FakeTransport) -> list[int]:
    return [code for code, _reason in transport.aborts] + [c for c, _r, _b in transport.closes]


# -- revocation ---------------------------------------------------------------------------------


def test_a_revoked_user_leaves_the_channel_at_that_point_of_the_stream(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    _alice, seen = join(hub, P1, C9, user="alice")
    _tab, second = join(hub, P1, user="alice")  # another tab of hers
    _bob, other = join(hub, P1, user="bob")
    hub.publish([tick(1)], P1)
    before = time.time()
    hub.revoke("alice", P1)
    hub.publish([tick(2)], P1)
    hub.publish([tick(3)], C9)
    sync(hub)
    unsubscribed = ("channel:unsubscribed", {"channel": P1, "reason": "revoked"})
    assert got(seen) == [("app:tick", (P1, 1)), unsubscribed, ("app:tick", (C9, 1))]
    assert got(other) == [("app:tick", (P1, 1)), ("app:tick", (P1, 2))]
    assert got(second) == [("app:tick", (P1, 1)), unsubscribed]
    assert hub.snapshot()["revoked"] == 2
    when = hub.revoked_at("alice", P1)
    assert when is not None and before <= when <= time.time()
    assert hub.revoked_at("bob", P1) is None and hub.revoked_at("alice", C9) is None
    assert seen.closes == [] and seen.aborts == []  # the connection stays


def test_revoking_on_a_channel_nobody_holds_is_remembered_for_tokens(make_hub: HubFactory) -> None:
    hub = make_hub()
    hub.revoke("alice", "team:red")
    sync(hub)
    assert hub.revoked_at("alice", "team:red") is not None
    assert hub.snapshot()["revoked"] == 0


def test_a_revoked_channel_idles_from_the_revocation_and_may_be_joined_again(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(channel_ttl=60)
    alice, seen = join(hub, P1, user="alice")
    clock.advance(50)
    hub.revoke("alice", P1)
    sync(hub)
    clock.advance(30)  # idle for 30 s since its last subscriber left (80 since it was made)
    sync(hub)
    assert hub.channel_position(P1) is not None
    clock.advance(31)
    sync(hub)
    assert hub.channel_position(P1) is None and hub.snapshot()["channelsForgotten"] == 1
    assert hub.subscribe(alice, ChannelRequest(P1))
    hub.publish([tick(1)], P1)
    sync(hub)
    assert [kind for kind, _ in got(seen)][-2:] == ["channel:subscribed", "app:tick"]


def test_a_revocation_reaching_a_slow_client_evicts_it(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = join(hub, P1, user="alice")
    transport.outcome = SendResult.BUSY
    transport.gate.clear()
    client.queue_size = 0  # nothing more fits
    hub.revoke("alice", P1)
    sync(hub)
    assert closes(transport) == [CloseCode.SLOW_CONSUMER]
    assert hub.snapshot()["evicted"] == 1 and hub.client_count() == 0


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The hub module's Unix time, moved by the test (whole seconds: exact arithmetic)."""
    now = [float(int(time.time()))]
    fake = SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic)
    monkeypatch.setattr(hub_module, "time", fake)
    return now


def revoked(hub: Hub, users: str) -> list[str]:
    return [user for user in users if hub.revoked_at(user, P1) is not None]


def test_the_revocations_remembered_are_bounded_oldest_first(
    make_hub: HubFactory, wall: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "_MAX_REVOCATIONS", 3)
    hub = make_hub()
    for user in "abcd":
        hub.revoke(user, P1)
        sync(hub)
        wall[0] += 1
    assert revoked(hub, "abcd") == ["b", "c", "d"]
    hub.revoke("b", P1)  # again: now the newest
    hub.revoke("e", P1)
    sync(hub)
    assert revoked(hub, "abcde") == ["b", "d", "e"]
    assert hub.revoked_at("b", P1) == wall[0]


def test_revocations_are_remembered_as_long_as_a_token_lives(
    make_hub: HubFactory, wall: list[float]
) -> None:
    hub = make_hub()
    start = wall[0]
    for user in "abc":
        hub.revoke(user, P1)
        sync(hub)
        wall[0] += 1
    wall[0] = start + 1 + MAX_TOKEN_TTL  # b was revoked exactly one token lifetime ago
    hub.revoke("d", P1)
    sync(hub)
    assert revoked(hub, "abcd") == ["b", "c", "d"]
    wall[0] += 0.5
    hub.revoke("e", P1)
    sync(hub)
    assert revoked(hub, "abcde") == ["c", "d", "e"]
    wall[0] += 2 * MAX_TOKEN_TTL  # all of them but the newest
    hub.revoke("f", P1)
    sync(hub)
    assert revoked(hub, "abcdef") == ["f"]


def test_the_local_sequencer_puts_a_revocation_in_stream_order() -> None:
    handed: list[tuple[str, tuple[Delivered, ...]]] = []
    sequencer = LocalSequencer("e", lambda epoch, items: handed.append((epoch, items)), 4)
    sequencer.publish_items([(P1, b"{}"), ("", b"{}")])
    sequencer.revoke("alice", P1)
    sequencer.publish_items([(P1, b"{}")])
    assert [item.pos for _epoch, items in handed for item in items] == [1, 2, 3, 4]
    assert handed[1] == ("e", (Revocation(3, "alice", P1),))
    assert sequencer.held() == 1


def test_a_revocation_the_hub_cannot_take_is_refused_and_not_counted() -> None:
    def refuse(_epoch: str, _items: tuple[Delivered, ...]) -> None:
        raise PublishRefused("stopped")

    sequencer = LocalSequencer("e", refuse, 4)
    with pytest.raises(PublishRefused):
        sequencer.revoke("alice", P1)
    handed: list[tuple[Delivered, ...]] = []
    sequencer._submit = lambda _epoch, items: handed.append(items)
    sequencer.revoke("alice", P1)
    assert handed == [(Revocation(1, "alice", P1),)]


def test_a_stopped_hub_refuses_a_revocation(clock: FakeClock) -> None:
    hub = Hub(clock=clock, ping_interval=0)
    hub.start()
    assert hub.stop()
    with pytest.raises(PublishRefused):
        hub.revoke("alice", P1)


# -- identities that expire ---------------------------------------------------------------------


def test_an_expired_identity_is_closed_with_4401_and_counted(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub()
    _soon, soon = join(hub, P1, user="a", expires_at=time.time() + 30)
    _later, later = join(hub, user="b", expires_at=time.time() + 300)
    _never, never = join(hub)
    clock.advance(20)
    sync(hub)
    assert closes(soon) == []
    clock.advance(15)
    hub.publish([tick(1)])  # wakes the hub thread after the deadline
    sync(hub)
    assert closes(soon) == [CloseCode.IDENTITY_EXPIRED]
    assert soon.aborts[0][1] == "identity expired"
    assert closes(later) == closes(never) == []
    snapshot = hub.snapshot()
    assert (snapshot["expired"], snapshot["clients"]) == (1, 2)
    clock.advance(300)
    hub.publish([tick(2)])
    sync(hub)
    assert closes(later) == [CloseCode.IDENTITY_EXPIRED] and closes(never) == []
    assert hub.snapshot()["expired"] == 2


def test_an_identity_expiring_after_its_client_left_closes_nothing(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub()
    client, transport = join(hub, user="a", expires_at=time.time() + 30)
    hub.unregister(client)
    sync(hub)
    clock.advance(40)
    hub.publish([tick(1)])
    sync(hub)
    assert closes(transport) == [] and hub.snapshot()["expired"] == 0


# -- no room for a channel ------------------------------------------------------------------------


NO_ROOM = {"code": ChannelErrorCode.LIMIT, "message": "too many channels on this server"}


def test_a_join_with_no_room_for_its_channel_gets_a_channel_error(make_hub: HubFactory) -> None:
    hub = make_hub(max_channel_states=1)
    join(hub, "a:1")
    client, transport = join(hub, "b:1", "a:1")
    status = transport.messages()[0]
    assert status["type"] == "connection:status" and list(status["payload"]["channels"]) == ["a:1"]
    assert got(transport) == [("channel:error", {"channel": "b:1", **NO_ROOM})]
    assert hub.subscribe(client, ChannelRequest("c:1"))
    sync(hub)
    assert got(transport)[-1] == ("channel:error", {"channel": "c:1", **NO_ROOM})
    hub.publish([tick(1)], "a:1")
    sync(hub)
    assert got(transport)[-1] == ("app:tick", ("a:1", 1))


class Broker:
    """A sequencer that numbers nothing itself: events come back through ``Hub.deliver``."""

    def publish_items(self, items: Any, idempotency_key: Any = None) -> list[int]:
        raise AssertionError("not published in these tests")

    def heads(self, channels: Any) -> list[Position]:
        return [Position("e1", 5) for _channel in channels]

    def revoke(self, user: str, channel: str) -> None:
        raise PublishRefused("the broker is unreachable")


@pytest.fixture
def brokered(clock: FakeClock) -> Any:
    hubs: list[Hub] = []

    def make(**options: Any) -> Hub:
        hub = Hub(clock=clock, sequencer=Broker(), ping_interval=0, **options)
        hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        assert hub.stop()


def event(pos: int, seq: int, channel: str = P1, epoch: str = "e1") -> Numbered:
    return Numbered(pos, channel, epoch, seq, with_seq(encode(tick(seq)), seq, channel))


def deliver(hub: Hub, *items: Numbered) -> None:
    assert hub.deliver(hub.epoch, list(items), timeout=1.0)
    sync(hub)


def broker_join(hub: Hub, *channels: str) -> tuple[Client, FakeTransport]:
    transport = FakeTransport()
    client = Client(transport, remote="test")
    origin = Position("e1", 5)
    requests = [ChannelRequest(name, origin=origin) for name in channels]
    assert hub.register(client, requests=[ChannelRequest(""), *requests])
    sync(hub)
    return client, transport


def test_a_gap_in_a_channel_closes_its_subscribers_alone_with_4001(
    brokered: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub = brokered()
    _a, on_p1 = broker_join(hub, P1)
    _b, on_c9 = broker_join(hub, C9)
    deliver(hub, event(1, 6), event(2, 6, C9))
    deliver(hub, event(3, 8), event(4, 7, C9))  # P1 lost its 7
    assert closes(on_p1) == [CloseCode.RESUME] and closes(on_c9) == []
    assert on_p1.closes[0][1] == "events may have been missed: resume"
    assert got(on_p1) == [("app:tick", (P1, 6))]
    assert got(on_c9) == [("app:tick", (C9, 6)), ("app:tick", (C9, 7))]
    snapshot = hub.snapshot()
    assert (snapshot["channel_resets"], snapshot["clients"]) == (1, 1)
    assert hub.channel_position(P1) == Position("e1", 8)  # it goes on from the event
    line = "channel project:p1 broke at e1:8: closing 1 subscribers with 4001 so they resume"
    assert [r.getMessage() for r in caplog.records if r.name == "sidecar.hub"] == [line]
    _c, late = broker_join(hub, P1)
    assert late.messages()[0]["payload"]["channels"][P1]["seq"] == 8


def test_a_channel_breaking_with_nobody_on_it_is_counted_quietly(
    brokered: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub = brokered()
    deliver(hub, event(1, 1, epoch="e2"))
    deliver(hub, event(2, 3, epoch="e2"))
    assert hub.snapshot()["channel_resets"] == 1
    assert [r for r in caplog.records if r.name == "sidecar.hub"] == []


def test_a_broker_hubs_idle_channels_are_forgotten(brokered: Any, clock: FakeClock) -> None:
    hub = brokered(channel_ttl=60)
    deliver(hub, event(1, 6))
    clock.advance(61)
    sync(hub)
    sync(hub)
    assert hub.channel_position(P1) is None and hub.snapshot()["channelsForgotten"] == 1


def test_a_broker_hub_with_no_room_refuses_a_join(brokered: Any) -> None:
    hub = brokered(max_channel_states=1)
    broker_join(hub, "a:1")
    client, transport = broker_join(hub, "b:1")
    assert got(transport) == [("channel:error", {"channel": "b:1", **NO_ROOM})]
    assert hub.subscribe(client, ChannelRequest("c:1", origin=Position("e1", 5)))
    sync(hub)
    assert got(transport)[-1] == ("channel:error", {"channel": "c:1", **NO_ROOM})
    assert hub.snapshot()["channel_errors"] == 1


def test_a_broker_hub_passes_a_revocation_refusal_on(brokered: Any) -> None:
    hub = brokered()
    with pytest.raises(PublishRefused):
        hub.revoke("alice", P1)


def test_a_resume_in_a_broker_hub_recovers_from_its_window(brokered: Any) -> None:
    hub = brokered()
    deliver(hub, event(1, 6), event(2, 7))
    transport = FakeTransport()
    request = ChannelRequest(P1, Since("e1", 6), origin=Position("e1", 7))
    assert hub.register(Client(transport, remote="test"), requests=[request])
    sync(hub)
    assert transport.messages()[0]["payload"]["channels"][P1]["recovered"] is True
    assert got(transport) == [("app:tick", (P1, 7))]


def test_a_broker_hub_behind_another_epoch_of_the_channel_does_not_recover(
    brokered: Any,
) -> None:
    hub = brokered()
    deliver(hub, event(1, 6), event(2, 7))
    transport = FakeTransport()
    request = ChannelRequest(P1, Since("e1", 6), origin=Position("e2", 3))  # the broker moved on
    assert hub.register(Client(transport, remote="test"), requests=[request])
    sync(hub)
    assert transport.messages()[0]["payload"]["channels"][P1]["recovered"] is False
    assert got(transport) == [] and hub.snapshot()["unrecovered_resumes"] == 1


def test_expiries_of_clients_that_left_are_dropped_and_the_rest_still_expire(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub()
    _stays, stays = join(hub, user="a", expires_at=time.time() + 3600)
    _also, also = join(hub, user="b", expires_at=time.time() + 7200)

    def churn(count: int) -> None:
        for _ in range(count):
            client, _transport = join(hub, user="c", expires_at=time.time() + 3600)
            hub.unregister(client)
        sync(hub)

    churn(68)  # 70 entries: at the bound (twice the 3 clients connected, plus 64)
    assert len(hub._expiries) == 70
    churn(1)  # one more: only the connected clients' are kept
    assert len(hub._expiries) == 3
    clock.advance(3601)
    sync(hub)
    assert closes(stays) == [CloseCode.IDENTITY_EXPIRED] and closes(also) == []
    assert hub.snapshot()["expired"] == 1


def test_an_expiry_is_logged_with_its_cause_and_comes_at_its_very_deadline(
    make_hub: HubFactory, clock: FakeClock, wall: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub()
    client, transport = join(hub, user="a", expires_at=wall[0] + 30)
    clock.advance(30)  # exactly the deadline (whole numbers: exact)
    sync(hub)
    assert closes(transport) == [CloseCode.IDENTITY_EXPIRED]
    line = f"client {client.id} (test) dropped: its identity expired, close 4401"
    assert line in [r.getMessage() for r in caplog.records if r.name == "sidecar.hub"]
