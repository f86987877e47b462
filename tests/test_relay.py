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
from logging import WARNING
from typing import Any

import pytest
from redis.exceptions import ResponseError

from sidecar.broker.entries import Entry, Malformed, parse_entry
from sidecar.broker.redis import RedisBroker
from sidecar.broker.relay import LOG_INTERVAL, ChannelSeqs, Relay, RelayStats
from sidecar.core.stream import Delivered, Numbered, Revocation
from sidecar.logs import LogLimiter
from tests.conftest import wait_for
from tests.redis_server import RedisServer
from tests.stream_entries import (
    META,
    STREAM,
    envelope,
    event_fields,
    position_key,
    revoke_fields,
)
from tests.unit.fakes import PATIENCE, wait_until

P1, C9 = "project:p1", "chat:c9"
BLOCK = 0.05  # the relay's XREAD BLOCK, in seconds: an idle round lasts this long
BACKOFF = (0.01, 0.04)
#: Runs a test on a server whose restart keeps the data (``persistent_redis``).
KEEPS_DATA = pytest.mark.parametrize("redis", ["persistent"], indirect=True)


def entries(*seqs: int) -> list[tuple[int, bytes]]:
    """``(seq, data)`` of default-channel events as the test writes them and the relay hands
    them over: envelopes with their seq, as publish.lua writes them (the relay skips anything
    else). In a stream of the default channel alone, each one's position is its seq."""
    return [(seq, envelope(seq)) for seq in seqs]


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
        """``XADD`` default-channel events ``seqs`` at their positions (IDs ``<seq>-0``, the
        stream of one channel) and set the last position and seq (and epoch), atomically."""
        pipe = self.client.pipeline(transaction=True)
        for seq, data in entries(*seqs):
            pipe.xadd(STREAM, event_fields(data, seq), id=f"{seq}-0")
        mapping = {"pos": head, "seq": head, **({"epoch": epoch} if epoch else {})}
        pipe.hset(META, mapping=mapping)
        pipe.execute()

    def write_at(self, head: int, *items: tuple[int, dict[str, Any]]) -> None:
        """``XADD`` ``(pos, fields)`` items and set the last position, atomically."""
        pipe = self.client.pipeline(transaction=True)
        for pos, fields in items:
            pipe.xadd(STREAM, fields, id=f"{pos}-0")
        pipe.hset(META, "pos", head)
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
        return sum(1 for command in self.sent() if command[:2] == ["HMGET", META])

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
        #: what was delivered, by batch: ``(seq, data)`` of each event (a revocation: its
        #: ``(pos, user, channel)``); ``items`` keeps each one whole, as the relay made it
        self.delivered: list[tuple[str, list[tuple[Any, ...]]]] = []
        self.items: list[Delivered] = []
        self.resets: list[tuple[str, int, str]] = []  # (epoch, position, reason)
        self.reset_seqs: list[int] = []  # the default channel's seq at each reset
        self.timeouts: list[float] = []
        self.refuse, self.fail, self.hold = refuse, fail, hold
        self.offers = self.refusals = 0
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def deliver(self, epoch: str, items: Sequence[Delivered], timeout: float) -> bool:
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
            self.delivered.append((epoch, [_short(item) for item in items]))
            self.items += items
            self.cond.notify_all()
            return True

    def reset(self, epoch: str, seq: int, reason: str, *, pos: int | None = None) -> None:
        assert pos is not None, "the relay always says where the stream goes on"
        with self.cond:
            self.resets.append((epoch, pos, reason))
            self.reset_seqs.append(seq)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[Sink], object]) -> None:
        """Wait until ``predicate(self)`` holds; fail the test after ``PATIENCE``."""
        with self.cond:
            met = self.cond.wait_for(lambda: predicate(self), PATIENCE)
        assert met, f"sink: not within {PATIENCE} s: {self.delivered}, resets {self.resets}"


