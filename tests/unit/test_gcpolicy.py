"""The garbage-collection policy: freeze at start and after bursts, collect once after churn.

The policy is tested against a recording collector (the real ``gc`` is process-wide: freezing
the test process would keep other tests' garbage); the hub's side (it counts registrations and
departures and asks only when its inbox is empty) with that collector in a real hub.
"""

from __future__ import annotations

import threading

import pytest

from sidecar.core import gcpolicy
from sidecar.core.client import Client
from sidecar.core.gcpolicy import BURST, CHURN, GcPolicy
from sidecar.core.hub import Hub
from sidecar.core.resume import ChannelRequest
from tests.unit.conftest import Blocker, HubFactory, sync
from tests.unit.fakes import new_client, wait_until


class Recorder:
    """A collector that records the calls the policy makes."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def freeze(self) -> None:
        self._add("freeze")

    def unfreeze(self) -> None:
        self._add("unfreeze")

    def collect(self, generation: int = 2) -> int:
        self._add(f"collect{generation}")
        return 0

    def get_freeze_count(self) -> int:
        return self.calls.count("freeze")

    def _add(self, call: str) -> None:
        with self.lock:
            self.calls.append(call)

    def take(self) -> list[str]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


def test_start_freezes_what_start_up_made_without_walking_it() -> None:
    gc = Recorder()
    GcPolicy(gc).start()
    assert gc.take() == ["freeze", "collect2"]  # the collection after: next to nothing left


def test_a_burst_of_connections_is_frozen_at_the_next_idle_moment() -> None:
    gc = Recorder()
    policy = GcPolicy(gc)
    for _ in range(BURST - 1):
        policy.joined_one()
    policy.idle(BURST - 1)
    assert gc.take() == []  # not a burst yet
    policy.joined_one()
    policy.idle(BURST)
    assert gc.take() == ["collect1", "freeze", "collect2"]  # young garbage first, then frozen
    policy.idle(BURST)
    assert gc.take() == []  # nothing new since


def test_a_burst_is_a_quarter_of_those_frozen_once_there_are_many() -> None:
    gc = Recorder()
    policy = GcPolicy(gc)
    for _ in range(1000):
        policy.joined_one()
    policy.idle(1000)
    gc.take()
    for _ in range(249):
        policy.joined_one()
    policy.idle(1249)
    assert gc.take() == []
    policy.joined_one()
    policy.idle(1250)
    assert gc.take() == ["collect1", "freeze", "collect2"]


def test_churn_is_collected_once_when_as_many_left_as_are_connected() -> None:
    gc = Recorder()
    policy = GcPolicy(gc)
    for _ in range(CHURN - 1):
        policy.left_one()
    policy.idle(10)
    assert gc.take() == []  # fewer than CHURN left
    policy.left_one()
    policy.idle(CHURN + 1)
    assert gc.take() == []  # fewer left than are connected
    policy.idle(CHURN)
    assert gc.take() == ["unfreeze", "collect2", "freeze", "collect2"]
    assert policy.full_collections == 1
    policy.idle(CHURN)
    assert gc.take() == []


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The collector of every policy a hub makes in this test."""
    gc = Recorder()
    monkeypatch.setattr(gcpolicy, "gc", gc)
    return gc


def _connect(hub: Hub, count: int) -> list[Client]:
    clients = []
    for _ in range(count):
        client, _transport = new_client()
        assert hub.register(client, requests=[ChannelRequest("")])
        clients.append(client)
    return clients


def test_a_hub_that_manages_the_collector_freezes_at_start_and_after_a_burst(
    make_hub: HubFactory, recorder: Recorder
) -> None:
    hub = make_hub()
    assert hub.snapshot()["gcFreezes"] == 0  # nothing until asked (not the hub's process)
    hub.manage_gc()
    sync(hub)
    assert recorder.take() == ["freeze", "collect2"]
    blocker = Blocker(hub)  # the registrations arrive together: no idle moment between
    _connect(hub, BURST)
    blocker.release()
    sync(hub)
    wait_until(lambda: hub.snapshot()["gcFreezes"] == 2)
    assert recorder.take() == ["collect1", "freeze", "collect2"]


