"""The numbered stream of the hub: replay on resume, broker backfill, deliver/reset, the window.

Every resume is a real registration: the client's first frame is ``connection:status`` with
``recovered``, followed by the replayed broadcasts (or none).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sidecar import frames
from sidecar.core.hub import Hub
from sidecar.core.resume import ChannelRequest, replay_cost
from sidecar.core.stream import Position, on_default
from sidecar.envelope import encode, new_event, with_seq
from sidecar.protocol import CloseCode, Since
from tests.unit.conftest import Blocker, HubFactory, sync
from tests.unit.fakes import PATIENCE, FakeClock, FakeTransport, new_client, seqs, tick

#: The monotonic clock's resolution: Windows' ticks every ~16 ms, so two readings differ by
#: whole ticks and a wait of 0.3 s can read as 0.29999… (a bound, never a race).
TICK = time.get_clock_info("monotonic").resolution


def envelope(i: int, seq: int) -> bytes:
    """An envelope as a broker hands it over: encoded, ``seq`` spliced in."""
    return with_seq(encode(tick(i)), seq)


def publish(hub: Hub, count: int) -> None:
    hub.publish([tick(i) for i in range(count)])
    sync(hub)


def resume(
    hub: Hub, since: Since | None, backfill: tuple[tuple[int, bytes], ...] = ()
) -> tuple[dict[str, Any], list[int]]:
    """Register with ``since``; the status payload and the seqs replayed after it."""
    client, transport = new_client()
    assert hub.register(client, since, backfill=on_default(hub.epoch, backfill))
    sync(hub)
    first, *rest = transport.messages()
    assert first["type"] == "connection:status"
    return first["payload"], seqs(rest)


# -- replay edges ---------------------------------------------------------------------------------


def test_a_fresh_client_gets_the_current_position_and_no_replay(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 3)
    status, replayed = resume(hub, None)
    assert status == {"status": "connected", "epoch": hub.epoch, "seq": 3, "recovered": False}
    assert replayed == []
    assert hub.snapshot()["unrecovered_resumes"] == 0  # not a resume at all


def test_resuming_an_empty_stream_at_zero_is_recovered(make_hub: HubFactory) -> None:
    hub = make_hub()
    status, replayed = resume(hub, Since(hub.epoch, 0))
    assert (status["recovered"], status["seq"], replayed) == (True, 0, [])
    snapshot = hub.snapshot()
    assert (snapshot["replays"], snapshot["replayed_events"]) == (1, 0)


def test_resuming_at_the_last_seq_replays_nothing(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 5)
    status, replayed = resume(hub, Since(hub.epoch, 5))
    assert (status["recovered"], replayed) == (True, [])


def test_resuming_inside_the_window_replays_exactly_what_was_missed(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=3)
    publish(hub, 5)  # the window holds 3, 4, 5
    assert resume(hub, Since(hub.epoch, 3)) == ({**resume(hub, None)[0], "recovered": True}, [4, 5])
    status, replayed = resume(hub, Since(hub.epoch, 2))  # the exact edge: 3 is still there
    assert (status["recovered"], replayed) == (True, [3, 4, 5])
    snapshot = hub.snapshot()
    assert (snapshot["replays"], snapshot["replayed_events"]) == (2, 5)


def test_resuming_from_before_the_window_is_not_recovered(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=3)
    publish(hub, 5)
    status, replayed = resume(hub, Since(hub.epoch, 1))  # 2 is gone
    assert (status["recovered"], status["seq"], replayed) == (False, 5, [])
    assert hub.snapshot()["unrecovered_resumes"] == 1


@pytest.mark.parametrize("seq", [6, 100])
def test_resuming_from_ahead_of_the_stream_is_not_recovered(make_hub: HubFactory, seq: int) -> None:
    hub = make_hub()
    publish(hub, 5)
    status, replayed = resume(hub, Since(hub.epoch, seq))
    assert (status["recovered"], replayed) == (False, [])


def test_resuming_another_epoch_is_not_recovered(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 5)
    status, replayed = resume(hub, Since("someotherrun", 3))
    assert (status["recovered"], status["epoch"], replayed) == (False, hub.epoch, [])


def test_the_byte_bound_of_the_window_limits_the_replay(make_hub: HubFactory) -> None:
    size = len(frames.text_frame(envelope(0, 1)))
    hub = make_hub(history_size=100, history_bytes=2 * size)
    publish(hub, 5)
    assert hub.snapshot()["historyEvents"] == 2
    assert resume(hub, Since(hub.epoch, 3))[1] == [4, 5]
    assert resume(hub, Since(hub.epoch, 2))[0]["recovered"] is False


def test_history_off_recovers_only_an_up_to_date_client(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=0)
    publish(hub, 5)
    assert resume(hub, Since(hub.epoch, 4))[0]["recovered"] is False
    assert resume(hub, Since(hub.epoch, 5))[0]["recovered"] is True


def test_the_replay_arrives_whole_in_one_write_after_the_status(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 4)
    client, transport = new_client()
    hub.register(client, Since(hub.epoch, 1))
    sync(hub)
    assert transport.try_sends == 1
    assert [f.json().get("seq") for f in transport.frames()] == [None, 2, 3, 4]


def test_greet_false_registers_without_status_or_replay(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 2)
    client, transport = new_client()
    hub.register(client, Since(hub.epoch, 0), greet=False)
    sync(hub)
    assert transport.written == b""
    assert hub.client_count() == 1
    snapshot = hub.snapshot()
    assert (snapshot["replays"], snapshot["unrecovered_resumes"]) == (0, 0)


def test_a_custom_status_factory_builds_the_greeting(clock: FakeClock) -> None:
    calls: list[tuple[str, int, bool]] = []

    def status(epoch: str, seq: int, recovered: bool) -> Any:
        calls.append((epoch, seq, recovered))
        return new_event("app:hello", {"seq": seq})

    hub = Hub(clock=clock, status=status)
    hub.start()
    try:
        publish(hub, 2)
        client, transport = new_client()
        hub.register(client, Since(hub.epoch, 1))
        sync(hub)
        assert calls == [(hub.epoch, 2, True)]
        assert [m["type"] for m in transport.messages()] == ["app:hello", "app:tick"]
    finally:
        assert hub.stop()


# -- backfill from a broker ---------------------------------------------------------------------


def windowed(make_hub: HubFactory) -> Hub:
    """A hub with events 1..5 whose window holds only 4 and 5."""
    hub = make_hub(history_size=2)
    publish(hub, 5)
    return hub


def test_backfill_joins_the_local_window(make_hub: HubFactory) -> None:
    hub = windowed(make_hub)
    backfill = ((2, envelope(1, 2)), (3, envelope(2, 3)))
    status, replayed = resume(hub, Since(hub.epoch, 1), backfill)
    assert (status["recovered"], replayed) == (True, [2, 3, 4, 5])


def test_backfill_up_to_the_last_seq_needs_no_window(make_hub: HubFactory) -> None:
    hub = windowed(make_hub)
    backfill = tuple((s, envelope(s, s)) for s in range(3, 6))
    assert resume(hub, Since(hub.epoch, 2), backfill) == (
        resume(hub, Since(hub.epoch, 5))[0],
        [3, 4, 5],
    )


@pytest.mark.parametrize(
    "backfill",
    [
        (),  # none read
        ((3, b"{}"),),  # does not start right after since
        ((2, b"{}"), (4, b"{}")),  # a hole
        ((2, b"{}"),),  # ends before the window (4) begins
    ],
)
def test_backfill_that_does_not_connect_is_not_recovered(
    make_hub: HubFactory, backfill: tuple[tuple[int, bytes], ...]
) -> None:
    hub = windowed(make_hub)
    status, replayed = resume(hub, Since(hub.epoch, 1), backfill)
    assert (status["recovered"], replayed) == (False, [])


def test_backfill_with_history_off_recovers_up_to_the_last_seq(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=0)
    publish(hub, 5)
    backfill = tuple((s, envelope(s, s)) for s in range(3, 6))
    status, replayed = resume(hub, Since(hub.epoch, 2), backfill)
    assert (status["recovered"], replayed) == (True, [3, 4, 5])


def test_backfill_ahead_of_the_hub_stops_at_its_last_seq(make_hub: HubFactory) -> None:
    # the broker has 6 and 7 already; this hub fans them out live, so they must not come twice
    hub = windowed(make_hub)
    backfill = tuple((s, envelope(s, s)) for s in range(2, 8))
    status, replayed = resume(hub, Since(hub.epoch, 1), backfill)
    assert (status["recovered"], replayed) == (True, [2, 3, 4, 5])


# -- deliver and reset (the broker's side) --------------------------------------------------------


def delivered(hub: Hub, epoch: str, items: list[tuple[int, bytes]]) -> None:
    assert hub.deliver(epoch, on_default(epoch, items), timeout=1.0)
    sync(hub)


def test_delivered_envelopes_reach_clients_as_they_are(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    delivered(hub, hub.epoch, [(1, envelope(0, 1)), (2, envelope(1, 2))])
    delivered(hub, hub.epoch, [(3, envelope(2, 3))])
    assert [f.payload for f in transport.frames()[1:]] == [envelope(i, i + 1) for i in range(3)]
    assert hub.seq == 3 and hub.snapshot()["historyEvents"] == 3


def closes(transport: FakeTransport) -> list[int]:
    return [code for code, _reason, _block in transport.closes]


def test_a_new_epoch_closes_clients_with_4001_and_clears_the_history(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    delivered(hub, hub.epoch, [(1, envelope(0, 1)), (2, envelope(1, 2))])
    delivered(hub, "newepoch", [(1, envelope(9, 1))])
    assert closes(transport) == [CloseCode.RESUME]
    assert transport.closes[0][1] == "events may have been missed: resume"
    assert (hub.epoch, hub.seq, hub.client_count()) == ("newepoch", 1, 0)
    snapshot = hub.snapshot()
    assert (snapshot["historyEvents"], snapshot["resets"]) == (1, 1)
    assert resume(hub, Since("newepoch", 0))[1] == [1]


def test_a_gap_in_the_delivered_stream_resets_to_before_the_gap(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    delivered(hub, hub.epoch, [(1, envelope(0, 1))])
    epoch = hub.epoch
    delivered(hub, epoch, [(5, envelope(4, 5)), (6, envelope(5, 6))])
    assert closes(transport) == [CloseCode.RESUME]
    assert (hub.epoch, hub.seq) == (epoch, 6)
    assert seqs(transport.messages()) == [1]  # nothing after the gap reached the old client
    assert resume(hub, Since(epoch, 4))[1] == [5, 6]
    assert resume(hub, Since(epoch, 1))[0]["recovered"] is False


def test_a_batch_of_deliveries_is_cut_at_a_gap(make_hub: HubFactory) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    sync(hub)
    blocker = Blocker(hub)
    assert hub.deliver(hub.epoch, on_default(hub.epoch, [(1, envelope(0, 1))]), 1.0)
    assert hub.deliver(hub.epoch, on_default(hub.epoch, [(2, envelope(1, 2))]), 1.0)
    assert hub.deliver(hub.epoch, on_default(hub.epoch, [(7, envelope(6, 7))]), 1.0)
    blocker.release()
    sync(hub)
    assert seqs(transport.messages()) == [1, 2]  # delivered before the reset closed it
    assert closes(transport) == [CloseCode.RESUME]
    assert hub.seq == 7


def test_an_empty_delivery_changes_nothing_even_in_another_epoch(make_hub: HubFactory) -> None:
    # (the relay delivers items only; it announces a new epoch with reset())
    hub = make_hub()
    publish(hub, 3)
    epoch = hub.epoch
    delivered(hub, "other", [])
    assert (hub.epoch, hub.seq) == (epoch, 3)
    assert hub.snapshot()["historyEvents"] == 3


def test_reset_goes_on_from_the_given_point(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    publish(hub, 2)
    hub.reset("fresh", 40, "start")
    sync(hub)
    assert closes(transport) == [CloseCode.RESUME]
    assert "stream continuity broke (start): closing 1 clients with 4001" in caplog.text
    assert (hub.epoch, hub.seq, hub.window_start()) == ("fresh", 40, None)
    delivered(hub, "fresh", [(41, envelope(0, 41))])
    assert resume(hub, Since("fresh", 40))[1] == [41]


def test_redelivered_envelopes_are_dropped_and_counted(make_hub: HubFactory) -> None:
    # the relay may offer again what the hub already has (a retry after a timeout)
    hub = make_hub()
    client, transport = new_client()
    hub.register(client)
    for batch in ((1, 2, 3), (3, 4), (2, 3, 4), (2, 3, 4, 5)):
        delivered(hub, hub.epoch, [(s, envelope(s, s)) for s in batch])
    assert seqs(transport.messages()) == [1, 2, 3, 4, 5]
    assert closes(transport) == []
    assert hub.snapshot()["duplicates_dropped"] == 1 + 3 + 3


def test_reset_drops_add_up_over_resets(make_hub: HubFactory) -> None:
    hub = make_hub()
    for epoch, clients in (("second", 2), ("third", 1)):
        for _ in range(clients):
            assert hub.register(new_client()[0])
        hub.reset(epoch, 0, "test")
        sync(hub)
    snapshot = hub.snapshot()
    assert (snapshot["reset_drops"], snapshot["resets"], hub.client_count()) == (3, 2, 0)


# -- wait_for_seq (a resume that reached a worker whose relay is behind) -------------------------


def waiting(hub: Hub, epoch: str, seq: int) -> tuple[threading.Thread, list[bool]]:
    """A thread in ``wait_for_seq`` with a timeout far past the test's patience."""
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(hub.wait_for_seq(epoch, seq, 6 * PATIENCE)), daemon=True
    )
    thread.start()
    return thread, result


