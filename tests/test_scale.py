"""Scaling out with the real thing: redis-server, gunicorn with several workers, the CLI.

Every test starts its own ``redis-server`` (:mod:`tests.redis_server`; under ``CI=true`` a
missing one fails the test) and its own servers, and stops them. No mocks: the broker, the
relay, the hub and gunicorn are the ones that ship. Every wait has a deadline.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from sidecar.broker import Publisher
from sidecar.core.stream import on_default
from sidecar.envelope import encode, new_event, with_seq
from sidecar.launcher import launch
from tests.conftest import TOKEN, RunningSidecar, recv_close, wait_for
from tests.needs import needs_module
from tests.redis_server import RedisServer, free_port
from tests.scale_helpers import (
    WAIT,
    Gunicorn,
    call,
    close_all,
    connect,
    post_events,
    read_until,
    tick,
)
from tests.test_broker import relay_warnings
from tests.test_process import _env

needs_module("gunicorn", "pip install '.[gunicorn]'")


@pytest.fixture
def gunicorns(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorns (``Gunicorn`` arguments); all are stopped at teardown."""
    started: list[Gunicorn] = []

    def start(*args: str, **options: Any) -> Gunicorn:
        server = Gunicorn(tmp_path, *args, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _spread(
    server: Gunicorn, clients: list[Any], limit: int, others: int = 0
) -> dict[int, dict[str, Any]]:
    """Open clients until every worker holds some (at most ``limit``); the workers' counters.

    ``others``: clients connected besides ``clients``."""
    while True:
        expected = len(clients) + others

        def all_in(snaps: dict[int, dict[str, Any]], expected: int = expected) -> bool:
            return sum(a["hub"]["clients"] for a in snaps.values()) == expected

        snaps = server.snapshots(all_in)
        if all(a["hub"]["clients"] for a in snaps.values()) or len(clients) >= limit:
            return snaps
        clients.extend(connect(server.port)[0] for _ in range(5))


def _worker_with(server: Gunicorn, counter: str, before: dict[int, dict[str, Any]]) -> int:
    """The pid of the one worker whose hub ``counter`` rose by one since ``before``."""

    def rose(snaps: dict[int, dict[str, Any]]) -> bool:
        grown = [p for p, a in snaps.items() if a["hub"][counter] > before[p]["hub"][counter]]
        return len(grown) == 1

    snaps = server.snapshots(rose)
    (pid,) = [p for p, a in snaps.items() if a["hub"][counter] > before[p]["hub"][counter]]
    return pid


def _publish_from_everywhere(port: int, publisher: Publisher, rounds: int) -> int:
    """Three HTTP publishers (new connection per POST: any worker) and an outside Publisher,
    concurrently, ``rounds`` batches of two events each; the number of events published."""
    errors: list[BaseException] = []

    def run(tag: str) -> None:
        try:
            for n in range(rounds):
                batch = [tick(tag, 2 * n), tick(tag, 2 * n + 1)]
                if tag == "outside":
                    publisher.publish_many([(e["type"], e["payload"]) for e in batch])
                else:
                    post_events(port, batch)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("h1", "h2", "h3", "outside")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors and not any(t.is_alive() for t in threads), errors
    return 2 * rounds * len(threads)


def _resume_elsewhere(
    server: Gunicorn, publisher: Publisher, home: int, epoch: str, last: int
) -> tuple[int, int]:
    """Resume from ``last`` until the resume lands on a worker other than ``home``; each try
    misses five events and must replay exactly them. Returns (that worker, the last seq)."""
    for _attempt in range(12):
        seqs = publisher.publish_many([("test:tick", {"id": f"r{last}-{i}"}) for i in range(5)])
        before = server.snapshots()
        ws, status = connect(server.port, f"?since={epoch}:{last}")
        assert status["recovered"] is True and status["epoch"] == epoch, status
        replay = read_until(ws, seqs[-1])
        assert [seq for seq, _id in replay] == list(range(last + 1, seqs[-1] + 1))
        worker = _worker_with(server, "replays", before)
        ws.close()
        last = seqs[-1]
        if worker != home:
            return worker, last
    raise AssertionError("twelve resumes in a row landed on the same worker")


def _metric_values(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _scrape(port: int) -> str:
    status, headers, body = call(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), (status, body)
    return body.decode()


def test_three_workers_one_order_resume_anywhere_and_metrics(
    redis_server: RedisServer, gunicorns: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    env = {"SIDECAR_BROKER": redis_server.url, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server = gunicorns(workers=3, env=env)
    before = server.snapshots()
    resumer, _status = connect(server.port)
    home = _worker_with(server, "registered", before)
    clients = [connect(server.port)[0] for _ in range(30)]
    snaps = _spread(server, clients, limit=90, others=1)
    assert all(a["hub"]["clients"] > 0 for a in snaps.values()), snaps
    epochs = {a["hub"]["epoch"] for a in snaps.values()}
    assert len(epochs) == 1, epochs  # one numbered stream, shared
    (epoch,) = epochs
    with Publisher(redis_server.url) as publisher:
        count = _publish_from_everywhere(server.port, publisher, rounds=10)
        first = read_until(resumer, count)
        resumer.close()
        worker, last = _resume_elsewhere(server, publisher, home, epoch, count)
        assert worker != home
    orders = [read_until(ws, last) for ws in clients]
    assert [seq for seq, _id in orders[0]] == list(range(1, last + 1))  # contiguous
    assert all(order == orders[0] for order in orders)  # one identical order everywhere
    assert orders[0][:count] == first
    assert len({event_id for _seq, event_id in orders[0]}) == last  # each event once
    wanted = len(clients)
    wait_for(
        lambda: _metric_values(_scrape(server.port), "sidecar_clients") == [({}, float(wanted))],
        WAIT,
    )
    text = _scrape(server.port)
    lags = _metric_values(text, "sidecar_relay_lag")
    assert {int(labels["pid"]) for labels, _lag in lags} == set(snaps), lags
    # other workers' counters are sampled once a second: they catch up within that
    wait_for(
        lambda: (
            _metric_values(_scrape(server.port), "sidecar_deliveries_total")[0][1] >= wanted * last
        ),
        WAIT,
    )
    close_all(clients)
    assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


def test_worker_killed_its_clients_resume_on_another_without_loss(
    redis_server: RedisServer, gunicorns: Callable[..., Gunicorn]
) -> None:
    server = gunicorns(workers=2, env={"SIDECAR_BROKER": redis_server.url})
    server.snapshots()
    clients = [connect(server.port)[0] for _ in range(8)]
    snaps = _spread(server, clients, limit=40)
    epoch = next(iter(snaps.values()))["hub"]["epoch"]
    seqs = post_events(server.port, [tick("a", n) for n in range(20)])
    got = [read_until(ws, seqs[-1]) for ws in clients]
    victim = min(snaps)
    on_victim = snaps[victim]["hub"]["clients"]
    signal_sent = subprocess.run(["kill", "-KILL", str(victim)], check=False).returncode
    assert signal_sent == 0
    with Publisher(redis_server.url) as publisher:
        more = publisher.publish_many([("test:tick", {"id": f"b-{n}"}) for n in range(20)])
    resumed = 0
    for i, ws in enumerate(clients):
        try:
            got[i] += read_until(ws, more[-1], timeout=5)
        except (websocket.WebSocketException, OSError):
            resumed += 1  # its worker died: resume wherever the reconnect lands
            clients[i], status = connect(server.port, f"?since={epoch}:{got[i][-1][0]}")
            assert status["recovered"] is True, status
            got[i] += read_until(clients[i], more[-1])
    assert resumed == on_victim > 0
    for events in got:
        assert [seq for seq, _id in events] == list(range(1, more[-1] + 1))
    assert all(events == got[0] for events in got)
    close_all(clients)


def test_preload_with_and_without_a_broker_delivers_events(
    redis_server: RedisServer, gunicorns: Callable[..., Gunicorn]
) -> None:
    plain = gunicorns("--preload")
    brokered = gunicorns("--preload", workers=2, env={"SIDECAR_BROKER": redis_server.url})
    for server in (plain, brokered):
        snaps = server.snapshots()
        clients = [connect(server.port)[0] for _ in range(6)]
        snaps = _spread(server, clients, limit=30)
        seqs = post_events(server.port, [tick("p", 1), tick("p", 2)])
        for ws in clients:
            assert [seq for seq, _id in read_until(ws, seqs[-1])] == seqs
        assert all(a["hub"]["clients"] for a in snaps.values())
        close_all(clients)
    log = plain.log() + brokered.log()
    assert "Traceback" not in log, log


def _exits_with_one_line(server: Gunicorn, text: str) -> None:
    code = server.process.wait(10)  # a crash loop would not end by itself
    log = server.log()
    lines = [line for line in log.splitlines() if line.startswith("sidecar:")]
    assert code != 0 and len(lines) == 1 and text in lines[0], log
    assert "Booting worker" not in log and "Traceback" not in log, log


def test_gunicorn_start_failures_are_one_line_and_no_crash_loop(
    gunicorns: Callable[..., Gunicorn],
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    for args in ((), ("--preload",)):
        server = gunicorns(*args, workers=2, env={"SIDECAR_TOKEN": "", "SIDECAR_BROKER": nowhere})
        _exits_with_one_line(server, "SIDECAR_TOKEN is empty")
    _exits_with_one_line(gunicorns(workers=2, env={"SIDECAR_BROKER": nowhere}), "unreachable")
    _exits_with_one_line(gunicorns(workers=3), "refusing to start with 3 worker processes")


# -- one process with a broker: faults, resumes, the CLI, metrics ----------------------------


def test_redis_outage_refuses_publishes_then_continues_or_closes_with_4001(
    persistent_redis: RedisServer,
    sidecar_factory: Callable[..., RunningSidecar],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sidecar = sidecar_factory(broker=persistent_redis.url, history_size=16, ping_interval=0)
    broker = sidecar.state.broker
    caplog.set_level(logging.INFO, logger="sidecar.broker")  # the relay's outage lines
    ws, status = sidecar.connect_ready()
    epoch = status["payload"]["epoch"]
    assert post_events(sidecar.port, [tick("a", n) for n in range(3)]) == [1, 2, 3]
    assert [seq for seq, _id in read_until(ws, 3)] == [1, 2, 3]
    persistent_redis.stop()
    code, headers, body = call(sidecar.port, "POST", "/api/v1/events", tick("lost", 0))
    assert (code, headers.get("Retry-After")) == (503, "1"), body  # refused, never 202
    assert sidecar.hub.broadcast_event(new_event("test:tick", {"id": "lost"})) is False
    wait_for(lambda: broker.relay_stats().failed_attempts >= 3, WAIT)  # several retries
    persistent_redis.start()  # the stream is back (append-only file)
    with Publisher(persistent_redis.url) as publisher:
        assert publisher.publish_many([("test:tick", {"id": f"b-{n}"}) for n in range(3)]) == [
            4,
            5,
            6,
        ]
        assert read_until(ws, 6) == [(4, "b-0"), (5, "b-1"), (6, "b-2")]  # same connection
        wait_for(lambda: broker.relay_stats().reconnects == 1, WAIT)
        assert relay_warnings(caplog, "unreachable") == 1  # one line per outage
        assert relay_warnings(caplog, "reachable again") == 1
        # 500 events in one script: the stream (~16 kept) is trimmed past the relay's last ID
        publisher.publish_many([("test:tick", {"id": f"c-{n}"}) for n in range(500)])
    assert recv_close(ws, WAIT) == 4001
    again, status = sidecar.connect_ready(f"?since={epoch}:6")
    assert status["payload"]["recovered"] is False and status["payload"]["seq"] == 506
    again.close()


def test_redis_restarted_without_its_data_is_a_new_epoch(
    redis_server: RedisServer, sidecar_factory: Callable[..., RunningSidecar]
) -> None:
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0)
    ws, status = sidecar.connect_ready()
    old = status["payload"]["epoch"]
    assert post_events(sidecar.port, [tick("a", 1), tick("a", 2)]) == [1, 2]
    read_until(ws, 2)
    redis_server.restart()  # no persistence: the epoch and the stream are gone
    assert recv_close(ws, WAIT) == 4001
    again, status = sidecar.connect_ready(f"?since={old}:2")
    payload = status["payload"]
    assert payload["recovered"] is False and payload["epoch"] not in ("", old)
    assert post_events(sidecar.port, [tick("new", 1)]) == [payload["seq"] + 1]
    assert read_until(again, payload["seq"] + 1) == [(payload["seq"] + 1, "new-1")]


def test_a_resume_ahead_of_this_relay_waits_for_it_and_backfill_stops_at_the_hub(
    redis_server: RedisServer, sidecar_factory: Callable[..., RunningSidecar]
) -> None:
    # one frame is over history_bytes: the local window is always empty, resumes read Redis
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0, history_bytes=1)
    hub, broker = sidecar.hub, sidecar.state.broker
    ws, status = sidecar.connect_ready()
    epoch = status["payload"]["epoch"]
    assert post_events(sidecar.port, [tick("a", n) for n in range(3)]) == [1, 2, 3]
    read_until(ws, 3)
    assert broker.stop()  # this process is now the slow worker: its relay is paused
    with Publisher(redis_server.url) as publisher:
        publisher.publish_many([("test:tick", {"id": f"b-{n}"}) for n in range(3)])  # 4..6
    # seen up to 1 elsewhere: the broker's 2..6 are read, only 2..3 replayed (4.. come live)
    behind, status = sidecar.connect_ready(f"?since={epoch}:1")
    assert status["payload"] == {**status["payload"], "recovered": True, "seq": 3}
    assert [seq for seq, _id in read_until(behind, 3)] == [2, 3]
    answers: list[dict[str, Any]] = []

    def resume_ahead() -> None:
        try:
            answers.append(connect(sidecar.port, f"?since={epoch}:6")[1])
        except Exception as exc:  # reported below
            answers.append({"error": repr(exc)})

    ahead = threading.Thread(target=resume_ahead)
    ahead.start()  # seen up to 6 on a faster worker: waits for this relay
    wait_for(lambda: hub._waiters == 1 or answers, WAIT)
    assert not answers, answers
    broker.start_relay(hub, (epoch, 3))
    ahead.join(WAIT)
    assert answers and answers[0]["recovered"] is True and answers[0]["seq"] == 6, answers
    assert [seq for seq, _id in read_until(behind, 6)] == [4, 5, 6]  # once each
    dup = with_seq(encode(new_event("test:tick", {"id": "dup"})), 6)
    hub.deliver(epoch, on_default(epoch, [(6, dup)]), 5.0)
    assert post_events(sidecar.port, [tick("d", 7)]) == [7]
    assert read_until(behind, 7) == [(7, "d-7")]  # the duplicate of 6 was dropped
    _status, future = sidecar.connect_ready(f"?since={epoch}:99")  # beyond the broker: no wait
    assert future["payload"]["recovered"] is False
    gap = with_seq(encode(new_event("test:tick", {"id": "gap"})), 9)
    hub.deliver(epoch, on_default(epoch, [(9, gap)]), 5.0)
    assert recv_close(behind, WAIT) == 4001  # a gap is never skipped on a live connection


def _sidecar_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=60,
        check=False,
    )


def test_cli_serve_and_publish_with_a_broker(
    redis_server: RedisServer, sidecar_factory: Callable[..., RunningSidecar]
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    failed = _sidecar_cli("--port", "0", "--broker", nowhere, SIDECAR_TOKEN=TOKEN)
    assert failed.returncode == 5, failed
    assert json.loads(failed.stdout)["error"] == "broker-unreachable"
    assert [line for line in failed.stderr.splitlines() if line.startswith("sidecar:")] == [
        f"sidecar: redis broker {nowhere} unreachable: "
        + failed.stderr.split(" unreachable: ", 1)[1].splitlines()[0]
    ]
    served = [sys.executable, "-m", "sidecar", "--port", "0", "--broker", redis_server.url]
    with launch(served, env=_env(SIDECAR_TOKEN=TOKEN), same_package=False) as child:
        with Publisher(redis_server.url) as publisher:
            assert child.ready["epoch"] == publisher.head()[0]  # the broker's, not its own
        assert child.stop() == 0
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0)
    ws, _status = sidecar.connect_ready()
    direct = _sidecar_cli("publish", "--broker", redis_server.url, "test:tick", '{"id":"cli"}')
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["seq"] == 1
    over_http = _sidecar_cli(
        "publish", "--url", sidecar.url, "test:tick", '{"id":"http"}', SIDECAR_TOKEN=TOKEN
    )
    assert over_http.returncode == 0 and json.loads(over_http.stdout)["seq"] == 2, over_http
    assert read_until(ws, 2) == [(1, "cli"), (2, "http")]
    refused = _sidecar_cli("publish", "--broker", redis_server.url, "stream:created", "{}")
    assert refused.returncode == 1 and "events[0].payload.projectId" in refused.stderr, refused


def test_metrics_need_the_token_and_read_the_counters(
    redis_server: RedisServer, sidecar_factory: Callable[..., RunningSidecar]
) -> None:
    sidecar = sidecar_factory(broker=redis_server.url, ping_interval=0)
    assert call(sidecar.port, "GET", "/metrics", token=None)[0] == 401
    assert call(sidecar.port, "POST", "/metrics")[0] == 405
    ws, status = sidecar.connect_ready()
    with pytest.raises(websocket.WebSocketBadStatusException):
        sidecar.connect(token="wrong-token-000000")
    epoch = status["payload"]["epoch"]
    post_events(sidecar.port, [tick("m", 1), tick("m", 2)])
    read_until(ws, 2)
    ws.close()
    resumed, _status = sidecar.connect_ready(f"?since={epoch}:0")
    text = _scrape(sidecar.port)
    assert _metric_values(text, "sidecar_clients") == [({}, 1.0)]
    assert _metric_values(text, "sidecar_broadcasts_total") == [({}, 2.0)]
    assert ({"reason": "token"}, 1.0) in _metric_values(text, "sidecar_refused_handshakes_total")
    resumes = _metric_values(text, "sidecar_resumes_total")
    assert ({"result": "recovered"}, 1.0) in resumes, resumes
    assert _metric_values(text, "sidecar_broker_connected") == [({}, 1.0)]
    assert _metric_values(text, "sidecar_relay_lag") == [({}, 0.0)]
    resumed.close()