def test_a_hub_collects_once_after_churn_and_never_while_work_waits(
    make_hub: HubFactory, recorder: Recorder
) -> None:
    hub = make_hub()
    hub.manage_gc()
    clients = _connect(hub, CHURN)
    sync(hub)
    wait_until(lambda: hub.snapshot()["gcFreezes"] >= 2)
    recorder.take()
    blocker = Blocker(hub)
    for client in clients:
        hub.unregister(client)
    seen: list[list[str]] = []
    assert hub.call(lambda: seen.append(list(recorder.calls)))  # work queued behind them
    blocker.release()
    sync(hub)
    assert seen == [[]]  # the churn was due, but work was waiting: not collected before it
    wait_until(lambda: hub.snapshot()["gcFullCollections"] == 1)
    assert recorder.take() == ["unfreeze", "collect2", "freeze", "collect2"]


def test_clients_closed_by_a_stream_reset_count_as_churn(
    make_hub: HubFactory, recorder: Recorder
) -> None:
    hub = make_hub()
    hub.manage_gc()
    _connect(hub, CHURN)
    sync(hub)
    wait_until(lambda: hub.snapshot()["gcFreezes"] >= 2)
    hub.reset("another-epoch", 0, "test")  # every client is closed to resume (4001)
    sync(hub)
    wait_until(lambda: hub.snapshot()["gcFullCollections"] == 1)
    assert hub.client_count() == 0


def test_a_hub_asked_before_it_starts_manages_the_collector_once_it_runs(
    recorder: Recorder,
) -> None:
    hub = Hub(ping_interval=0)
    hub.manage_gc()  # not running yet: nothing to ask the hub thread
    assert recorder.take() == []
    hub.start()
    try:
        sync(hub)
        assert recorder.take() == ["freeze", "collect2"]
        assert hub.snapshot()["gcFreezes"] == 1
    finally:
        assert hub.stop()


def test_departures_and_clients_closed_by_a_reset_add_up_to_churn(
    make_hub: HubFactory, recorder: Recorder
) -> None:
    hub = make_hub()
    hub.manage_gc()
    clients = _connect(hub, CHURN)
    sync(hub)
    wait_until(lambda: hub.snapshot()["gcFreezes"] >= 2)
    for client in clients[: CHURN // 2]:
        hub.unregister(client)  # half leave on their own
    sync(hub)
    assert hub.snapshot()["gcFullCollections"] == 0
    hub.reset("another-epoch", 0, "test")  # the other half are closed: as many as CHURN
    sync(hub)
    wait_until(lambda: hub.snapshot()["gcFullCollections"] == 1)


def test_each_full_collection_is_timed_counted_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    from types import SimpleNamespace

    ticks = iter([10.0, 10.025, 20.0, 20.5])
    monkeypatch.setattr(gcpolicy, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    caplog.set_level(logging.DEBUG, "sidecar.hub")
    gc = Recorder()
    policy = GcPolicy(gc)
    assert policy.last_full_ms == 0.0
    for _ in range(CHURN):
        policy.left_one()
    policy.idle(0)
    assert (policy.full_collections, policy.last_full_ms) == (1, pytest.approx(25.0))
    for _ in range(CHURN - 1):  # departures are counted afresh: one short of churn
        policy.left_one()
    policy.idle(0)
    assert policy.full_collections == 1
    policy.left_one()
    policy.idle(0)
    assert policy.full_collections == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.hub"]
    assert lines[0] == "full collection after churn: 0 objects freed in 25.0 ms; 1 frozen"
    assert policy.last_full_ms == pytest.approx(500.0)


def test_a_burst_is_a_whole_quarter_of_those_frozen() -> None:
    gc = Recorder()
    policy = GcPolicy(gc)
    for _ in range(1001):
        policy.joined_one()
    policy.idle(1001)  # frozen with 1001 clients: a quarter is 250
    gc.take()
    for _ in range(250):
        policy.joined_one()
    policy.idle(1251)
    assert gc.take() == ["collect1", "freeze", "collect2"]