def _short(item: Delivered) -> tuple[Any, ...]:
    """An event as ``(seq, data)``; a revocation as ``(pos, user, channel)``."""
    if isinstance(item, Revocation):
        return (item.pos, item.user, item.channel)
    return (item.seq, item.data)


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

    ``make(sink, (epoch, pos), url=…, **broker options)`` also writes ``(epoch, pos)`` to the
    meta hash (the default channel's seq at ``pos`` too), as a deployment whose relay is at
    its head would have it.
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
        ["HMGET", META, "epoch", "pos", "seq"],
    ]
    assert [read[-1] for read in reads if read[0] == "XREAD"] == ["10-0", "12-0"]  # (a read
    # is logged when it returns at once: from 13-0 it blocks, and the round comes after it)
    # (and each round the positions script, loaded by the first round, which Redis lacked)
    commands = {command[0] for command in redis.sent()}
    assert commands == {"CLIENT", "XREAD", "HMGET", "EVALSHA", "SCRIPT"}
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


def test_a_position_gone_back_resets(redis: Redis, make_relay: Callable[..., Relay]) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    redis.client.hset(META, mapping={"pos": 4, "seq": 3})  # (an older copy of the data)
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e1", 4, "the position went back from 10 to 4")]
    assert sink.reset_seqs == [3]  # the default channel's seq there, read with it
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
    positions = RedisBroker.positions_script.sha  # (run with every read: not a publish)
    scripts = [c for c in redis.sent() if c[0] == "EVALSHA" and c[1] != positions]
    # no named channel and no item in it: its last argument is m, the number of channels, 0
    assert scripts and all(command[-1] == "0" for command in scripts), scripts
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


def test_entries_as_redis_returns_them_are_parsed_with_the_position_from_the_id(
    redis: Redis,
) -> None:
    (_, good), (_, other) = entries(42, 43)
    p1 = envelope(7, P1)
    redis.client.xadd(STREAM, event_fields(good, 42), id="42-0")
    redis.client.xadd(STREAM, event_fields(other, 43), id="43-1")  # not <pos>-0
    redis.client.xadd(STREAM, event_fields(p1, 7, P1, "E1"), id="44-0")
    redis.client.xadd(STREAM, revoke_fields("alice", P1), id="45-0")
    parsed = [parse_entry(i, fields, 1 << 20) for i, fields in redis.client.xrange(STREAM)]
    assert parsed == [
        Entry(42, "", "", 42, good),
        Malformed.ID,
        Entry(44, P1, "E1", 7, p1),
        Revocation(45, "alice", P1),
    ]


# -- channels: one stream, every channel's events and the revocations in one order ---------


def test_every_channels_events_and_revocations_are_delivered_in_the_streams_order(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink, ("e1", 10))
    redis.write_at(
        15,
        (11, event_fields(envelope(4, P1), 4, P1, "E1")),
        (12, event_fields(envelope(11), 11)),  # the default channel: seq 11 at position 12
        (13, revoke_fields("alice", P1)),
        (14, event_fields(envelope(1, C9), 1, C9, "E9")),
        (15, event_fields(envelope(5, P1), 5, P1, "E1")),
    )
    redis.client.hset(META, "seq", 11)
    relay.start()
    sink.wait(lambda s: len(s.items) == 5)
    assert sink.items == [
        Numbered(11, P1, "E1", 4, envelope(4, P1)),
        Numbered(12, "", "e1", 11, envelope(11)),  # the default channel's epoch: the stream's
        Revocation(13, "alice", P1),
        Numbered(14, C9, "E9", 1, envelope(1, C9)),
        Numbered(15, P1, "E1", 5, envelope(5, P1)),
    ]
    assert sink.resets == [] and relay.stats.malformed == {}
    assert (relay.last, relay.stats.last_delivered_seq, relay.stats.delivered) == (15, 15, 5)


