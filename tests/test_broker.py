"""The Redis broker against a real redis-server: one order, relays, gap reads, faults.

Every test starts its own ``redis-server`` (tests/redis_server.py) and stops it afterwards.
A :class:`RecordingSink` stands in for the hub: it is the relay's consumer, not the thing
under test. Two brokers with a relay each play two worker processes.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import sidecar.broker.redis
from sidecar.broker import BrokerOutcomeUnknown, BrokerUnavailable
from sidecar.broker.publisher import Publisher
from sidecar.broker.redis import MAX_BATCH, POSITION_TTL, RedisBroker
from sidecar.core.stream import Delivered, Numbered, Position, Revocation
from sidecar.envelope import encode, new_event, with_seq
from sidecar.protocol import (
    IDEMPOTENCY_WINDOW,
    IdempotencyKeyReused,
    PublishOutcomeUnknown,
    PublishRefused,
    Since,
)
from tests.conftest import wait_for
from tests.needs import unavailable
from tests.redis_server import RedisServer, free_port
from tests.stream_entries import (
    META,
    STREAM,
    history_key,
    idempotency_key,
    position_key,
)

WAIT = 15.0  # the deadline of every wait for the relay (generous: 2 shared cores)


class RecordingSink:
    """Records what the relay hands over; ``accepting`` cleared makes it refuse (stall).

    ``items`` holds the default channel's events as ``(epoch, seq, data)``; ``delivered``
    every item (events of any channel, revocations) whole. Contract violations seen in
    ``deliver`` go to ``errors``: positions that do not follow, an envelope whose seq or
    channel is not the item's, a channel's seq that does not follow its last one.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[str, int, bytes]] = []  # (epoch, seq, data): default channel
        self.delivered: list[Delivered] = []
        self.resets: list[tuple[str, int, str]] = []  # (epoch, position, reason)
        self.errors: list[str] = []  # contract violations seen in deliver()
        self.refusals = 0
        self.accepting = threading.Event()
        self.accepting.set()
        self._next: int | None = None  # the next position
        self._seqs: dict[str, tuple[str, int]] = {}  # each channel's (epoch, last seq)

    def deliver(self, epoch: str, items: Sequence[Delivered], timeout: float) -> bool:
        accepted = self.accepting.wait(timeout)
        with self.cond:
            self.refusals += not accepted
            for item in items if accepted else ():
                if self._next is not None and item.pos != self._next:
                    self.errors.append(f"position {item.pos} delivered, expected {self._next}")
                self._next = item.pos + 1
                self.delivered.append(item)
                if isinstance(item, Numbered):
                    self._check(epoch, item)
            self.cond.notify_all()
        return accepted

    def _check(self, epoch: str, item: Numbered) -> None:
        envelope = json.loads(item.data)
        if envelope["seq"] != item.seq or envelope.get("channel", "") != item.channel:
            self.errors.append(f"{item.channel}:{item.seq} does not match its data")
        last = self._seqs.get(item.channel)
        if last is not None and (item.epoch, item.seq) != (last[0], last[1] + 1):
            self.errors.append(f"{item.channel}: {item.seq} after {last}")
        self._seqs[item.channel] = (item.epoch, item.seq)
        if item.channel == "":
            if item.epoch != epoch:
                self.errors.append(f"default channel in {item.epoch}, not the stream's {epoch}")
            self.items.append((epoch, item.seq, bytes(item.data)))

    def reset(self, epoch: str, seq: int, reason: str, *, pos: int | None = None) -> None:
        with self.cond:
            if pos is None:
                self.errors.append("a reset without a position")
                pos = seq
            self.resets.append((epoch, pos, reason))
            self._next = pos + 1
            self._seqs = {"": (epoch, seq)}
            self.cond.notify_all()

    def channel(self, name: str) -> list[Numbered]:
        """The events of channel ``name`` delivered, in order."""
        return [i for i in self.delivered if isinstance(i, Numbered) and i.channel == name]

    def wait(self, predicate: Callable[[RecordingSink], bool], timeout: float = WAIT) -> None:
        """Wait until ``predicate(self)`` holds; fail the test after ``timeout``."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(
                    f"sink: condition not met within {timeout} s; last seqs "
                    f"{self.seqs()[-5:]}, resets {self.resets}"
                )

    def seqs(self, epoch: str | None = None) -> list[int]:
        return [seq for e, seq, _ in self.items if epoch is None or e == epoch]


def events(count: int, tag: str = "t") -> list[bytes]:
    return [encode(new_event("test:tick", {"tag": tag, "n": n})) for n in range(count)]


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server  # conftest.py: one started per test, closed afterwards


@pytest.fixture
def persistent_server(persistent_redis: RedisServer) -> RedisServer:
    return persistent_redis


@pytest.fixture
def make_broker() -> Iterator[Callable[..., RedisBroker]]:
    """Brokers with quick relay knobs; each is closed (and must stop in time) at teardown."""
    made: list[RedisBroker] = []

    def make(url: str, **options: Any) -> RedisBroker:
        options = {"block": 0.2, "backoff": (0.02, 0.2), **options}
        broker = RedisBroker(url, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        assert broker.close(timeout=5.0), "the relay did not stop in time"
    assert not [t for t in threading.enumerate() if t.name == "sidecar-broker-relay"]


def relay_warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == "sidecar.broker" and text in r.message)


def test_importing_the_package_does_not_import_redis() -> None:
    code = (
        "import sys, sidecar, sidecar.broker\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'redis'], 'redis imported'\n"
        "from sidecar import Publisher\n"
        "assert 'redis' in sys.modules and Publisher.__name__ == 'Publisher'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture(params=["hiredis", "redis-py"])
def packer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Who packs the broker's commands: hiredis's C packer (the redis extra installs it) or
    redis-py's own (without hiredis)."""
    if request.param == "redis-py":
        monkeypatch.setattr(sidecar.broker.redis, "_pack_command", None)
    elif sidecar.broker.redis._pack_command is None:
        unavailable("the hiredis package is not installed (pip install -e '.[test]')")
    return str(request.param)


@pytest.mark.usefixtures("packer")
def test_publish_assigns_seqs_and_stores_the_spliced_envelope(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url)
    data = events(3)
    assert broker.publish(data) == [1, 2, 3]
    assert broker.publish(events(1)) == [4]
    assert broker.publish([]) == []
    epoch, seq = broker.head()
    assert seq == 4 and Since.parse(f"{epoch}:{seq}") == Since(epoch, 4)
    redis = server.client()
    stored = redis.xrange(STREAM)
    assert [entry_id for entry_id, _ in stored] == [b"1-0", b"2-0", b"3-0", b"4-0"]
    for (_, fields), seq, raw in zip(stored, [1, 2, 3], data, strict=False):
        # byte-identical to the hub's splice, and the seq beside it
        assert fields == {b"d": with_seq(raw, seq), b"s": b"%d" % seq}
    history = redis.lrange(history_key(), 0, -1)  # newest first, "<pos> <envelope>"
    kept = [b"%d %s" % (seq, with_seq(data[seq - 1], seq)) for seq in (3, 2, 1)]
    assert history[1:] == kept
    assert redis.ttl(history_key()) == -1 and redis.ttl(META) == -1  # the default's: no TTL
    assert redis.hmget(META, "epoch", "pos", "seq") == [epoch.encode(), b"4", b"4"]
    with pytest.raises(ValueError, match="JSON object"):
        broker.publish([b"[1, 2]"])
    with pytest.raises(ValueError, match="at most"):
        broker.publish([b"{}"] * (MAX_BATCH + 1))
    for bad in ("Bad", "project:p1,chat:c9", "a" * 129, "user:"):
        with pytest.raises(ValueError, match="channel"):
            broker.publish_items([("project:p1", b"{}"), (bad, b"{}")])  # all or nothing
    assert broker.head() == (epoch, 4) and redis.xlen(STREAM) == 4
    assert redis.keys(position_key("*")) == []


