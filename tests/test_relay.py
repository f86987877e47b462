"""The broker's relay thread against a real redis-server: every round's outcome.

Each test starts its own ``redis-server`` (``tests/redis_server.py``) and makes the situation
with a plain client, behind the relay's back and bypassing the publish script: entries
``XADD``\\ ed with chosen IDs (in a row, with a hole, or trimmed away with ``XTRIM``), the meta
hash changed with ``HSET`` (another epoch, a seq gone back) or emptied by ``FLUSHALL`` (lost
data), the server stopped, frozen (SIGSTOP) or refusing the script (an ACL), a sink that
refuses, holds or raises, and entries no publish wrote (no ``d``, garbage, forged types, IDs
beyond the head, keys of another type: issue 19, items 3-5). What the relay sent is read back
from the server: its slow log logs every command here, with the client's name, and
``CLIENT LIST`` shows the relay's connection.
:class:`Sink` records what the relay hands over: it is the relay's consumer (the hub), not the
thing under test. Backoff's arithmetic, which has no I/O, is pinned in tests/unit.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from sidecar.broker.entries import Entry, Malformed, parse_entry
from sidecar.broker.redis import RedisBroker
from sidecar.broker.relay import Relay, RelayStats
from sidecar.core.stream import Numbered
from tests.conftest import wait_for
from tests.redis_server import RedisServer
from tests.unit.fakes import PATIENCE, wait_until

STREAM, META = "sidecar:stream", "sidecar:meta"
BLOCK = 0.05  # the relay's XREAD BLOCK, in seconds: an idle round lasts this long
BACKOFF = (0.01, 0.04)
#: Runs a test on a server whose restart keeps the data (``persistent_redis``).
KEEPS_DATA = pytest.mark.parametrize("redis", ["persistent"], indirect=True)


def entries(*seqs: int) -> list[tuple[int, bytes]]:
    """``(seq, data)`` as the test writes them and the relay hands them over: envelopes with
    their seq, as publish.lua writes them (the relay skips anything else)."""
    return [(seq, b'{"type":"test:e","payload":{"n":%d},"seq":%d}' % (seq, seq)) for seq in seqs]


class Redis:
    """The test's hand on the server: writes behind the relay's back, reads what it sent."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.client = server.client()
        self.log_everything()

    def log_everything(self) -> None:
        """Log every command in the slow log (again after a restart: the setting is not kept)."""
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.config_set("slowlog-max-len", 100_000)

    def write(self, head: int, *seqs: int, epoch: str | None = None) -> None:
        """``XADD`` ``seqs`` (IDs ``<seq>-0``) and set the last seq (and epoch), atomically."""
        pipe = self.client.pipeline(transaction=True)
        for seq, data in entries(*seqs):
            pipe.xadd(STREAM, {"d": data}, id=f"{seq}-0")
        pipe.hset(META, mapping={"seq": head, **({"epoch": epoch} if epoch else {})})
        pipe.execute()

    def epoch(self) -> str:
        """The epoch in the meta hash."""
        return str(self.client.hget(META, "epoch").decode())

    def sent(self, name: str = "sidecar-relay") -> list[list[str]]:
        """The commands the client named ``name`` sent, oldest first.

        Redis 7.0 leaves out of its slow log a read that blocked (an ``XREAD BLOCK`` that
        waited): the relay's reads are there only when entries were waiting for them.
        """
        log = self.client.slowlog_get(100_000)
        mine = [e for e in reversed(log) if e["client_name"] == name.encode()]
        return [e["command"].decode().split() or [""] for e in mine]

    def reads(self) -> list[list[str]]:
        """The relay's XREAD and HMGET commands: one of each a round."""
        return [command for command in self.sent() if command[0] in ("XREAD", "HMGET")]

    def rounds(self) -> int:
        """How many rounds the relay has done (on this run of the server)."""
        return sum(1 for command in self.sent() if command[0] == "HMGET")

    def relay_client(self) -> dict[str, str] | None:
        """The relay's connection, as ``CLIENT LIST`` shows it; None without one."""
        found = [c for c in self.client.client_list() if c["name"] == "sidecar-relay"]
        return found[0] if found else None

    def unblock(self) -> bool:
        """End the relay's ``XREAD BLOCK`` now (as if its block ran out), if it is in one."""
        client = self.relay_client()
        if client is None or "b" not in client["flags"]:
            return False
        return bool(self.client.client_unblock(int(client["id"])))


