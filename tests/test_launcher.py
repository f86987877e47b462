"""The launcher (:mod:`sidecar.launcher`) against small stand-in children (no server)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sidecar.launcher import GracefulStop, LaunchError, LogScan, SidecarProcess, launch

#: A child that serves until SIGTERM or the end of its stdin pipe, then exits 0.
SERVES = """
    import json, os, signal, stat, sys, threading
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if stat.S_ISFIFO(os.fstat(0).st_mode):  # the stdin stop (Windows' graceful one)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("starting", file=sys.stderr, flush=True)
    print(json.dumps({"event": "ready", "port": 1234, "url": "http://127.0.0.1:1234",
                      "ws": "ws://127.0.0.1:1234/ws", "token": "t"}), flush=True)
    stop.wait(30)
"""


def _argv(*parts: str) -> list[str]:
    return [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)]


#: The exit status of a killed child: -SIGKILL on POSIX, 1 from TerminateProcess on Windows.
KILLED = 1 if sys.platform == "win32" else -9


def test_the_ready_line_is_parsed_and_the_graceful_stop_ends_the_child() -> None:
    with SidecarProcess(_argv(SERVES)) as child:
        assert (child.port, child.ws, child.token) == (1234, "ws://127.0.0.1:1234/ws", "t")
        assert child.ready["event"] == "ready" and child.returncode is None
    assert child.returncode == 0 and not child.killed
    assert child.log_text() == "starting\n" and child.tracebacks() == []


def test_an_error_line_raises_with_its_code_and_message() -> None:
    code = """
        import json, sys
        print("sidecar: port 1 is in use", file=sys.stderr)
        print(json.dumps({"event": "error", "error": "port-in-use", "message": "in use"}))
        sys.exit(1)
    """
    with pytest.raises(LaunchError) as info:
        launch(_argv(code))
    assert (info.value.error, info.value.message) == ("port-in-use", "in use")
    assert info.value.returncode == 1
    assert "port 1 is in use" in info.value.stderr


def test_exiting_before_any_line_raises_with_the_stderr_tail() -> None:
    with pytest.raises(LaunchError) as info:
        launch(_argv("import sys; sys.exit('sidecar: --queue-size must be at least 1')"))
    assert info.value.error == "exited" and info.value.returncode == 1
    assert "--queue-size must be at least 1" in info.value.stderr


def test_no_line_in_time_kills_the_child() -> None:
    child = SidecarProcess(_argv("import threading; threading.Event().wait(60)"))
    with pytest.raises(LaunchError) as info:
        child.start(timeout=0.5)
    assert info.value.error == "timeout"
    assert child.returncode == KILLED


@pytest.mark.parametrize("line", ["not json", '{"event": "started"}', "[1]"])
def test_a_first_line_off_the_contract_raises(line: str) -> None:
    with pytest.raises(LaunchError) as info:
        launch(_argv(f"print({line!r}); import threading; threading.Event().wait(60)"))
    assert info.value.error == "bad-ready-line"


@pytest.mark.parametrize(
    "line",
    ['"[" * 100_000', "'{\"a\":' * 50_000", '"x" * 100_000', '"[" * 100 + "]" * 100'],
    ids=["nested-arrays", "nested-objects", "over-64-KiB", "array"],
)
def test_a_hostile_first_line_is_a_launch_error_and_the_child_is_stopped(line: str) -> None:
    """Issue 19 item 10: ``[`` x 100,000 raised RecursionError from start(), child running."""
    child = SidecarProcess(_argv(f"print({line})", "import threading; threading.Event().wait(60)"))
    try:
        with pytest.raises(LaunchError) as info:
            child.start(timeout=10)
        assert info.value.error == "bad-ready-line"
        assert len(info.value.message) < 400  # the line is shown cut short
        assert child.returncode is not None  # killed and reaped, not left running
    finally:
        child.stop(timeout=0)


@pytest.mark.parametrize("graceful", ["signal", "stdin"])
def test_stop_escalates_to_a_kill_and_runs_on_hang_first(graceful: GracefulStop) -> None:
    if graceful == "signal" and sys.platform == "win32":
        pytest.skip("POSIX only: SIGTERM")
    code = SERVES.replace("lambda *_: stop.set()", "signal.SIG_IGN").replace("stop.set()", "0")
    hung: list[int | None] = []
    child = launch(_argv(code), graceful=graceful)
    assert child.stop(timeout=0.3, on_hang=lambda: hung.append(child.returncode)) == KILLED
    assert hung == [None] and child.killed
    assert child.stop() == KILLED  # idempotent


def test_the_stdin_stop_closes_the_childs_stdin() -> None:
    with SidecarProcess(_argv(SERVES), graceful="stdin") as child:
        assert child.proc is not None and child.proc.stdin is not None  # a pipe by default
    assert (child.returncode, child.killed) == (0, False)
    assert child.proc.stdin.closed


def test_a_stdin_stop_without_a_stdin_pipe_kills_at_once() -> None:
    child = launch(_argv(SERVES), graceful="stdin", stdin=subprocess.DEVNULL)
    started = time.monotonic()
    assert child.stop(timeout=30) == KILLED
    assert child.killed and time.monotonic() - started < 10


def test_tracebacks_and_error_lines_are_found_in_stderr() -> None:
    code = """
        import logging, sys
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        try:
            {}["missing"]
        except KeyError:
            logging.getLogger("sidecar.hub").exception("delivery failed")
        print("WARNING sidecar: only a warning", file=sys.stderr)
    """
    with pytest.raises(LaunchError) as info:
        launch(_argv(code))
    assert info.value.error == "exited"
    child = SidecarProcess(_argv(code, SERVES))
    with child:
        pass
    (excerpt,) = child.tracebacks()
    lines = excerpt.splitlines()
    assert lines[0] == "ERROR sidecar.hub: delivery failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'missing'"
    assert child.error_lines() == [lines[0], lines[1]]
    assert "only a warning" in child.log_text()


def test_stderr_goes_to_the_log_file_and_the_tail_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "child.log"
    code = "import sys\nfor i in range(2000): print('line', i, file=sys.stderr)"
    with SidecarProcess(_argv(code, SERVES), log_path=path, tail_bytes=1000) as child:
        pass
    assert path.read_text().count("\n") == 2001
    tail = child.log_text()
    assert len(tail) <= 1000 and tail.endswith("starting\n")


def test_log_scan_keeps_a_traceback_cut_off_by_the_end() -> None:
    scan = LogScan()
    for line in ("x", "Traceback (most recent call last):", '  File "a.py", line 1'):
        scan.feed(line)
    scan.close()
    assert scan.tracebacks() == ['x\nTraceback (most recent call last):\n  File "a.py", line 1']
    assert scan.traceback_count == 1 and scan.error_count == 1
