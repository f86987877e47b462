"""The broker's relay thread against a scripted Redis: every round's outcome, without a server.

Each round the relay reads ``(entries, epoch, head)``; here a :class:`ScriptedRedis` answers
from a list the test writes (or raises, as an unreachable Redis would), and a recording sink
stands for the hub. The same relay runs against a real redis-server in ``tests/test_broker.py``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
import redis

from sidecar.broker import BrokerUnavailable
from sidecar.broker import relay as relay_module
from sidecar.broker.relay import Backoff, Relay, RelayStats, parse_entries
from tests.unit.fakes import PATIENCE, wait_until

Reply = tuple[list[tuple[int, bytes]], str | None, int] | BaseException


class ScriptedRedis:
    """A redis client whose pipeline answers each round from ``replies`` (blocking until one
    is there, as XREAD BLOCK would)."""

    def __init__(self, resp3: bool = False) -> None:
        self.resp3 = resp3
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.reads: list[str] = []
        self.closed = False
        self.disconnects = 0
        self.connection_pool = self

    def disconnect(self) -> None:
        self.disconnects += 1

    def close(self) -> None:
        self.closed = True

    def pipeline(self, transaction: bool) -> ScriptedRedis:
        assert transaction is False
        return self

    def xread(self, streams: dict[str, str], count: int, block: int) -> None:
        self.reads.append(f"{streams['s']} count={count} block={block}")

    def hmget(self, key: str, fields: list[str]) -> None:
        assert (key, fields) == ("m", ["epoch", "seq"])

    def execute(self) -> list[Any]:
        try:
            reply = self.replies.get(timeout=0.05)
        except queue.Empty:
            return [[], (b"e1", b"%d" % self.head)]
        if isinstance(reply, BaseException):
            raise reply
        entries, epoch, head = reply
        self.head = head
        stream = [(b"%d-0" % seq, {b"d": data}) for seq, data in entries]
        read: Any = {b"s": [stream]} if self.resp3 else [[b"s", stream]]
        return [read, (None if epoch is None else epoch.encode(), b"%d" % head)]

    head = 0


class FakeBroker:
    """What the relay uses of a :class:`~sidecar.broker.redis.RedisBroker`."""

    stream_key, meta_key, read_count, block, timeout = "s", "m", 100, 0.05, 1.0
    backoff = (0.001, 0.004)
    safe_url = "redis://fake"

    def __init__(self, block: float = 0.05, resp3: bool = False) -> None:
        self.block = block
        self.client = ScriptedRedis(resp3)
        self.scripts = 0

    def connect(self, socket_timeout: float, name: str) -> ScriptedRedis:
        assert name == "sidecar-relay" and socket_timeout == self.block + self.timeout
        return self.client

    def run_script(self, args: Sequence[Any], client: Any) -> tuple[str, int]:
        assert client is self.client  # on the relay's own connection
        self.scripts += 1
        return "fresh", 0

    def describe(self, exc: BaseException) -> str:
        return f"redis broker {self.safe_url} unreachable: {exc}"


class Sink:
    """Records what the relay hands over; ``refuse`` deliveries are refused first."""

    def __init__(self, refuse: int = 0, hold: threading.Event | None = None) -> None:
        #: While set and not released, deliveries wait for it (a hub that does not take them).
        self.hold = hold
        self.entered = threading.Event()
        self.delivered: list[tuple[str, list[tuple[int, bytes]]]] = []
        self.resets: list[tuple[str, int, str]] = []
        self.refuse = refuse
        self.offers = 0
        self.changed = threading.Condition()

    def deliver(self, epoch: str, items: Sequence[tuple[int, bytes]], timeout: float) -> bool:
        if self.hold is not None:
            self.entered.set()
            self.hold.wait(2 * PATIENCE)
            return False
        with self.changed:
            self.offers += 1
            if self.refuse:
                self.refuse -= 1
                return False
            self.delivered.append((epoch, list(items)))
            self.changed.notify_all()
            return True

    def reset(self, epoch: str, seq: int, reason: str) -> None:
        with self.changed:
            self.resets.append((epoch, seq, reason))
            self.changed.notify_all()


def new_relay(broker: FakeBroker, sink: Sink, epoch: str = "e1", seq: int = 10) -> Relay:
    """A relay over the fake broker (which stands in for a RedisBroker)."""
    return Relay(cast(Any, broker), sink, epoch, seq)


@pytest.fixture
def relay() -> Iterator[tuple[Relay, FakeBroker, Sink]]:
    broker, sink = FakeBroker(), Sink()
    relay = new_relay(broker, sink)
    yield relay, broker, sink
    assert relay.stop(PATIENCE)


def entries(*seqs: int) -> list[tuple[int, bytes]]:
    return [(seq, b"d%d" % seq) for seq in seqs]


def test_contiguous_entries_are_delivered_and_counted(relay: Any) -> None:
    relay_, broker, sink = relay
    broker.client.replies.put((entries(11, 12), "e1", 12))
    broker.client.replies.put((entries(13), "e1", 15))
    relay_.start()
    wait_until(lambda: len(sink.delivered) == 2)
    assert sink.delivered == [("e1", entries(11, 12)), ("e1", entries(13))]
    wait_until(lambda: relay_.stats.last_published_seq == 15)
    stats = relay_.stats
    assert (stats.last_delivered_seq, stats.delivered, stats.epoch) == (13, 3, "e1")
    assert broker.client.reads[0] == "10-0 count=100 block=50"
    assert broker.client.reads[-1].startswith("13-0 ")


def test_a_refused_delivery_is_offered_again() -> None:
    broker, sink = FakeBroker(), Sink(refuse=2)  # the hub's inbox is full twice
    relay = new_relay(broker, sink)
    broker.client.replies.put((entries(11), "e1", 11))
    relay.start()
    wait_until(lambda: sink.delivered)
    assert relay.stop(PATIENCE)
    assert sink.offers == 3 and sink.delivered == [("e1", entries(11))]


def test_a_new_epoch_resets_and_drops_what_was_read(
    relay: Any, caplog: pytest.LogCaptureFixture
) -> None:
    relay_, broker, sink = relay
    broker.client.replies.put((entries(1, 2), "e2", 2))
    relay_.start()
    wait_until(lambda: sink.resets)
    assert sink.resets == [("e2", 2, "epoch changed from e1 (Redis lost its data)")]
    assert sink.delivered == []
    assert (relay_.epoch, relay_.last, relay_.stats.resets) == ("e2", 2, 1)
    assert relay_.stats.last_delivered_seq == 2
    assert relay_.stats.epoch == "e2"
    assert [r.getMessage() for r in caplog.records] == [
        "relay: epoch changed from e1 (Redis lost its data); continuing from e2:2"
        " (clients must resume)"
    ]


def test_a_head_behind_the_relay_resets(relay: Any) -> None:
    relay_, broker, sink = relay
    broker.client.replies.put(([], "e1", 4))
    relay_.start()
    wait_until(lambda: sink.resets)
    assert sink.resets == [("e1", 4, "seq went back from 10 to 4")]


def test_a_trimmed_stream_delivers_what_connects_then_resets(relay: Any) -> None:
    relay_, broker, sink = relay
    broker.client.replies.put((entries(11, 12, 15, 16), "e1", 16))
    relay_.start()
    wait_until(lambda: sink.resets)
    assert sink.delivered == [("e1", entries(11, 12))]
    assert sink.resets == [("e1", 16, "events 13..14 are no longer in the stream")]
    sink2, broker2 = Sink(), FakeBroker()
    relay2 = new_relay(broker2, sink2)
    broker2.client.replies.put((entries(14), "e1", 14))
    relay2.start()
    wait_until(lambda: sink2.resets)
    assert (
        sink2.delivered == [] and sink2.resets[0][2] == "events 11..13 are no longer in the stream"
    )
    assert relay2.stop(PATIENCE)


def test_lost_data_with_no_publisher_since_starts_a_new_epoch(relay: Any) -> None:
    relay_, broker, sink = relay
    broker.client.replies.put(([], None, 0))
    relay_.start()
    wait_until(lambda: sink.resets)
    assert broker.scripts == 1 and sink.resets[0][:2] == ("fresh", 0)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (redis.ConnectionError("down"), "redis broker redis://fake unreachable: down"),
        (BrokerUnavailable("the broker is gone"), "the broker is gone"),
        (RuntimeError("a bug"), "relay failed: RuntimeError('a bug')"),
    ],
)
def test_an_outage_is_logged_once_and_its_end_once(
    relay: Any, caplog: pytest.LogCaptureFixture, error: BaseException, line: str
) -> None:
    caplog.set_level(logging.INFO, "sidecar.broker")
    relay_, broker, sink = relay
    for _ in range(3):
        broker.client.replies.put(error)
    broker.client.replies.put((entries(11), "e1", 11))
    relay_.start()
    wait_until(lambda: sink.delivered)
    wait_until(lambda: relay_.stats.reconnects == 1)
    stats = relay_.stats
    assert (stats.outages, stats.failed_attempts, stats.connected) == (1, 3, True)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"{line}; relay retrying with backoff up to 0.004 s"
    assert len(messages) == 2
    assert messages[1].startswith("redis broker redis://fake reachable again after ")
    assert messages[1].endswith(" s; relay continues after e1:11")
    assert broker.client.disconnects >= 3


def test_stop_ends_the_thread_and_closes_the_client(relay: Any) -> None:
    relay_, broker, _sink = relay
    assert relay_.stop(PATIENCE)  # never started: nothing to wait for
    relay2 = new_relay(broker, Sink())
    relay2.start()
    assert relay2.alive()
    assert relay2.stop(PATIENCE)
    assert not relay2.alive() and broker.client.closed
    assert (relay2.stats.running, relay2.stats.connected) == (False, False)


def test_stats_start_at_the_starting_point() -> None:
    stats = new_relay(FakeBroker(), Sink(), "e9", 7).stats
    assert stats == RelayStats(True, True, "e9", 7, 7, 0, 0, 0, 0, 0)


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.1, 0.4)
    delays = [backoff.next() for _ in range(5)]
    for delay, full in zip(delays, [0.1, 0.2, 0.4, 0.4, 0.4], strict=True):
        assert full / 2 <= delay <= full
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1
    assert Backoff(0.5, 0.1).high == 0.5


def test_parse_entries_takes_the_seq_from_the_id() -> None:
    assert parse_entries([(b"42-0", {b"d": b"x"}), (b"43-1", {b"d": b"y"})]) == [
        (42, b"x"),
        (43, b"y"),
    ]


def test_the_relay_thread_is_a_named_daemon(relay: Any) -> None:
    relay_, _broker, _sink = relay
    relay_.start()
    found = [t for t in threading.enumerate() if t.name == "sidecar-broker-relay"]
    assert found and all(t.daemon for t in found)


def test_a_head_equal_to_the_relay_is_no_reset(relay: Any) -> None:
    relay_, broker, sink = relay
    for _ in range(2):
        broker.client.replies.put(([], "e1", 10))
    broker.client.replies.put((entries(11, 13), "e1", 13))
    relay_.start()
    wait_until(lambda: sink.resets)
    assert sink.delivered == [("e1", entries(11))]
    assert sink.resets == [("e1", 13, "events 12..12 are no longer in the stream")]


def test_resp3_replies_are_read_too() -> None:
    broker, sink = FakeBroker(resp3=True), Sink()
    relay = new_relay(broker, sink)
    broker.client.replies.put((entries(11), "e1", 11))
    relay.start()
    wait_until(lambda: sink.delivered)
    assert relay.stop(PATIENCE)
    assert sink.delivered == [("e1", entries(11))]


@pytest.mark.parametrize(("block", "ms"), [(1.0, 1000), (0.0001, 1)])
def test_xread_blocks_for_the_brokers_block_in_whole_milliseconds(block: float, ms: int) -> None:
    broker = FakeBroker(block=block)
    relay = new_relay(broker, Sink())
    relay.start()
    wait_until(lambda: broker.client.reads)
    assert relay.stop(PATIENCE)
    assert broker.client.reads[0] == f"10-0 count=100 block={ms}"


def test_an_outage_shows_in_the_stats_while_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    broker, sink = FakeBroker(), Sink(hold=gate)
    relay = new_relay(broker, sink)
    broker.client.replies.put(RuntimeError("a bug"))
    broker.client.replies.put((entries(11), "e1", 11))
    relay.start()
    wait_until(lambda: relay.stats.failed_attempts == 1)
    assert relay.stats.connected is False and relay.stats.outages == 1
    record = next(r for r in caplog.records if r.getMessage().startswith("relay failed"))
    assert record.exc_info is not None  # an unexpected failure comes with its traceback
    gate.set()
    assert relay.stop(PATIENCE)


def test_stop_gives_up_on_a_relay_stuck_in_its_sink() -> None:
    release = threading.Event()
    broker, sink = FakeBroker(), Sink(hold=release)
    relay = new_relay(broker, sink)
    broker.client.replies.put((entries(11, 13), "e1", 13))
    relay.start()
    assert sink.entered.wait(PATIENCE)
    started = time.monotonic()
    assert not relay.stop(0.1)
    assert time.monotonic() - started < 1.0
    release.set()
    assert relay.stop(PATIENCE)
    assert sink.resets == []  # stopped while delivering: no reset after the stop


def test_the_outage_duration_is_logged(relay: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sidecar.broker")
    relay_, broker, _sink = relay
    broker.client.replies.put(redis.ConnectionError("down"))
    broker.client.replies.put((entries(11), "e1", 11))
    relay_.start()
    wait_until(lambda: relay_.stats.reconnects == 1)
    line = next(r.getMessage() for r in caplog.records if "reachable again" in r.getMessage())
    seconds = float(line.split("reachable again after ")[1].split()[0])
    assert 0 <= seconds < 5


def test_backoff_doubles_exactly_without_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module.random, "uniform", lambda low, high: high)
    backoff = Backoff(0.1, 0.4)
    assert [backoff.next() for _ in range(4)] == [0.1, 0.2, 0.4, 0.4]
