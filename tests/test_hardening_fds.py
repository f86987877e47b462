"""Issue 11, class 6: out of file descriptors, for real.

A child process runs the sidecar in-process next to a descriptor hog it drives through stdin
(:mod:`tests.fdhog`): ``hog`` takes every descriptor the process may open. Then, while the
episode lasts:

* new connections (a real client's, ``/health``) are answered ``503`` at once, with the
  reserve descriptor, never left to time out;
* the accept loop backs off: with 50 connections waiting in the backlog the process uses
  less than 20 % of a core (the old loop spun at 100 %);
* the log says so once, not once per failed ``accept``.

After ``free`` a new client connects by itself. Apart from that: ``--max-clients`` is checked
against ``RLIMIT_NOFILE`` at start, and a soft limit below what the caps need is raised to it
when the hard limit allows (the refusal is tested in ``tests/test_process.py``).

Black box (``SIDECAR_TREE`` picks the code, see :mod:`tests.hardening`).
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.launcher import SidecarProcess
from tests.conftest import TOKEN, wait_for
from tests.hardening import (
    TREE,
    child_environment,
    cpu_share,
    exchange,
    request_head,
    running,
    upgrade_head,
)
from tests.rawws import HandshakeFailed, RawWS

FDHOG = Path(__file__).with_name("fdhog.py")
BACKLOG = 50


@pytest.fixture
def hogged() -> Iterator[SidecarProcess]:
    """The sidecar-with-a-hog child, ready; stopped afterwards."""
    child = SidecarProcess(
        [sys.executable, str(FDHOG), "--port", "0", "--ping-interval", "0", "--max-clients", "64"],
        env=child_environment(SIDECAR_MAX_PENDING_HANDSHAKES="16"),
        same_package=False,
        cwd=TREE,
        stdin=subprocess.PIPE,
    )
    child.start()
    try:
        yield child
    finally:
        child.stop(timeout=3.0)


def _command(child: SidecarProcess, command: str, ack: str) -> None:
    assert child.proc is not None and child.proc.stdin is not None
    before = child.log_text().count(ack)
    child.proc.stdin.write(f"{command}\n".encode())
    child.proc.stdin.flush()
    wait_for(lambda: child.log_text().count(ack) > before, timeout=10.0)


def _episode_lines(child: SidecarProcess) -> list[str]:
    return [line for line in child.log_text().splitlines() if "out of file descriptors" in line]


def _connects(port: int) -> bool:
    try:
        with RawWS.connect(port, token=TOKEN, timeout=2.0) as ws:
            frame = ws.read_message()
            return frame is not None and b"connection:status" in frame.payload
    except (HandshakeFailed, OSError):
        return False


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_out_of_descriptors_answers_503_backs_off_logs_once_and_recovers(hogged):
    port = hogged.port
    idle = _open_fds(hogged.pid)
    assert _connects(port)
    # the session's socket closes a moment after the client's: the hog must not leave it free
    wait_for(lambda: _open_fds(hogged.pid) <= idle, timeout=5.0)
    _command(hogged, "hog", "fdhog: holding")
    for head in (upgrade_head(port), request_head(port, "GET", "/health")):
        reply = exchange(port, head, timeout=2.0)
        assert reply.status == 503 and reply.elapsed < 1.0, reply
    waiting = [socket.create_connection(("127.0.0.1", port), timeout=2.0) for _ in range(BACKLOG)]
    try:
        share = cpu_share(hogged.pid, 1.0)
        assert share < 0.2, f"the accept loop used {share:.0%} of a core while out of fds"
    finally:
        for sock in waiting:
            sock.close()
    assert len(_episode_lines(hogged)) <= 2, _episode_lines(hogged)
    _command(hogged, "free", "fdhog: freed")
    wait_for(lambda: _connects(port), timeout=5.0)
    assert "available again" in hogged.log_text()


def test_a_soft_descriptor_limit_below_the_caps_is_raised_at_start():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"the hard limit ({hard}) leaves no room to raise the soft one")

    def low_soft_limit() -> None:
        """In the child before exec: a soft limit far below what the caps need."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    with running("--max-clients", "1000", preexec_fn=low_soft_limit) as child:
        limits = Path(f"/proc/{child.pid}/limits").read_text()
        line = next(text for text in limits.splitlines() if text.startswith("Max open files"))
        assert int(line.split()[3]) >= 1000, line
        assert _connects(child.port)