def test_concurrent_publishers_give_two_relays_one_identical_order(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    workers = [make_broker(server.url), make_broker(server.url)]
    sinks = [RecordingSink(), RecordingSink()]
    starts = {worker.start_relay(sink) for worker, sink in zip(workers, sinks, strict=True)}
    assert len(starts) == 1 and next(iter(starts))[1] == 0
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_PUBLISHER, server.url], stdout=subprocess.PIPE, text=True
    )
    returned: list[list[int]] = []
    lock = threading.Lock()

    def publish_from(worker: RedisBroker, tag: str) -> None:
        rounds = 0
        while rounds < 400 and (rounds < 10 or child.poll() is None):
            for batch in (events(1, tag), events(3, tag)):
                seqs = worker.publish(batch)
                with lock:
                    returned.append(seqs)
            rounds += 1

    threads = [
        threading.Thread(target=publish_from, args=(workers[i % 2], f"thread-{i}"))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    out, _ = child.communicate(timeout=WAIT)
    assert child.returncode == 0 and not any(t.is_alive() for t in threads)
    returned += json.loads(out)

    total = sum(len(seqs) for seqs in returned)
    assert sorted(seq for seqs in returned for seq in seqs) == list(range(1, total + 1))
    assert all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in returned)
    for sink in sinks:
        sink.wait(lambda s: len(s.items) >= total)
        assert sink.seqs() == list(range(1, total + 1)) and not sink.errors and not sink.resets
    assert sinks[0].items == sinks[1].items  # same epoch, same seqs, the same bytes
    epoch = sinks[0].items[0][0]
    gap = workers[1].read_range(epoch, total - 50, 50)  # (the stream keeps >= 1024 events)
    assert gap == [(seq, data) for _, seq, data in sinks[0].items[-50:]]


CHILD_PUBLISHER = """
import json, sys
from sidecar import Publisher
with Publisher(sys.argv[1]) as publisher:
    seqs = []
    for i in range(15):
        seqs.append([publisher.publish("test:child", {"i": i})])
        seqs.append(publisher.publish_many([("test:child", {"i": i, "k": k}) for k in range(3)]))
print(json.dumps(seqs))
"""


# -- channels: one script numbers each channel and the global order ----------------------------


def test_each_channel_has_its_own_epoch_and_dense_seqs_in_one_global_order(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url, channel_ttl=600)
    data = events(5)
    items = [("project:p1", data[0]), ("", data[1]), ("chat:c9", data[2]), ("project:p1", data[3])]
    assert broker.publish_items(items) == [1, 1, 1, 2]
    assert broker.publish_items([("chat:c9", data[4])]) == [2]
    stream = broker.stream_head()
    p1, c9, default = broker.heads(["project:p1", "chat:c9", ""])
    assert (stream.pos, stream.seq, default) == (5, 1, Position(stream.epoch, 1))
    assert p1.seq == 2 and c9.seq == 2 and len({p1.epoch, c9.epoch, stream.epoch}) == 3
    redis = server.client()
    stored = redis.xrange(STREAM)
    assert [entry_id for entry_id, _ in stored] == [b"%d-0" % n for n in range(1, 6)]
    assert [fields for _, fields in stored] == [
        {
            b"d": with_seq(data[0], 1, "project:p1"),
            b"s": b"1",
            b"c": b"project:p1",
            b"e": p1.epoch.encode(),
        },
        {b"d": with_seq(data[1], 1), b"s": b"1"},
        {
            b"d": with_seq(data[2], 1, "chat:c9"),
            b"s": b"1",
            b"c": b"chat:c9",
            b"e": c9.epoch.encode(),
        },
        {
            b"d": with_seq(data[3], 2, "project:p1"),
            b"s": b"2",
            b"c": b"project:p1",
            b"e": p1.epoch.encode(),
        },
        {
            b"d": with_seq(data[4], 2, "chat:c9"),
            b"s": b"2",
            b"c": b"chat:c9",
            b"e": c9.epoch.encode(),
        },
    ]
    assert redis.lrange(history_key("project:p1"), 0, -1) == [
        b"4 " + with_seq(data[3], 2, "project:p1"),
        b"1 " + with_seq(data[0], 1, "project:p1"),
    ]
    assert redis.hgetall(position_key("project:p1")) == {b"epoch": p1.epoch.encode(), b"seq": b"2"}
    assert 590 < redis.ttl(history_key("project:p1")) <= 600  # channel_ttl
    assert POSITION_TTL - 10 < redis.ttl(position_key("project:p1")) <= POSITION_TTL == 30 * 86400
    assert redis.ttl(META) == redis.ttl(STREAM) == redis.ttl(history_key()) == -1
    # a position asked for is created at 0 and kept while asked for (a subscriber's since
    # stays valid), but only as long as a history: names nobody publishes on do not pile up
    fresh = broker.heads(["doc:9:comments"])[0]
    assert fresh.seq == 0 and broker.heads(["doc:9:comments"]) == [fresh]
    assert 590 < redis.ttl(position_key("doc:9:comments")) <= 600
    assert not redis.exists(history_key("doc:9:comments"))
    assert broker.stream_head() == stream  # asking publishes nothing
    assert broker.publish_items([("doc:9:comments", data[0])]) == [1]
    assert broker.heads(["doc:9:comments"]) == [Position(fresh.epoch, 1)]
    assert POSITION_TTL - 10 < redis.ttl(position_key("doc:9:comments")) <= POSITION_TTL


