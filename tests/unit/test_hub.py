"""The hub thread without a server: ordering, eviction, keepalive, stop, one-client sends.

Clients are real :class:`~sidecar.core.client.Client` objects over a
:class:`~tests.unit.fakes.FakeTransport`; keepalive runs on a :class:`~tests.unit.fakes.FakeClock`
that the test moves, and a barrier (``hub.call``) wakes the hub thread to look at it. Replay and
the broker's side (``deliver``/``reset``) are in ``test_hub_stream.py``.
"""

from __future__ import annotations

import gc
import inspect
import logging
import re
import threading
import time
import weakref
from typing import Any

import pytest

from sidecar import frames
from sidecar.core.client import Client
from sidecar.core.connection import SendResult
from sidecar.core.hub import Hub, PublishRefused
from sidecar.core.stream import on_default
from sidecar.envelope import Event, encode, with_seq
from sidecar.protocol import SEQ_SPLICE_MAX, CloseCode
from tests.unit.conftest import Blocker, HubFactory, sync
from tests.unit.fakes import (
    PATIENCE,
    FakeClock,
    FakeTransport,
    new_client,
    seqs,
    tick,
    wait_until,
)


def joined(hub: Hub, clock: FakeClock | None = None, **config: Any) -> FakeTransport:
    """Register a new client (``Config`` overrides) and wait for its greeting; its transport."""
    client, transport = new_client(clock, **config)
    assert hub.register(client)
    sync(hub)
    assert transport.messages()[0]["type"] == "connection:status"
    return transport


def frame_size(event: Event, seq: int) -> int:
    """Bytes of the frame the hub builds for ``event`` as broadcast number ``seq``."""
    return len(frames.text_frame(with_seq(encode(event), seq)))


# -- ordering -----------------------------------------------------------------------------------


def test_concurrent_publishers_get_one_seq_order_and_the_seqs_they_were_told(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    transport = joined(hub)
    publishers, batches, size = 4, 30, 5
    told: dict[int, list[list[int]]] = {p: [] for p in range(publishers)}
    start = threading.Barrier(publishers)

    def publish(p: int) -> None:
        start.wait(PATIENCE)
        for b in range(batches):
            batch = [tick(b * size + k, p=p) for k in range(size)]
            told[p].append(hub.publish(batch))

    threads = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * PATIENCE)
    total = publishers * batches * size
    got = transport.wait_messages(total + 1)[1:]
    assert seqs(got) == list(range(1, total + 1))
    for p in range(publishers):
        mine = [m for m in got if m["payload"]["p"] == p]
        assert [m["payload"]["i"] for m in mine] == list(range(batches * size))
        assert [m["seq"] for m in mine] == [s for batch in told[p] for s in batch]
        assert all(batch == list(range(batch[0], batch[0] + size)) for batch in told[p])
    assert hub.seq == total
    assert hub.snapshot()["broadcasts"] == total


def test_broadcasts_waiting_in_the_inbox_go_out_as_one_write(make_hub: HubFactory) -> None:
    hub = make_hub()
    transport = joined(hub)
    before = transport.try_sends
    blocker = Blocker(hub)
    assert hub.publish([tick(0), tick(1)]) == [1, 2]
    assert hub.publish([tick(2)]) == [3]
    assert hub.broadcast_event(tick(3))
    blocker.release()
    sync(hub)
    assert transport.try_sends == before + 1  # four events, three commands: one write
    assert seqs(transport.messages()) == [1, 2, 3, 4]


def test_a_batch_holds_at_most_256_events(make_hub: HubFactory) -> None:
    hub = make_hub()
    transport = joined(hub)
    before = transport.try_sends
    blocker = Blocker(hub)
    for i in range(257):
        hub.publish([tick(i)])
    blocker.release()
    sync(hub)
    assert transport.try_sends == before + 2
    assert seqs(transport.messages()) == list(range(1, 258))


def test_every_client_gets_the_same_frames_and_deliveries_are_counted(make_hub: HubFactory) -> None:
    hub = make_hub()
    transports = [joined(hub) for _ in range(3)]
    hub.publish([tick(0), tick(1)])
    sync(hub)
    broadcast = [t.frames()[1:] for t in transports]
    assert broadcast[0] == broadcast[1] == broadcast[2]
    assert [f.json()["seq"] for f in broadcast[0]] == [1, 2]
    snapshot = hub.snapshot()
    assert (snapshot["broadcasts"], snapshot["deliveries"], snapshot["clients"]) == (2, 6, 3)


