"""Issue 11 class 8 (log floods) and issue 12 section 2 (a parent can never wedge it).

* A client that sends a thousand malformed messages (bad JSON, JSON that is not an envelope)
  causes a handful of log lines: the first of each kind, then one summary with the count when
  it leaves; per client and kind. A peer whose handshakes are refused a thousand times (401,
  malformed heads) likewise.
* A parent that pipes stderr and never reads it (Node's default) cannot wedge the sidecar:
  at ``--log-level debug``, 2,000 connect-publish-close cycles each get their
  ``connection:status`` and their event, and ``/api/v1/hub`` counts the log lines dropped.
  ``--log-file PATH`` writes the log there instead.

Black box: child processes (``SIDECAR_TREE`` picks the code, see :mod:`tests.hardening`).
"""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import TOKEN, wait_for
from tests.hardening import (
    TREE,
    child_environment,
    counters,
    exchange,
    post_events,
    running,
    upgrade_head,
)
from tests.rawws import OP_TEXT, RawWS

FLOOD = 1000
#: Refused handshakes of each kind from one peer (each costs Werkzeug's 10 ms drain).
REFUSALS = 200
#: Log lines a flood of one kind from one client may cause.
HANDFUL = 3


def _client_id(log: str, ws: RawWS) -> str:
    port = ws.sock.getsockname()[1]
    found = re.search(rf"client (\S+) connected from 127\.0\.0\.1:{port}\b", log)
    assert found, f"no connect line for port {port}"
    return found[1]


def test_a_thousand_malformed_messages_cause_a_handful_of_lines_per_client_and_kind():
    kinds = {"malformed": b"{not json", "not-envelope": b"[1, 2, 3]", "no-type": b'{"type": 5}'}
    with running() as child:
        clients = [RawWS.connect(child.port, token=TOKEN) for _ in range(2)]
        sent = 0
        for ws in clients:
            assert ws.read_message() is not None  # connection:status
            for payload in kinds.values():
                for _ in range(FLOOD):
                    ws.send_frame(OP_TEXT, payload)
                    sent += len(payload) + 6
            ws.send_close(1000)
            assert ws.read_close(reply=False) == 1000
        wait_for(lambda: child.log_text().count("disconnected") == len(clients), timeout=10.0)
        log = child.log_text()
        for ws in clients:
            ident = _client_id(log, ws)
            lines = [line for line in log.splitlines() if f"client {ident} " in line]
            lines += [line for line in log.splitlines() if f"client {ident}:" in line]
            noisy = [line for line in lines if "sent" in line or "not logged" in line]
            assert len(noisy) <= HANDFUL * len(kinds), "\n".join(noisy)
            summaries = [line for line in noisy if "not logged" in line]
            assert any(
                str(2 * FLOOD - 1) in line or str(FLOOD - 1) in line for line in summaries
            ), "\n".join(noisy)
        assert len(log) < sent / 20, f"{len(log)} log bytes for {sent} bytes received"


def test_a_flood_of_refused_handshakes_causes_a_handful_of_lines():
    peer = "127.0.0.7"
    with running() as child:
        for _ in range(REFUSALS):
            assert (
                exchange(child.port, upgrade_head(child.port, token=None), source=peer).status
                == 401
            )
            old = upgrade_head(child.port).replace(b"Version: 13", b"Version: 8")
            assert exchange(child.port, old, source=peer).status == 426
        marker = upgrade_head(child.port, "/ws?m=done", token="wrong")
        exchange(child.port, marker, source="127.0.0.8")
        wait_for(lambda: "m=done" in child.log_text(), timeout=5.0)
        lines = [line for line in child.log_text().splitlines() if peer in line]
        assert 1 <= len(lines) <= 2 * HANDFUL, "\n".join(lines)


# -- a parent that never reads stderr ------------------------------------------------------------

CYCLES = 2000


def _cycle(port: int, n: int) -> None:
    """Connect, get connection:status, publish over HTTP, receive the event, close.

    At debug level a cycle logs six lines (connected, registered, the POST, the malformed
    message, disconnected, the upgrade request): 2,000 cycles overflow the log queue.
    """
    with RawWS.connect(port, token=TOKEN, timeout=5.0) as ws:
        status = ws.read_message()
        assert status is not None and b"connection:status" in status.payload, (n, status)
        body = json.dumps({"type": "test:cycle", "payload": {"n": n}}).encode()
        assert post_events(port, body).status == 202, n
        while True:
            frame = ws.read_message(timeout=5.0)
            assert frame is not None, f"cycle {n}: no event"
            event = json.loads(frame.payload)
            if event["type"] == "test:cycle" and event["payload"]["n"] == n:
                break
        ws.send_frame(OP_TEXT, b"{oops")  # one more line: the client's first malformed message
        ws.send_close(1000)


def test_a_parent_that_never_reads_stderr_cannot_wedge_it():
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--port", "0", "--log-level", "debug"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # and never read
        env=child_environment(SIDECAR_PING_INTERVAL="0"),
        cwd=TREE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        fcntl.fcntl(proc.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)  # fills after a few lines
        ready = json.loads(proc.stdout.readline())
        url = ready["url"]
        for n in range(CYCLES):
            _cycle(ready["port"], n)
        dropped = counters(url)["logs"]["dropped"]
        assert dropped > 0, "the pipe was full: lines must have been dropped, and counted"
    finally:
        proc.kill()
        proc.wait(10)


def test_log_file_receives_the_log(tmp_path: Path):
    path = tmp_path / "sidecar.log"
    with running("--log-file", str(path)) as child:
        exchange(child.port, upgrade_head(child.port, "/ws?m=to-the-file", token=None))
        wait_for(lambda: path.exists() and "m=to-the-file" in path.read_text(), timeout=5.0)
        assert "listening on" in path.read_text()
        assert "to-the-file" not in child.log_text()  # not on stderr
