"""Channels across workers: two gunicorn workers on one real redis-server, and the faults.

One gunicorn pair per module (``pair``): the multi-user example (``examples/flask-users``: a
session cookie per user, ``user:<id>`` and ``team:<name>`` channels, revocation) with
``SIDECAR_BROKER``, two workers, a Redis that keeps its data across a restart. A client is
placed on a chosen worker by connecting until the connection lands there (each worker's
``/api/v1/hub`` counts its registrations). The shared token is the superuser a tool is: it
joins any channel. Every history is 64 events in Redis and 64 KiB in each worker's window, so
a resume that reaches back further than a window's bytes is served from Redis
(``read_channel``), which the server's slow log shows.

The faults that need a relay held still (a resume ahead of it, a resume right after Redis lost
its data) and the memory a resume may take run on one in-process sidecar with a broker,
whose relay the test stops and starts.

What is asserted is what a user would notice: which frames arrive (byte for byte), in which
order, with which seqs; ``recovered`` per channel; the close codes.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websocket

from sidecar.broker import Publisher
from sidecar.broker.redis import _READ
from sidecar.envelope import Event, encode, with_seq
from tests.conftest import recv_close, wait_for
from tests.needs import needs_module
from tests.redis_server import RedisServer
from tests.scale_helpers import WAIT, Gunicorn, call, close_all, connect
from tests.stream_entries import META, position_key

needs_module("gunicorn", "pip install '.[gunicorn]'")

USERS_APP = Path(__file__).resolve().parent.parent / "examples" / "flask-users"
SECRET = "test-secret-key-0123456789"
P1, C9, P2 = "project:p1", "chat:c9", "project:p2"
STAMP = "2026-12-06T00:00:00Z"  # a fixed timestamp: the bytes of every frame are known
#: The history: 64 events per channel in Redis, 64 KiB per channel in each worker's window.
HISTORY_SIZE, WINDOW_BYTES = 64, 64 * 1024
#: A payload that makes an event ~4 KiB: 16 of them fill a window, 64 fit in Redis.
PAD = "x" * 4000


# -- the pair ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_kept() -> Iterator[RedisServer]:
    """The module's Redis; a restart keeps its data (append-only file)."""
    server = RedisServer(persistent=True)
    server.start()
    server.client().config_set("slowlog-log-slower-than", 0)  # every command, for reads()
    server.client().config_set("slowlog-max-len", 100_000)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pair(redis_kept: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """The multi-user example under gunicorn: two workers on ``redis_kept``."""
    env = {
        "SIDECAR_BROKER": redis_kept.url,
        "SIDECAR_HISTORY_SIZE": str(HISTORY_SIZE),
        "SIDECAR_HISTORY_BYTES": str(WINDOW_BYTES),
    }
    server = Gunicorn(
        tmp_path_factory.mktemp("pair"),
        "--chdir",
        str(USERS_APP),
        workers=2,
        env=env,
        app=f"app:create_app(SECRET_KEY={SECRET!r})",
    )
    try:
        server.snapshots()  # both workers answer
        yield server
    finally:
        server.close()
    assert "Traceback" not in server.log(), server.log()


def workers(server: Gunicorn) -> list[int]:
    """The pids of the workers now."""
    return sorted(server.snapshots())


def _landed(server: Gunicorn, before: dict[int, dict[str, Any]]) -> int:
    """The one worker whose hub registered one more client since ``before``."""

    def one_rose(snaps: dict[int, dict[str, Any]]) -> bool:
        rose = [p for p, a in snaps.items() if a["hub"]["registered"] > _registered(before, p)]
        return len(rose) == 1

    snaps = server.snapshots(one_rose)
    (pid,) = [p for p, a in snaps.items() if a["hub"]["registered"] > _registered(before, p)]
    return pid


def _registered(snaps: dict[int, dict[str, Any]], pid: int) -> int:
    return int(snaps[pid]["hub"]["registered"]) if pid in snaps else 0


class Conn:
    """A WebSocket client that keeps every frame it read (parsed, and raw)."""

    def __init__(self, ws: websocket.WebSocket, status: dict[str, Any], pid: int) -> None:
        self.ws, self.status, self.pid = ws, status, pid
        self.frames: list[tuple[dict[str, Any], bytes]] = []

    def next(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next text frame, decoded (kept in ``frames``)."""
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data[:2])
        frame = json.loads(data)
        self.frames.append((frame, bytes(data)))
        return dict(frame)

    def until(self, predicate: Callable[[dict[str, Any]], bool], limit: int = 5000) -> list[Any]:
        """Frames up to and including the first one ``predicate`` accepts."""
        seen = []
        for _ in range(limit):
            frame = self.next()
            seen.append(frame)
            if predicate(frame):
                return seen
        raise AssertionError(f"not seen in {limit} frames: {seen[-3:]}")

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        self.ws.send(json.dumps({"type": kind, "payload": payload}))

    def close(self) -> None:
        close_all([self.ws])


def on_worker(
    server: Gunicorn, pid: int, query: str = "", cookie: str | None = None, tries: int = 40
) -> Conn:
    """A client connected (as the superuser, or with ``cookie``) to the worker ``pid``."""
    for _ in range(tries):
        before = server.snapshots()
        if cookie is None:
            ws, status = connect(server.port, query)
        else:
            ws, status = connect_as(server.port, cookie, query)
        landed = _landed(server, before)
        if landed == pid:
            return Conn(ws, status, pid)
        close_all([ws])
    raise AssertionError(f"{tries} connections in a row missed worker {pid}")


def connect_as(port: int, cookie: str, query: str = "") -> tuple[Any, dict[str, Any]]:
    """A WebSocket of a logged-in user (the app's session cookie) and its status payload."""
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/ws{query}",
        header=[f"Cookie: {cookie}"],
        timeout=10,
        suppress_origin=True,
    )
    ws.settimeout(WAIT)
    _opcode, data = ws.recv_data()
    status = json.loads(data)
    assert status["type"] == "connection:status", status
    return ws, status["payload"]


def login(port: int, user: str) -> str:
    """Log ``user`` in (on any worker); the session cookie."""
    status, headers, body = app_call(port, "POST", "/login", {"user": user})
    assert status == 200, (status, body)
    return headers["Set-Cookie"].split(";", 1)[0]


def app_call(
    port: int, method: str, path: str, body: Any = None, cookie: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request to the app's own routes, as a user (``cookie``), on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Connection": "close", "Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def event(n: int, pad: str = "") -> Event:
    """Event ``n``, stamped with a fixed time (its bytes are known)."""
    return Event("test:tick", {"n": n, **({"pad": pad} if pad else {})}, STAMP)


def frame_of(item: Event, seq: int, channel: str = "") -> bytes:
    """The frame's text as every hub sends it: the envelope with seq (and channel) spliced."""
    return with_seq(encode(item), seq, channel)


def reads(server: RedisServer, channel: str) -> int:
    """How many resume pages (read.lua) were read for ``channel`` so far."""
    log = server.client().slowlog_get(100_000)
    key = position_key(channel) if channel else META
    return sum(
        1
        for entry in log
        if entry["command"].split()[:2] == [b"EVALSHA", _READ.sha.encode()]
        and key.encode() in entry["command"].split()
    )


def heads(publisher: Publisher, *channels: str) -> dict[str, tuple[str, int]]:
    return {channel: publisher.position(channel or None) for channel in channels}


# -- who gets what -----------------------------------------------------------------------------


def test_two_clients_on_two_channels_on_two_workers_get_only_their_own(
    pair: Gunicorn, redis_kept: RedisServer
) -> None:
    one, two = workers(pair)
    p1 = on_worker(pair, one, f"?channels={P1}")
    c9 = on_worker(pair, two, f"?channels={C9}")
    legacy = [on_worker(pair, one), on_worker(pair, two)]
    assert set(legacy[0].status) == {"status", "epoch", "seq", "recovered"}  # today's frame
    with Publisher(redis_kept.url) as publisher:
        start = heads(publisher, "", P1, C9)
        sent: list[tuple[str, int, Event]] = []  # (channel, seq, event) in publish order
        for n in range(12):
            channel = [P1, C9, "", P1][n % 4]
            (seq,) = publisher.publish_many([event(n)], channel=channel or None)
            sent.append((channel, seq, event(n)))
    # and a batch over HTTP that mixes channels, on whichever worker takes it
    batch: list[dict[str, Any]] = [
        {"type": "test:tick", "payload": {"n": 100 + i}, **({"channel": c} if c else {})}
        for i, c in enumerate([C9, "", P1])
    ]
    status, _headers, body = call(pair.port, "POST", "/api/v1/events", batch)
    assert status == 202, body
    answer = json.loads(body)
    for item, seq, envelope in zip(batch, answer["seqs"], answer["events"], strict=True):
        stamped = Event("test:tick", item["payload"], envelope["timestamp"])
        sent.append((str(item.get("channel", "")), seq, stamped))
    with Publisher(redis_kept.url) as publisher:  # a last one everybody gets: the end
        (seq,) = publisher.publish_many([event(999)])
        sent.append(("", seq, event(999)))
    for channel in ("", P1, C9):  # each channel's seqs are its own, dense, from its head
        seqs = [seq for c, seq, _e in sent if c == channel]
        assert seqs == list(range(start[channel][1] + 1, start[channel][1] + 1 + len(seqs)))
    for conn, mine in ((p1, P1), (c9, C9), (legacy[0], None), (legacy[1], None)):
        conn.until(lambda f: f["payload"] == {"n": 999})
        expected = [frame_of(e, seq, c) for c, seq, e in sent if c in ("", mine)]
        assert [raw for _f, raw in conn.frames] == expected  # only its own, byte for byte
    for conn in (p1, c9, *legacy):
        conn.close()


def test_resume_per_channel_on_another_worker_reads_redis_and_each_channel_answers_alone(
    pair: Gunicorn, redis_kept: RedisServer
) -> None:
    one, two = workers(pair)
    with Publisher(redis_kept.url) as publisher:
        publisher.publish("test:tick", {"n": -1}, channel=P2)  # (P2 exists, at seq >= 1)
        first = on_worker(pair, one, f"?channels={P1},{P2},{C9}")
        seen = {name: (state["epoch"], state["seq"]) for name, state in
                first.status["channels"].items()}  # fmt: skip
        seen[""] = (first.status["epoch"], first.status["seq"])
        first.close()
        # missed while away: 30 events of ~4 KiB on P1 (more than a window's 64 KiB, all in
        # Redis's 64), 70 on P2 (more than Redis keeps), a few on the default channel
        sent: list[tuple[str, int, Event]] = []
        for n in range(30):
            for channel, count in ((P1, 1), (P2, 2 + (n % 2)), ("", n % 10 == 0)):
                for _ in range(int(count)):
                    item = event(len(sent), PAD)
                    (seq,) = publisher.publish_many([item], channel=channel or None)
                    sent.append((channel, seq, item))
        # C9's position is lost (its ch: key expired, or Redis lost it) and published again
        redis_kept.client().delete(position_key(C9))
        assert publisher.publish("test:tick", {"n": 0}, channel=C9) == 1
        c9_epoch = publisher.position(C9)[0]
        assert c9_epoch != seen[C9][0]
    before = {channel: reads(redis_kept, channel) for channel in ("", P1)}
    since = ",".join(f"{c}@{e}:{s}" for c, (e, s) in seen.items() if c) + ",{}:{}".format(*seen[""])
    back = on_worker(pair, two, f"?channels={P1},{P2},{C9}&since={quote(since)}")
    states = back.status["channels"]
    assert states[P1] == {"epoch": seen[P1][0], "seq": seen[P1][1] + 30, "recovered": True}
    assert states[P2]["recovered"] is False and states[P2]["epoch"] == seen[P2][0]
    assert states[C9] == {"epoch": c9_epoch, "seq": 1, "recovered": False}
    assert back.status["recovered"] is True  # the default channel recovers too
    # the replay: every event of the recovered channels after since, in the publish order
    expected = [frame_of(e, seq, c) for c, seq, e in sent if c in ("", P1)]
    while len(back.frames) < len(expected):
        back.next()
    assert [raw for _f, raw in back.frames] == expected
    # read from Redis (the worker's window holds 16 of them): in pages, per channel
    assert reads(redis_kept, P1) > before[P1]
    with Publisher(redis_kept.url) as publisher:
        live = publisher.publish("test:tick", {"n": 1}, channel=P2)
    got = back.next()
    assert (got["channel"], got["seq"]) == (P2, live) == (P2, states[P2]["seq"] + 1)
    back.close()


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "with-since"])
def test_subscribing_while_the_channel_is_published_to_loses_and_repeats_nothing(
    pair: Gunicorn, redis_kept: RedisServer, resume: bool
) -> None:
    one, _two = workers(pair)
    conn = on_worker(pair, one)
    channel = f"project:busy-{int(resume)}"
    stop, published = threading.Event(), list[int]()
    errors: list[BaseException] = []

    def publish() -> None:  # from outside, and over HTTP on either worker, in turns
        try:
            with Publisher(redis_kept.url) as publisher:
                while not stop.is_set() and len(published) < 5000:
                    if len(published) % 2:
                        published.append(publisher.publish("test:tick", {"n": 0}, channel=channel))
                        continue
                    item = {"type": "test:tick", "payload": {"n": 0}, "channel": channel}
                    status, _h, body = call(pair.port, "POST", "/api/v1/events", [item])
                    assert status == 202, body
                    published.extend(json.loads(body)["seqs"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        wait_for(lambda: len(published) > 60 or errors, WAIT)
        epoch = pair_position(redis_kept, channel)[0]
        payload: dict[str, Any] = {"channel": channel}
        if resume:  # from a few events back: a replay, then live, with no seam
            payload["since"] = f"{epoch}:{len(published) - 20}"
        conn.send("channel:subscribe", payload)
        answer = conn.until(lambda f: f["type"] == "channel:subscribed")[-1]["payload"]
        wait_for(lambda: len(published) > answer["seq"] + 60 or errors, WAIT)
    finally:
        stop.set()
        thread.join(WAIT)
    assert not errors, errors
    assert answer["epoch"] == epoch and answer["recovered"] is resume
    start = int(payload["since"].split(":")[1]) if resume else answer["seq"]
    last = published[-1]
    got = [f["seq"] for f in conn.until(lambda f: f.get("seq") == last, 20_000) if "seq" in f]
    assert got == list(range(start + 1, last + 1))
    conn.close()


def pair_position(server: RedisServer, channel: str) -> tuple[str, int]:
    with Publisher(server.url) as publisher:
        return publisher.position(channel)


# -- users: revocation and a user's own channel, on both workers -------------------------------


def test_revoke_reaches_the_users_connections_on_both_workers(pair: Gunicorn) -> None:
    one, two = workers(pair)
    alice, bob = login(pair.port, "alice"), login(pair.port, "bob")
    status, _h, body = app_call(pair.port, "GET", "/teams/red/token", cookie=bob)
    assert status == 200, body
    token = json.loads(body)["token"]
    tabs = [on_worker(pair, pid, "?channels=team:red", cookie=bob) for pid in (one, two)]
    watcher = on_worker(pair, two, "?channels=team:red", cookie=alice)
    for tab, user in ((tabs[0], "bob"), (tabs[1], "bob"), (watcher, "alice")):
        assert set(tab.status["channels"]) == {"team:red", f"user:{user}"}
    assert app_call(pair.port, "POST", "/teams/red/say", {"text": "before"}, alice)[0] == 200
    for tab in (*tabs, watcher):
        assert tab.next()["payload"] == {"from": "alice", "text": "before"}
    status, _h, body = app_call(pair.port, "POST", "/teams/red/remove/bob", cookie=alice)
    assert status == 200, body
    for tab in tabs:  # on both workers, whichever took the removal
        frame = tab.next()
        assert frame["type"] == "channel:unsubscribed", frame
        assert frame["payload"] == {"channel": "team:red", "reason": "revoked"}
    assert app_call(pair.port, "POST", "/teams/red/say", {"text": "after"}, alice)[0] == 200
    assert watcher.next()["payload"] == {"from": "alice", "text": "after"}
    for n in range(2):  # a marker on bob's own channel: nothing of team:red came before it
        assert app_call(pair.port, "POST", "/notify/bob", {"text": f"mark-{n}"})[0] == 200
    for tab in tabs:
        got = tab.until(lambda f: f.get("payload", {}).get("text") == "mark-1")
        assert [(f["type"], f.get("channel")) for f in got] == [
            ("app:notification", "user:bob")
        ] * 2
        # a token issued before the removal no longer admits, on either worker
        tab.send("channel:subscribe", {"channel": "team:red", "token": token})
        error = tab.next()
        assert error["type"] == "channel:error" and error["payload"]["code"] == "forbidden"
    for tab in (*tabs, watcher):
        tab.close()


def test_send_to_user_reaches_every_tab_on_both_workers_in_one_order(pair: Gunicorn) -> None:
    one, two = workers(pair)
    carol, dave = login(pair.port, "carol"), login(pair.port, "dave")
    tabs = [on_worker(pair, pid, cookie=carol) for pid in (one, two, one)]
    other = on_worker(pair, two, cookie=dave)
    start = tabs[0].status["channels"]["user:carol"]["seq"]
    errors: list[BaseException] = []

    def notify(prefix: str) -> None:  # concurrently, from requests on either worker
        try:
            for n in range(10):
                text = f"{prefix}-{n}"
                assert app_call(pair.port, "POST", "/notify/carol", {"text": text})[0] == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=notify, args=(p,)) for p in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors, errors
    orders = []
    for tab in tabs:
        got = [tab.next() for _ in range(30)]
        assert [(f["channel"], f["seq"]) for f in got] == [
            ("user:carol", s) for s in range(start + 1, start + 31)
        ]
        orders.append([f["payload"]["text"] for f in got])
    assert orders[0] == orders[1] == orders[2]  # one order, on both workers
    assert sorted(orders[0]) == sorted(f"{p}-{n}" for p in "abc" for n in range(10))
    for prefix in ("a", "b", "c"):  # each sender's order kept
        mine = [t for t in orders[0] if t.startswith(prefix)]
        assert mine == [f"{prefix}-{n}" for n in range(10)]
    assert app_call(pair.port, "POST", "/notify/dave", {"text": "yours"})[0] == 200
    assert other.next()["payload"] == {"text": "yours"}  # carol's 30 never reached dave
    for tab in (*tabs, other):
        tab.close()


# -- faults, per channel ------------------------------------------------------------------------


def test_a_redis_outage_refuses_publishes_keeps_clients_and_loses_nothing(
    pair: Gunicorn, redis_kept: RedisServer
) -> None:
    one, two = workers(pair)
    conns = [on_worker(pair, pid, f"?channels={P1},{C9}") for pid in (one, two)]
    with Publisher(redis_kept.url) as publisher:
        before = heads(publisher, P1, C9)
    redis_kept.stop()
    try:
        for channel in (P1, C9, None):
            item = {"type": "test:tick", "payload": {"n": 0}, **({"channel": channel} if channel
                                                                   else {})}  # fmt: skip
            status, headers, body = call(pair.port, "POST", "/api/v1/events", [item])
            assert (status, headers.get("Retry-After")) == (503, "1"), body  # never 202
        subscriber = conns[0]
        subscriber.send("channel:subscribe", {"channel": P2})  # the position is Redis's
        error = subscriber.next()
        assert error["type"] == "channel:error" and error["payload"]["channel"] == P2
    finally:
        redis_kept.start()
    with Publisher(redis_kept.url) as publisher:
        p1 = publisher.publish_many([("test:tick", {"n": n}) for n in range(3)], channel=P1)
        c9 = publisher.publish_many([("test:tick", {"n": n}) for n in range(2)], channel=C9)
    assert p1 == [before[P1][1] + n for n in (1, 2, 3)]  # nothing refused took a seq
    assert c9 == [before[C9][1] + n for n in (1, 2)]
    for conn in conns:  # the same connections: nothing lost, nothing twice
        got = conn.until(lambda f: (f.get("channel"), f.get("seq")) == (C9, c9[-1]))
        assert [(f["channel"], f["seq"]) for f in got] == [(P1, s) for s in p1] + [
            (C9, s) for s in c9
        ]
        conn.close()


def test_a_killed_worker_s_clients_resume_each_channel_on_the_other(
    pair: Gunicorn, redis_kept: RedisServer
) -> None:
    one, two = workers(pair)
    victims = [on_worker(pair, one, f"?channels={P1},{C9}") for _ in range(2)]
    stayer = on_worker(pair, two, f"?channels={P1},{C9}")
    with Publisher(redis_kept.url) as publisher:
        publisher.publish_many([("test:tick", {"n": 0})], channel=P1)
        last = publisher.publish_many([("test:tick", {"n": 0})], channel=C9)[-1]
        for conn in (*victims, stayer):
            conn.until(lambda f: (f.get("channel"), f.get("seq")) == (C9, last))
        os.kill(one, signal.SIGKILL)
        more = {
            P1: publisher.publish_many([("test:tick", {"n": n}) for n in range(3)], channel=P1),
            C9: publisher.publish_many([("test:tick", {"n": n}) for n in range(2)], channel=C9),
        }
    for n, victim in enumerate(victims):
        assert recv_close(victim.ws, WAIT) is None  # its worker died: no close frame
        seen = {c: (f["seq"]) for f, _raw in victim.frames for c in [f.get("channel")] if c}
        epochs = {c: victim.status["channels"][c]["epoch"] for c in (P1, C9)}
        since = ",".join(f"{c}@{epochs[c]}:{seen[c]}" for c in (P1, C9))
        query = f"?channels={P1},{C9}&since={quote(since)}"
        back = on_worker(pair, two, query) if n == 0 else Conn(*connect(pair.port, query), 0)
        assert {c: s["recovered"] for c, s in back.status["channels"].items()} == {
            P1: True,
            C9: True,
        }
        got = back.until(lambda f: (f.get("channel"), f.get("seq")) == (C9, more[C9][-1]))
        assert [(f["channel"], f["seq"]) for f in got] == [(P1, s) for s in more[P1]] + [
            (C9, s) for s in more[C9]
        ]
        back.close()
    got = stayer.until(lambda f: (f.get("channel"), f.get("seq")) == (C9, more[C9][-1]))
    assert len(got) == 5
    stayer.close()
    wait_for(lambda: len(workers(pair)) == 2 and one not in workers(pair), WAIT)  # respawned


def test_redis_losing_its_data_closes_with_4001_and_no_channel_recovers(
    pair: Gunicorn, redis_kept: RedisServer
) -> None:
    one, two = workers(pair)
    conns = [on_worker(pair, pid, f"?channels={P1},{C9}") for pid in (one, two)]
    with Publisher(redis_kept.url) as publisher:
        publisher.publish("test:tick", {"n": 0}, channel=P1)
        old = heads(publisher, "", P1, C9)
    for conn in conns:
        conn.until(lambda f: f.get("channel") == P1)
    redis_kept.client().flushall()  # (as a restart without its data)
    for conn in conns:
        assert recv_close(conn.ws, WAIT) == 4001
    since = f"{old[''][0]}:{old[''][1]},{P1}@{old[P1][0]}:{old[P1][1]},{C9}@{old[C9][0]}:0"
    for pid in (one, two):
        back = on_worker(pair, pid, f"?channels={P1},{C9}&since={quote(since)}")
        assert back.status["recovered"] is False and back.status["epoch"] != old[""][0]
        for channel in (P1, C9):
            state = back.status["channels"][channel]
            assert state["recovered"] is False and state["epoch"] != old[channel][0], state
        back.close()


# -- one process with a broker: a relay held still, and the memory of a resume ------------------


def _since(status: dict[str, Any], **seqs: int) -> str:
    """``since`` for every channel of ``status`` (a ``connection:status`` payload), at the
    seqs given by name (``default=``, ``project_p1=`` …), else at the status's own."""
    items = [f"{status['epoch']}:{seqs.get('default', status['seq'])}"]
    for name, state in status["channels"].items():
        seq = seqs.get(name.replace(":", "_"), state["seq"])
        items.append(f"{name}@{state['epoch']}:{seq}")
    return quote(",".join(items))


def test_a_resume_right_after_redis_lost_its_data_never_says_recovered(
    redis_server: RedisServer, sidecar_factory: Callable[..., Any]
) -> None:
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0)
    hub, broker = sidecar.hub, sidecar.state.broker
    ws, status = sidecar.connect_ready(f"?channels={P1},{C9}")
    with Publisher(redis_server.url) as publisher:
        publisher.publish_many([("test:tick", {"n": n}) for n in range(3)], channel=P1)
        publisher.publish("test:tick", {"n": 0}, channel=C9)
        publisher.publish("test:tick", {"n": 0})
    frames = Conn(ws, status["payload"], 0)
    frames.until(lambda f: f.get("seq") == 1 and "channel" not in f)
    seen = {c: s["seq"] for c, s in status["payload"]["channels"].items()}
    old = {c: hub.channel_position(c) for c in ("", P1, C9)}
    assert broker.stop()  # this worker's relay has not caught up (and will not, here)
    redis_server.restart()  # no persistence: every epoch, seq and history is gone
    with Publisher(redis_server.url) as publisher:  # 202s: new epochs, seqs from 1
        assert publisher.publish_many([("test:tick", {"n": n}) for n in range(3)], channel=P1) == [
            1,
            2,
            3,
        ]
        assert publisher.publish("test:tick", {"n": 0}) == 1
    assert hub.channel_position(P1) == old[P1]  # the hub still believes the old ones
    # seen everything before the loss: this hub alone would replay nothing and say recovered
    since = _since(status["payload"], default=1, project_p1=seen[P1] + 3, chat_c9=seen[C9] + 1)
    again, answer = sidecar.connect_ready(f"?channels={P1},{C9}&since={since}")
    payload = answer["payload"]
    assert payload["recovered"] is False
    assert {c: s["recovered"] for c, s in payload["channels"].items()} == {P1: False, C9: False}
    # and by message: the same answer
    Conn(again, payload, 0).send("channel:subscribe", {"channel": P2, "since": f"{old[P1][0]}:1"})
    reply = recv_json_until(again, "channel:subscribed")
    assert reply["recovered"] is False


def recv_json_until(ws: websocket.WebSocket, kind: str) -> dict[str, Any]:
    """The payload of the next frame of type ``kind`` (others are skipped)."""
    ws.settimeout(WAIT)
    for _ in range(1000):
        frame = json.loads(ws.recv())
        if frame["type"] == kind:
            return dict(frame["payload"])
    raise AssertionError(f"no {kind}")


def test_a_resume_ahead_of_this_relay_waits_a_bounded_time_per_channel(
    redis_server: RedisServer, sidecar_factory: Callable[..., Any]
) -> None:
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0)
    hub, broker = sidecar.hub, sidecar.state.broker
    ws, status = sidecar.connect_ready(f"?channels={P1}")
    epoch = status["payload"]["channels"][P1]["epoch"]
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish_many([("test:tick", {"n": n}) for n in range(3)], channel=P1) == [
            1,
            2,
            3,
        ]
        behind = Conn(ws, status["payload"], 0)
        behind.until(lambda f: f.get("seq") == 3)
        assert broker.stop()  # this process is now the slow worker: its relay is paused
        publisher.publish_many([("test:tick", {"n": n}) for n in range(3, 6)], channel=P1)
    # seen up to 1 elsewhere: Redis's 2..6 are read, only 2..3 replayed (4.. come live)
    _ws, answer = sidecar.connect_ready(f"?channels={P1}&since={quote(f'{P1}@{epoch}:1')}")
    assert answer["payload"]["channels"][P1] == {"epoch": epoch, "seq": 3, "recovered": True}
    assert [f["seq"] for f in Conn(_ws, {}, 0).until(lambda f: f.get("seq") == 3)] == [2, 3]
    # seen up to 6 on a faster worker: it waits for this relay, a bounded time
    started = time.monotonic()
    _ws, answer = sidecar.connect_ready(f"?channels={P1}&since={quote(f'{P1}@{epoch}:6')}")
    took = time.monotonic() - started
    assert answer["payload"]["channels"][P1]["recovered"] is False and 0.9 < took < 5, took
    answers: list[dict[str, Any]] = []

    def resume_ahead() -> None:
        try:
            answers.append(sidecar.connect_ready(f"?channels={P1}&since={P1}@{epoch}:6")[1])
        except Exception as exc:  # reported below
            answers.append({"error": repr(exc)})

    ahead = threading.Thread(target=resume_ahead)
    ahead.start()
    wait_for(lambda: hub._waiters == 1 or answers, WAIT)
    assert not answers, answers
    broker.start_relay(hub, (status["payload"]["epoch"], 3))  # it catches up: the wait ends
    ahead.join(WAIT)
    state = answers[0]["payload"]["channels"][P1]
    assert state == {"epoch": epoch, "seq": 6, "recovered": True}, answers
    got = behind.until(lambda f: f.get("seq") == 6)
    assert [f["seq"] for f in got] == [4, 5, 6]  # once each, on the connection that stayed