def returned(thread: threading.Thread, result: list[bool]) -> bool:
    """What the waiter returned; fails if it is still waiting (it was never woken)."""
    thread.join(PATIENCE)
    assert not thread.is_alive(), "wait_for_seq was not woken"
    return result[0]


def test_wait_for_seq_is_true_at_once_when_the_hub_is_there(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 2)
    assert hub.wait_for_seq(hub.epoch, 2, timeout=0)
    assert hub.wait_for_seq(hub.epoch, 1, timeout=0)


@pytest.mark.parametrize("other_epoch", [False, True])
def test_wait_for_seq_is_false_after_its_timeout(make_hub: HubFactory, other_epoch: bool) -> None:
    hub = make_hub()
    publish(hub, 2)
    epoch, seq = ("other", 1) if other_epoch else (hub.epoch, 3)
    started = time.monotonic()
    assert not hub.wait_for_seq(epoch, seq, timeout=0.05)
    assert time.monotonic() - started >= 0.05 - TICK


def test_wait_for_seq_wakes_on_each_fan_out_that_gets_there(make_hub: HubFactory) -> None:
    hub = make_hub()
    first, second = waiting(hub, hub.epoch, 1), waiting(hub, hub.epoch, 2)
    delivered(hub, hub.epoch, [(1, envelope(0, 1))])
    assert returned(*first) is True
    assert second[0].is_alive()  # 2 has not come yet
    delivered(hub, hub.epoch, [(2, envelope(1, 2))])
    assert returned(*second) is True