# -- eviction -----------------------------------------------------------------------------------


def stall(transport: FakeTransport) -> None:
    """From now on the fast path finds the transport busy and the writer's write blocks."""
    transport.outcome = SendResult.BUSY
    transport.gate.clear()


def stalled_client(hub: Hub, **config: Any) -> tuple[Client, FakeTransport]:
    """A registered client (``Config`` overrides) that takes nothing from now on."""
    remote = config.pop("remote", "test")
    client, transport = new_client(**config)
    client.remote = remote
    hub.register(client)
    sync(hub)
    stall(transport)
    return client, transport


def test_a_full_queue_of_items_evicts_with_4008(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = stalled_client(hub, queue_size=3, max_pending_bytes=1 << 30)
    for i in range(3):  # three batches, three queued items: full, not over
        hub.publish([tick(i)])
        sync(hub)
    assert hub.client_count() == 1 and not transport.aborts
    hub.publish([tick(3)])
    sync(hub)
    assert transport.aborts == [(CloseCode.SLOW_CONSUMER, "slow consumer")]
    assert client.ended_by == "slow-consumer"
    snapshot = hub.snapshot()
    assert (snapshot["evicted"], snapshot["clients"], snapshot["unregistered"]) == (1, 0, 1)


def test_a_full_queue_of_bytes_evicts_with_4008(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub()
    size = frame_size(tick(0), 1)
    client, transport = stalled_client(hub, queue_size=100, max_pending_bytes=2 * size)
    for i in range(2):  # exactly max_pending_bytes queued: kept
        hub.publish([tick(i)])
        sync(hub)
    assert hub.client_count() == 1
    hub.publish([tick(2)])
    sync(hub)
    assert transport.aborts == [(CloseCode.SLOW_CONSUMER, "slow consumer")]
    assert client.ended_by == "slow-consumer"
    assert "(2 writes queued)" in caplog.text  # the bytes bound acted, far below 100 items


def test_one_item_larger_than_the_byte_bound_is_still_queued(make_hub: HubFactory) -> None:
    hub = make_hub()
    transport = joined(hub, max_pending_bytes=10)
    stall(transport)
    hub.publish([tick(0, blob="x" * 100)])
    sync(hub)
    assert hub.client_count() == 1 and not transport.aborts
    transport.gate.set()
    assert seqs(transport.wait_messages(2)) == [1]


def test_an_unanswerable_ping_evicts_a_stalled_client(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(ping_interval=10)
    transport = joined(hub, clock, queue_size=1)
    stall(transport)
    hub.publish([tick(0)])
    sync(hub)
    clock.advance(10)
    sync(hub)
    assert transport.aborts == [(CloseCode.SLOW_CONSUMER, "slow consumer")]
    snapshot = hub.snapshot()
    assert (snapshot["evicted"], snapshot["keepalive_drops"]) == (1, 0)


def test_a_send_to_a_client_whose_queue_filled_meanwhile_evicts_it(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = stalled_client(hub, queue_size=2)
    hub.publish([tick(0)])
    sync(hub)
    blocker = Blocker(hub)
    hub.publish([tick(1)])  # will fill the queue before the send below is handled
    assert hub.send_to_client(client, tick(2))  # room when asked: accepted
    blocker.release()
    sync(hub)
    assert transport.aborts == [(CloseCode.SLOW_CONSUMER, "slow consumer")]
    assert hub.snapshot()["evicted"] == 1
    assert not hub.send_to_client(client, tick(3))  # gone


def test_a_full_queue_refuses_a_send_without_evicting(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = stalled_client(hub, queue_size=1)
    hub.publish([tick(0)])
    sync(hub)
    assert not hub.send_to_client(client, tick(1))
    sync(hub)
    assert hub.client_count() == 1 and not transport.aborts


def test_an_eviction_is_logged_once_with_the_backlog(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sidecar.hub")
    hub = make_hub()
    client, _transport = stalled_client(hub, queue_size=1, remote="10.0.0.1:5")
    for i in range(3):
        hub.publish([tick(i)])
        sync(hub)
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert lines == [
        f"client {client.id} (10.0.0.1:5) dropped: slow consumer (1 writes queued), close 4008"
    ]


# -- keepalive ------------------------------------------------------------------------------------


def pings(transport: FakeTransport) -> int:
    return sum(1 for f in transport.frames() if f.opcode == frames.OP_PING)


def pinged(make_hub: HubFactory, clock: FakeClock, **options: Any) -> tuple[Hub, FakeTransport]:
    """A hub (keepalive every 10 s) with one client that has just been pinged."""
    hub = make_hub(ping_interval=10, **options)
    transport = joined(hub, clock)
    clock.advance(10)
    sync(hub)
    assert pings(transport) == 1
    return hub, transport


def test_the_first_ping_goes_out_after_one_interval_not_before(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(ping_interval=10)
    transport = joined(hub, clock)
    clock.advance(9.5)
    sync(hub)
    assert pings(transport) == 0
    clock.advance(0.5)
    sync(hub)
    assert pings(transport) == 1
    assert transport.frames()[-1].payload == b""


def test_each_client_is_pinged_one_interval_after_it_came_not_all_at_once(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    """Pinging every client at one instant woke every reader thread for its pong at once:
    seconds of stall at 10,000 connections. Each client keeps the phase it came with."""
    hub = make_hub(ping_interval=10)
    early = joined(hub, clock)
    clock.advance(4)
    late = joined(hub, clock)
    clock.advance(6)  # 10 s after the first, 6 s after the second
    sync(hub)
    assert (pings(early), pings(late)) == (1, 0)
    early.last_received = clock.now  # its pong
    clock.advance(3.9)
    sync(hub)
    assert (pings(early), pings(late)) == (1, 0)
    clock.advance(0.1)  # 10 s after the second
    sync(hub)
    assert (pings(early), pings(late)) == (1, 1)
    clock.advance(6)  # 20 s after the first: its second ping, not the second's
    sync(hub)
    assert (pings(early), pings(late)) == (2, 1)


def test_a_client_that_left_is_never_pinged_and_the_others_keep_their_turn(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(ping_interval=10)
    client, leaving = new_client(clock)
    assert hub.register(client)
    staying = joined(hub, clock)
    hub.unregister(client)
    sync(hub)
    clock.advance(10)
    sync(hub)
    assert (pings(leaving), pings(staying)) == (0, 1)


def test_a_client_that_left_is_freed_before_its_ping_turn(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    """Its turn must not keep it (its connection, its buffers) alive for an interval: 1,000
    short sessions held 95 MiB that way."""
    hub = make_hub(ping_interval=10)
    client, _transport = new_client(clock)
    assert hub.register(client)
    sync(hub)
    hub.unregister(client)
    sync(hub)
    gone = weakref.ref(client)
    del client
    gc.collect()
    assert gone() is None


def test_the_turns_of_many_short_sessions_are_compacted_and_the_others_keep_theirs(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    """100 sessions come and go within an interval (the turns are compacted once they
    outnumber the clients); the one that stays is still pinged on time, the others never."""
    hub = make_hub(ping_interval=10)
    staying = joined(hub, clock)
    gone = []
    for _ in range(100):
        client, transport = new_client(clock)
        assert hub.register(client)
        hub.unregister(client)
        gone.append(transport)
    late = joined(hub, clock)  # registered after the compaction: its turn is kept too
    clock.advance(10)
    sync(hub)
    assert (pings(staying), pings(late)) == (1, 1)
    assert not any(pings(t) for t in gone)
    assert hub.snapshot()["clients"] == 2


def test_a_silent_peer_is_dropped_with_1011_at_the_timeout_not_before(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(ping_interval=10, ping_timeout=20)
    client, transport = new_client(clock)
    hub.register(client)
    sync(hub)
    clock.advance(10)  # the ping
    sync(hub)
    clock.advance(10)  # 10 s after it: still outstanding, no second ping
    sync(hub)
    assert pings(transport) == 1 and not transport.aborts
    clock.advance(10)  # 20 s after it: the timeout
    sync(hub)
    assert transport.aborts == [(CloseCode.INTERNAL_ERROR, "keepalive timeout")]
    assert client.ended_by == "keepalive-timeout"
    snapshot = hub.snapshot()
    assert (snapshot["keepalive_drops"], snapshot["evicted"], snapshot["clients"]) == (1, 0, 0)


def test_the_timeout_defaults_to_the_interval(make_hub: HubFactory, clock: FakeClock) -> None:
    hub, transport = pinged(make_hub, clock)
    clock.advance(9.9)
    sync(hub)
    assert not transport.aborts
    clock.advance(0.1)
    sync(hub)
    assert transport.aborts == [(CloseCode.INTERNAL_ERROR, "keepalive timeout")]


def test_a_peer_that_answers_each_ping_stays(make_hub: HubFactory, clock: FakeClock) -> None:
    hub = make_hub(ping_interval=10)
    transport = joined(hub, clock)
    for expected in range(1, 6):
        clock.advance(10)
        sync(hub)
        assert pings(transport) == expected
        transport.last_received = clock.advance(1)  # its pong
        clock.advance(-1)
    assert not transport.aborts
    assert hub.snapshot()["keepalive_drops"] == 0


def test_bytes_received_at_the_instant_of_the_ping_count_as_an_answer(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub, transport = pinged(make_hub, clock)
    transport.last_received = clock.now
    clock.advance(10)
    sync(hub)
    assert pings(transport) == 2 and not transport.aborts


def test_keepalive_off_never_pings(make_hub: HubFactory, clock: FakeClock) -> None:
    hub = make_hub(ping_interval=0)
    transport = joined(hub, clock)
    clock.advance(1e6)
    sync(hub)
    assert pings(transport) == 0 and not transport.aborts


# -- stop, drop_all, one-client sends -------------------------------------------------------------


def test_stop_closes_every_client_with_1001_and_refuses_everything_after(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    idle = joined(hub)
    busy_client, busy = new_client()
    hub.register(busy_client)
    sync(hub)
    stall(busy)
    hub.publish([tick(0)])
    sync(hub)
    assert hub.stop()
    assert idle.closes == [(CloseCode.GOING_AWAY, "server shutting down", False)]
    busy.gate.set()  # the writer flushes what is queued, then closes (it may block)
    busy.wait_closed()
    assert busy.closes == [(CloseCode.GOING_AWAY, "server shutting down", True)]
    assert seqs(busy.messages()) == [1]
    assert not hub.is_running() and hub.client_count() == 0
    with pytest.raises(PublishRefused, match="stopped"):
        hub.publish([tick(1)])
    assert not hub.broadcast_event(tick(1))
    assert not hub.register(new_client()[0])
    assert not hub.call(lambda: None)
    assert not hub.drop_all(1000, "x")
    assert not hub.send_to_client(busy_client, tick(1))


def test_stop_with_a_custom_code_and_an_unstarted_hub() -> None:
    hub = Hub()
    assert hub.stop()  # never started: nothing to wait for
    hub = Hub()
    hub.start()
    client, transport = new_client()
    hub.register(client)
    sync(hub)
    assert hub.stop(4500, "bye")
    assert transport.closes == [(4500, "bye", False)]
    with pytest.raises(RuntimeError, match="already started"):
        hub.start()


def test_drop_all_closes_each_client_with_the_code_and_counts_nothing_as_eviction(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    pairs = [new_client() for _ in range(2)]
    for client, _transport in pairs:
        hub.register(client)
    assert hub.drop_all(4501, "not welcome")
    sync(hub)
    for client, transport in pairs:
        assert transport.aborts == [(4501, "not welcome")]
        assert client.ended_by == "not-welcome"
    snapshot = hub.snapshot()
    assert (snapshot["clients"], snapshot["evicted"], snapshot["unregistered"]) == (0, 0, 2)


def test_drop_all_abrupt_shuts_the_sockets_down_without_a_close_frame(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    assert hub.drop_all(1000, "x", abrupt=True)
    sync(hub)
    assert transport.shutdowns == 1 and not transport.aborts and not transport.closes
    assert hub.client_count() == 0
    hub.publish([tick(0)])
    sync(hub)
    assert seqs(transport.messages()) == []


def test_send_to_client_carries_no_seq_and_takes_none(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    other = joined(hub)
    hub.register(client)
    hub.publish([tick(0)])
    assert hub.send_to_client(client, tick(1))
    hub.publish([tick(2)])
    sync(hub)
    got = transport.messages()[1:]
    assert [(m["payload"]["i"], m.get("seq")) for m in got] == [(0, 1), (1, None), (2, 2)]
    assert [m["payload"]["i"] for m in other.messages()[1:]] == [0, 2]
    assert hub.seq == 2 and hub.snapshot()["sent_to_client"] == 1


def test_plain_envelope_dicts_are_sent_and_broadcast_like_events(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    assert hub.send_to_client(client, {"type": "chat:ack", "payload": {"i": 1}})
    assert hub.broadcast_event({"type": "app:tick", "payload": {"i": 2}})
    assert hub.publish([{"type": "app:tick", "payload": {"i": 3}}]) == [2]
    assert hub.broadcast_many([{"type": "app:tick", "payload": {"i": 4}}]) == 1
    sync(hub)
    got = [(m["type"], m["payload"]["i"], m.get("seq")) for m in transport.messages()[1:]]
    assert got == [
        ("chat:ack", 1, None),
        ("app:tick", 2, 1),
        ("app:tick", 3, 2),
        ("app:tick", 4, 3),
    ]
    with pytest.raises(TypeError):
        hub.send_to_client(client, ["chat:ack", {}])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connection:status"):
        hub.broadcast_event({"type": "connection:status", "payload": {}})


def test_send_to_a_gone_or_unregistered_client_is_false(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, _transport = new_client()
    hub.register(client)
    hub.unregister(client)
    hub.unregister(client)  # idempotent
    sync(hub)
    assert not hub.send_to_client(client, tick(0))
    stranger, stranger_transport = new_client()
    assert hub.send_to_client(stranger, tick(0))  # accepted, but it is not a client
    sync(hub)
    assert stranger_transport.written == b""
    snapshot = hub.snapshot()
    assert (snapshot["unregistered"], snapshot["sent_to_client"], snapshot["clients"]) == (1, 0, 0)


def test_send_to_client_refuses_an_event_over_max_event_bytes(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(max_event_bytes=200)
    client, _transport = new_client()
    hub.register(client)
    event = tick(0, blob="x" * 200)
    assert not hub.send_to_client(client, event)
    assert "larger than 200 bytes" in caplog.text
    fits = tick(0, blob="x" * (200 - len(encode(tick(0, blob="")))))
    assert len(encode(fits)) == 200
    assert hub.send_to_client(client, fits)
    with pytest.raises(ValueError, match="frame larger"):  # 207 bytes and a 4-byte header
        hub.send_frame(client, frames.text_frame(b"x" * 207))
    assert hub.send_frame(client, frames.text_frame(b"x" * 206))  # the header allowance


def test_send_to_client_is_refused_when_the_inbox_is_full(make_hub: HubFactory) -> None:
    hub = make_hub(inbox_limit=1)
    client, _transport = new_client()
    hub.register(client)
    sync(hub)
    blocker = Blocker(hub)
    assert hub.send_to_client(client, tick(0))
    assert not hub.send_to_client(client, tick(1))
    blocker.release()


# -- the inbox limit and publishing checks ------------------------------------------------------


def test_publishing_beyond_the_inbox_limit_is_refused_and_counted(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(inbox_limit=3)
    transport = joined(hub)
    blocker = Blocker(hub)
    assert hub.publish([tick(0), tick(1)]) == [1, 2]
    with pytest.raises(PublishRefused, match=r"overloaded \(3 events waiting\)"):
        hub.publish([tick(2), tick(3)])  # 2 + 2 > 3: all or nothing
    assert hub.publish([tick(4)]) == [3]  # exactly the limit
    assert not hub.broadcast_event(tick(5))
    assert hub.broadcast_many([tick(6)]) == 0
    snapshot = hub.snapshot()
    assert (snapshot["pending"], snapshot["refused_broadcasts"]) == (3, 3)
    assert "hub inbox full (3 waiting)" in caplog.text
    blocker.release()
    sync(hub)
    assert hub.snapshot()["pending"] == 0
    assert [m["payload"]["i"] for m in transport.messages()[1:]] == [0, 1, 4]
    assert hub.publish([tick(7)]) == [4]  # room again; no seq was used by a refusal


def test_only_some_refusals_are_logged(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(inbox_limit=1)
    blocker = Blocker(hub)
    hub.publish([tick(0)])
    for _ in range(1000):
        assert not hub.broadcast_event(tick(1))
    blocker.release()
    assert caplog.text.count("hub inbox full") == 2  # the first and the 1000th


def test_publish_refuses_an_event_over_max_event_bytes(make_hub: HubFactory) -> None:
    hub = make_hub(max_event_bytes=300)
    base = len(encode(tick(0, blob="")))
    fits = tick(0, blob="x" * (300 - SEQ_SPLICE_MAX - base))
    assert hub.publish([fits]) == [1]
    with pytest.raises(ValueError, match="larger than 300 bytes"):
        hub.publish([tick(1), tick(0, blob="x" * (301 - SEQ_SPLICE_MAX - base))])
    assert hub.publish([]) == []
    assert hub.broadcast_many([]) == 0
    assert hub.broadcast_many([tick(2), tick(3)]) == 2
    sync(hub)
    assert hub.seq == 3


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object with a type"),
        (b'{"type": "Bad Name"}', "is not namespace:kebab-case"),
        (b'{"type": "connection:status"}', "sent by the hub itself"),
        (b'{"type": "app:x", "seq": 1}', "must not carry seq"),
        # what a broker's relay would skip, and what JSON.parse refuses: never accepted
        (b'{"type": "app:x", "payload": {"n": NaN}}', "not JSON: NaN"),
        (b'{"type": "app:x", "payload": {"n": -Infinity}}', "not JSON: -Infinity"),
        (b'{"type": "connection:status", "type": "app:x"}', "not JSON: a key is repeated"),
        ('{"type": "app:x"}'.encode("utf-16"), "broadcast data is not JSON"),
    ],
)
def test_broadcast_refuses_what_is_not_an_envelope(
    make_hub: HubFactory, data: bytes, problem: str
) -> None:
    hub = make_hub()
    with pytest.raises(ValueError, match=problem):
        hub.broadcast(data)


def test_broadcast_splices_seq_into_the_bytes_as_given(make_hub: HubFactory) -> None:
    hub = make_hub()
    transport = joined(hub)
    assert hub.broadcast(' {"type":"app:x","payload":{"a":1}}\n')
    assert hub.broadcast(b'{"type":"app:y"}')
    sync(hub)
    texts = [f.payload for f in transport.frames()[1:]]
    assert texts == [b'{"type":"app:x","payload":{"a":1},"seq":1}', b'{"type":"app:y","seq":2}']


def test_autostart_starts_the_hub_on_first_use(clock: FakeClock) -> None:
    hub = Hub(clock=clock, autostart=True)
    try:
        assert hub.client_count() == 0 and hub.snapshot()["clients"] == 0
        assert hub.publish([tick(0)]) == [1]
        assert hub.is_running()
    finally:
        assert hub.stop()
    assert not hub.is_running()  # stopped for good: no restart
    with pytest.raises(PublishRefused):
        hub.publish([tick(1)])


def test_a_failing_call_is_logged_and_the_hub_goes_on(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub()

    def boom() -> None:
        raise RuntimeError("the caller's bug")

    assert hub.call(boom)
    sync(hub)
    assert [r.getMessage() for r in caplog.records] == [f"hub.call({boom!r}) failed"]
    assert "the caller's bug" in caplog.text  # with its traceback
    assert hub.publish([tick(0)]) == [1]


# -- what operators read: counters, thread names, log lines, messages -----------------------------


def test_counters_add_up_over_several_events(make_hub: HubFactory, clock: FakeClock) -> None:
    hub = make_hub(ping_interval=10, queue_size=1)
    transports = [joined(hub, clock) for _ in range(3)]
    hub.publish([tick(0), tick(1)])
    sync(hub)
    hub.publish([tick(2)])
    sync(hub)
    first, second = new_client(), new_client()
    hub.register(first[0])
    hub.register(second[0])
    assert hub.send_to_client(first[0], tick(9)) and hub.send_to_client(second[0], tick(9))
    sync(hub)
    clock.advance(10)  # everyone is pinged; nobody answers
    sync(hub)
    clock.advance(10)  # the two silent ones that were pinged are dropped
    sync(hub)
    snapshot = hub.snapshot()
    assert snapshot["deliveries"] == 2 * 3 + 1 * 3
    assert (snapshot["registered"], snapshot["sent_to_client"]) == (5, 2)
    assert (snapshot["keepalive_drops"], snapshot["pending"]) == (5, 0)
    assert all(t.aborts for t in transports)


def test_two_evictions_count_two(make_hub: HubFactory) -> None:
    hub = make_hub()
    for _ in range(2):
        stalled_client(hub, queue_size=1)
    for i in range(2):
        hub.publish([tick(i)])
        sync(hub)
    assert hub.snapshot()["evicted"] == 2


def test_an_answered_ping_is_not_repeated_before_the_next_interval(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub, transport = pinged(make_hub, clock)
    transport.last_received = clock.advance(1)
    for _ in range(3):
        sync(hub)
    assert pings(transport) == 1


def test_one_outstanding_ping_does_not_hold_up_the_others(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub(ping_interval=10, ping_timeout=30)
    silent = [joined(hub, clock) for _ in range(20)]
    answering = joined(hub, clock)
    clock.advance(10)
    sync(hub)
    answering.last_received = clock.advance(1)
    clock.advance(9)
    sync(hub)
    assert pings(answering) == 2  # pinged again, whatever order the clients are in
    assert all(pings(t) == 1 for t in silent)


def test_the_hub_pings_on_time_by_itself() -> None:
    real = Hub(ping_interval=0.05)
    real.start()
    try:
        client, transport = new_client()
        transport.last_received = float("inf")  # always answered
        real.register(client)
        started = time.monotonic()
        wait_until(lambda: pings(transport) >= 5)
        assert time.monotonic() - started < 2.0  # 0.25 s on time; a late wake-up takes seconds
    finally:
        assert real.stop()


def test_keepalive_and_drop_all_say_why_in_the_log(
    make_hub: HubFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(ping_interval=10)
    client, _ = new_client(clock)
    client.remote = "peer:1"
    hub.register(client)
    sync(hub)
    clock.advance(10)
    sync(hub)
    clock.advance(10)
    sync(hub)
    other, _ = new_client()
    other.remote = "peer:2"
    hub.register(other)
    hub.drop_all(4501, "bye now")
    sync(hub)
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.hub"]
    assert lines == [
        f"client {client.id} (peer:1) dropped: nothing received within 10 s of a ping, close 1011",
        f"client {other.id} (peer:2) dropped: dropped by the app (bye now), close 4501",
    ]


def test_registration_is_logged_at_debug(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "sidecar.hub")
    hub = make_hub()
    client = new_client()[0]
    hub.register(client)
    sync(hub)
    assert f"client {client.id} registered (1 clients)" in [r.getMessage() for r in caplog.records]


def test_refusals_are_logged_at_the_first_the_thousandth_and_every_100000th(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(inbox_limit=1)
    blocker = Blocker(hub, hold=120)  # 100,000 calls take seconds under mutmut's tracing
    hub.publish_encoded([b'{"type":"app:x"}'])
    logged = []
    for n in range(1, 100_001):
        with pytest.raises(PublishRefused):
            hub.publish_encoded([b'{"type":"app:x"}'])
        if n in (1, 999, 1000, 99_999, 100_000):
            logged.append(len(caplog.records))
    blocker.release()
    assert logged == [1, 1, 2, 2, 3]
    assert caplog.records[0].getMessage() == "hub inbox full (1 waiting): broadcast refused"


def test_oversized_sends_are_logged_with_the_client_and_type(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub(max_event_bytes=100)
    client = new_client()[0]
    assert not hub.send_to_client(client, tick(0, blob="x" * 100))
    assert [r.getMessage() for r in caplog.records] == [
        f"send_to_client({client.id}, app:tick) refused: event larger than 100 bytes"
    ]


def test_the_hub_thread_is_a_named_daemon(make_hub: HubFactory) -> None:
    hub = make_hub()
    seen: list[threading.Thread] = []
    hub.call(lambda: seen.append(threading.current_thread()))
    sync(hub)
    assert [(t.name, t.daemon) for t in seen] == [("sidecar-hub", True)]


def test_each_hub_run_has_its_own_16_hex_digit_epoch(make_hub: HubFactory) -> None:
    first, second = make_hub(), make_hub()
    for hub in (first, second):
        assert re.fullmatch("[0-9a-f]{16}", hub.epoch)
        assert hub.snapshot()["epoch"] == hub.epoch
    assert first.epoch != second.epoch


def test_the_snapshot_of_a_fresh_hub(make_hub: HubFactory) -> None:
    snapshot = make_hub().snapshot()
    assert {k: snapshot[k] for k in ("seq", "historyEvents", "historyBytes", "pending")} == {
        "seq": 0,
        "historyEvents": 0,
        "historyBytes": 0,
        "pending": 0,
    }


def test_pending_counts_every_queued_command(make_hub: HubFactory) -> None:
    hub = make_hub()
    client = new_client()[0]
    blocker = Blocker(hub)
    hub.deliver(hub.epoch, on_default(hub.epoch, [(1, b'{"seq":1}')]), 1.0)
    hub.deliver(hub.epoch, on_default(hub.epoch, [(2, b'{"seq":2}'), (3, b'{"seq":3}')]), 1.0)
    hub.send_frame(client, b"\x81\x00")
    hub.send_frame(client, b"\x81\x00")
    assert hub.snapshot()["pending"] == 5
    blocker.release()
    sync(hub)
    assert hub.snapshot()["pending"] == 0


def test_a_hub_is_not_started_unless_asked() -> None:
    hub = Hub()
    assert not hub.is_running()
    with pytest.raises(PublishRefused, match=r"^the hub is stopped$"):
        hub.publish([tick(0)])
    lazy = Hub(autostart=True)
    assert lazy.stop()  # stopped before its first use: it never starts
    assert not lazy.is_running()
    with pytest.raises(PublishRefused):
        lazy.publish([tick(0)])


def test_stop_gives_up_waiting_after_its_timeout(make_hub: HubFactory) -> None:
    hub = make_hub()
    blocker = Blocker(hub)
    started = time.monotonic()
    assert not hub.stop(timeout=0.05)
    assert time.monotonic() - started < 1.0
    blocker.release()


def test_a_closed_client_is_gone_for_send_to_client(make_hub: HubFactory) -> None:
    hub = make_hub()
    client = new_client()[0]
    hub.register(client)
    hub.reset("next", 0, "test")
    sync(hub)
    assert client.gone
    assert not hub.send_to_client(client, tick(0))


def test_the_messages_of_refused_arguments() -> None:
    refusals = {
        b'{"type": "nocolon"}': "event type 'nocolon' is not namespace:kebab-case",
        b'{"type": "app:x", "seq": 3}': "broadcast data must not carry seq: the hub assigns it",
        b"[1]": "broadcast data must be a JSON object with a type",
        b'{"type": "chat:send"}': "chat:send is a client-to-server event, never broadcast",
    }
    hub = Hub()
    hub.start()
    try:
        with pytest.raises(RuntimeError, match=r"^hub already started$"):
            hub.start()
        for data, message in refusals.items():
            with pytest.raises(ValueError) as info:
                hub.broadcast(data)
            assert str(info.value) == message
    finally:
        assert hub.stop()


def test_the_documented_defaults() -> None:
    assert inspect.signature(Hub.stop).parameters["timeout"].default == 2.0


def test_closed_says_whether_stop_was_called(make_hub: HubFactory) -> None:
    hub = make_hub()
    assert not hub.closed and hub.is_running()
    assert hub.stop(timeout=PATIENCE)
    assert hub.closed and not hub.is_running()
    assert Hub(autostart=True).closed is False


def test_a_client_registering_while_the_hub_stops_is_closed_not_forgotten(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    blocker = Blocker(hub)
    hub.stop(timeout=0)  # the stop waits in the inbox behind the blocker
    client, transport = new_client()
    queued = hub.register(client)  # still accepted: the hub thread has not seen the stop
    blocker.release()
    assert hub._stopped.wait(PATIENCE)
    if queued:
        transport.wait_closed()
        assert transport.closes[0][0] == CloseCode.GOING_AWAY
    assert client.gone
    assert not hub.register(new_client()[0])  # after the stop: refused at once
