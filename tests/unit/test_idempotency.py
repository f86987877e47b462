"""Idempotency keys without a broker: a retried publish is broadcast once, within a bounded map.

The hub runs on the fake clock (which also times the keys' window); clients are real
:class:`~sidecar.core.client.Client` objects over a fake transport, so what a client would see
is what the test reads. The same rule with Redis is in ``tests/test_broker.py``.
"""

from __future__ import annotations

import threading

import pytest

from sidecar.core.hub import Hub, PublishRefused
from sidecar.core.idempotency import RecentKeys
from sidecar.protocol import (
    IDEMPOTENCY_MAX_KEYS,
    IDEMPOTENCY_WINDOW,
    IdempotencyKeyReused,
    PublishedSeqs,
    check_idempotency_key,
)
from tests.unit.conftest import Blocker, HubFactory, sync
from tests.unit.fakes import PATIENCE, FakeClock, seqs, tick
from tests.unit.test_hub import joined


def test_a_retry_with_the_same_key_broadcasts_nothing_and_gets_the_first_seqs(
    make_hub: HubFactory,
) -> None:
    hub = make_hub()
    transport = joined(hub)
    first = hub.publish([tick(0), tick(1)], idempotency_key="order-42:shipped")
    assert first == [1, 2] and isinstance(first, PublishedSeqs) and not first.duplicate
    again = hub.publish([tick(0), tick(1)], idempotency_key="order-42:shipped")
    assert again == [1, 2] and again.duplicate
    assert hub.publish([tick(2)]) == [3]  # no key: always published
    assert hub.publish([tick(3)], idempotency_key="other") == [4]
    sync(hub)
    assert seqs(transport.messages()[1:]) == [1, 2, 3, 4]  # each event once
    assert hub.snapshot()["broadcasts"] == 4


def test_a_key_used_for_another_number_of_events_is_refused(make_hub: HubFactory) -> None:
    hub = make_hub()
    assert hub.publish([tick(0), tick(1)], idempotency_key="k") == [1, 2]
    with pytest.raises(IdempotencyKeyReused, match="batch of 2 events, not 1"):
        hub.publish([tick(0)], idempotency_key="k")
    assert hub.publish([tick(2)]) == [3]  # nothing was used up


@pytest.mark.parametrize(
    "key", ["", "x" * 129, "has space", "new\nline", "ключ", "a;b", '"quoted"', 7, None]
)
def test_a_malformed_key_is_refused_before_anything_is_published(
    make_hub: HubFactory, key: object
) -> None:
    hub = make_hub()
    with pytest.raises(ValueError, match="is not 1-128 letters, digits or"):
        check_idempotency_key(key)
    if key is not None:
        with pytest.raises(ValueError, match="idempotency key"):
            hub.publish([tick(0)], idempotency_key=key)  # type: ignore[arg-type]
    assert hub.publish([tick(0)]) == [1]


@pytest.mark.parametrize(
    "key", ["x", "x" * 128, "8e03978e-40d5-43e8-bc93-6894a57f9324", "a.b_c~d:e+f/g=", "0"]
)
def test_keys_of_every_documented_character_are_accepted(key: str) -> None:
    assert check_idempotency_key(key) == key


def test_a_key_is_remembered_for_the_window_then_publishes_again(
    make_hub: HubFactory, clock: FakeClock
) -> None:
    hub = make_hub()
    assert hub.publish([tick(0)], idempotency_key="k") == [1]
    clock.advance(IDEMPOTENCY_WINDOW - 1)
    assert hub.publish([tick(0)], idempotency_key="k").duplicate
    clock.advance(1)
    assert hub.publish([tick(0)], idempotency_key="k") == [2]  # the window is over


def test_a_refused_publish_does_not_use_up_its_key(make_hub: HubFactory) -> None:
    hub = make_hub(inbox_limit=1)
    blocker = Blocker(hub)  # the hub thread is busy: the inbox fills up
    assert hub.publish([tick(0)]) == [1]
    with pytest.raises(PublishRefused):
        hub.publish([tick(1)], idempotency_key="k")
    blocker.release()
    sync(hub)
    assert hub.publish([tick(1)], idempotency_key="k") == [2]


def test_concurrent_publishers_with_one_key_publish_once(make_hub: HubFactory) -> None:
    hub = make_hub()
    transport = joined(hub)
    start = threading.Barrier(8)
    answers: list[list[int]] = []

    def publish() -> None:
        start.wait(PATIENCE)
        answers.append(hub.publish([tick(0), tick(1)], idempotency_key="same"))

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert answers == [[1, 2]] * 8
    assert sum(isinstance(a, PublishedSeqs) and not a.duplicate for a in answers) == 1
    sync(hub)
    assert seqs(transport.messages()[1:]) == [1, 2]


def test_the_map_holds_at_most_max_keys_and_forgets_the_oldest_first() -> None:
    clock = FakeClock()
    keys = RecentKeys(window=10.0, max_keys=3, clock=clock)
    for n in range(5):
        keys.remember(f"k{n}", [n + 1])
    assert len(keys) == 3
    assert keys.recall("k0", 1) is None and keys.recall("k1", 1) is None
    assert keys.recall("k2", 1) == [3] and keys.recall("k4", 1) == [5]
    clock.advance(10.0)
    assert keys.recall("k4", 1) is None and len(keys) == 0  # expired: gone, not just hidden


def test_the_hub_bounds_its_map(clock: FakeClock) -> None:
    hub = Hub(clock=clock, ping_interval=0)
    hub.start()
    try:
        for n in range(IDEMPOTENCY_MAX_KEYS + 5):
            hub.publish([tick(n)], idempotency_key=f"k{n}")
        assert hub._local is not None and len(hub._local._recent) == IDEMPOTENCY_MAX_KEYS
        assert hub.publish([tick(0)], idempotency_key="k0") == [IDEMPOTENCY_MAX_KEYS + 6]
    finally:
        assert hub.stop(timeout=PATIENCE)