def test_wait_for_seq_wakes_on_a_reset_into_its_epoch(make_hub: HubFactory) -> None:
    hub = make_hub()
    waiter = waiting(hub, "next", 7)
    hub.reset("next", 7, "test")
    assert returned(*waiter) is True


def test_wait_for_seq_gives_up_when_the_hub_stops(make_hub: HubFactory) -> None:
    hub = make_hub()
    waiter = waiting(hub, hub.epoch, 1)
    assert hub.stop(timeout=PATIENCE)
    assert returned(*waiter) is False
    started = time.monotonic()
    assert not hub.wait_for_seq(hub.epoch, 1, timeout=PATIENCE)  # stopped: no wait at all
    assert time.monotonic() - started < PATIENCE


def test_deliver_waits_for_room_in_the_inbox_up_to_its_timeout(make_hub: HubFactory) -> None:
    hub = make_hub(inbox_limit=2)
    blocker = Blocker(hub)
    assert hub.deliver(
        hub.epoch, on_default(hub.epoch, [(1, envelope(0, 1)), (2, envelope(1, 2))]), 1.0
    )
    started = time.monotonic()
    assert not hub.deliver(hub.epoch, on_default(hub.epoch, [(3, envelope(2, 3))]), 0.05)
    assert time.monotonic() - started >= 0.05 - TICK
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            hub.deliver(hub.epoch, on_default(hub.epoch, [(3, envelope(2, 3))]), 5.0)
        )
    )
    waiter.start()
    blocker.release()
    waiter.join(PATIENCE)
    assert result == [True]
    sync(hub)
    assert hub.seq == 3


