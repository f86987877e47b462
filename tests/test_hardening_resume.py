"""Issue 11, class 7: resume amplification.

* 40 clients resume from the start of an 8 MiB history and never read. Their replays share
  the history's frames (no private copy each), so the sidecar's RSS grows far less than
  40 x 8 MiB, and each is dropped like any stalled client (the write deadline, or 4008).
* Replay work per peer is budgeted (``--replay-rate``): a resume-from-the-start loop is
  refused with 503 and ``Retry-After`` before the upgrade after a few rounds, while a small
  resume (a few events) is never refused, even right after.

Black box: child processes (``SIDECAR_TREE`` picks the code, see :mod:`tests.hardening`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import TOKEN, wait_for
from tests.hardening import counters, exchange, post_events, rss_of, running, upgrade_head
from tests.rawws import RawWS

MiB = 1 << 20
HISTORY = 8 * MiB
RESUMERS = 40


def _fill(child: Any, event_bytes: int, total: int) -> int:
    """Publish events of about ``event_bytes`` until ``total`` bytes; the last seq."""
    per_post = max(1, (MiB * 3 // 4) // event_bytes)
    event = {"type": "test:fill", "payload": {"blob": "x" * event_bytes}}
    for _ in range(total // (event_bytes * per_post) + 1):
        reply = post_events(child.port, json.dumps([event] * per_post).encode())
        assert reply.status == 202, reply
    return int(_hub(child)["hub"]["seq"])


def _hub(child: Any) -> dict[str, Any]:
    return counters(child.url)


def _window_start(child: Any) -> str:
    """The resume point just before the oldest event kept: a replay of the whole window."""
    hub = _hub(child)["hub"]
    return f"{hub['epoch']}:{hub['seq'] - hub['historyEvents']}"


def test_forty_stalled_resumers_share_the_history_and_are_dropped():
    settings = {"replay_rate": 0, "write_deadline": 1, "history_bytes": HISTORY}
    with running(**settings) as child:
        _fill(child, 64 << 10, HISTORY + MiB)
        wait_for(lambda: _hub(child)["hub"]["historyBytes"] >= HISTORY - MiB, timeout=10.0)
        start = _window_start(child)
        baseline = rss_of(child.pid)
        stalled = [
            RawWS.connect(child.port, f"/ws?since={start}", token=TOKEN, rcvbuf=4096)
            for _ in range(RESUMERS)
        ]
        peak = baseline
        try:

            def all_dropped() -> bool:
                """Whether every resumer is gone; records the highest RSS seen."""
                nonlocal peak
                peak = max(peak, rss_of(child.pid))
                return _hub(child)["hub"]["clients"] == 0

            wait_for(all_dropped, timeout=20.0, interval=0.05)
        finally:
            for ws in stalled:
                ws.reset()
        growth = peak - baseline
        assert growth < RESUMERS * HISTORY // 8, f"RSS grew {growth / MiB:.0f} MiB"
        ended = _hub(child)["sessions"]["ended"]
        dropped = sum(n for reason, n in ended.items() if "slow" in reason or "deadline" in reason)
        assert dropped >= RESUMERS, ended
        assert rss_of(child.pid) - baseline < RESUMERS * HISTORY // 8


def _resume(port: int, since: str) -> tuple[int, dict[str, str], int]:
    """Resume from ``since``: the status, the headers, and the events replayed (101 only)."""
    reply = exchange(port, upgrade_head(port, f"/ws?since={since}"), timeout=5.0)
    return reply.status, reply.headers, 0


@pytest.mark.parametrize(
    ("history", "rate"),
    [(HISTORY, None), (MiB, 256 << 10)],
    ids=["8MiB-default-rate", "1MiB-at-256KiB/s"],
)
def test_a_resume_loop_is_refused_before_the_upgrade_and_a_small_resume_never_is(history, rate):
    settings = {"history_bytes": history} | ({"replay_rate": rate} if rate else {})
    with running(**settings) as child:
        epoch = child.ready["epoch"]
        last = _fill(child, 16 << 10, history + MiB)
        start = _window_start(child)
        statuses = []
        for _ in range(20):
            status, headers, _ = _resume(child.port, start)
            statuses.append(status)
            if status == 503:
                assert int(headers["retry-after"]) >= 1, headers
                break
        assert statuses[-1] == 503, f"never refused in {len(statuses)} rounds: {statuses}"
        assert 2 <= len(statuses) <= 12 and set(statuses[:-1]) == {101}, statuses
        for _ in range(5):  # right after the refusal, with the peer's budget spent
            with RawWS.connect(child.port, f"/ws?since={epoch}:{last - 3}", token=TOKEN) as ws:
                status_frame = ws.read_message()
                assert status_frame is not None
                assert json.loads(status_frame.payload)["payload"]["recovered"] is True
                frames = [ws.read_message() for _ in range(3)]
                assert [json.loads(f.payload)["seq"] for f in frames if f] == [
                    last - 2,
                    last - 1,
                    last,
                ]