def test_a_channel_whose_position_was_lost_goes_on_in_its_new_epoch_from_seq_1(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write_at(12, (11, event_fields(envelope(8, P1), 8, P1, "E1")))
    relay.start()
    sink.wait(lambda s: len(s.items) == 1)
    # its ch: key expired (or was lost): the next publish gives it a new epoch, seq 1
    redis.write_at(13, (12, event_fields(envelope(1, P1), 1, P1, "E2")))
    redis.write_at(14, (13, event_fields(envelope(2, P1), 2, P1, "E2")))
    sink.wait(lambda s: len(s.items) == 3)
    assert [(i.epoch, i.seq) for i in sink.items if isinstance(i, Numbered)] == [
        ("E1", 8),
        ("E2", 1),
        ("E2", 2),
    ]
    assert sink.resets == [] and relay.stats.malformed == {}


# -- the stream is input: malformed and foreign entries (issue 19, items 3-5) ----------------


def xadd(redis: Redis, entry_id: str, fields: dict[str, Any], head: int | None = None) -> None:
    """Write an entry as something other than publish.lua would (and the last position, if
    given: a forger that takes the position it writes)."""
    pipe = redis.client.pipeline(transaction=True)
    pipe.xadd(STREAM, fields, id=entry_id)
    if head is not None:
        pipe.hset(META, "pos", head)
    pipe.execute()


ID_WHY = "its ID is not <pos>-0 (written by something other than a publish)"
AHEAD_WHY = "its position or seq is beyond the last one assigned (no publish wrote it)"


def skipped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipped stream entry" in r.getMessage()]


def test_an_entry_between_events_is_skipped_counted_and_logged_and_the_relay_goes_on(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(11, 11)
    xadd(redis, "11-1", {"x": "y"})  # between two events (no position is missing), without d
    relay.start()
    sink.wait(lambda s: s.delivered)
    redis.write(12, 12)
    sink.wait(lambda s: sum(len(items) for _e, items in s.delivered) == 2)
    assert [item for _e, items in sink.delivered for item in items] == entries(11, 12)
    assert sink.resets == [] and relay.stats.malformed == {"id": 1}
    assert relay.stats.failed_attempts == 0 and relay.stats.outages == 0
    assert skipped_lines(caplog) == [f"relay: skipped stream entry 11-1: {ID_WHY}"]


def test_each_malformed_entry_is_counted_and_each_kind_logged_once_an_interval(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(11, 11)
    xadd(redis, "11-1", {"x": "1"})  # (IDs not <pos>-0 take no position: no gap)
    xadd(redis, "11-2", {"x": "2"})
    xadd(redis, "12-0", event_fields(envelope(12), 12))  # beyond the head (11): ahead
    relay.start()
    wait_until(lambda: relay.stats.malformed == {"id": 2, "ahead": 1})
    assert sink.resets == [] and relay.stats.failed_attempts == 0
    assert skipped_lines(caplog) == [  # one line for each kind, not for each entry
        f"relay: skipped stream entry 11-1: {ID_WHY}",
        f"relay: skipped stream entry 12-0: {AHEAD_WHY}",
    ]


def test_a_kinds_next_line_after_the_interval_says_how_many_were_not_logged(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    times = iter([0.0, 1.0, 2.0, LOG_INTERVAL + 1])  # the limiter's clock, one tick a check
    relay._log_limit = LogLimiter(LOG_INTERVAL, clock=lambda: next(times))
    redis.write(11, 11)
    for n in (1, 2, 3, 4):
        xadd(redis, f"11-{n}", {"x": str(n)})
    relay.start()
    wait_until(lambda: relay.stats.malformed == {"id": 4})
    assert skipped_lines(caplog) == [
        f"relay: skipped stream entry 11-1: {ID_WHY}",
        f"relay: skipped stream entry 11-4: {ID_WHY} (2 more since the last line)",
    ]


def test_a_relay_whose_reads_are_refused_fails_its_rounds_with_backoff_never_spins(
    redis: Redis, make_relay: Callable[..., Relay], caplog: pytest.LogCaptureFixture
) -> None:
    # an ACL that lets the relay's user run the scripts but not XREAD: Redis answers every
    # read with an error while the stream's epoch stays: each round fails and waits
    redis.client.acl_setuser(
        "no-xread", enabled=True, passwords=["+pw"], keys=["~*"], commands=["+@all", "-xread"]
    )
    sink = Sink()
    relay = make_relay(sink, url=f"unix://no-xread:pw@{redis.server.socket_path}?db=0")
    relay.start()
    wait_until(lambda: relay.stats.failed_attempts >= 3)
    stats = relay.stats
    assert stats.outages == 1 and not stats.connected and stats.reconnects == 0
    assert sink.resets == [] and sink.delivered == []
    lines = [r for r in caplog.records if r.name == "sidecar.broker" and r.levelno >= WARNING]
    assert len(lines) == 1  # the outage's one line
    redis.client.acl_deluser("no-xread")


def test_the_seqs_of_a_channel_follow_within_a_batch_and_across_batches() -> None:
    seqs = ChannelSeqs()
    seqs.record({P1: ("E1", 1)})
    second = Entry(12, P1, "E1", 2, b"{}")
    third = Entry(13, P1, "E1", 3, b"{}")
    assert seqs.follows(second, {})  # after the last one delivered
    assert seqs.follows(third, {P1: ("E1", 2)})  # after the last one taken in this batch
    assert not seqs.follows(third, {})
    assert seqs.follows(Entry(14, P1, "E2", 1, b"{}"), {P1: ("E1", 2)})  # a new epoch: 1
    assert not seqs.follows(Entry(14, P1, "E2", 2, b"{}"), {P1: ("E1", 2)})


@pytest.mark.parametrize(
    "fields", [{"x": "y"}, {"s": 12}, {"d": envelope(12)}], ids=["no-d-no-s", "no-d", "no-s"]
)
def test_an_entry_without_d_in_a_positions_place_is_a_gap_once_and_the_relay_goes_on(
    redis: Redis, make_relay: Callable[..., Relay], fields: dict[str, Any]
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    redis.write(11, 11)
    xadd(redis, "12-0", fields, head=12)  # event 12 is lost: clients must resume
    relay.start()
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e1", 12, "events 12..12 are missing or malformed")]
    redis.write(13, 13)
    sink.wait(lambda s: len(s.delivered) == 2)
    assert sink.delivered == [("e1", entries(11)), ("e1", entries(13))]
    rounds = redis.rounds()
    wait_until(lambda: redis.rounds() >= rounds + 3)
    assert len(sink.resets) == 1 and relay.stats.malformed == {"fields": 1}


def _named(data: bytes, seq: Any = 12, channel: Any = P1, epoch: Any = "E1") -> dict[str, Any]:
    return {"d": data, "s": seq, "c": channel, "e": epoch}


_P1_12 = b'{"type":"app:x","payload":{},"seq":12,"channel":"project:p1"}'

HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"x": b"y"}, "fields"),  # no d (issue 19, item 3)
    ({"d": b"{}", "e": b"1"}, "fields"),
    ({"d": envelope(12), "s": 12, "e": b"E1"}, "fields"),  # e without c
    ({"d": envelope(12), "s": 12, "k": b"revoke"}, "fields"),
    ({"d": envelope(12), "s": b"twelve"}, "fields"),
    ({"d": envelope(12), "s": b"0"}, "fields"),
    ({"d": envelope(12), "s": b"-12"}, "fields"),
    ({"d": envelope(12), "s": b"9" * 20}, "fields"),
    (_named(_P1_12, channel=b"Not:A:Channel:Name:x"), "fields"),
    (_named(_P1_12, channel=b"project:p1,chat:c9"), "fields"),
    (_named(_P1_12, channel=b""), "fields"),
    (_named(_P1_12, epoch=b""), "fields"),
    (_named(_P1_12, epoch=b"not an epoch"), "fields"),
    (_named(_P1_12, epoch=b"E" * 65), "fields"),
    ({"k": b"revoke", "u": b"al ice", "c": P1}, "fields"),
    ({"k": b"revoke", "u": b"", "c": P1}, "fields"),
    ({"k": b"revoke", "u": b"alice", "c": b"Bad"}, "fields"),
    ({"k": b"unsubscribe", "u": b"alice", "c": P1}, "fields"),
    ({"d": b"not json", "s": 12}, "not-json"),
    ({"d": b'{"type":"app:x","payload":{"n":NaN},"seq":12}', "s": 12}, "not-json"),
    ({"d": b'{"type":"app:x","type":"app:y","seq":12}', "s": 12}, "not-json"),
    ({"d": b"[1,2]", "s": 12}, "not-envelope"),
    ({"d": b'{"type":"Not A Name","seq":12}', "s": 12}, "not-envelope"),
    (
        {"d": b'{"type":"connection:status","payload":{"status":"connected"},"seq":12}', "s": 12},
        "reserved-type",
    ),
    ({"d": b'{"type":"chat:send","payload":{},"seq":12}', "s": 12}, "reserved-type"),
    (
        _named(b'{"type":"channel:subscribed","payload":{},"seq":12,"channel":"project:p1"}'),
        "reserved-type",
    ),
    ({"d": b'{"type":"app:x","payload":{},"seq":99}', "s": 12}, "seq-mismatch"),
    ({"d": envelope(12), "s": 13}, "seq-mismatch"),
    (_named(_P1_12, seq=11), "seq-mismatch"),
    (
        {"d": b'{"type":"app:x","payload":{},"channel":"chat:c1","seq":12}', "s": 12},
        "channel-mismatch",
    ),
    ({"d": b'{"type":"app:x","payload":{},"channel":"","seq":12}', "s": 12}, "channel-mismatch"),
    ({"d": _P1_12, "s": 12}, "channel-mismatch"),  # the default channel's, naming one
    (_named(b'{"type":"app:x","payload":{},"seq":12}'), "channel-mismatch"),  # naming none
    (_named(_P1_12, channel=C9), "channel-mismatch"),  # naming another one
    (
        {"d": b'{"type":"app:x","payload":{"p":"' + b"x" * 2000 + b'"},"seq":12}', "s": 12},
        "too-large",
    ),
    # well formed, but a default-channel seq no publish assigned (the head's is 13)
    ({"d": envelope(14), "s": 14}, "ahead"),
    ({"d": envelope(2000), "s": 2000}, "ahead"),
]


@pytest.mark.parametrize(("fields", "kind"), HOSTILE, ids=[k for _f, k in HOSTILE])
def test_a_hostile_entry_in_a_positions_place_is_never_delivered_and_is_one_gap(
    redis: Redis, make_relay: Callable[..., Relay], fields: dict[str, Any], kind: str
) -> None:
    # (a seq in the data that differs from the entry's would make every client drop the events
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


@pytest.mark.parametrize(
    ("seq", "epoch"),
    [(10, "E1"), (8, "E1"), (3, "E1"), (1, "E1"), (2, "E2"), (900, "E2")],
    ids=["jump", "twice", "back", "restart", "new-epoch-not-at-1", "new-epoch-far"],
)
def test_a_well_formed_entry_whose_seq_does_not_follow_its_channel_is_never_delivered(
    redis: Redis,
    make_relay: Callable[..., Relay],
    caplog: pytest.LogCaptureFixture,
    seq: int,
    epoch: str,
) -> None:
    # a forger (or a ch: key changed by hand) giving project:p1 seq 900 in its epoch: handed
    # on, every hub would take p1 as at 900 and drop its real events 9..900 as duplicates
    sink = Sink()
    relay = make_relay(sink)
    redis.write_at(12, (11, event_fields(envelope(7, P1), 7, P1, "E1")))
    redis.write_at(13, (12, event_fields(envelope(8, P1), 8, P1, "E1")))
    relay.start()
    sink.wait(lambda s: len(s.items) == 2)
    redis.write_at(14, (13, event_fields(envelope(seq, P1), seq, P1, epoch)))
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e1", 14, "events 13..13 are missing or malformed")]
    assert relay.stats.malformed == {"out-of-order": 1}
    assert skipped_lines(caplog) == [
        "relay: skipped stream entry 13-0: its seq does not follow the last one of its channel"
    ]
    # after the reset (every client resumes), the channel is taken as it comes again
    redis.write_at(15, (15, event_fields(envelope(9, P1), 9, P1, "E1")))
    redis.write_at(16, (16, event_fields(envelope(10, P1), 10, P1, "E1")))
    sink.wait(lambda s: len(s.items) == 4)
    assert [i.seq for i in sink.items if isinstance(i, Numbered)] == [7, 8, 9, 10]
    assert len(sink.resets) == 1


@pytest.mark.parametrize(
    ("position", "entry", "kind"),
    [
        ({"epoch": "E1", "seq": 8}, ("E1", 9), "ahead"),  # no publish gave it seq 9
        ({"epoch": "E1", "seq": 8}, ("E1", 900), "ahead"),
        ({"epoch": "E1", "seq": 8}, ("E1", 8), None),  # first seen: taken as it comes
        ({"epoch": "E1", "seq": 8}, ("E1", 1), None),
        ({"epoch": "E2", "seq": 1}, ("E1", 9), None),  # the channel moved on since: no check
        ({}, ("E1", 9), None),  # no position (expired): no check
        ({"epoch": "E1", "seq": "nine"}, ("E1", 9), None),  # not a position publish.lua wrote
        ({"epoch": "bad epoch", "seq": 8}, ("E1", 9), None),
    ],
    ids=["ahead", "far-ahead", "at", "behind", "other-epoch", "none", "bad-seq", "bad-epoch"],
)
@pytest.mark.parametrize("loaded", [True, False], ids=["script", "no-script"])
def test_a_named_event_beyond_its_channels_position_is_ahead_even_first_seen(
    redis: Redis,
    make_relay: Callable[..., Relay],
    position: dict[str, Any],
    entry: tuple[str, int],
    kind: str | None,
    loaded: bool,
) -> None:
    # the relay knows nothing of project:p1 yet; its ch: key, read after the entry, says
    # which seqs a publish gave it: read by the positions script in the round's pipeline
    # or, when Redis lacks the script (a restart), by the relay itself in that round
    if loaded:
        redis.client.script_load(RedisBroker.positions_script.text)
    sink = Sink()
    relay = make_relay(sink)
    if position:
        redis.client.hset(position_key(P1), mapping=position)
    epoch, seq = entry
    redis.write_at(11, (11, event_fields(envelope(seq, P1), seq, P1, epoch)))
    redis.write(12, 12)
    relay.start()
    if kind is None:
        sink.wait(lambda s: len(s.items) == 2)
        assert sink.resets == [] and relay.stats.malformed == {}
        return
    sink.wait(lambda s: s.resets)
    assert sink.resets == [("e1", 12, "events 11..11 are missing or malformed")]
    assert relay.stats.malformed == {kind: 1} and sink.items == []
    rounds = redis.rounds()
    wait_until(lambda: redis.rounds() >= rounds + 2)
    # never a round trip of its own for the positions once Redis has the script
    reads = [c[1] for c in redis.sent() if c[0] == "HMGET"]
    assert reads.count(position_key(P1)) == (not loaded) and reads.count(META) == redis.rounds()
    scripts = [c for c in redis.sent() if c[:2] == ["EVALSHA", RedisBroker.positions_script.sha]]
    assert len(scripts) == redis.rounds() >= 3


LONGEST = "doc:" + "x" * 64 + ":" + "y" * 59  # a channel name of the most bytes: 128


@pytest.mark.parametrize(
    ("answer", "answered"),
    [
        ([C9.encode(), b"E9", b"3", b"doc:9", b"D9", b"5"], {C9, "doc:9"}),
        ([], set()),  # (a trim took every entry in between)
        ([b"x"], set()),  # not an answer of the script
        (ResponseError("BUSY Redis is busy running a script"), set()),
    ],
    ids=["two-answered", "none-answered", "malformed", "error"],
)
def test_a_channel_the_positions_script_did_not_see_is_read_by_the_relay(
    redis: Redis, make_relay: Callable[..., Relay], answer: Any, answered: set[str]
) -> None:
    # a trim between the XREAD and the script, a script not ours or one that failed leaves
    # channels out of its answer: the relay reads their positions itself, never takes them
    # unchecked; the entries before a named one that name none change nothing
    relay = make_relay(Sink())
    heads = [(P1, "E1", 8), (C9, "E9", 3), ("doc:9", "D9", 5), (LONGEST, "L", 2)]
    for channel, epoch, seq in heads:
        redis.client.hset(position_key(channel), mapping={"epoch": epoch, "seq": seq})
    read = [
        (b"11-0", event_fields(envelope(12), 12)),  # the default channel: no position to read
        (b"12-0", revoke_fields("alice", "team:red")),  # a revocation: none either
        (b"13-0", event_fields(envelope(9, P1), 9, P1, "E1")),
        (b"14-0", event_fields(envelope(4, C9), 4, C9, "E9")),
        (b"15-0", event_fields(envelope(6, "doc:9"), 6, "doc:9", "D9")),
        (b"16-0", event_fields(envelope(3, LONGEST), 3, LONGEST, "L")),
    ]
    raw = [(i, {k.encode(): str(v).encode() for k, v in f.items()}) for i, f in read]
    positions = relay._positions(raw, answer)
    assert {name: tuple(p) if p else None for name, p in positions.items()} == {
        P1: ("E1", 8),
        C9: ("E9", 3),
        "doc:9": ("D9", 5),
        LONGEST: ("L", 2),
    }
    hmgets = [c[1][:100] for c in redis.sent() if c[0] == "HMGET"]  # (the slow log cuts at 128)
    expected = [P1, C9, "doc:9", LONGEST]
    assert hmgets == [position_key(c)[:100] for c in expected if c not in answered]


def test_the_positions_script_reads_the_entries_after_the_cursor(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    # a relay that starts late in a long stream: the script reads the same entries as its
    # XREAD (after the cursor), not the stream's first ones; so no position read of its own
    redis.client.script_load(RedisBroker.positions_script.text)
    sink = Sink()
    relay = make_relay(sink, ("e1", 300), read_count=8)
    old = [(n, event_fields(envelope(n, C9), n, C9, "E9")) for n in range(1, 301)]
    for start in range(0, 300, 100):
        redis.write_at(300, *old[start : start + 100])
    redis.client.hset(position_key(C9), mapping={"epoch": "E9", "seq": 300})
    redis.client.hset(position_key(P1), mapping={"epoch": "E1", "seq": 1})
    redis.write_at(301, (301, event_fields(envelope(1, P1), 1, P1, "E1")))
    relay.start()
    sink.wait(lambda s: len(s.items) == 1)
    assert sink.resets == [] and relay.stats.malformed == {}
    assert [c for c in redis.sent() if c[0] == "HMGET" and c[1] != META] == []


def test_the_seqs_checked_are_those_delivered_not_those_read_and_refused(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink(fail=1, refuse=1)  # the first batch raises, the second is refused: read again
    relay = make_relay(sink)
    redis.write_at(
        13,
        (11, event_fields(envelope(1, P1), 1, P1, "E1")),
        (12, event_fields(envelope(2, P1), 2, P1, "E1")),
        (13, event_fields(envelope(1, C9), 1, C9, "E9")),
    )
    relay.start()
    sink.wait(lambda s: len(s.items) == 3)
    assert sink.resets == [] and relay.stats.malformed == {}
    assert [(i.channel, i.seq) for i in sink.items if isinstance(i, Numbered)] == [
        (P1, 1),
        (P1, 2),
        (C9, 1),
    ]


def test_the_channels_remembered_are_bounded(
    redis: Redis, make_relay: Callable[..., Relay]
) -> None:
    sink = Sink()
    relay = make_relay(sink, read_count=64)
    relay.seqs.limit = 50
    redis.write_at(
        110,
        *((10 + i, event_fields(envelope(1, f"a:{i}"), 1, f"a:{i}", "E")) for i in range(1, 101)),
    )
    relay.start()
    sink.wait(lambda s: len(s.items) == 100)
    assert len(relay.seqs) == 50
    # a:1 was forgotten (its next event is taken as it comes); a:100 is remembered
    redis.write_at(
        112,
        (111, event_fields(envelope(5, "a:1"), 5, "a:1", "E")),
        (112, event_fields(envelope(5, "a:100"), 5, "a:100", "E")),
    )
    sink.wait(lambda s: s.resets)
    assert [i.channel for i in sink.items[100:] if isinstance(i, Numbered)] == ["a:1"]
    assert relay.stats.malformed == {"out-of-order": 1}


def relay_cpu(relay: Relay) -> float:
    """CPU seconds the relay thread has used so far."""
    ident = relay._thread.ident
    assert ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


@pytest.mark.parametrize(
    ("entry_id", "kind"),
    [("*", "event"), ("900000000000000-0", "event"), ("1000-0", "event"), ("1000-0", "named"),
     ("1000-0", "revocation")],
    ids=["auto", "huge", "ahead", "ahead-named", "ahead-revocation"],
)  # fmt: skip
def test_a_foreign_entry_beyond_the_head_is_skipped_once_no_reset_storm(
    redis: Redis,
    make_relay: Callable[..., Relay],
    caplog: pytest.LogCaptureFixture,
    entry_id: str,
    kind: str,
) -> None:
    sink = Sink()
    relay = make_relay(sink)
    relay.start()
    wait_until(lambda: redis.rounds() >= 1)
    # even well formed, no publish wrote it
    fields = {
        "event": event_fields(envelope(11), 11),
        "named": event_fields(envelope(1, P1), 1, P1, "E1"),
        "revocation": revoke_fields("alice", P1),
    }[kind]
    xadd(redis, entry_id, fields)
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
        redis.client.xadd(STREAM, {"x": "y"})  # XADD … * : an ID far above any position
        wait_until(lambda: relay.stats.malformed)
        assert broker.publish([b'{"type":"app:x","payload":{}}']) == [1]  # 202, not 503
        epoch = redis.epoch()
        assert epoch != "e1" and redis.client.xlen(STREAM) == 1  # the foreign entry is gone
        sink.wait(lambda s: s.resets)
        assert broker.publish_items([(P1, b'{"type":"app:x","payload":{}}')]) == [1]
        assert broker.publish([b'{"type":"app:x","payload":{}}']) == [2]
        sink.wait(lambda s: s.items and s.items[-1].pos == 3)
        # one reset, to the new epoch (at 0, or at 1 if the publish came first)
        assert len(sink.resets) == 1 and sink.resets[0][:1] == (epoch,)
        delivered = [item.pos for item in sink.items]
        assert delivered == list(range(sink.resets[0][1] + 1, 4)) and relay.stats.resets == 1
    finally:
        broker.close()


@pytest.mark.parametrize(
    "damage",
    [
        # (the relay's own XREAD is refused: the script's new epoch answers it, no outage)
        lambda r: r.client.set(STREAM, "a string"),
        lambda r: r.client.set(META, "a string"),
        lambda r: r.client.hset(META, "pos", "twelve"),
        lambda r: r.client.hset(META, "seq", "twelve"),
        lambda r: r.client.hset(META, "epoch", "not an epoch!"),
        lambda r: r.client.hdel(META, "pos"),
        lambda r: r.client.hdel(META, "seq"),
    ],
    ids=["stream-of-another-type", "meta-of-another-type", "pos", "seq", "epoch", "no-pos",
         "no-seq"],
)  # fmt: skip
def test_keys_the_relay_cannot_read_as_ours_start_a_new_epoch_never_an_endless_outage(
    redis: Redis,
    make_relay: Callable[..., Relay],
    damage: Callable[[Redis], object],
    request: pytest.FixtureRequest,
) -> None:
    stream_damaged = request.node.callspec.id == "stream-of-another-type"
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
    assert relay.stats.resets == 1
    # a refused read with a new epoch behind it is a reset, not an outage
    assert relay.stats.outages == 0 if stream_damaged else relay.stats.outages <= 1