def test_deliver_to_a_stopped_hub_waits_out_its_timeout_then_refuses(make_hub: HubFactory) -> None:
    # a stopped hub makes the relay wait (its retry loop must not spin), then says no
    hub = make_hub(inbox_limit=1)
    blocker = Blocker(hub)
    assert hub.deliver(hub.epoch, on_default(hub.epoch, [(1, envelope(0, 1))]), 1.0)
    hub.stop(timeout=0)
    blocker.release()
    started = time.monotonic()
    assert not hub.deliver(hub.epoch, on_default(hub.epoch, [(2, envelope(1, 2))]), 0.3)
    assert time.monotonic() - started >= 0.3 - TICK


def test_a_sequencer_numbers_what_is_published(clock: FakeClock) -> None:
    published: list[list[bytes]] = []
    keys: list[str | None] = []

    class Sequencer:
        def publish_items(self, items: Any, idempotency_key: Any = None) -> list[int]:
            assert {channel for channel, _data in items} == {""}
            published.append([data for _channel, data in items])
            keys.append(idempotency_key)
            return [10 + i for i in range(len(items))]

        def heads(self, channels: Any) -> list[Position]:
            return [Position("e", 0) for _channel in channels]

        def revoke(self, user: str, channel: str) -> None:
            raise AssertionError("not revoked in this test")

    hub = Hub(clock=clock, sequencer=Sequencer())
    hub.start()
    try:
        event = tick(0)
        assert hub.publish([event, event]) == [10, 11]
        assert published == [[encode(event), encode(event)]]
        sync(hub)
        assert hub.seq == 0  # nothing is broadcast until the relay delivers it
        assert hub.publish([]) == [] and len(published) == 1
        assert hub.publish([event], idempotency_key="k-1") == [10]  # the sequencer's to honour
        assert keys == [None, "k-1"] and len(published) == 2
    finally:
        assert hub.stop()


