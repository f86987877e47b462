"""Delivery guarantees (issue 4): ``seq``, ``epoch``, the history window and resume with ``since``.

Every test uses real sockets against an in-process sidecar. Nothing sleeps as a barrier: tests
wait for frames, or poll a condition with a deadline (``wait_for``). Clients that must read a
lot, or must never read, are :mod:`tests.wsreader` raw-socket clients; the others are
websocket-client connections from the ``sidecar_factory`` fixture.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import websocket

from sidecar.envelope import new_event
from tests import wsreader
from tests.conftest import TOKEN, RunningSidecar, recv_json, wait_for

TICK = "test:tick"


def tick(ident: str, pad: int = 0) -> Any:
    """A broadcastable test event identified by ``ident`` (``pad`` extra bytes of payload)."""
    payload: dict[str, Any] = {"id": ident}
    if pad:
        payload["pad"] = "x" * pad
    return new_event(TICK, payload)


def publish(hub: Any, idents: list[str], pad: int | Callable[[int], int] = 0) -> None:
    """Broadcast one event per ident, in order; every broadcast must be accepted."""
    for i, ident in enumerate(idents):
        size = pad(i) if callable(pad) else pad
        assert hub.broadcast_event(tick(ident, size)), f"broadcast {ident} refused"


def hub_idle(hub: Any, timeout: float = 5.0) -> None:
    """Wait until the hub thread has handled every command submitted so far."""
    done = threading.Event()
    hub.call(done.set)
    assert done.wait(timeout), "hub thread did not answer"


_open_raw: list[wsreader.RawWS] = []


@pytest.fixture(autouse=True)
def _close_raw_clients(sidecar_factory: Any) -> Iterator[None]:
    """Close this test's raw clients before its sidecars stop (they would wait for them)."""
    yield
    while _open_raw:
        _open_raw.pop().close()


def raw(sc: RunningSidecar, query: str = "", **kwargs: Any) -> wsreader.RawWS:
    ws = wsreader.connect(sc.port, query, token=TOKEN, **kwargs)
    _open_raw.append(ws)
    return ws


def raw_ready(sc: RunningSidecar, query: str = "", **kwargs: Any) -> tuple[wsreader.RawWS, dict]:
    ws = raw(sc, query, **kwargs)
    status = ws.recv_json()
    assert status["type"] == "connection:status", status
    return ws, status


def expect_live_next(sc: RunningSidecar, ws: Any, status: dict, ident: str) -> None:
    """Publish one event: it must be the very next frame, with ``seq == status.seq + 1``."""
    assert sc.hub.broadcast_event(tick(ident))
    event = ws.recv_json() if isinstance(ws, wsreader.RawWS) else recv_json(ws)
    assert event["type"] == TICK and event["payload"]["id"] == ident, event
    assert event["seq"] == status["payload"]["seq"] + 1, (event["seq"], status)


@contextmanager
def full_speed(hub: Any, threads: int = 1) -> Iterator[dict[str, int]]:
    """Publishers broadcasting as fast as they can until the block ends.

    Refusals (the inbox is full) are counted, not retried: they are the publisher's business
    and never affect what a client sees.
    """
    stop = threading.Event()
    counts = {"accepted": 0, "refused": 0}
    lock = threading.Lock()

    def run(tag: int) -> None:
        accepted = refused = i = 0
        while not stop.is_set():
            i += 1
            if hub.broadcast_event(tick(f"bg{tag}-{i}")):
                accepted += 1
            else:
                refused += 1
        with lock:
            counts["accepted"] += accepted
            counts["refused"] += refused

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield counts
    finally:
        stop.set()
        for worker in workers:
            worker.join(5)


# -- ordering under load ---------------------------------------------------------------------


def test_fifty_clients_ten_thousand_broadcasts_from_concurrent_publishers(sidecar_factory):
    check_one_stream_for_all(sidecar_factory(), 50, 10_000, 4)


def test_order_holds_when_writes_back_up_into_the_client_queues(sidecar_factory):
    """Tiny receive windows, 4 KiB events, and clients that start reading only after ~6 MB.

    The kernel buffers (the server's send buffer grows to ~4 MB on loopback) overflow, the
    hub's non-blocking writes go partial, frames wait in the lagging clients' queues, and their
    writer threads drain them while the hub keeps offering new frames: the fast path / queue
    hand-over, where a reordering bug would show. The queue is large so that nobody is
    evicted: this test is about order, not the eviction policy.
    """
    sc = sidecar_factory(queue_size=100_000, max_pending_bytes=64 << 20)
    check_one_stream_for_all(sc, 6, 3000, 3, rcvbuf=4096, pad=4096, lagging=3)


