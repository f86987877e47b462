"""sidecar-client.js in Chromium against real sidecars (issue 7's browser cases).

The page under test is ``pages/harness.html``, served by a separate local HTTP server: that
server's origin plays the app (Vite, Tauri) and is added to the sidecar's allowlist, or plays
a foreign site and is not. The harness imports ``sidecar-client.js`` from the sidecar's own
``/client/`` route (cross-origin, as an app would) and records what the client reports.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sidecar.envelope import new_event
from sidecar.events import new_stream_created_event, new_stream_updated_event
from sidecar.protocol import CloseCode
from tests.browser.conftest import PageServer, stop_sidecar
from tests.browser.helpers import open_harness, record, start_client, wait_js, wait_open
from tests.conftest import TOKEN, RunningSidecar, wait_for

FAST = {"base": 50, "cap": 250, "stableAfter": 5000}
ROOT = Path(__file__).resolve().parents[2]


def _setup(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any, **sidecar_options: Any
) -> tuple[PageServer, RunningSidecar]:
    pages: PageServer = page_server_factory()
    running = web_sidecar_factory(extra_origins=(pages.origin,), **sidecar_options)
    open_harness(browser, pages.harness_url(f"{running.url}/client/sidecar-client.js"))
    return pages, running


def _updates(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in rec["events"] if e["type"] == "stream:updated"]


def test_allowed_origin_gets_status_then_broadcasts(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    _, running = _setup(browser, page_server_factory, web_sidecar_factory)
    start_client(browser, running.ws_url, token=TOKEN)
    wait_open(browser)
    assert running.hub.broadcast_event(new_stream_created_event("p1", "s1", "First"))
    assert running.hub.broadcast_event(new_event("app:custom-thing", {"n": 2}))
    wait_js(browser, "window.rec.events.length >= 3", what="two broadcasts")

    rec = record(browser)
    status, created, custom = rec["events"]
    assert status["type"] == "connection:status"
    assert status["payload"] == {
        "status": "connected",
        "epoch": running.hub.epoch,
        "seq": 0,
        "recovered": False,
    }
    assert (created["type"], created["seq"], created["payload"]["streamId"]) == (
        "stream:created",
        1,
        "s1",
    )
    assert (custom["type"], custom["seq"], custom["payload"]) == ("app:custom-thing", 2, {"n": 2})
    assert [s["state"] for s in rec["states"]] == ["connecting", "open"]
    assert rec["resyncs"] == []
    assert browser.execute_script("return window.client.seq") == 2


def test_foreign_origin_cannot_connect(
    browser: Any,
    page_server_factory: Any,
    web_sidecar_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    foreign: PageServer = page_server_factory()  # not on the allowlist
    running = web_sidecar_factory()
    open_harness(browser, foreign.harness_url(f"{running.url}/client/sidecar-client.js"))
    start_client(browser, running.ws_url, token=TOKEN, backoff=FAST)
    wait_js(
        browser,
        "window.rec.states.filter(s => s.state === 'reconnecting').length >= 2",
        what="two refused attempts",
    )
    rec = record(browser)
    assert "open" not in [s["state"] for s in rec["states"]]
    assert all(s["code"] == 1006 for s in rec["states"] if s["state"] == "reconnecting")
    assert rec["events"] == []
    browser.execute_script("window.client.close()")

    assert running.sidecar.sessions.snapshot()["rejectedHandshakes"].get("origin", 0) >= 2
    assert running.hub.stats.registered == 0
    refused = [r.getMessage() for r in caplog.records if "handshake refused" in r.getMessage()]
    assert refused and all("403 origin" in line for line in refused), refused
    console = " ".join(entry["message"] for entry in browser.get_log("browser"))
    assert "403" in console, console  # Chromium reports the refused handshake's status


@pytest.mark.parametrize("how", ["evict", "socket"])
def test_dropped_connection_recovers_every_event_once(
    how: str, browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    """The sidecar drops the page (slow-consumer eviction, or its TCP socket just dies)
    while 100 events are published; the client reconnects with ``since`` by itself."""
    _, running = _setup(browser, page_server_factory, web_sidecar_factory)
    hub = running.hub
    start_client(browser, running.ws_url, token=TOKEN, backoff=FAST)
    wait_open(browser)
    assert hub.broadcast_event(new_event("app:before", {}))
    wait_js(browser, "window.rec.events.length >= 2", what="the event before the drop")

    def drop_and_publish_half() -> None:
        # The inbox is FIFO: the browser is gone before any of these 50 is handed out.
        # evict: close 4008 (reconnect class); socket: no close frame, the browser sees 1006.
        assert hub.drop_all(CloseCode.SLOW_CONSUMER, "slow consumer", abrupt=how == "socket")
        for i in range(50):
            assert hub.broadcast_event(new_stream_updated_event("p", "s", {"i": i}))

    first_half = threading.Thread(target=drop_and_publish_half)
    first_half.start()
    for i in range(50, 100):  # meanwhile, from this thread: replayed or live
        assert hub.broadcast_event(new_stream_updated_event("p", "s", {"i": i}))
    first_half.join(10)
    wait_js(
        browser,
        "window.rec.events.filter(e => e.type === 'stream:updated').length >= 100",
        what="all 100 events",
    )
    wait_for(lambda: hub.client_count() == 1)

    rec = record(browser)
    updates = _updates(rec)
    order = [e["payload"]["changes"]["i"] for e in updates]
    assert sorted(order) == list(range(100))  # every event exactly once
    # Two publishers ran at once, so the hub's order interleaves them; each one's own events
    # arrive in the order it published them, and seq (the hub's order) is contiguous.
    assert [i for i in order if i < 50] == list(range(50))
    assert [i for i in order if i >= 50] == list(range(50, 100))
    assert [e["seq"] for e in updates] == list(range(2, 102))
    statuses = [e["payload"] for e in rec["events"] if e["type"] == "connection:status"]
    assert len(statuses) == 2 and statuses[1]["recovered"] is True, statuses
    assert statuses[1]["epoch"] == statuses[0]["epoch"] == hub.epoch
    assert rec["resyncs"] == []
    lost = [s for s in rec["states"] if s["state"] == "reconnecting"]
    assert len(lost) == 1 and lost[0]["code"] == (4008 if how == "evict" else 1006), lost
    assert hub.stats.replays == 1 and hub.stats.replayed_events >= 50
    stats = browser.execute_script("return window.client.stats")
    assert stats["gaps"] == 0 and stats["connections"] == 2


def test_sidecar_restart_resyncs_and_keeps_receiving(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    pages, first = _setup(browser, page_server_factory, web_sidecar_factory)
    start_client(browser, first.ws_url, token=TOKEN, backoff=FAST)
    wait_open(browser)
    for i in range(3):
        assert first.hub.broadcast_event(new_stream_updated_event("p", "s", {"i": i}))
    wait_js(browser, "window.rec.events.length >= 4", what="3 events from the first run")
    old_epoch, port = first.hub.epoch, first.port

    stop_sidecar(first)  # clients get 1001; then the port is closed for a moment
    wait_js(
        browser,
        "window.rec.states.some(s => s.state === 'reconnecting' && s.code === 1001)",
        what="the client to see 1001",
    )
    second = web_sidecar_factory(port=port, extra_origins=(pages.origin,))
    assert second.hub.epoch != old_epoch
    wait_js(browser, "window.rec.resyncs.length >= 1", what="onResync after the restart")
    for i in range(3, 8):
        assert second.hub.broadcast_event(new_stream_updated_event("p", "s", {"i": i}))
    wait_js(
        browser,
        "window.rec.events.filter(e => e.type === 'stream:updated').length >= 8",
        what="events from the second run",
    )

    rec = record(browser)
    assert rec["resyncs"] == [
        {
            "channel": None,
            "reason": "new-epoch",
            "epoch": second.hub.epoch,
            "seq": 0,
            "previousEpoch": old_epoch,
            "previousSeq": 3,
        }
    ]
    updates = _updates(rec)
    assert [e["payload"]["changes"]["i"] for e in updates] == list(range(8))
    assert [e["seq"] for e in updates] == [1, 2, 3, 1, 2, 3, 4, 5]
    statuses = [e["payload"] for e in rec["events"] if e["type"] == "connection:status"]
    assert statuses[-1] == {
        "status": "connected",
        "epoch": second.hub.epoch,
        "seq": 0,
        "recovered": False,
    }
    assert browser.execute_script("return [window.client.state, window.client.epoch]") == [
        "open",
        second.hub.epoch,
    ]


def test_do_not_reconnect_close_code_is_final(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    _, running = _setup(browser, page_server_factory, web_sidecar_factory)
    hub = running.hub
    start_client(browser, running.ws_url, token=TOKEN, backoff={"base": 10, "cap": 20})
    wait_open(browser)

    assert hub.drop_all(4501, "not welcome")
    wait_js(browser, "window.client.state === 'closed'", what="state closed")
    wait_for(lambda: hub.client_count() == 0)
    rec = record(browser)
    assert rec["states"][-1]["code"] == 4501
    assert rec["states"][-1]["reason"] == "not welcome"
    # A retry would come within the 20 ms backoff cap; give it 50x that and see none.
    with pytest.raises(AssertionError):
        wait_for(lambda: hub.stats.registered > 1, timeout=1.0)
    assert [s["state"] for s in record(browser)["states"]] == ["connecting", "open", "closed"]


def test_online_event_reconnects_at_once(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    _, running = _setup(browser, page_server_factory, web_sidecar_factory)
    hub = running.hub
    start_client(
        browser,
        running.ws_url,
        token=TOKEN,
        backoff={"base": 60000, "cap": 60000},
        fixedRandom=0.99,
    )
    wait_open(browser)
    assert hub.drop_all(CloseCode.SLOW_CONSUMER, "slow consumer")
    wait_js(
        browser,
        "window.rec.states.some(s => s.state === 'reconnecting' && s.delay > 50000)",
        what="a reconnect scheduled about a minute away",
    )
    browser.execute_script("window.dispatchEvent(new Event('online'))")
    wait_open(browser, count=2, timeout=5)
    statuses = [e["payload"] for e in record(browser)["events"] if e["type"] == "connection:status"]
    assert statuses[-1]["recovered"] is True


class _SidecarProcess:
    """``python -m sidecar`` as a desktop app starts it (token from the environment)."""

    def __init__(self, port: int, origin: str, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env["PYTHONPATH"] = str(ROOT)
        env["SIDECAR_TOKEN"] = TOKEN
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--port", str(port), "--allowed-origins", origin],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"no ready line; see {log_path}"
        self.ready: dict[str, Any] = json.loads(line)

    def publish(self, *batch: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.ready['url']}/api/v1/events",
            data=json.dumps(list(batch)).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


def _update(i: int) -> dict[str, Any]:
    return {
        "type": "stream:updated",
        "payload": {"projectId": "p", "streamId": "s", "changes": {"i": i}},
    }


def test_sidecar_process_restart_resyncs_and_keeps_receiving(
    browser: Any, page_server_factory: Any, tmp_path: Path
) -> None:
    """The same story with real processes: SIGTERM, then a new ``python -m sidecar`` on the
    same port; events go in through ``POST /api/v1/events``."""
    pages: PageServer = page_server_factory()
    processes: list[_SidecarProcess] = []
    try:
        first = _SidecarProcess(0, pages.origin, tmp_path / "first.log")
        processes.append(first)
        open_harness(browser, pages.harness_url(f"{pages.origin}/sidecar-client.js"))
        start_client(browser, first.ready["ws"], token=TOKEN, backoff=FAST)
        wait_open(browser)
        first.publish(_update(0), _update(1), _update(2))
        wait_js(browser, "window.rec.events.length >= 4", what="3 events from the first process")

        assert first.terminate() == 0
        wait_js(
            browser,
            "window.rec.states.some(s => s.state === 'reconnecting' && s.code === 1001)",
            what="the client to see 1001 from the stopping process",
        )
        second = _SidecarProcess(first.ready["port"], pages.origin, tmp_path / "second.log")
        processes.append(second)
        wait_js(browser, "window.rec.resyncs.length >= 1", what="onResync after the restart")
        second.publish(_update(3), _update(4))
        wait_js(
            browser,
            "window.rec.events.filter(e => e.type === 'stream:updated').length >= 5",
            what="events from the second process",
        )
    finally:
        for process in processes:
            process.kill()

    rec = record(browser)
    assert [(r["reason"], r["previousEpoch"], r["epoch"]) for r in rec["resyncs"]] == [
        ("new-epoch", first.ready["epoch"], second.ready["epoch"])
    ]
    updates = _updates(rec)
    assert [e["payload"]["changes"]["i"] for e in updates] == [0, 1, 2, 3, 4]
    assert [e["seq"] for e in updates] == [1, 2, 3, 1, 2]