# -- the window as other threads see it ------------------------------------------------------------


def estimate(hub: Hub, since: Since) -> int:
    """What a resume from ``since`` would replay, as the replay budget is charged."""
    return replay_cost(hub, ChannelRequest("", since), hub.config.history_size)


def test_the_replay_estimate_and_window_start(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=4)
    assert estimate(hub, Since(hub.epoch, 0)) == 0
    assert hub.window_start() is None
    publish(hub, 6)  # the window holds 3..6, frames of equal size
    size = len(frames.text_frame(envelope(0, 1)))
    snapshot = hub.snapshot()
    assert (snapshot["historyEvents"], snapshot["historyBytes"]) == (4, 4 * size)
    assert hub.window_start() == 3
    assert estimate(hub, Since(hub.epoch, 4)) == 2 * size
    assert estimate(hub, Since(hub.epoch, 0)) == 4 * size  # older: the whole window
    assert estimate(hub, Since(hub.epoch, 6)) == 0
    assert estimate(hub, Since("other", 4)) == 0


#: Windows has no fork (os.register_at_fork, which resets the hub in a child, neither).
FORK = pytest.mark.posix_only("os.fork exists only on POSIX")


def in_child(report: Callable[[], str]) -> str:
    """Run ``report`` in a forked child (which leaves at once); the line it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.write(write, report().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 2 * PATIENCE
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    with os.fdopen(read) as pipe:
        line = pipe.read()
    assert waited[1] == 0, f"the child failed: {waited}"
    return line


@FORK
def test_a_forked_child_starts_a_fresh_hub_on_first_use(make_hub: HubFactory) -> None:
    hub = make_hub()
    publish(hub, 2)

    def report() -> str:
        seq = hub.publish([tick(0)])[0]
        return f"{hub.epoch} {seq} {hub.is_running()}"

    epoch, seq, running = in_child(report).split()
    assert (epoch != hub.epoch, seq, running) == (True, "1", "True")
    assert hub.publish([tick(0)]) == [3]  # the parent's hub goes on


@FORK
def test_a_hub_that_never_ran_stays_unstarted_in_a_child() -> None:
    hub = Hub()
    epoch = hub.epoch
    assert in_child(lambda: f"{hub.epoch} {hub.is_running()}") == f"{epoch} False"


def test_a_broken_stream_is_logged_with_its_cause(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = make_hub()
    hub.register(new_client()[0])
    delivered(hub, hub.epoch, [(1, envelope(0, 1))])
    delivered(hub, hub.epoch, [(3, envelope(2, 3))])  # a gap
    hub.register(new_client()[0])
    delivered(hub, "another", [(1, envelope(0, 1))])  # a new epoch
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.hub"]
    assert lines == [
        "stream continuity broke (gap in the stream before 3): closing 1 clients with 4001 so"
        " they resume",
        "stream continuity broke (new epoch): closing 1 clients with 4001 so they resume",
    ]
    assert hub.snapshot()["resets"] == 2


def test_unrecovered_resumes_add_up(make_hub: HubFactory) -> None:
    hub = make_hub()
    for _ in range(2):
        resume(hub, Since("elsewhere", 1))
    assert hub.snapshot()["unrecovered_resumes"] == 2


def test_the_replay_estimate_is_whole_bytes_and_zero_from_ahead(make_hub: HubFactory) -> None:
    hub = make_hub(history_size=3)
    hub.publish([tick(1), tick(22), tick(333)])  # frames of 3 different sizes
    sync(hub)
    total = hub.snapshot()["historyBytes"]
    cost = estimate(hub, Since(hub.epoch, 1))
    assert cost == total * 2 // 3 and isinstance(cost, int)
    assert estimate(hub, Since(hub.epoch, 4)) == 0
    assert estimate(hub, Since(hub.epoch, 1000)) == 0