def _rss() -> tuple[int, int]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in bytes."""
    text = Path("/proc/self/status").read_text()
    rss, peak = (int(re_find(rf"{key}:\s+(\d+) kB", text)) * 1024 for key in ("VmRSS", "VmHWM"))
    return rss, peak


def re_find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, pattern
    return match[1]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's /proc only")
@pytest.mark.parametrize("channel", [P1, ""], ids=["named", "default"])
def test_the_memory_a_resume_may_take_is_bounded(
    redis_server: RedisServer, sidecar_factory: Callable[..., Any], channel: str
) -> None:
    # issue 19, item 7: a resume whose gap is huge reads Redis in bounded pages and gives up
    # once --max-pending-bytes is exceeded; before, one handshake took 225 MiB
    gap_events, size, bound = 2000, 16 * 1024, 1 << 20
    sidecar = sidecar_factory(
        broker=redis_server.url,
        ping_interval=0,
        history_size=gap_events,
        history_bytes=256 * 1024,  # the window holds 16 of them: the rest is in Redis only
        max_pending_bytes=bound,
        replay_rate=0,
    )
    query = f"?channels={channel}" if channel else ""
    _ws, status = sidecar.connect_ready(query)
    payload = status["payload"]
    state = payload["channels"][channel] if channel else payload
    epoch, seq = state["epoch"], state["seq"]
    with Publisher(redis_server.url) as publisher:
        for n in range(0, gap_events, 100):  # 32 MiB in Redis
            batch = [("test:tick", {"n": n + i, "pad": "x" * size}) for i in range(100)]
            publisher.publish_many(batch, channel=channel or None)
    last = seq + gap_events
    wait_for(lambda: (sidecar.hub.channel_position(channel) or (0, 0))[1] == last, WAIT)
    since = f"{channel}@{epoch}:{seq}" if channel else f"{epoch}:{seq}"
    growths = []
    for _ in range(3):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from now
        before, _peak = _rss()
        ws, answer = sidecar.connect_ready(f"{query}{'&' if query else '?'}since={quote(since)}")
        _rss_now, peak = _rss()
        growths.append(peak - before)
        # the pages read before giving up: a bit over the bound, never the 32 MiB gap
        assert peak - before < bound + (8 << 20), [g >> 10 for g in growths]  # (KiB)
        state = answer["payload"]["channels"][channel] if channel else answer["payload"]
        assert state["recovered"] is False and state["seq"] == last  # too large to replay
        ws.close()


def test_a_channels_history_and_position_expire_in_redis_and_a_resume_tells(
    redis_server: RedisServer, sidecar_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # (channel_ttl: the history's TTL in Redis; the position's is 30 days, made 3 s here)
    monkeypatch.setattr("sidecar.broker.redis.POSITION_TTL", 3)
    sidecar = sidecar_factory(
        broker=redis_server.url, ping_interval=0, channel_ttl=1, history_bytes=1
    )  # (an empty window: every resume reads Redis)
    redis = redis_server.client()
    ws, status = sidecar.connect_ready(f"?channels={P1}")
    epoch = status["payload"]["channels"][P1]["epoch"]
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish_many([("test:tick", {"n": n}) for n in range(3)], channel=P1) == [
            1,
            2,
            3,
        ]
    Conn(ws, {}, 0).until(lambda f: f.get("seq") == 3)
    ws.close()
    resume = f"?channels={P1}&since={quote(f'{P1}@{epoch}:1')}"
    _ws, answer = sidecar.connect_ready(resume)  # within the TTL: recovered from Redis
    assert answer["payload"]["channels"][P1] == {"epoch": epoch, "seq": 3, "recovered": True}
    _ws.close()
    assert 0 < redis.ttl(f"sidecar:v2:hist:{P1}") <= 1
    wait_for(lambda: not redis.exists(f"sidecar:v2:hist:{P1}"), WAIT)  # the history expired
    _ws, answer = sidecar.connect_ready(resume)
    assert answer["payload"]["channels"][P1] == {"epoch": epoch, "seq": 3, "recovered": False}
    _ws.close()
    wait_for(lambda: not redis.exists(position_key(P1)), WAIT)  # then the position
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish("test:tick", {"n": 9}, channel=P1) == 1  # a new epoch
        new_epoch, new_seq = publisher.position(P1)
    assert new_epoch != epoch and new_seq == 1
    wait_for(lambda: sidecar.hub.channel_position(P1) == (new_epoch, 1), WAIT)
    _ws, answer = sidecar.connect_ready(f"?channels={P1}&since={quote(f'{P1}@{epoch}:3')}")
    assert answer["payload"]["channels"][P1] == {"epoch": new_epoch, "seq": 1, "recovered": False}


def test_the_relay_lag_counts_events_of_every_channel(
    redis_server: RedisServer, sidecar_factory: Callable[..., Any]
) -> None:
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0)
    ws, _status = sidecar.connect_ready(f"?channels={P1}")
    with Publisher(redis_server.url) as publisher:
        publisher.publish_many([("test:tick", {"n": n}) for n in range(5)], channel=P1)
        publisher.publish("test:tick", {"n": 5})
    Conn(ws, {}, 0).until(lambda f: f["payload"] == {"n": 5})
    status, _headers, body = call(sidecar.port, "GET", "/metrics")
    assert status == 200
    lag = [line for line in body.decode().splitlines() if line.startswith("sidecar_relay_lag")]
    assert lag == ["sidecar_relay_lag 0.0"], lag  # was 5: positions minus the default's seq
    broker = sidecar.state.broker
    assert broker.stop()
    with Publisher(redis_server.url) as publisher:
        publisher.publish_many([("test:tick", {"n": n}) for n in range(4)], channel=C9)
    wait_for(lambda: broker.relay_stats().running is False, WAIT)
    status, _headers, body = call(sidecar.port, "GET", "/metrics")
    lag = [line for line in body.decode().splitlines() if line.startswith("sidecar_relay_lag")]
    assert lag == ["sidecar_relay_lag 0.0"], lag  # (the stopped relay read nothing since)