class Sink:
    """Records what the relay hands over. The first ``refuse`` deliveries are refused (a full
    inbox) and the first ``fail`` raise (a bug in the hub). While ``open`` is clear, deliveries
    wait for it up to their timeout, then are refused (an inbox that stays full). With
    ``hold``, every delivery waits for ``release``, then is refused (a hub that is stuck)."""

    def __init__(self, refuse: int = 0, fail: int = 0, hold: bool = False) -> None:
        self.cond = threading.Condition()
        self.delivered: list[tuple[str, list[tuple[int, bytes]]]] = []
        self.resets: list[tuple[str, int, str]] = []
        self.timeouts: list[float] = []
        self.refuse, self.fail, self.hold = refuse, fail, hold
        self.offers = self.refusals = 0
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def deliver(self, epoch: str, items: Sequence[Numbered], timeout: float) -> bool:
        if self.hold:
            self.entered.set()
            self.release.wait(2 * PATIENCE)
            return False
        if not self.open.wait(timeout):
            with self.cond:
                self.refusals += 1
                self.cond.notify_all()
            return False
        with self.cond:
            self.offers += 1
            self.timeouts.append(timeout)
            if self.fail:
                self.fail -= 1
                raise RuntimeError("a bug")
            if self.refuse:
                self.refuse -= 1
                return False
            self.delivered.append((epoch, [(item.seq, item.data) for item in items]))
            self.cond.notify_all()
            return True

    def reset(self, epoch: str, seq: int, reason: str) -> None:
        with self.cond:
            self.resets.append((epoch, seq, reason))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[Sink], object]) -> None:
        """Wait until ``predicate(self)`` holds; fail the test after ``PATIENCE``."""
        with self.cond:
            met = self.cond.wait_for(lambda: predicate(self), PATIENCE)
        assert met, f"sink: not within {PATIENCE} s: {self.delivered}, resets {self.resets}"


@pytest.fixture(autouse=True)
def info_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the broker's info lines too (an outage's end is one)."""
    caplog.set_level(logging.INFO, "sidecar.broker")


@pytest.fixture
def redis(request: pytest.FixtureRequest) -> Redis:
    """The test's server: ``redis_server``, or ``persistent_redis`` under :data:`KEEPS_DATA`."""
    kept = getattr(request, "param", "") == "persistent"
    return Redis(request.getfixturevalue("persistent_redis" if kept else "redis_server"))


@pytest.fixture
def make_relay(redis: Redis) -> Iterator[Callable[..., Relay]]:
    """Relays (not started) over brokers with quick knobs; each must stop at teardown.

    ``make(sink, (epoch, seq), url=…, **broker options)`` also writes ``(epoch, seq)`` to the
    meta hash, as a deployment whose relay is at its head would have it.
    """
    made: list[tuple[RedisBroker, Relay]] = []

    def make(
        sink: Sink, start: tuple[str, int] = ("e1", 10), url: str = "", **options: Any
    ) -> Relay:
        redis.write(start[1], epoch=start[0])
        options = {"block": BLOCK, "backoff": BACKOFF, "timeout": 1.0, **options}
        broker = RedisBroker(url or redis.server.url, **options)
        relay = Relay(broker, sink, *start)
        made.append((broker, relay))
        return relay

    yield make
    for broker, relay in made:
        assert relay.stop(PATIENCE), "the relay did not stop"
        broker.close()


def test_entries_in_a_row_are_delivered_read_count_at_a_time(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink, read_count=2)
    redis.write(15, 11, 12, 13)  # 14 and 15 are assigned but not in the stream yet
    relay.start()
    sink.wait(lambda s: len(s.delivered) == 2)
    assert sink.delivered == [("e1", entries(11, 12)), ("e1", entries(13))]
    wait_until(lambda: relay.stats.last_published_seq == 15)
    stats = relay.stats
    assert (stats.epoch, stats.last_delivered_seq, stats.delivered) == ("e1", 13, 3)
    assert sink.timeouts == [BLOCK, BLOCK]  # the sink may block as long as a read
    wait_until(lambda: redis.rounds() >= 4)
    reads = redis.reads()
    assert reads[:2] == [
        ["XREAD", "BLOCK", "50", "COUNT", "2", "STREAMS", STREAM, "10-0"],
        ["HMGET", META, "epoch", "seq"],
    ]
    assert [read[-1] for read in reads if read[0] == "XREAD"] == ["10-0", "12-0"]  # (a read
    # is logged when it returns at once: from 13-0 it blocks, and the round comes after it)
    assert {command[0] for command in redis.sent()} == {"CLIENT", "XREAD", "HMGET"}
    assert sink.resets == [] and (relay.epoch, relay.last) == ("e1", 13)