def _start_publishers(
    sc: RunningSidecar, n_publishers: int, per_publisher: int, pad: int
) -> tuple[list[threading.Thread], list[int]]:
    """Threads that publish ``per_publisher`` events each, all at once; their refusal counts."""
    refused = [0] * n_publishers
    start = threading.Barrier(n_publishers)

    def publisher(p: int) -> None:
        start.wait(5)
        for i in range(per_publisher):
            if not sc.hub.broadcast_event(tick(f"p{p}-{i}", pad)):
                refused[p] += 1

    workers = [threading.Thread(target=publisher, args=(p,)) for p in range(n_publishers)]
    for worker in workers:
        worker.start()
    return workers, refused


def check_one_stream_for_all(
    sc: RunningSidecar,
    n_clients: int,
    n_events: int,
    n_publishers: int,
    *,
    rcvbuf: int | None = None,
    pad: int = 0,
    lagging: int = 0,
) -> None:
    """Publish from several threads at once; every client must see the one same stream.

    ``lagging`` clients are not read until half of the events have been broadcast.
    """
    clients = [raw(sc, rcvbuf=rcvbuf) for _ in range(n_clients)]
    for ws in clients:
        status = ws.recv_json()
        assert status["type"] == "connection:status"
        assert status["payload"]["seq"] == 0
        assert status["payload"]["epoch"] == sc.hub.epoch
    # (the status frame may arrive before the hub has updated its count)
    wait_for(lambda: sc.hub.client_count() == n_clients)

    # Client 0 keeps its frames; every client keeps a count and a digest of the exact bytes
    # of every frame payload it got, in order (50 x 10,000 frames do not all need keeping).
    reference: list[wsreader.Frame] = []
    counts = {ws: 0 for ws in clients}
    digests = {ws: hashlib.blake2b() for ws in clients}

    def on_frames(ws: wsreader.RawWS, frames: list[wsreader.Frame]) -> None:
        digest = digests[ws]
        for frame in frames:
            assert frame.opcode == wsreader.OP_TEXT, frame
            digest.update(len(frame.payload).to_bytes(4, "big"))
            digest.update(frame.payload)
        counts[ws] += len(frames)
        if ws is clients[0]:
            reference.extend(frames)

    per_publisher = n_events // n_publishers
    workers, refused = _start_publishers(sc, n_publishers, per_publisher, pad)
    readers = clients[: n_clients - lagging]
    if lagging:
        wsreader.pump(readers, on_frames, done=lambda: sc.hub.seq >= n_events // 2, timeout=30)
    wsreader.pump(
        clients,
        on_frames,
        done=lambda: all(count >= n_events for count in counts.values()),
        timeout=60,
    )
    for worker in workers:
        worker.join(5)
    assert refused == [0] * n_publishers, "the hub refused broadcasts below its inbox limit"

    assert len(reference) == n_events
    events = [frame.json() for frame in reference]
    assert [e["seq"] for e in events] == list(range(1, n_events + 1))
    ids = [e["payload"]["id"] for e in events]
    assert len(set(ids)) == n_events, "an event was delivered twice"
    for p in range(n_publishers):  # each publisher's events keep its order
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"p{p}-")]
        assert mine == list(range(per_publisher))
    # Same count and byte-identical frames in the same order: the same (seq, id) sequence.
    assert all(count == n_events for count in counts.values())
    expected = digests[clients[0]].digest()
    differ = [n for n, ws in enumerate(clients) if digests[ws].digest() != expected]
    assert differ == [], f"clients {differ} saw a different stream"
    stats = sc.hub.snapshot()
    assert stats["evicted"] == 0
    assert stats["seq"] == n_events


def test_status_seq_is_followed_by_seq_plus_one_while_publishing_at_full_speed(sidecar_factory):
    sc = sidecar_factory()
    joins = []
    with full_speed(sc.hub, threads=2):
        previous = 0
        for _ in range(8):  # join at eight different points of the stream
            wait_for(lambda p=previous: sc.hub.seq >= p + 500, timeout=10)
            ws, status = sc.connect_ready()  # asserts connection:status is the first frame
            payload = status["payload"]
            assert payload["status"] == "connected"
            assert payload["epoch"] == sc.hub.epoch
            assert payload["recovered"] is False
            assert "seq" not in status, "connection:status is not a broadcast"
            joined = payload["seq"]
            assert joined >= previous + 500
            seqs = [recv_json(ws)["seq"] for _ in range(200)]
            assert seqs == list(range(joined + 1, joined + 201)), f"joined at {joined}"
            ws.shutdown()
            joins.append(joined)
            previous = joined
    assert len(set(joins)) == len(joins)


