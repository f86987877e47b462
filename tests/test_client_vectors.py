"""The shared client vectors (``tests/data/client-vectors.json``) through a real
:class:`~sidecar.client.Subscriber` over real sockets, with a scripted hub playing the hub's
part (``tests/scripted_hub.py``), and through ``sidecar-client.js`` in Node. The pure
:class:`~sidecar.client.session.Session` runs them too (``tests/unit/test_client_session.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import Backoff, Subscriber, SubscriberClosed
from tests.conftest import wait_for
from tests.needs import needs_module, unavailable
from tests.scripted_hub import ScriptedConnection, ScriptedHub
from tests.unit.test_client_session import SCENARIOS, VECTORS_FILE, frame_text, log_of

needs_module("websocket", "pip install 'sidecar-hub[client]'")

ROOT = Path(__file__).resolve().parents[1]


class _Gate:
    """The subscriber's ``random``: each call waits for a permit (so that the test decides
    when a reconnect, or a retried subscribe, happens) and then says 0 (no delay)."""

    def __init__(self) -> None:
        self._permits = threading.Semaphore(0)

    def __call__(self) -> float:
        assert self._permits.acquire(timeout=10), "the test never let the client go on"
        return 0.0

    def release(self) -> None:
        self._permits.release()


def _processed(sub: Subscriber, frames: int) -> Callable[[], bool]:
    return lambda: sub.stats["frames"] >= frames


def _in_state(sub: Subscriber, state: str) -> Callable[[], bool]:
    return lambda: sub.state == state


def _run_steps(
    scenario: dict[str, Any], hub: ScriptedHub, sub: Subscriber, gate: _Gate, items: list[Any]
) -> ScriptedConnection | None:
    conn: ScriptedConnection | None = None
    frames = 0  # sent so far: the application acts once it has taken what they delivered
    for step in scenario["steps"]:
        if "subscribe" in step or "unsubscribe" in step:
            wait_for(_processed(sub, frames))
            items.extend(sub.events(timeout=0))
        if "connect" in step:
            if conn is not None:
                gate.release()
            conn = hub.accept()
            assert conn.target == step["connect"]
        elif "receive" in step or "receiveText" in step:
            assert conn is not None
            conn.send_text(frame_text(step))
            frames += 1
        elif "send" in step:
            assert conn is not None
            if step.get("afterBackoff"):
                gate.release()
            assert conn.recv_json() == step["send"], step
        elif "close" in step:
            assert conn is not None
            conn.close(step["close"], step.get("reason", ""))
        elif "subscribe" in step:
            sub.subscribe(step["subscribe"], since=step.get("since"), token=step.get("token"))
        elif "unsubscribe" in step:
            sub.unsubscribe(step["unsubscribe"])
        elif "state" in step:
            wait_for(_in_state(sub, step["state"]))
    return conn


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"][:60] for s in SCENARIOS])
def test_subscriber_follows_the_vector_over_real_sockets(scenario: dict[str, Any]) -> None:
    options = scenario["options"]
    hub, gate = ScriptedHub(), _Gate()
    sub = Subscriber(
        hub.url + options.get("path", "/ws"),
        channels=options.get("channels", ()),
        since=options.get("since"),
        resync_on_first_connect=options.get("resyncOnFirstConnect", False),
        max_url_length=options.get("maxUrlLength", 4000),
        backoff=Backoff(base=0.001, cap=0.001, stable_after=60),
        random=gate,
    )
    items: list[Any] = []
    try:
        conn = _run_steps(scenario, hub, sub, gate, items)
        if sub.state != "closed":  # end it for good, after everything sent so far
            if conn is None or conn.closed:
                gate.release()
                conn = hub.accept()
            conn.close(4999, "end of the scenario")
        with pytest.raises(SubscriberClosed):
            for item in sub.events(timeout=10):
                items.append(item)
        assert log_of(items) == scenario["expect"]
    finally:
        sub.close()
        hub.close()


def test_the_js_client_follows_the_same_vectors_in_node() -> None:
    """The same file against ``sidecar-client.js`` (its fake-socket runner, in Node; the
    Chromium suite runs it too)."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is needed to run the JS client's vectors (Node >= 20)")
    assert node is not None
    runner = ROOT / "tests" / "browser" / "pages" / "node-vectors.mjs"
    client = ROOT / "sidecar" / "static" / "sidecar-client.js"
    done = subprocess.run(
        [node, str(runner), str(client), str(VECTORS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    results = json.loads(done.stdout)
    failures = [f"{r['name']}: {r['error']}" for r in results if not r["ok"]]
    assert not failures, "\n\n".join(failures)
    assert len(results) == len(SCENARIOS) + 2