def test_publishing_refreshes_a_channels_ttls_and_its_expiry_gives_a_new_epoch(
    server: RedisServer, make_broker: Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sidecar.broker.redis.POSITION_TTL", 4)
    broker = make_broker(server.url, channel_ttl=1)
    redis = server.client()
    assert broker.publish_items([("project:p1", e) for e in events(3)]) == [1, 2, 3]
    epoch = broker.heads(["project:p1"])[0].epoch
    assert 0 < redis.ttl(history_key("project:p1")) <= 1
    # the history goes after channel_ttl; the position stays: the seqs go on, a resume from
    # before the expiry is no longer recovered
    wait_for(lambda: not redis.exists(history_key("project:p1")), WAIT)
    assert redis.exists(position_key("project:p1"))
    assert broker.read_channel("project:p1", epoch, 1, 10, 1 << 20) is None
    assert broker.read_channel("project:p1", epoch, 3, 10, 1 << 20) == []
    assert broker.publish_items([("project:p1", events(1)[0])]) == [4]
    assert [i.seq for i in broker.read_channel("project:p1", epoch, 3, 10, 1 << 20) or []] == [4]
    assert broker.read_channel("project:p1", epoch, 2, 10, 1 << 20) is None
    # the position goes after its own TTL (30 days in production): a new epoch from 1
    wait_for(lambda: not redis.exists(position_key("project:p1")), WAIT)
    assert broker.publish_items([("project:p1", events(1)[0])]) == [1]
    now = broker.heads(["project:p1"])[0]
    assert now.epoch != epoch and now.seq == 1
    assert broker.read_channel("project:p1", epoch, 4, 10, 1 << 20) is None
    assert redis.ttl(META) == -1 and redis.ttl(STREAM) == -1  # the stream's keys never expire


def test_outside_publishers_keep_the_history_ttl_the_hubs_recorded(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    redis = server.client()
    with Publisher(server.url) as publisher:  # before any hub: the option's default
        publisher.publish("app:x", {}, channel="project:p1")
        assert 3500 < redis.ttl(history_key("project:p1")) <= 3600
        make_broker(server.url, channel_ttl=77).head()  # a hub's broker starts: recorded
        assert redis.hget(META, "ttl") == b"77"
        publisher.publish("app:x", {}, channel="project:p1")
        assert 70 < redis.ttl(history_key("project:p1")) <= 77  # (was: the Publisher's 3600)
    with Publisher(server.url, channel_ttl=9.5) as publisher:  # given: used and recorded
        publisher.publish("app:x", {}, channel="chat:c9")
        assert 0 < redis.ttl(history_key("chat:c9")) <= 10 and redis.hget(META, "ttl") == b"10"
    redis.hset(META, "ttl", "forever")  # not a number publish.lua wrote: the default
    with Publisher(server.url) as publisher:
        publisher.publish("app:x", {}, channel="chat:c9")
        assert 3500 < redis.ttl(history_key("chat:c9")) <= 3600
    with pytest.raises(ValueError, match="channel_ttl"):
        RedisBroker(server.url, channel_ttl=0)


def test_concurrent_publishers_on_channels_give_two_relays_one_order_and_dense_seqs(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    workers = [make_broker(server.url), make_broker(server.url)]
    sinks = [RecordingSink(), RecordingSink()]
    for worker, sink in zip(workers, sinks, strict=True):
        worker.start_relay(sink)
    channels = ["", "project:p1", "chat:c9", "user:alice"]
    returned: dict[str, list[list[int]]] = {channel: [] for channel in channels}
    lock = threading.Lock()

    def publish_from(worker: RedisBroker, n: int) -> None:
        for round_ in range(60):
            channel = channels[(n + round_) % len(channels)]
            items = [(channel, e) for e in events(1 + round_ % 3, f"{n}-{round_}")]
            if round_ % 5 == 0:
                items.append((channels[(n + round_ + 1) % len(channels)], events(1)[0]))
            seqs = worker.publish_items(items)
            with lock:
                for (item_channel, _data), seq in zip(items, seqs, strict=True):
                    returned[item_channel].append([seq])
            if round_ % 20 == 7:
                worker.revoke(f"u{n}", "project:p1")

    threads = [threading.Thread(target=publish_from, args=(workers[i % 2], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    total = workers[0].stream_head().pos
    for sink in sinks:
        sink.wait(_delivered(total))
        assert not sink.errors and not sink.resets
    assert sinks[0].delivered == sinks[1].delivered  # one identical order, revocations included
    assert [item.pos for item in sinks[0].delivered] == list(range(1, total + 1))
    assert sum(isinstance(i, Revocation) for i in sinks[0].delivered) == 4 * 3
    for channel in channels:  # each channel dense from 1, as each publisher was answered
        got = sinks[0].channel(channel)
        assert [i.seq for i in got] == list(range(1, len(got) + 1))
        assert sorted(seq for seqs in returned[channel] for seq in seqs) == [i.seq for i in got]
        epoch, last = workers[1].heads([channel])[0]
        assert last == len(got) and {i.epoch for i in got} == {epoch}
        page = workers[1].read_channel(channel, epoch, 0, 1024, 1 << 30)
        assert page == got  # a resume anywhere reads exactly what the relays delivered


@pytest.mark.usefixtures("packer")
def test_publish_falls_back_on_noscript(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url)
    assert broker.publish(events(1)) == [1]
    redis = server.client()
    redis.script_flush()
    redis.config_resetstat()
    assert broker.publish(events(2)) == [2, 3]
    assert broker.publish(events(1)) == [4]
    stats = redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3  # NOSCRIPT, then after the load, then again
    assert stats["cmdstat_evalsha"]["failed_calls"] == 1
    assert stats["cmdstat_script|load"]["calls"] == 1
    assert "cmdstat_eval" not in stats


def test_key_prefixes_keep_deployments_apart(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    one, two = make_broker(server.url, prefix="one"), make_broker(server.url, prefix="two")
    sink_one, sink_two = RecordingSink(), RecordingSink()
    epoch_one, _ = one.start_relay(sink_one)
    epoch_two, _ = two.start_relay(sink_two)
    assert epoch_one != epoch_two
    assert one.publish(events(2, "one")) == [1, 2]
    assert two.publish(events(1, "two")) == [1]
    sink_one.wait(lambda s: len(s.items) == 2)
    sink_two.wait(lambda s: len(s.items) == 1)
    assert all(b'"tag":"one"' in data for _, _, data in sink_one.items)
    assert b'"tag":"two"' in sink_two.items[0][2]
    assert one.read_range(epoch_two, 0, 10) is None
    assert len(one.read_range(epoch_one, 0, 10) or []) == 2
    assert one.publish_items([("project:p1", events(1, "one")[0])]) == [1]
    assert two.heads(["project:p1"])[0].seq == 0  # another deployment's channel of that name
    assert sorted(server.client().keys()) == [
        b"one:v2:ch:project:p1",
        b"one:v2:hist:",
        b"one:v2:hist:project:p1",
        b"one:v2:meta",
        b"one:v2:stream",
        b"two:v2:ch:project:p1",
        b"two:v2:hist:",
        b"two:v2:meta",
        b"two:v2:stream",
    ]


def test_unreachable_redis_is_one_clear_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    broker = RedisBroker(url, connect_timeout=1.0)
    for call in (
        broker.head,
        broker.stream_head,
        lambda: broker.heads(["project:p1"]),
        lambda: broker.publish(events(1)),
        lambda: broker.publish_items([("project:p1", events(1)[0])]),
        lambda: broker.revoke("alice", "project:p1"),
        lambda: broker.read_range("e", 0, 1),
        lambda: broker.read_channel("project:p1", "e", 0, 1, 1000),
    ):
        with pytest.raises(BrokerUnavailable) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"redis broker redis://:***@127.0.0.1:{port}/0 unreachable: ")
        assert "\n" not in message and "s3cret-pw" not in message
    with pytest.raises(BrokerUnavailable):
        broker.start_relay(RecordingSink())
    assert broker.relay_stats().running is False
    assert broker.close()
    publisher = Publisher("unix:///nonexistent/redis.sock?db=0")
    with pytest.raises(BrokerUnavailable, match=r"unix:///nonexistent/redis\.sock.* unreachable"):
        publisher.publish("app:thing", {})
    publisher.close()


def test_outage_with_data_kept_continues_from_the_last_id(
    persistent_server: RedisServer,
    make_broker: Callable[..., RedisBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.broker")
    server = persistent_server
    broker = make_broker(server.url, backoff=(0.2, 0.4))  # publishes after a restart come first
    sink = RecordingSink()
    epoch, _ = broker.start_relay(sink)
    expected = 0
    for outage in (1, 2):
        expected += len(broker.publish(events(5)))
        sink.wait(_has(expected))
        server.stop()
        for _ in range(3):
            with pytest.raises(BrokerUnavailable, match="unreachable"):
                broker.publish(events(1))  # refused, never accepted and lost
        attempts = broker.relay_stats().failed_attempts
        wait_for(_failed_more(broker, attempts + 3), WAIT)
        server.start()
        seqs = broker.publish(events(5))  # perhaps before the relay is back: it catches up
        assert seqs == list(range(expected + 1, expected + 6))
        expected += 5
        sink.wait(_has(expected))
        wait_for(_reconnects(broker, outage), WAIT)
        assert relay_warnings(caplog, "unreachable") == outage
        assert relay_warnings(caplog, "reachable again") == outage
    assert sink.seqs() == list(range(1, expected + 1)) and not sink.errors
    assert sink.resets == [] and {e for e, _, _ in sink.items} == {epoch}
    stats = broker.relay_stats()
    assert (stats.outages, stats.reconnects, stats.resets) == (2, 2, 0)
    assert stats.last_delivered_seq == stats.last_published_seq == expected
    assert broker.read_range(epoch, 0, 100) == [(seq, data) for _, seq, data in sink.items]


def relay_after_three(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> tuple[RedisBroker, RecordingSink, str]:
    """A broker whose relay has delivered seqs 1-3; and its epoch."""
    broker = make_broker(server.url)
    sink = RecordingSink()
    epoch, _ = broker.start_relay(sink)
    broker.publish(events(3))
    sink.wait(lambda s: len(s.items) == 3)
    return broker, sink, epoch


def test_restart_without_data_resets_to_a_new_epoch(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker, sink, old = relay_after_three(server, make_broker)
    server.restart()  # --save '' and no AOF: everything is gone
    sink.wait(lambda s: len(s.resets) == 1)
    new, seq, reason = sink.resets[0]
    assert new != old and seq == 0 and "epoch changed" in reason
    assert broker.read_range(old, 3, 10) is None and broker.read_range(old, 0, 10) is None
    assert broker.head() == (new, 0) and broker.read_range(new, 0, 10) == []
    assert broker.publish(events(1)) == [1]
    sink.wait(lambda s: s.seqs(new) == [1])
    assert not sink.errors


def test_flush_while_connected_never_delivers_new_events_as_old_ones(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker, sink, old = relay_after_three(server, make_broker)
    server.client().flushall()
    assert broker.publish(events(10)) == list(range(1, 11))  # new epoch, seqs from 1 again
    sink.wait(lambda s: len(s.resets) == 1)
    new, seq, _ = sink.resets[0]
    assert new != old and seq in (0, 10)  # (0: the relay saw the empty Redis first)
    sink.wait(lambda s: seq + len(s.seqs(new)) == 10)
    assert sink.seqs(old) == [1, 2, 3] and sink.seqs(new) == list(range(seq + 1, 11))


def _delivered(n: int) -> Callable[[RecordingSink], bool]:
    return lambda sink: len(sink.delivered) >= n


def _has(n: int) -> Callable[[RecordingSink], bool]:
    return lambda sink: len(sink.items) == n


def _failed_more(broker: RedisBroker, n: int) -> Callable[[], bool]:
    return lambda: broker.relay_stats().failed_attempts >= n


def _reconnects(broker: RedisBroker, n: int) -> Callable[[], bool]:
    return lambda: broker.relay_stats().reconnects == n


def publish_300(broker: RedisBroker, server: RedisServer) -> int:
    """Publish 300 events in batches of 50; the oldest position the stream still holds."""
    for _ in range(6):
        broker.publish(events(50))
    return int(server.client().xrange(STREAM, count=1)[0][0].split(b"-")[0])


def test_a_relay_left_behind_by_trimming_resets(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url, history_size=5)
    sink = RecordingSink()
    sink.accepting.clear()  # the hub's inbox is full: the relay holds seq 1 and retries
    epoch, _ = broker.start_relay(sink)
    broker.publish(events(1))
    sink.wait(lambda s: s.refusals >= 2)
    first = publish_300(broker, server)
    assert first > 2  # trimmed (MAXLEN ~ keeps whole nodes: more than 5, fewer than 301)
    sink.accepting.set()
    sink.wait(lambda s: len(s.resets) == 1)
    assert sink.seqs() == [1]
    assert sink.resets[0][:2] == (epoch, 301) and "events 2.." in sink.resets[0][2]
    assert broker.publish(events(1)) == [302]
    sink.wait(lambda s: s.seqs() == [1, 302])
    assert not sink.errors and broker.relay_stats().resets == 1


def test_read_range_edges(server: RedisServer, make_broker: Callable[..., RedisBroker]) -> None:
    broker = make_broker(server.url, history_size=5)
    epoch, seq = broker.head()
    assert seq == 0 and broker.read_range(epoch, 0, 10) == []  # empty stream, at the head
    publish_300(broker, server)
    assert server.client().llen(history_key()) == 5  # the history keeps exactly 5
    first = 296
    edge = broker.read_range(epoch, first - 1, 3)  # exactly the oldest event kept
    assert edge is not None and [s for s, _ in edge] == [first, first + 1, first + 2]
    assert all(json.loads(data)["seq"] == s for s, data in edge)
    assert broker.read_range(epoch, first - 2, 3) is None  # too old: first - 1 was trimmed
    assert broker.read_range(epoch, 0, 3) is None
    assert broker.read_range(epoch, 300, 10) == []  # nothing missed
    assert broker.read_range(epoch, 301, 10) is None  # ahead of the last seq
    assert broker.read_range("another-epoch", 299, 10) is None
    assert [s for s, _ in broker.read_range(epoch, 297, 10) or []] == [298, 299, 300]
    assert [s for s, _ in broker.read_range(epoch, 296, 2) or []] == [297, 298]  # limit
    assert broker.read_range(epoch, 296, 0) == []
    with pytest.raises(ValueError):
        broker.read_range(epoch, -1, 10)


def test_read_channel_reads_one_channel_in_pages_bounded_in_bytes(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url, history_size=8)
    padded = [encode(new_event("test:tick", {"n": n, "pad": "x" * 100 * n})) for n in range(10)]
    items = [("project:p1", data) for data in padded]
    items[5:5] = [("chat:c9", events(1)[0]), ("", events(1)[0])]  # other channels between
    assert broker.publish_items(items) == [1, 2, 3, 4, 5, 1, 1, 6, 7, 8, 9, 10]
    epoch, last = broker.heads(["project:p1"])[0]
    assert last == 10 and server.client().llen(history_key("project:p1")) == 8
    page = broker.read_channel("project:p1", epoch, 2, 100, 1 << 20)
    assert page is not None and [i.seq for i in page] == list(range(3, 11))
    assert [i.pos for i in page] == [3, 4, 5, 8, 9, 10, 11, 12]  # their global positions
    assert all(i.channel == "project:p1" and i.epoch == epoch for i in page)
    spliced = [with_seq(d, n + 1, "project:p1") for n, d in enumerate(padded)]
    assert [i.data for i in page] == spliced[2:]
    # bytes: it stops once the budget is exceeded, the event that crosses it included
    sizes = [len(i.data) for i in page]
    for budget in (0, 1, sizes[0], sizes[0] + 1, sizes[0] + sizes[1]):
        part = broker.read_channel("project:p1", epoch, 2, 100, budget)
        assert part is not None
        taken = len(part)
        assert sum(sizes[: taken - 1]) <= budget < sum(sizes[:taken]) or (
            taken == len(sizes) and sum(sizes) <= budget
        ), (budget, taken)
    assert broker.read_channel("project:p1", epoch, 2, 3, 1 << 20) == page[:3]  # a count
    assert broker.read_channel("project:p1", epoch, 10, 100, 1 << 20) == []  # at the head
    assert broker.read_channel("project:p1", epoch, 1, 100, 1 << 20) is None  # trimmed
    assert broker.read_channel("project:p1", epoch, 11, 100, 1 << 20) is None  # ahead
    assert broker.read_channel("project:p1", "another", 5, 100, 1 << 20) is None
    assert broker.read_channel("project:p2", epoch, 0, 100, 1 << 20) is None  # none there
    stream_epoch = broker.head()[0]
    assert [i.seq for i in broker.read_channel("", stream_epoch, 0, 10, 1 << 20) or []] == [1]
    with pytest.raises(ValueError):
        broker.read_channel("project:p1", epoch, -1, 10, 100)


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.lset(history_key("project:p1"), 2, b"not an item"),
        lambda r: r.lset(history_key("project:p1"), 2, b"7 not json"),
        lambda r: r.lset(history_key("project:p1"), 2, b'7 {"type":"app:x","seq":3}'),
        lambda r: r.lset(
            history_key("project:p1"), 2, b'7 {"type":"app:x","seq":3,"channel":"chat:c9"}'
        ),
        lambda r: r.lset(
            history_key("project:p1"),
            2,
            b'7 {"type":"connection:status","seq":3,"channel":"project:p1"}',
        ),
        lambda r: r.lrem(history_key("project:p1"), 1, r.lindex(history_key("project:p1"), 2)),
        lambda r: r.lpush(
            history_key("project:p1"), b"99 " + with_seq(b'{"type":"app:x"}', 6, "project:p1")
        ),
        lambda r: (r.delete(history_key("project:p1")), r.set(history_key("project:p1"), "x")),
        lambda r: r.delete(history_key("project:p1")),
        lambda r: r.hset(position_key("project:p1"), "seq", "five"),
        lambda r: r.hset(position_key("project:p1"), "seq", "9"),
        lambda r: (r.delete(position_key("project:p1")), r.set(position_key("project:p1"), "x")),
    ],
    ids=[
        "garbage",
        "not-json",
        "another-list",
        "another-channel",
        "reserved",
        "hole",
        "pushed",
        "list-of-another-type",
        "expired",
        "seq",
        "seq-ahead",
        "meta-of-another-type",
    ],
)
def test_a_damaged_history_is_never_a_partial_or_wrong_resume(
    server: RedisServer, make_broker: Callable[..., RedisBroker], damage: Callable[[Any], object]
) -> None:
    broker = make_broker(server.url)
    assert broker.publish_items([("project:p1", d) for d in events(5)]) == [1, 2, 3, 4, 5]
    epoch, _ = broker.heads(["project:p1"])[0]
    damage(server.client())
    page = broker.read_channel("project:p1", epoch, 0, 100, 1 << 20)
    # what comes back is exactly what was published, from seq 1 on, or nothing (None)
    assert page is None or (
        [i.seq for i in page] == [1, 2, 3, 4, 5][: len(page)] and len(page) == 5
    ), page


def test_publisher_validates_like_the_api_and_returns_seqs(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    make_broker(server.url, history_size=7).head()  # a hub's broker records its history size
    created = {"projectId": "p1", "streamId": "s1", "name": "Stream"}
    with Publisher(server.url) as publisher:
        assert publisher.publish("stream:created", created) == 1
        status = new_event("workflow:status-changed", dict(created, workflowId="w", status="ok"))
        assert publisher.publish_many([("app:custom-thing", {"any": [1]}), status]) == [2, 3]
        assert publisher.publish_many([]) == []
        refused: list[tuple[Any, str]] = [
            (("Bad:Name", {}), "namespace:kebab-case"),
            (("connection:status", {"status": "connected"}), "connection:status"),
            (("chat:send", {"conversationId": "c", "content": "hi"}), "chat:send is a client"),
            (("stream:created", {"projectId": "p1", "name": "n"}), "streamId"),
            (("app:thing", {"x": object()}), r"events\[1\]\.payload\.x: object is not a JSON type"),
            (("app:thing", {"x": "y" * 2000}), "bytes encoded .*; at most 1024"),
            (("app:thing", ["not", "an", "object"]), "payload: expected object, got array"),
        ]
        small = Publisher(server.url, max_event_bytes=1024)
        for item, message in refused:
            with pytest.raises(ValueError, match=message):
                small.publish_many([("app:fine", {}), item])  # all or nothing
        small.close()
        assert publisher.head()[1] == 3
    stored = server.client().xrange(STREAM)
    envelopes = [json.loads(fields[b"d"]) for _, fields in stored]
    assert [(e["type"], e["seq"]) for e in envelopes] == [
        ("stream:created", 1),
        ("app:custom-thing", 2),
        ("workflow:status-changed", 3),
    ]
    assert envelopes[2]["timestamp"] == status.timestamp and envelopes[0]["payload"] == created
    assert server.client().hget(META, "size") == b"7"  # publishers keep the hub's


def test_publisher_publishes_on_channels_sends_to_users_and_revokes(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    relay = make_broker(server.url)
    sink = RecordingSink()
    relay.start_relay(sink)
    with Publisher(server.url) as publisher:
        epoch, seq = publisher.position("project:p1")  # created, at 0
        assert seq == 0 and publisher.position("project:p1") == (epoch, 0)
        assert publisher.publish("app:thing", {"n": 1}, channel="project:p1") == 1
        assert publisher.publish_many([("app:thing", {"n": 2})] * 2, channel="project:p1") == [
            2,
            3,
        ]
        assert publisher.publish("app:thing", {"n": 3}) == 1  # the default channel's own seq
        assert publisher.send_to_user("alice", "app:note", {"text": "hi"}) == 1
        publisher.revoke("alice", "project:p1")
        assert publisher.position("project:p1") == (epoch, 3)
        assert publisher.position() == publisher.head() == (relay.head()[0], 1)
        refused: list[tuple[Callable[[], object], str]] = [
            (lambda: publisher.publish("app:x", {}, channel="Bad"), "channel"),
            (lambda: publisher.publish("app:x", {}, channel="a,b"), "channel"),
            (lambda: publisher.send_to_user("al ice", "app:x", {}), "user id"),
            (lambda: publisher.send_to_user("", "app:x", {}), "user id"),
            (lambda: publisher.revoke("alice", "Bad"), "channel"),
            (lambda: publisher.revoke("al:ice", "project:p1"), "user id"),
            (lambda: publisher.position("Bad"), "channel"),
            (lambda: publisher.publish("channel:subscribed", {}, channel="project:p1"), "hub"),
        ]
        for call, message in refused:
            with pytest.raises(ValueError, match=message):
                call()
    sink.wait(lambda s: len(s.delivered) == 6)
    assert not sink.errors and sink.resets == []
    assert [(i.seq, json.loads(i.data)["payload"]["n"]) for i in sink.channel("project:p1")] == [
        (1, 1),
        (2, 2),
        (3, 2),
    ]
    assert [i.channel for i in sink.delivered if isinstance(i, Numbered)] == [
        "project:p1",
        "project:p1",
        "project:p1",
        "",
        "user:alice",
    ]
    assert sink.delivered[-1] == Revocation(6, "alice", "project:p1")
    (note,) = sink.channel("user:alice")
    envelope = json.loads(note.data)
    assert (envelope["type"], envelope["seq"], envelope["channel"]) == ("app:note", 1, "user:alice")


def test_tcp_url_with_password_and_database(make_broker: Callable[..., RedisBroker]) -> None:
    server = RedisServer(tcp=True, password="pw-0123")
    server.start()
    try:
        broker = make_broker(server.tcp_url(db=3))
        assert broker.publish(events(2)) == [1, 2]
        assert server.client(db=3).keys("sidecar:*") and server.client().keys() == []
        wrong = make_broker(f"redis://:wrong-pw@127.0.0.1:{server.port}/3")
        with pytest.raises(BrokerUnavailable) as caught:
            wrong.head()
        message = str(caught.value)
        assert "rejected the credentials" in message and "redis://:***@127.0.0.1:" in message
        assert "wrong-pw" not in message and "pw-0123" not in message
    finally:
        server.close()


def test_stop_is_bounded_and_leaves_no_thread_or_connection(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    redis = server.client()

    def names() -> list[str]:
        return [c["name"] for c in redis.client_list() if c["name"]]

    for stall in (False, True):  # idle in XREAD BLOCK, or retrying a refusing sink
        broker = make_broker(server.url)
        sink = RecordingSink()
        broker.start_relay(sink)
        broker.publish(events(1))
        if stall:
            sink.accepting.clear()
            broker.publish(events(1))
            sink.wait(lambda s: s.refusals >= 1)
        wait_for(lambda: "sidecar-relay" in names(), WAIT)
        started = time.monotonic()
        assert broker.close(timeout=5.0)
        assert time.monotonic() - started < 2.0
        assert not [t for t in threading.enumerate() if t.name == "sidecar-broker-relay"]
        wait_for(lambda: not names(), WAIT)
        assert broker.relay_stats().running is False


def test_stop_while_redis_is_down_is_bounded(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url, backoff=(1.0, 5.0))
    broker.start_relay(RecordingSink())
    server.stop()
    wait_for(lambda: broker.relay_stats().failed_attempts >= 1, WAIT)
    started = time.monotonic()
    assert broker.stop(timeout=5.0)
    assert time.monotonic() - started < 1.0  # the backoff wait ends at once


# -- keys that are not ours any more: no seq burned, no half publish (issue 19, item 4) -------

STREAM_KEY, META_KEY = STREAM, META
P1_KEY, P1_HISTORY = position_key("project:p1"), history_key("project:p1")


def stored_seqs(server: RedisServer, channel: str = "") -> list[int]:
    """The seqs of ``channel``'s events in the stream, in its order."""
    return [
        json.loads(fields[b"d"])["seq"]
        for _, fields in server.client().xrange(STREAM_KEY)
        if fields.get(b"c", b"").decode() == channel and b"d" in fields
    ]


def history_seqs(server: RedisServer, channel: str = "") -> list[int]:
    """The seqs in ``channel``'s history list, oldest first."""
    items = server.client().lrange(history_key(channel), 0, -1)
    return [json.loads(item.partition(b" ")[2])["seq"] for item in reversed(items)]


@pytest.mark.parametrize(
    "foreign", ["*", "4-0", "5-0", "9007199254740993-0"], ids=["auto-id", "next", "inside", "huge"]
)
def test_a_foreign_entry_above_the_last_seq_starts_a_new_epoch_not_a_refusal(
    server: RedisServer, make_broker: Callable[..., RedisBroker], foreign: str
) -> None:
    broker = make_broker(server.url)
    assert broker.publish(events(3)) == [1, 2, 3]
    old, _ = broker.head()
    p1 = broker.heads(["project:p1"])[0]
    server.client().xadd(STREAM_KEY, {"x": "y"}, id=foreign)  # blocks "4-0" (or "5-0")
    seqs = broker.publish(events(3))  # was: BrokerUnavailable, and seq 4-6 used up
    epoch, last = broker.head()
    assert seqs == [1, 2, 3] and epoch != old and last == 3
    assert stored_seqs(server) == [1, 2, 3]  # nothing of the old epoch, nothing foreign
    assert history_seqs(server) == [1, 2, 3]
    assert broker.publish(events(1)) == [4] and broker.head() == (epoch, 4)
    # the same on a named channel's publish; the channel keeps its own epoch and seqs
    server.client().xadd(STREAM_KEY, {"x": "y"}, id=foreign.replace("4-0", "6-0"))
    assert broker.publish_items([("project:p1", d) for d in events(2)]) == [1, 2]
    assert broker.head()[0] not in (old, epoch) and broker.stream_head().pos == 2
    assert broker.heads(["project:p1"]) == [Position(p1.epoch, 2)]
    assert stored_seqs(server, "project:p1") == [1, 2] and stored_seqs(server) == []


def test_a_refused_publish_uses_up_no_seq_and_writes_nothing(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url)
    assert broker.publish(events(2)) == [1, 2]
    assert broker.publish_items([("project:p1", events(1)[0])]) == [1]
    redis = server.client()

    def everything() -> list[Any]:
        return [redis.hgetall(META_KEY), redis.xrange(STREAM_KEY), redis.hgetall(P1_KEY)] + [
            redis.lrange(key, 0, -1) for key in (history_key(), P1_HISTORY)
        ]

    before = everything()
    redis.set("ballast", b"x" * 2_000_000)
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 1_000_000)  # below what is used: every first write refused
    try:
        for items in (
            [("", e) for e in events(1)],
            [("", e) for e in events(5)],
            [("project:p1", e) for e in events(2)],
            [("chat:c9", e) for e in events(1)],  # a new channel
            [("", events(1)[0]), ("project:p1", events(1)[0]), ("chat:c9", events(1)[0])],
        ):
            with pytest.raises(BrokerUnavailable) as refused:
                broker.publish_items(items, idempotency_key="while-full")
            assert not isinstance(refused.value, BrokerOutcomeUnknown)
        with pytest.raises(BrokerUnavailable):
            broker.revoke("alice", "project:p1")
        assert everything() == before
        assert not redis.exists(idempotency_key("while-full"))
        assert not redis.exists(position_key("chat:c9"), history_key("chat:c9"))
    finally:
        redis.config_set("maxmemory", 0)
    assert broker.publish(events(1), idempotency_key="while-full") == [3]  # next seq, kept
    assert broker.publish_items([("project:p1", events(1)[0])]) == [2]


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.set(STREAM_KEY, "a string"),
        lambda r: (r.delete(META_KEY), r.set(META_KEY, "a string")),
        lambda r: r.hset(META_KEY, "seq", "twelve"),
        lambda r: r.hset(META_KEY, "seq", "1" * 16),
        lambda r: r.hset(META_KEY, "pos", "twelve"),
        lambda r: r.hset(META_KEY, "pos", "-1"),
        lambda r: r.hdel(META_KEY, "pos"),
        lambda r: r.hset(META_KEY, "epoch", "not an epoch!"),
        lambda r: r.hset(META_KEY, "size", "lots"),
        lambda r: (r.delete(history_key()), r.set(history_key(), "a string")),
    ],
    ids=["stream-type", "meta-type", "seq", "huge-seq", "pos", "negative-pos", "no-pos", "epoch",
         "size", "history-type"],
)  # fmt: skip
def test_keys_that_cannot_be_continued_start_a_new_epoch_and_publishing_goes_on(
    server: RedisServer, make_broker: Callable[..., RedisBroker], damage: Callable[[Any], object]
) -> None:
    publisher = make_broker(server.url, history_size=None)  # reads the size a hub recorded
    assert publisher.publish(events(2)) == [1, 2]
    old, _ = publisher.head()
    damage(server.client())
    seqs = publisher.publish(events(2))
    epoch, last = publisher.head()
    if epoch == old:  # only the recorded size was damaged: it is ignored, nothing else
        assert seqs == [3, 4] and stored_seqs(server) == [1, 2, 3, 4]
    else:
        assert seqs == [1, 2] and last == 2 and stored_seqs(server) == [1, 2]
        assert history_seqs(server) == [1, 2]
    stored = [(json.loads(f[b"d"])["seq"], f[b"d"]) for _, f in server.client().xrange(STREAM_KEY)]
    if history_seqs(server) == [seq for seq, _data in stored]:
        assert publisher.read_range(epoch, 0, 10) == stored  # a resume reads what was stored
    else:  # only a history of another type was lost: the seqs went on, its history restarted
        assert history_seqs(server) == [3, 4]
        assert publisher.read_range(epoch, 0, 10) is None
        assert publisher.read_range(epoch, 2, 10) == stored[2:]


@pytest.mark.parametrize(
    ("damage", "continued"),
    [
        (lambda r: r.delete(P1_KEY), False),  # as when its position expired
        (lambda r: (r.delete(P1_KEY), r.set(P1_KEY, "a string")), False),
        (lambda r: r.hset(P1_KEY, "seq", "twelve"), False),
        (lambda r: r.hset(P1_KEY, "seq", "1" * 16), False),
        (lambda r: r.hset(P1_KEY, "seq", "-1"), False),
        (lambda r: r.hdel(P1_KEY, "seq"), False),
        (lambda r: r.hset(P1_KEY, "epoch", "not an epoch!"), False),
        (lambda r: r.hset(P1_KEY, "epoch", "e" * 65), False),
        (lambda r: r.hdel(P1_KEY, "epoch"), False),
        (lambda r: (r.delete(P1_HISTORY), r.set(P1_HISTORY, "a string")), True),
        (lambda r: (r.delete(P1_HISTORY), r.hset(P1_HISTORY, "a", "b")), True),
        (lambda r: r.delete(P1_HISTORY), True),  # as when its history expired
    ],
    ids=["gone", "meta-type", "seq", "huge-seq", "negative-seq", "no-seq", "epoch", "long-epoch",
         "no-epoch", "history-type", "history-hash", "history-gone"],
)  # fmt: skip
def test_a_channels_keys_that_cannot_be_continued_give_it_a_new_epoch_or_a_fresh_history(
    server: RedisServer,
    make_broker: Callable[..., RedisBroker],
    damage: Callable[[Any], object],
    continued: bool,
) -> None:
    broker = make_broker(server.url)
    assert broker.publish_items([("project:p1", e) for e in events(2)]) == [1, 2]
    assert broker.publish(events(1)) == [1]
    old = broker.heads(["project:p1"])[0]
    stream = broker.stream_head()
    damage(server.client())
    seqs = broker.publish_items([("project:p1", e) for e in events(2)])
    now = broker.heads(["project:p1"])[0]
    assert broker.stream_head() == (stream.epoch, stream.pos + 2, 1)  # the stream goes on
    if continued:  # its position is intact: the seqs go on, the history starts again
        assert seqs == [3, 4] and now == (old.epoch, 4)
        assert history_seqs(server, "project:p1") == [3, 4]
        assert broker.read_channel("project:p1", old.epoch, 1, 10, 1 << 20) is None
        page = broker.read_channel("project:p1", old.epoch, 2, 10, 1 << 20)
        assert [i.seq for i in page or []] == [3, 4]
    else:  # a new epoch from seq 1, none of the old history with it
        assert seqs == [1, 2] and now.epoch != old.epoch and now.seq == 2
        assert history_seqs(server, "project:p1") == [1, 2]
        assert broker.read_channel("project:p1", old.epoch, 2, 10, 1 << 20) is None
        page = broker.read_channel("project:p1", now.epoch, 0, 10, 1 << 20)
        assert [i.seq for i in page or []] == [1, 2]
    assert stored_seqs(server, "project:p1") == [1, 2, *seqs]
    redis = server.client()
    assert 0 < redis.ttl(P1_KEY) <= POSITION_TTL and 0 < redis.ttl(P1_HISTORY) <= 3600


# -- idempotency keys and answers whose outcome is unknown (issue 19, item 6) ------------------


def test_a_retry_with_the_same_key_publishes_nothing_and_gets_the_first_seqs(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url)
    sink = RecordingSink()
    broker.start_relay(sink)
    first = broker.publish(events(2), idempotency_key="order-42")
    assert first == [1, 2] and first.duplicate is False
    again = broker.publish(events(2), idempotency_key="order-42")
    assert again == [1, 2] and again.duplicate is True
    assert broker.publish(events(1)) == [3]
    with Publisher(server.url) as publisher:  # another process, the same Redis: the same rule
        assert publisher.publish_many(
            [("app:x", {}), ("app:y", {})], idempotency_key="order-42"
        ) == [1, 2]
        with pytest.raises(IdempotencyKeyReused, match="batch of 2 events, not 1"):
            publisher.publish("app:x", {}, idempotency_key="order-42")
        with pytest.raises(ValueError, match="idempotency key"):
            publisher.publish("app:x", {}, idempotency_key="no spaces")
    sink.wait(lambda s: len(s.items) == 3)
    assert sink.seqs() == [1, 2, 3] and stored_seqs(server) == [1, 2, 3]
    redis = server.client()
    ttl = redis.ttl(idempotency_key("order-42"))
    assert 0 < ttl <= IDEMPOTENCY_WINDOW == 300
    # the script's answer: epoch, last position, count, (duplicate), default seq, the seqs
    assert json.loads(redis.get(idempotency_key("order-42"))) == [broker.head()[0], 2, 2, 0, 2,
                                                                   1, 2]  # fmt: skip
    redis.delete(idempotency_key("order-42"))  # as when the window is over
    assert broker.publish(events(2), idempotency_key="order-42") == [4, 5]


def test_a_retry_on_channels_gets_each_events_seq_in_its_channel_once(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url)
    sink = RecordingSink()
    broker.start_relay(sink)
    items = [("project:p1", events(1)[0]), ("", events(1)[0]), ("project:p1", events(1)[0])]
    first = broker.publish_items(items, idempotency_key="mixed")
    assert first == [1, 1, 2] and not first.duplicate
    again = broker.publish_items(items, idempotency_key="mixed")
    assert again == [1, 1, 2] and again.duplicate
    # the same key with other channels (a retry that lost its own batch): the first's seqs,
    # never a crash reading an answer of other channels (a 500 or a 422 over HTTP)
    for other in (
        [("chat:c9", events(1)[0]), ("chat:c8", events(1)[0]), ("", events(1)[0])],
        [("", events(1)[0])] * 3,
        [("chat:c9", events(1)[0])] * 3,
    ):
        retried = broker.publish_items(other, idempotency_key="mixed")
        assert retried == [1, 1, 2] and retried.duplicate
    with pytest.raises(IdempotencyKeyReused):
        broker.publish_items(items[:2], idempotency_key="mixed")
    broker.revoke("alice", "project:p1")  # (a revocation is no publish: never deduplicated)
    assert broker.publish_items(items[:1]) == [3]
    sink.wait(lambda s: len(s.delivered) == 5)
    assert [(i.channel, i.seq) for i in sink.delivered if isinstance(i, Numbered)] == [
        ("project:p1", 1),
        ("", 1),
        ("project:p1", 2),
        ("project:p1", 3),
    ]
    assert not sink.errors and server.client().keys(position_key("chat:*")) == []


@pytest.mark.parametrize(
    "record",
    [
        b"not json",
        b"[]",
        b"{}",
        b'"text"',
        b"[1,2,3,4,5,6,7]",
        b'["e1",2,2,0,2,1]',  # one seq for two events
        b'["e1",2,2,0,2,"1","2"]',
        b'["e1",2,2,0,2,1.5,2]',
        b'["e1",2,2,0,2,-1,2]',
        b'["not an epoch!",2,2,0,2,1,2]',
        b'["e1",2,2,0,2,"E",1,1]',  # a named channel's two values, and one seq too few
        b'["e1",2,0,0,2]',
        b'["e1",-2,2,0,2,1,2]',
    ],
)
def test_an_idempotency_record_the_script_did_not_write_is_ignored_never_a_crash(
    server: RedisServer, make_broker: Callable[..., RedisBroker], record: bytes
) -> None:
    broker = make_broker(server.url)
    server.client().set(idempotency_key("k"), record)  # (anyone may write to the keys)
    assert broker.publish_items([("project:p1", e) for e in events(2)], idempotency_key="k") == [
        1,
        2,
    ]
    retried = broker.publish_items([("project:p1", e) for e in events(2)], idempotency_key="k")
    assert retried == [1, 2] and retried.duplicate  # the record is ours again
    server.client().set(idempotency_key("k"), record)
    assert broker.publish(events(2), idempotency_key="k") == [1, 2]  # published, not a crash


def test_the_window_is_the_brokers_and_keys_of_other_prefixes_do_not_meet(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    short = make_broker(server.url, idempotency_window=7)
    other = make_broker(server.url, prefix="other")
    assert short.publish(events(1), idempotency_key="k") == [1]
    assert other.publish(events(1), idempotency_key="k") == [1]  # its own stream and keys
    assert 0 < server.client().ttl(idempotency_key("k")) <= 7
    assert other.publish(events(1), idempotency_key="k").duplicate


def frozen(server: RedisServer) -> Any:
    """A context manager: the server stopped with SIGSTOP (it answers nothing) until exit."""
    import contextlib
    import os
    import signal

    @contextlib.contextmanager
    def freeze() -> Iterator[None]:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(server.process.pid, signal.SIGCONT)

    return freeze()


def test_a_publish_redis_got_and_never_answered_is_unknown_and_a_retry_publishes_once(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    relay = make_broker(server.url)
    sink = RecordingSink()
    relay.start_relay(sink)
    broker = make_broker(server.url, timeout=0.5)
    assert broker.publish(events(1)) == [1]  # (a pooled connection, ready)
    with frozen(server):
        with pytest.raises(BrokerOutcomeUnknown) as unknown:
            broker.publish(events(1, "retried"), idempotency_key="retry-me")
        assert isinstance(unknown.value, PublishOutcomeUnknown)
        assert isinstance(unknown.value, PublishRefused)  # what refusal handlers catch
        message = str(unknown.value)
        assert "may or may not have been published" in message and "\n" not in message
        with pytest.raises(BrokerUnavailable):  # a read is no publish: it stays a refusal
            broker.head()
    sink.wait(lambda s: s.seqs() == [1, 2])  # it was published after all, once
    again = broker.publish(events(1, "retried"), idempotency_key="retry-me")
    assert again == [2] and again.duplicate
    assert broker.publish(events(1)) == [3]
    sink.wait(lambda s: s.seqs() == [1, 2, 3])
    assert [json.loads(data)["payload"]["tag"] for _e, _s, data in sink.items] == [
        "t",
        "retried",
        "t",
    ]


def test_a_publish_that_never_left_is_refused_not_unknown(
    server: RedisServer, make_broker: Callable[..., RedisBroker]
) -> None:
    broker = make_broker(server.url, timeout=0.5)
    assert broker.publish(events(1)) == [1]
    server.stop()
    for _ in range(2):  # the pooled connection (broken), then a new one (refused)
        with pytest.raises(BrokerUnavailable) as refused:
            broker.publish(events(1), idempotency_key="k")
        assert not isinstance(refused.value, PublishOutcomeUnknown)


# -- Redis sizing: a policy that may evict the broker's keys is named at start -------------------


@pytest.mark.parametrize(
    ("policy", "maxmemory", "warned"),
    [
        ("allkeys-lru", 100_000_000, True),
        ("allkeys-lfu", 100_000_000, True),
        ("allkeys-random", 100_000_000, True),
        ("noeviction", 100_000_000, False),
        ("volatile-lru", 100_000_000, True),  # named channels' keys have a TTL
        ("volatile-ttl", 100_000_000, True),
        ("allkeys-lru", 0, False),  # no limit: nothing is evicted
    ],
)
def test_an_evicting_memory_policy_is_warned_about_at_start(
    server: RedisServer,
    make_broker: Callable[..., RedisBroker],
    caplog: pytest.LogCaptureFixture,
    policy: str,
    maxmemory: int,
    warned: bool,
) -> None:
    redis = server.client()
    redis.config_set("maxmemory-policy", policy)
    redis.config_set("maxmemory", maxmemory)
    try:
        make_broker(server.url).start_relay(RecordingSink())
    finally:
        redis.config_set("maxmemory", 0)
    lines = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    if not warned:
        assert lines == []
        return
    assert len(lines) == 1 and lines[0].startswith(
        f"redis broker {server.url} has maxmemory-policy {policy} with maxmemory {maxmemory}"
    )
    assert "noeviction" in lines[0]
    assert ("recovered: false" if policy.startswith("volatile") else "4001") in lines[0]


def test_the_policy_is_read_from_info_when_config_is_refused_and_unknown_is_no_error(
    server: RedisServer, make_broker: Callable[..., RedisBroker], caplog: pytest.LogCaptureFixture
) -> None:
    redis = server.client()
    redis.config_set("maxmemory-policy", "allkeys-lru")
    redis.config_set("maxmemory", 100_000_000)
    try:
        redis.execute_command("ACL", "SETUSER", "default", "-config")  # a managed Redis
        broker = make_broker(server.url)
        assert broker.memory_policy() == ("allkeys-lru", 100_000_000)
        assert broker.check_memory_policy() is not None
        redis.execute_command("ACL", "SETUSER", "default", "-info")
        assert broker.memory_policy() is None and broker.check_memory_policy() is None
        broker.start_relay(RecordingSink())  # starts all the same
    finally:
        redis.execute_command("ACL", "SETUSER", "default", "+@all")
        redis.config_set("maxmemory", 0)
