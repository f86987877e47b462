"""The shared client vectors (``tests/data/client-vectors.json``) against the Python client.

Every scenario runs twice: against :class:`sidecar.client.session.Session` alone (the rules,
with a clock of the test's own), and through a real :class:`~sidecar.client.Subscriber` over
real sockets, with a scripted hub playing the hub's part (``tests/scripted_hub.py``). The
same file drives ``sidecar-client.js`` (``tests/browser/pages/client-vectors.mjs``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import Backoff, ChannelError, Event, Resync, Subscriber, SubscriberClosed
from sidecar.client.policy import backoff_delay, should_reconnect
from sidecar.client.session import Session
from sidecar.protocol import parse_since
from tests.conftest import wait_for
from tests.needs import needs_module, unavailable
from tests.scripted_hub import ScriptedConnection, ScriptedHub

needs_module("websocket", "pip install 'sidecar-hub[client]'")

ROOT = Path(__file__).resolve().parents[1]
VECTORS_FILE = ROOT / "tests" / "data" / "client-vectors.json"
VECTORS = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
SCENARIOS = VECTORS["scenarios"]
TIMESTAMP = "2026-01-01T00:00:00Z"


def _frame(step: dict[str, Any]) -> str:
    if "receiveText" in step:
        return str(step["receiveText"])
    return json.dumps(
        {"type": "test:tick", "payload": {}, "timestamp": TIMESTAMP, **step["receive"]}
    )


def _logged(item: object) -> list[Any] | None:
    """An item as the vectors' ``expect`` writes it (``None``: not part of the record)."""
    if isinstance(item, Event):
        if item.type.partition(":")[0] in ("connection", "channel"):
            return None
        return ["event", item.channel, item.seq]
    if isinstance(item, Resync):
        fields = (item.epoch, item.seq, item.previous_epoch, item.previous_seq)
        return ["resync", item.channel, item.reason, *fields]
    if isinstance(item, ChannelError):
        return ["error", item.channel, item.code, item.retrying]
    return None


def _log(items: list[Any]) -> list[list[Any]]:
    return [entry for entry in map(_logged, items) if entry is not None]


def _options(scenario: dict[str, Any]) -> dict[str, Any]:
    options = scenario["options"]
    return {
        "channels": options.get("channels", ()),
        "since": parse_since(options["since"]) if "since" in options else None,
        "resync_on_first_connect": options.get("resyncOnFirstConnect", False),
        "max_target": options.get("maxUrlLength", 4000),
    }


def test_close_codes_match_the_vectors() -> None:
    assert [[code, should_reconnect(code)] for code, _ in VECTORS["closeCodes"]] == VECTORS[
        "closeCodes"
    ]


def test_backoff_ceilings_match_the_vectors() -> None:
    table = VECTORS["backoff"]
    backoff = Backoff(base=table["base"] / 1000, cap=table["cap"] / 1000)
    for attempt, ceiling in table["ceilings"]:
        assert backoff_delay(attempt, backoff, lambda: 1.0) == pytest.approx(ceiling / 1000)
        assert backoff_delay(attempt, backoff, lambda: 0.0) == 0.0


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"][:60] for s in SCENARIOS])
def test_session_follows_the_vector(scenario: dict[str, Any]) -> None:
    options = _options(scenario)
    path = scenario["options"].get("path", "/ws")
    session = Session(
        options["channels"],
        options["since"],
        resync_on_first_connect=options["resync_on_first_connect"],
        max_target=options["max_target"],
    )
    outputs: list[Any] = []
    sent: deque[dict[str, Any]] = deque()
    now, closed = 0.0, False
    for step in scenario["steps"]:
        if "connect" in step:
            assert not closed, "a client closed for good does not connect"
            assert session.connect_target(path) == step["connect"]
        elif "receive" in step or "receiveText" in step:
            outputs += session.receive(_frame(step), now)
        elif "send" in step:
            now += 1000.0 if step.get("afterBackoff") else 0.0
            messages, errors = session.take_messages(now)
            outputs += errors
            sent.extend(messages)
            assert sent and sent.popleft() == step["send"], (step, list(sent))
        elif "close" in step:
            session.lost()
            closed = not should_reconnect(step["close"])
        elif "subscribe" in step:
            since = parse_since(step["since"])[""] if "since" in step else None
            session.subscribe(step["subscribe"], since, step.get("token"))
        elif "unsubscribe" in step:
            session.unsubscribe(step["unsubscribe"])
        elif "state" in step:
            assert step["state"] == ("closed" if closed else "open")
    assert _log(outputs) == scenario["expect"]


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
            conn.send_text(_frame(step))
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
    options = _options(scenario)
    hub, gate = ScriptedHub(), _Gate()
    sub = Subscriber(
        hub.url + scenario["options"].get("path", "/ws"),
        channels=options["channels"],
        since=scenario["options"].get("since"),
        resync_on_first_connect=options["resync_on_first_connect"],
        max_url_length=options["max_target"],
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
        assert _log(items) == scenario["expect"]
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