def test_a_refused_delivery_is_offered_again(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink(refuse=2)  # the hub's inbox is full twice
    relay = make_relay(sink)
    redis.write(11, 11)
    relay.start()
    sink.wait(lambda s: s.delivered)
    assert sink.offers == 3 and sink.delivered == [("e1", entries(11))]
    assert relay.stats.delivered == 1 and relay.stats.failed_attempts == 0


def test_a_new_epoch_resets_and_drops_what_was_read(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(12, 11, 12, epoch="e2")  # 11 and 12 of another epoch: not those after e1:10
    relay.start()
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e2", 12, "epoch changed from e1 (Redis lost its data)")]
    assert sink.delivered == [] and (relay.epoch, relay.last) == ("e2", 12)
    stats = relay.stats
    assert (stats.epoch, stats.last_delivered_seq, stats.resets) == ("e2", 12, 1)
    assert stats.delivered == 0
    assert [r.getMessage() for r in caplog.records if r.name == "sidecar.broker"] == [
        "relay: epoch changed from e1 (Redis lost its data); continuing from e2:12"
        " (clients must resume)"
    ]
    redis.write(13, 13)
    sink.wait(lambda s: s.delivered)
    assert sink.delivered == [("e2", entries(13))]


def test_a_seq_gone_back_resets(redis: Redis, make_relay: Callable[..., Relay]) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    redis.client.hset(META, "seq", 4)  # (an older copy of the data restored)
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e1", 4, "seq went back from 10 to 4")]
    assert relay.stats.last_delivered_seq == 4 and relay.stats.resets == 1
    redis.write(5, 5)
    sink.wait(lambda s: s.delivered)
    assert sink.delivered == [("e1", entries(5))]


def test_idle_rounds_wait_in_xread_and_a_head_at_the_relay_is_no_reset(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    started = time.monotonic()
    relay.start()
    wait_until(lambda: redis.rounds() >= 4)
    assert time.monotonic() - started >= 4 * BLOCK  # no busy loop: each round blocked
    assert sink.resets == [] and relay.stats.failed_attempts == 0
    redis.write(13, 11, 13)
    sink.wait(lambda s: s.resets)
    assert sink.delivered == [("e1", entries(11))]
    assert sink.resets == [("e1", 13, "events 12..12 are no longer in the stream")]


def test_a_hole_delivers_what_is_in_a_row_then_resets_to_the_head_read_with_it(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    sink.open.clear()  # the hub's inbox is full: the relay holds what it read and retries
    relay = make_relay(sink)
    redis.write(16, 11, 12, 15, 16)  # 13 and 14 never made it into the stream
    relay.start()
    sink.wait(lambda s: s.refusals >= 1)
    redis.write(17, 17)  # published after the relay's read
    sink.open.set()
    sink.wait(lambda s: len(s.delivered) == 2)
    assert sink.resets == [("e1", 16, "events 13..14 are no longer in the stream")]
    assert sink.delivered == [("e1", entries(11, 12)), ("e1", entries(17))]  # 17 not skipped
    stats = relay.stats
    assert (stats.last_delivered_seq, stats.delivered, stats.resets) == (17, 3, 1)


def test_a_stream_trimmed_past_the_relay_resets(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(14, 11, 12, 13, 14)
    redis.client.xtrim(STREAM, minid="14-0", approximate=False)  # as MAXLEN ~ may do
    relay.start()
    sink.wait(lambda s: s.resets)
    assert sink.delivered == []
    assert sink.resets == [("e1", 14, "events 11..13 are no longer in the stream")]


def test_lost_data_starts_a_new_epoch_on_the_relays_own_connection(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    redis.client.flushall()  # as after a restart without the data, before anyone publishes
    sink.wait(lambda s: s.resets)
    epoch = redis.epoch()
    assert epoch != "e1"
    assert sink.resets == [(epoch, 0, "epoch changed from e1 (Redis lost its data)")]
    scripts = [command for command in redis.sent() if command[0] == "EVALSHA"]
    assert scripts and all(len(command) == 8 for command in scripts)  # no events in it
    assert not [command for command in redis.sent("sidecar") if command[0] == "EVALSHA"]
    rounds = redis.rounds()
    wait_until(lambda: redis.rounds() >= rounds + 2)
    assert len(sink.resets) == 1 and relay.epoch == epoch
    redis.write(1, 1)
    sink.wait(lambda s: s.delivered)
    assert sink.delivered == [(epoch, entries(1))]


def outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The lines that began an outage, and those that ended one."""
    messages = [r.getMessage() for r in caplog.records if r.name == "sidecar.broker"]
    began = [m for m in messages if "; relay retrying with backoff up to " in m]
    return began, [m for m in messages if " reachable again after " in m]


def assert_one_outage(
    redis: Redis, relay: Relay, caplog: pytest.LogCaptureFixture, began: str, at: str
) -> None:
    """One outage, over: one line (``began``, a regex) when it began, one when it ended (with
    how long it lasted and ``at``, a regex of where the relay continues); none since."""
    wait_until(lambda: relay.stats.reconnects == 1)
    rounds = redis.rounds()
    wait_until(lambda: redis.rounds() >= rounds + 2)  # rounds that succeed log nothing
    stats = relay.stats
    assert (stats.outages, stats.reconnects, stats.connected) == (1, 1, True)
    first, last = outage_lines(caplog)
    retrying = f"{began}; relay retrying with backoff up to 0.04 s"
    assert len(first) == 1 and re.fullmatch(retrying, first[0]), first
    url = re.escape(redis.server.url)
    pattern = f"redis broker {url} reachable again after ([0-9.]+) s; relay continues after {at}"
    ended = [re.fullmatch(pattern, line) for line in last]
    assert len(ended) == 1 and ended[0] and 0 <= float(ended[0][1]) < 5, last


@KEEPS_DATA
def test_redis_gone_is_one_outage_logged_once_and_its_end_once(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(11, 11)
    relay.start()
    sink.wait(lambda s: s.delivered)
    redis.server.stop()
    wait_until(lambda: relay.stats.failed_attempts >= 3)
    stats = relay.stats  # while it lasts
    assert (stats.running, stats.connected, stats.outages, stats.reconnects) == (True, False, 1, 0)
    redis.server.start()
    redis.log_everything()
    redis.write(12, 12)
    sink.wait(lambda s: len(s.delivered) == 2)
    assert sink.delivered[1] == ("e1", entries(12)) and sink.resets == []  # on from 11
    began = f"redis broker {re.escape(redis.server.url)} unreachable: .+"
    assert_one_outage(redis, relay, caplog, began, "e1:1[12]")  # (12: if read at once)


def test_a_refused_script_is_one_outage_too(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    redis.client.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval", "-script")
    redis.client.flushall()  # the relay must run the script to start a new epoch
    wait_until(lambda: relay.stats.failed_attempts >= 2)
    assert relay.stats.connected is False and sink.resets == []
    redis.client.execute_command("ACL", "SETUSER", "default", "+@all")
    sink.wait(lambda s: s.resets)
    epoch = redis.epoch()
    assert sink.resets == [(epoch, 0, "epoch changed from e1 (Redis lost its data)")]
    url = re.escape(redis.server.url)
    refused = f"redis broker {url} refused the request: this user has no permissions to run"
    assert_one_outage(redis, relay, caplog, refused + " the 'evalsha' command", f"{epoch}:0")


def test_an_unexpected_failure_is_one_outage_with_its_traceback(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink(fail=3)  # the hub raises three times
    relay = make_relay(sink)
    redis.write(11, 11)
    connections = int(redis.client.info("stats")["total_connections_received"])
    relay.start()
    sink.wait(lambda s: s.delivered)
    assert sink.offers == 4 and relay.stats.failed_attempts == 3
    assert sink.delivered == [("e1", entries(11))]  # read again after each failure
    # a fresh connection after each failed round (the old one may be left mid-reply)
    assert int(redis.client.info("stats")["total_connections_received"]) == connections + 4
    assert_one_outage(redis, relay, caplog, r"relay failed: RuntimeError\('a bug'\)", "e1:11")
    record = next(r for r in caplog.records if r.getMessage().startswith("relay failed"))
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_a_redis_that_stops_answering_fails_a_round_after_block_and_timeout(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay(Sink(), timeout=0.5)
    relay.start()
    wait_until(redis.relay_client)  # connected, and named sidecar-relay
    assert redis.server.process is not None
    pid = redis.server.process.pid
    frozen = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: relay.stats.failed_attempts >= 1, BLOCK + 0.5 + PATIENCE)
        # the read in flight was sent BLOCK before the freeze at most; it waits block + timeout
        assert time.monotonic() - frozen >= 0.5
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: relay.stats.reconnects == 1)
    began, _ended = outage_lines(caplog)
    # our words around redis-py's detail, which differs between versions and parsers
    assert began[0].startswith(f"redis broker {redis.server.url} unreachable (no answer in time): ")
    assert began[0].endswith("; relay retrying with backoff up to 0.04 s"), began


def test_the_backoff_grows_up_to_its_cap(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay(Sink(), backoff=(0.005, 0.04))
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    began = time.monotonic()
    redis.server.stop()
    wait_until(lambda: relay.stats.failed_attempts >= 10)
    took = time.monotonic() - began
    waits = [min(0.005 * 2**n, 0.04) for n in range(9)]  # between the 10 attempts, at most
    assert took >= sum(waits) / 2  # each wait is half to all of its step: it grew
    assert took < sum(waits) + 0.9  # capped: uncapped, the last 2 waits alone take 0.96 s
    assert outage_lines(caplog)[0][0].endswith("; relay retrying with backoff up to 0.04 s")


def test_the_backoff_starts_again_from_low_after_a_recovery(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    relay = make_relay(Sink(), backoff=(0.01, 0.64))
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    redis.server.stop()
    wait_until(lambda: relay.stats.failed_attempts >= 6)  # the next wait: up to 0.32 s
    redis.server.start()
    wait_until(lambda: relay.stats.reconnects == 1)
    began = time.monotonic()
    redis.server.stop()
    wait_until(lambda: relay.stats.failed_attempts >= 9)
    # from low again: 0.01 + 0.02 at most; from where it was, the first wait is 0.32 s or more
    assert time.monotonic() - began < 0.3


def test_stop_ends_the_thread_and_closes_its_connection(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    unstarted = make_relay(sink)
    assert unstarted.stop(PATIENCE) and not unstarted.alive()  # nothing to wait for
    relay = make_relay(sink)
    relay.start()
    assert relay.alive()
    wait_until(redis.relay_client)
    found = [t for t in threading.enumerate() if t.name == "sidecar-broker-relay"]
    assert found and all(t.daemon for t in found)
    assert relay.stop(PATIENCE) and not relay.alive()
    wait_until(lambda: redis.relay_client() is None)
    assert (relay.stats.running, relay.stats.connected) == (False, False)


def test_stop_gives_up_on_a_relay_stuck_in_its_sink(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink(hold=True)
    relay = make_relay(sink)
    redis.write(13, 11, 13)  # a hole after 11: a reset would follow the delivery
    relay.start()
    assert sink.entered.wait(PATIENCE)
    started = time.monotonic()
    assert not relay.stop(0.1)
    assert time.monotonic() - started < 1.0
    sink.release.set()
    assert relay.stop(PATIENCE)
    assert sink.resets == []  # stopped while delivering: no reset after the stop


def test_stats_start_at_the_starting_point(redis: Redis, make_relay: Callable[..., Relay]) -> None:
    relay = make_relay(Sink(), ("e9", 7))
    assert relay.stats == RelayStats(True, True, "e9", 7, 7, 0, 0, 0, 0, 0)
    assert (relay.epoch, relay.last) == ("e9", 7)


@pytest.mark.parametrize("protocol", [2, 3])
def test_resp2_and_resp3_replies_are_read(
    redis: Redis, make_relay: Callable[..., Relay], protocol: int
) -> None:
    sink = Sink()
    relay = make_relay(sink, url=f"{redis.server.url}&protocol={protocol}")
    redis.write(12, 11, 12)
    relay.start()
    sink.wait(lambda s: s.delivered)
    assert sink.delivered == [("e1", entries(11, 12))]
    client = redis.relay_client()
    assert client is not None and client["resp"] == str(protocol)


@pytest.mark.parametrize(("block", "ms"), [(1.0, "1000"), (0.0001, "1")])
def test_xread_blocks_for_the_brokers_block_in_whole_milliseconds(
    redis: Redis, make_relay: Callable[..., Relay], block: float, ms: str
) -> None:
    sink = Sink()
    relay = make_relay(sink, block=block)
    redis.write(11, 11)  # the first read returns at once (and is in the slow log)
    relay.start()
    sink.wait(lambda s: s.delivered)
    assert redis.reads()[0][:5] == ["XREAD", "BLOCK", ms, "COUNT", "256"]
    relay.stop(0)  # and end the next read, which may block for a second, now
    wait_until(lambda: (redis.unblock(), relay.stop(0.01))[1])


def test_entries_as_redis_returns_them_are_parsed_with_the_seq_from_the_id(redis: Redis) -> None:
    (_, good), (_, other) = entries(42, 43)
    redis.client.xadd(STREAM, {"d": good}, id="42-0")
    redis.client.xadd(STREAM, {"d": other}, id="43-1")  # a seq's ID, but not <seq>-0
    parsed = [parse_entry(i, fields, 1 << 20) for i, fields in redis.client.xrange(STREAM)]
    assert parsed == [Entry(42, good), Malformed.ID]


# -- the stream is input: malformed and foreign entries (issue 19, items 3-5) ----------------


def xadd(redis: Redis, entry_id: str, fields: dict[str, Any], head: int | None = None) -> None:
    """Write an entry as something other than publish.lua would (and the head, if given)."""
    pipe = redis.client.pipeline(transaction=True)
    pipe.xadd(STREAM, fields, id=entry_id)
    if head is not None:
        pipe.hset(META, "seq", head)
    pipe.execute()


def skipped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipped stream entry" in r.getMessage()]


def test_an_entry_between_events_is_skipped_counted_and_logged_and_the_relay_goes_on(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(11, 11)
    xadd(redis, "11-1", {"x": "y"})  # between two events (no seq is missing), without d
    relay.start()
    sink.wait(lambda s: s.delivered)
    redis.write(12, 12)
    sink.wait(lambda s: sum(len(items) for _e, items in s.delivered) == 2)
    assert [item for _e, items in sink.delivered for item in items] == entries(11, 12)
    assert sink.resets == [] and relay.stats.malformed == {"id": 1}
    assert relay.stats.failed_attempts == 0 and relay.stats.outages == 0
    assert skipped_lines(caplog) == [
        "relay: skipped stream entry 11-1: its ID is not <seq>-0 (written by something other"
        " than a publish)"
    ]


def test_an_entry_without_d_in_a_seqs_place_is_a_gap_once_and_the_relay_goes_on(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(11, 11)
    xadd(redis, "12-0", {"x": "y"}, head=12)  # event 12 is lost: clients must resume
    relay.start()
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e1", 12, "events 12..12 are missing or malformed")]
    redis.write(13, 13)
    sink.wait(lambda s: len(s.delivered) == 2)
    assert sink.delivered == [("e1", entries(11)), ("e1", entries(13))]
    rounds = redis.rounds()
    wait_until(lambda: redis.rounds() >= rounds + 3)
    assert len(sink.resets) == 1 and relay.stats.malformed == {"fields": 1}


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"x": b"y"}, "fields"),  # no d (issue 19, item 3)
    ({"d": b"{}", "e": b"1"}, "fields"),
    ({"d": b"not json"}, "not-json"),
    ({"d": b'{"type":"app:x","payload":{"n":NaN},"seq":12}'}, "not-json"),
    ({"d": b'{"type":"app:x","type":"app:y","seq":12}'}, "not-json"),
    ({"d": b"[1,2]"}, "not-envelope"),
    ({"d": b'{"type":"Not A Name","seq":12}'}, "not-envelope"),
    (
        {"d": b'{"type":"connection:status","payload":{"status":"connected"},"seq":12}'},
        "reserved-type",
    ),
    ({"d": b'{"type":"chat:send","payload":{},"seq":12}'}, "reserved-type"),
    ({"d": b'{"type":"app:x","payload":{},"seq":99}'}, "seq-mismatch"),
    ({"d": b'{"type":"app:x","payload":{},"channel":"chat:c1","seq":12}'}, "channel-mismatch"),
    ({"d": b'{"type":"app:x","payload":{"p":"' + b"x" * 2000 + b'"},"seq":12}'}, "too-large"),
]


@pytest.mark.parametrize(("fields", "kind"), HOSTILE, ids=[k for _f, k in HOSTILE])
def test_a_hostile_entry_in_a_seqs_place_is_never_delivered_and_is_one_gap(
    redis: Redis, make_relay: Callable[..., Relay], fields: dict[str, Any], kind: str
) -> None:
    # (a seq in the data that differs from the ID's would make every client drop the events
    # after it as duplicates; a connection:status would be taken for the hub's own)
    sink = Sink()
    relay = make_relay(sink, max_event_bytes=1024)
    redis.write(11, 11)
    xadd(redis, "12-0", fields)
    redis.write(13, 13)
    relay.start()
    sink.wait(lambda s: s.resets)
    assert sink.delivered == [("e1", entries(11))]
    assert sink.resets == [("e1", 13, "events 12..12 are missing or malformed")]
    assert relay.stats.malformed == {kind: 1}
    redis.write(14, 14)
    sink.wait(lambda s: len(s.delivered) == 2)
    assert sink.delivered[1] == ("e1", entries(14)) and len(sink.resets) == 1


def relay_cpu(relay: Relay) -> float:
    """CPU seconds the relay thread has used so far."""
    ident = relay._thread.ident
    assert ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


@pytest.mark.parametrize(
    "entry_id", ["*", "900000000000000-0", "1000-0"], ids=["auto", "huge", "ahead"]
)
def test_a_foreign_entry_beyond_the_head_is_skipped_once_no_reset_storm(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture, entry_id: str
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    data = b'{"type":"app:x","payload":{},"seq":1000}'  # even well formed, no publish wrote it
    xadd(redis, entry_id, {"d": data})
    wait_until(lambda: relay.stats.malformed)
    rounds, cpu, started = redis.rounds(), relay_cpu(relay), time.monotonic()
    wait_until(lambda: redis.rounds() >= rounds + 6)
    took = time.monotonic() - started
    assert took >= 5 * BLOCK  # every round waited in XREAD: nothing is read again
    assert relay_cpu(relay) - cpu < 0.5 * took  # (a reset storm keeps a core busy)
    assert sink.resets == [] and sink.delivered == [] and relay.stats.resets == 0
    assert sum(relay.stats.malformed.values()) == 1 and len(skipped_lines(caplog)) == 1


def test_a_foreign_entry_is_healed_by_the_next_publish_in_a_new_epoch(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    broker = RedisBroker(redis.server.url)
    try:
        relay.start()
        redis.client.xadd(STREAM, {"x": "y"})  # XADD … * : an ID far above any seq
        wait_until(lambda: relay.stats.malformed)
        assert broker.publish([b'{"type":"app:x","payload":{}}']) == [1]  # 202, not 503
        epoch = redis.epoch()
        assert epoch != "e1" and redis.client.xlen(STREAM) == 1  # the foreign entry is gone
        sink.wait(lambda s: s.resets)
        assert broker.publish([b'{"type":"app:x","payload":{}}']) == [2]
        sink.wait(lambda s: s.delivered and s.delivered[-1][1][-1][0] == 2)
        # one reset, to the new epoch (at 0, or at 1 if the publish came first)
        assert len(sink.resets) == 1 and sink.resets[0][:1] == (epoch,)
        delivered = [seq for _e, items in sink.delivered for seq, _data in items]
        assert delivered == list(range(sink.resets[0][1] + 1, 3)) and relay.stats.resets == 1
    finally:
        broker.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.client.set(STREAM, "a string"),
        lambda r: r.client.set(META, "a string"),
        lambda r: r.client.hset(META, "seq", "twelve"),
        lambda r: r.client.hset(META, "epoch", "not an epoch!"),
        lambda r: r.client.hdel(META, "seq"),
    ],
    ids=["stream-of-another-type", "meta-of-another-type", "seq", "epoch", "no-seq"],
)
def test_keys_the_relay_cannot_read_as_ours_start_a_new_epoch_never_an_endless_outage(
    redis: Redis, make_relay: Callable[..., Relay], damage: Callable[[Redis], object]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    redis.client.delete(STREAM)
    damage(redis)
    sink.wait(lambda s: s.resets)
    epoch = redis.epoch()
    assert epoch != "e1" and sink.resets == [
        (epoch, 0, "epoch changed from e1 (Redis lost its data)")
    ]
    redis.write(1, 1)
    sink.wait(lambda s: s.delivered)
    assert sink.delivered == [(epoch, entries(1))]
    assert relay.stats.resets == 1 and relay.stats.outages <= 1