def test_connection_status_is_first_for_concurrent_joins_during_a_flood(sidecar_factory):
    sc = sidecar_factory()
    n = 16
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def join(k: int) -> None:
        try:
            start.wait(5)
            ws = raw(sc)
            first = ws.recv_json()
            assert first["type"] == "connection:status", first
            seqs = [ws.recv_json()["seq"] for _ in range(100)]
            ws.close()
            results[k] = (first["payload"]["seq"], seqs)
        except BaseException as exc:  # reported by the main thread
            results[k] = exc

    with full_speed(sc.hub):
        wait_for(lambda: sc.hub.seq >= 100)
        workers = [threading.Thread(target=join, args=(k,)) for k in range(n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    for result in results:
        assert not isinstance(result, BaseException), result
        assert result is not None, "a join did not finish"
        joined, seqs = result
        assert seqs == list(range(joined + 1, joined + 101))


def test_send_to_client_carries_no_seq_and_takes_no_seq(sidecar_factory):
    sc = sidecar_factory()
    hub = sc.hub
    sent: list[bool] = []

    def handler(client: Any, event: dict[str, Any]) -> None:
        if event.get("type") == "test:ping":
            sent.append(hub.send_to_client(client, new_event("test:pong", event["payload"])))

    sc.set_message_handler(handler)
    ws, status = sc.connect_ready()
    other, _ = sc.connect_ready()
    expected_seq = status["payload"]["seq"] + 1
    for n in range(20):
        publish(hub, [f"a{n}-{i}" for i in range(5)])
        ws.send(json.dumps({"type": "test:ping", "payload": {"n": n}}))
        publish(hub, [f"b{n}-{i}" for i in range(5)])
        pong = False
        broadcasts = 0
        while not pong or broadcasts < 10:
            event = recv_json(ws)
            if event["type"] == "test:pong":
                assert "seq" not in event, event
                assert event["payload"] == {"n": n}
                assert not pong
                pong = True
            else:
                assert event["seq"] == expected_seq, "a private message consumed a seq"
                expected_seq += 1
                broadcasts += 1
    assert sent == [True] * 20
    # The other client got every broadcast and none of the private messages.
    seqs = []
    for _ in range(200):
        event = recv_json(other)
        assert event["type"] == TICK, event
        seqs.append(event["seq"])
    assert seqs == list(range(1, 201))
    expect_live_next(sc, other, {"payload": {"seq": 200}}, "last")


# -- resume ----------------------------------------------------------------------------------


def test_resume_after_close_replays_exactly_the_missed_events_then_live(sidecar_factory):
    sc = sidecar_factory()
    ws, status = sc.connect_ready()
    epoch = status["payload"]["epoch"]
    assert epoch == sc.hub.epoch and status["payload"]["seq"] == 0
    publish(sc.hub, [f"before-{i}" for i in range(20)])
    last = [recv_json(ws)["seq"] for _ in range(20)][-1]
    assert last == 20
    ws.close()
    wait_for(lambda: sc.hub.client_count() == 0)

    missed = [f"missed-{i}" for i in range(500)]
    publish(sc.hub, missed)
    wait_for(lambda: sc.hub.seq == 520)

    ws2, status2 = sc.connect_ready(f"?since={epoch}:{last}")
    assert status2["payload"] == {
        "status": "connected",
        "epoch": epoch,
        "seq": 520,
        "recovered": True,
    }
    replayed = [recv_json(ws2) for _ in range(500)]
    assert [e["seq"] for e in replayed] == list(range(21, 521))
    assert [e["payload"]["id"] for e in replayed] == missed
    publish(sc.hub, [f"live-{i}" for i in range(10)])
    live = [recv_json(ws2) for _ in range(10)]
    assert [e["seq"] for e in live] == list(range(521, 531))
    assert [e["payload"]["id"] for e in live] == [f"live-{i}" for i in range(10)]
    assert sc.hub.snapshot()["replays"] == 1


def test_resume_after_eviction_as_a_slow_consumer_loses_nothing(sidecar_factory):
    sc = sidecar_factory(queue_size=4, max_pending_bytes=256 * 1024)
    hub = sc.hub
    witness = raw(sc)  # a healthy client, read at the end: it must have everything
    assert witness.recv_json()["type"] == "connection:status"
    # A client that never reads, with a tiny receive window: the hub must drop it (4008).
    slow, status = raw_ready(sc, rcvbuf=4096)
    epoch = status["payload"]["epoch"]
    witnessed: list[wsreader.Frame] = []

    big = 0
    deadline = time.monotonic() + 20
    while hub.stats.evicted == 0:
        assert time.monotonic() < deadline, "the slow consumer was never evicted"
        publish(hub, [f"big-{big + i}" for i in range(4)], pad=32 * 1024)
        big += 4
        hub_idle(hub)
        # keep the witness drained so that it is not the one evicted
        wsreader.pump(
            [witness], lambda _, f: witnessed.extend(f), lambda b=big: len(witnessed) >= b, 10
        )
    assert hub.stats.evicted == 1
    assert hub.client_count() == 1  # the witness stays

    # What the dropped client got: whole frames in order, then a 4008 close or just EOF.
    frames = slow.read_to_eof()
    closes = [f.close_code for f in frames if f.opcode == wsreader.OP_CLOSE]
    assert closes in ([], [4008]), closes
    data = [f.json() for f in frames if f.opcode == wsreader.OP_TEXT]
    assert [e["seq"] for e in data] == list(range(1, len(data) + 1))
    last = data[-1]["seq"] if data else status["payload"]["seq"]
    assert last < big, "the slow client cannot have received everything"

    missed = [f"missed-{i}" for i in range(500)]
    publish(hub, missed)
    head = big + 500
    wait_for(lambda: hub.seq == head)

    ws, status2 = raw_ready(sc, f"?since={epoch}:{last}")
    assert status2["payload"]["recovered"] is True
    assert status2["payload"]["seq"] == head
    replayed = [ws.recv_json() for _ in range(head - last)]
    assert [e["seq"] for e in replayed] == list(range(last + 1, head + 1))
    assert [e["payload"]["id"] for e in replayed[-500:]] == missed
    assert [e["payload"]["id"] for e in replayed[:-500]] == [f"big-{i}" for i in range(last, big)]
    expect_live_next(sc, ws, status2, "live")

    wsreader.pump(
        [witness], lambda _, f: witnessed.extend(f), lambda: len(witnessed) >= head + 1, 10
    )
    assert [f.json()["seq"] for f in witnessed] == list(range(1, head + 2))


def test_a_large_replay_does_not_stall_live_delivery(sidecar_factory):
    sc = sidecar_factory()
    hub = sc.hub
    live, _ = raw_ready(sc)
    publish(hub, [f"h{i}" for i in range(1024)], pad=7 * 1024)  # ~7.3 MB: the whole window
    for _ in range(1024):
        live.recv()
    hub_idle(hub)
    assert hub.snapshot()["historyEvents"] == 1024
    # Resume from the start of the window and never read: the replay cannot all be written.
    stuck, resumed = raw_ready(sc, f"?since={hub.epoch}:0", rcvbuf=4096)
    try:
        assert resumed["payload"]["recovered"] is True
        hub_idle(hub, timeout=1.0)  # the hub thread is not blocked on the stuck client
        started = time.monotonic()
        publish(hub, [f"live-{i}" for i in range(100)])
        got = [live.recv_json() for _ in range(100)]
        assert [e["payload"]["id"] for e in got] == [f"live-{i}" for i in range(100)]
        assert [e["seq"] for e in got] == list(range(1025, 1125))
        assert time.monotonic() - started < 2.0
    finally:
        stuck.sock.close()


# -- resume that cannot be honoured ----------------------------------------------------------

HISTORY = 16
PUBLISHED = 100  # history then holds seq 85..100


def _since_cases() -> list[Any]:
    return [
        pytest.param(lambda e: f"{e}:50", False, 0, id="older-than-history"),
        pytest.param(lambda e: f"{e}:0", False, 0, id="from-the-start-trimmed"),
        pytest.param(lambda e: f"{e}:83", False, 0, id="one-before-the-window"),
        pytest.param(lambda e: f"{e}:84", True, 16, id="exactly-the-window"),
        pytest.param(lambda e: f"{e}:99", True, 1, id="one-behind"),
        pytest.param(lambda e: f"{e}:100", True, 0, id="at-the-head"),
        pytest.param(lambda e: f"{e}:101", False, 0, id="beyond-the-head"),
        pytest.param(lambda e: f"{e}:{10**17}", False, 0, id="far-beyond-the-head"),
        pytest.param(lambda e: "0123456789abcdef:99", False, 0, id="other-epoch"),
        pytest.param(lambda e: "0123456789abcdef:0", False, 0, id="other-epoch-zero"),
        pytest.param(lambda e: f"{e}x:99", False, 0, id="epoch-prefix-is-not-enough"),
        pytest.param(lambda e: f"{e[:-1]}:99", False, 0, id="epoch-truncated"),
    ]


@pytest.mark.parametrize(("since", "recovered", "replayed"), _since_cases())
def test_since_outcomes(sidecar_factory, since, recovered, replayed):
    sc = sidecar_factory(history_size=HISTORY)
    hub = sc.hub
    publish(hub, [f"old-{i}" for i in range(PUBLISHED)])
    wait_for(lambda: hub.seq == PUBLISHED)
    assert hub.snapshot()["historyEvents"] == HISTORY
    before = hub.snapshot()

    ws, status = sc.connect_ready("?since=" + since(hub.epoch))
    assert status["payload"] == {
        "status": "connected",
        "epoch": hub.epoch,
        "seq": PUBLISHED,
        "recovered": recovered,
    }
    events = [recv_json(ws) for _ in range(replayed)]
    assert [e["seq"] for e in events] == list(range(PUBLISHED - replayed + 1, PUBLISHED + 1))
    assert [e["payload"]["id"] for e in events] == [
        f"old-{i}" for i in range(PUBLISHED - replayed, PUBLISHED)
    ]
    # No partial replay: the next frame is the next live event.
    expect_live_next(sc, ws, {"payload": {"seq": PUBLISHED}}, "live")
    after = hub.snapshot()
    if recovered:
        assert after["replays"] == before["replays"] + 1
    else:
        assert after["unrecovered_resumes"] == before["unrecovered_resumes"] + 1


@pytest.mark.parametrize(
    "since",
    [
        "",
        "42",
        ":42",
        "abc:",
        "abc:-1",
        "abc:+1",
        "abc:1.5",
        "abc:0x10",
        "abc:1e3",
        "abc:%201",
        "abc:1%20",
        "a%20c:1",
        "a.c:1",
        "a/c:1",
        "abc:1:2",
        "abc:" + "9" * 19,
        "e" * 65 + ":1",
        pytest.param("abc:%EF%BC%91", id="fullwidth-digit"),  # int() would read it as 1
        pytest.param("abc:%D9%A1", id="arabic-indic-digit"),  # likewise
        pytest.param("%C3%A9poch:1", id="non-ascii-epoch"),
    ],
)
def test_malformed_since_is_refused_with_400_before_the_upgrade(sidecar_factory, since):
    sc = sidecar_factory()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        sc.connect("?since=" + since)
    assert info.value.status_code == 400
    assert sc.hub.snapshot()["registered"] == 0


def test_resume_after_a_restart_is_not_recovered(sidecar_factory):
    first = sidecar_factory()
    ws, status = first.connect_ready()
    publish(first.hub, [f"a{i}" for i in range(5)])
    last = [recv_json(ws)["seq"] for _ in range(5)][-1]
    old_epoch = status["payload"]["epoch"]
    # "The sidecar restarted": a new hub, a new epoch, the same seq range.
    second = sidecar_factory()
    assert second.hub.epoch != old_epoch
    publish(second.hub, [f"b{i}" for i in range(10)])
    wait_for(lambda: second.hub.seq == 10)
    ws2, status2 = second.connect_ready(f"?since={old_epoch}:{last}")
    assert status2["payload"] == {
        "status": "connected",
        "epoch": second.hub.epoch,
        "seq": 10,
        "recovered": False,
    }
    expect_live_next(second, ws2, status2, "live")


def test_resume_with_history_off(sidecar_factory):
    sc = sidecar_factory(history_size=0)
    publish(sc.hub, [f"e{i}" for i in range(10)])
    wait_for(lambda: sc.hub.seq == 10)
    assert sc.hub.snapshot()["historyEvents"] == 0
    assert sc.hub.snapshot()["historyBytes"] == 0
    ws, status = sc.connect_ready(f"?since={sc.hub.epoch}:9")
    assert status["payload"]["recovered"] is False
    expect_live_next(sc, ws, status, "live-1")
    ws2, status2 = sc.connect_ready(f"?since={sc.hub.epoch}:11")  # at the head: nothing missed
    assert status2["payload"]["recovered"] is True
    expect_live_next(sc, ws2, status2, "live-2")


def test_default_window_is_1024_events(sidecar_factory):
    sc = sidecar_factory()
    publish(sc.hub, [f"e{i}" for i in range(1100)])
    wait_for(lambda: sc.hub.seq == 1100)
    assert sc.hub.snapshot()["historyEvents"] == 1024
    ws, status = sc.connect_ready(f"?since={sc.hub.epoch}:{1100 - 1024}")
    assert status["payload"]["recovered"] is True
    seqs = [recv_json(ws)["seq"] for _ in range(1024)]
    assert seqs == list(range(1100 - 1024 + 1, 1101))
    expect_live_next(sc, ws, status, "live-1")
    ws2, status2 = sc.connect_ready(f"?since={sc.hub.epoch}:{1100 - 1025}")
    assert status2["payload"]["recovered"] is False
    expect_live_next(sc, ws2, status2, "live-2")


# -- history bounds --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "limit"),
    [
        pytest.param(64, 32 * 1024, id="bytes-bind"),
        pytest.param(16, 1 << 20, id="count-binds"),
    ],
)
def test_history_bounds_hold_under_a_burst(sidecar_factory, size, limit):
    sc = sidecar_factory(history_size=size, history_bytes=limit)
    hub = sc.hub
    witness = raw(sc)
    assert witness.recv_json()["type"] == "connection:status"
    rng = random.Random(4)
    sizes = [rng.choice((0, 10, 100, 1000, 3000, 6000)) + rng.randrange(50) for _ in range(2000)]
    seen: list[dict[str, int]] = []

    def check() -> None:  # runs on the hub thread, between commands: a consistent view
        snap = hub.snapshot()
        seen.append({"events": snap["historyEvents"], "bytes": snap["historyBytes"]})

    for start in range(0, len(sizes), 50):
        chunk = range(start, start + 50)
        publish(hub, [f"e{i}" for i in chunk], pad=lambda k, s=start: sizes[s + k])
        hub.call(check)
    frames: list[wsreader.Frame] = []
    wsreader.pump([witness], lambda _, f: frames.extend(f), lambda: len(frames) >= 2000, 20)
    hub_idle(hub)
    check()
    assert len(seen) == 41
    assert max(s["events"] for s in seen) <= size
    assert max(s["bytes"] for s in seen) <= limit

    # The window is the longest suffix of the stream within both bounds (frame bytes on the wire).
    count = total = 0
    for frame in reversed(frames):
        if count + 1 > size or total + frame.wire_size > limit:
            break
        count += 1
        total += frame.wire_size
    assert seen[-1] == {"events": count, "bytes": total}
    oldest = 2000 - count + 1

    ws, status = raw_ready(sc, f"?since={hub.epoch}:{oldest - 1}")
    assert status["payload"]["recovered"] is True
    replay = [ws.recv() for _ in range(count)]
    assert [f.payload for f in replay] == [f.payload for f in frames[-count:]]
    expect_live_next(sc, ws, status, "live-1")

    ws2, status2 = raw_ready(sc, f"?since={hub.epoch}:{oldest - 2}")
    assert status2["payload"]["recovered"] is False
    assert status2["payload"]["seq"] == 2001
    expect_live_next(sc, ws2, status2, "live-2")


def test_an_event_larger_than_the_byte_window_empties_it(sidecar_factory):
    sc = sidecar_factory(history_bytes=16 * 1024)
    publish(sc.hub, ["small"])
    publish(sc.hub, ["huge"], pad=20 * 1024)
    wait_for(lambda: sc.hub.seq == 2)
    snap = sc.hub.snapshot()
    assert (snap["historyEvents"], snap["historyBytes"]) == (0, 0)
    ws, status = sc.connect_ready(f"?since={sc.hub.epoch}:1")
    assert status["payload"]["recovered"] is False
    expect_live_next(sc, ws, status, "live-1")
    ws2, status2 = sc.connect_ready(f"?since={sc.hub.epoch}:3")
    assert status2["payload"]["recovered"] is True
    expect_live_next(sc, ws2, status2, "live-2")
