"""``scripts/bench --stages`` (issue 24 §2): every stage measured, in JSON, with tiny counts.

The mode starts a real server, a hub, loopback connections and a drain process: the test runs
it as a user would (the entry point, a subprocess) with few connections and short repetitions,
and checks that each stage reports a positive cost, and that bad options get a one-line
answer before anything starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(ROOT / "scripts" / "bench.py")]
TINY = ["--stages", "--stage-clients", "3,5", "--stage-reps", "2", "--stage-seconds", "0.005"]

pytestmark = pytest.mark.posix_only("the bench uses epoll, /proc and MSG_DONTWAIT")


def stages_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["stage"]: row for row in report["stages"]}


def test_stages_reports_every_stage_with_a_positive_cost() -> None:
    done = subprocess.run(
        [*BENCH, *TINY, "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["status"] == "complete"
    rows = stages_of(report)
    expected = [f"http: POST of {n}" for n in ("1 event", "2 events", "10 events")]
    expected += ["http: POST of 2 events every 10 ms"]
    expected += [f"codec: parse + validate, {n}-event body" for n in (1, 2, 10)]
    expected += ["codec: encode the envelope", "http: the rest of a POST of 2 events"]
    for batch in ("1 event", "2 events", "2 events every 10 ms", "10 events, 10 channels"):
        expected += [f"hub: publish_items, {batch}", f"hub thread, no clients, {batch}"]
    for m in (3, 5):
        expected += [f"offer: bare sock.send, M={m}", f"offer: Client.offer, M={m}"]
        expected += [f"fan-out: hub thread, 2 events, M={m}"]
        expected += [f"fan-out: hub thread, 10 events, 10 channels, M={m}"]
    expected += ["fan-out: hub thread, 2 events every 10 ms, M=3"]  # the fewest clients only
    for name in expected:
        assert name in rows, f"{name!r} missing from {sorted(rows)}"
        row = rows[name]
        figures = [row[k] for k in ("us_per_batch", "us_per_event", "us_per_client")]
        assert any(f is not None and f > 0 for f in figures), row
        assert len(row["samples"]) == (0 if row["derived"] else 2), row
    assert len(rows) == len(expected)
    predicted = sorted((p["clients"], p["fan_out"]) for p in report["predicted"])
    assert predicted == [(3, "2 events"), (3, "2 events every 10 ms"), (5, "2 events")]
    assert all(p["us_per_delivery"] > 0 for p in report["predicted"])
    assert "fan-out: hub thread, 2 events, M=5" in done.stderr  # the table, beside the JSON


def test_stages_ends_at_its_timeout_with_what_it_measured() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [*BENCH, *TINY, "--stage-seconds", "0.05", "--timeout", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert time.monotonic() - started < 30
    report = json.loads(done.stdout)
    assert report["status"].startswith("timed out")
    assert "status: timed out" in done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["--stage-clients", "0"],
        ["--stage-clients", "ten"],
        ["--stage-reps", "0"],
        ["--stage-seconds", "0"],
    ],
)
def test_stages_refuses_bad_options_in_one_line(bad: list[str]) -> None:
    done = subprocess.run(
        [*BENCH, "--stages", *bad], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("scripts/bench: error: --stage-")
