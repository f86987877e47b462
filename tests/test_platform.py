"""sidecar.platform: every OS's choice by simulation, and real behaviour on the running OS.

The choices (option bytes, signal names, which parent watch, target triples) take a
``sys.platform`` value, so every OS's branch runs here. What acts (pidfd, the poll fallback,
stdin pipes, rlimits, mallopt) runs for real on Linux against real processes and descriptors.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import platform as plat

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="runs the Linux paths for real")


# -- choices, for every OS ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "family", "method"),
    [
        ("linux", "linux", "pidfd"),
        ("darwin", "macos", "kqueue"),
        ("freebsd14", "bsd", "kqueue"),
        ("openbsd7", "bsd", "kqueue"),
        ("netbsd10", "bsd", "kqueue"),
        ("win32", "windows", "windows"),
        ("cygwin", "posix", "poll"),
        ("sunos5", "posix", "poll"),
    ],
)
def test_each_platform_gets_its_family_and_parent_watch(system, family, method):
    assert plat.os_family(system) == family
    assert plat.parent_watch_method(system) == method


@pytest.mark.parametrize("system", ["linux", "freebsd14", "sunos5"])
@pytest.mark.parametrize(
    ("seconds", "sec", "usec"),
    [(10, 10, 0), (10.25, 10, 250_000), (0.3, 0, 300_000), (1e-7, 0, 1), (0, 0, 0)],
)
def test_posix_timeval_is_two_longs(system, seconds, sec, usec):
    value = plat.send_timeout_option(seconds, system)
    assert len(value) == 2 * struct.calcsize("l")
    assert struct.unpack("@ll", value) == (sec, usec)


@pytest.mark.skipif(struct.calcsize("l") != 8, reason="macOS ships only 64-bit builds")
@pytest.mark.parametrize(
    ("seconds", "sec", "usec"), [(10, 10, 0), (10.5, 10, 500_000), (2.999_999_9, 3, 0)]
)
def test_macos_timeval_is_a_long_and_an_int_padded_to_16_bytes(seconds, sec, usec):
    value = plat.send_timeout_option(seconds, "darwin")
    assert len(value) == 16
    assert struct.unpack("<qi4x", value) == (sec, usec)
    assert value[12:] == b"\0\0\0\0"


@pytest.mark.parametrize(
    ("seconds", "millis"),
    [(10, 10_000), (0.5, 500), (0.0001, 1), (0, 0), (1e9, 0xFFFFFFFF), (2.0005, 2001)],
)
def test_windows_timeout_is_a_dword_of_milliseconds(seconds, millis):
    value = plat.send_timeout_option(seconds, "win32")
    assert value == struct.pack("<I", millis)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_a_negative_or_non_finite_timeout_is_refused(bad):
    with pytest.raises(ValueError, match="finite number of seconds"):
        plat.send_timeout_option(bad)


def test_nonblocking_send_flag_is_none_on_windows():
    assert plat.nonblocking_send_flag("win32") is None
    assert plat.nonblocking_send_flag("darwin") == getattr(socket, "MSG_DONTWAIT", None)


@pytest.mark.parametrize(
    ("system", "names"),
    [
        ("linux", ("SIGTERM", "SIGINT", "SIGHUP")),
        ("darwin", ("SIGTERM", "SIGINT", "SIGHUP")),
        ("freebsd14", ("SIGTERM", "SIGINT", "SIGHUP")),
        ("win32", ("SIGINT", "SIGBREAK")),
    ],
)
def test_stop_signals_per_os(system, names):
    assert plat.stop_signal_names(system) == names
    assert [s.name for s in plat.stop_signals(system)] == [n for n in names if hasattr(signal, n)]


@pytest.mark.parametrize(
    ("system", "machine", "libc", "triple"),
    [
        ("linux", "x86_64", "gnu", "x86_64-unknown-linux-gnu"),
        ("linux", "x86_64", "musl", "x86_64-unknown-linux-musl"),
        ("linux", "aarch64", "gnu", "aarch64-unknown-linux-gnu"),
        ("linux", "armv7l", "gnu", "armv7-unknown-linux-gnueabihf"),
        ("darwin", "arm64", None, "aarch64-apple-darwin"),
        ("darwin", "x86_64", None, "x86_64-apple-darwin"),
        ("win32", "AMD64", None, "x86_64-pc-windows-msvc"),
        ("win32", "ARM64", None, "aarch64-pc-windows-msvc"),
        ("win32", "x86", None, "i686-pc-windows-msvc"),
    ],
)
def test_target_triples_are_the_names_tauri_expects(system, machine, libc, triple):
    assert plat.target_triple(system, machine, libc) == triple


def test_target_triple_refuses_what_it_cannot_name():
    with pytest.raises(ValueError, match="processor 'mips'"):
        plat.target_triple("linux", "mips")
    with pytest.raises(ValueError, match="sunos5"):
        plat.target_triple("sunos5", "x86_64")


def test_glibc_tuning_is_skipped_off_glibc_and_when_the_user_chose():
    assert plat.glibc_version("darwin") is None
    assert plat.glibc_version("win32") is None
    assert plat.tune_malloc(system="darwin") is False
    assert plat.tune_malloc(system="win32") is False
    assert plat.tune_malloc(environ={"MALLOC_ARENA_MAX": "4"}) is False


def test_the_module_imports_nothing_else_of_the_sidecar():
    code = (
        "import sys, sidecar.platform; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'werkzeug', 'simple_websocket', 'wsproto', 'sidecar')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert out.strip() == "['sidecar', 'sidecar.platform']"


# -- the running OS, for real ------------------------------------------------------------


@linux_only
def test_linux_target_triple_and_glibc_of_this_machine():
    version = plat.glibc_version()
    assert version is not None and version[0].isdigit()
    assert plat.target_triple().endswith("-unknown-linux-gnu")


@linux_only
def test_tune_malloc_applies_on_glibc():
    assert plat.tune_malloc(environ={}) is True


def test_set_send_timeout_applies_the_deadline_to_a_tcp_socket():
    with socket.socket() as sock:
        assert plat.set_send_timeout(sock, 2.5) is True
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)
        assert raw == plat.send_timeout_option(2.5)


def test_set_send_timeout_reports_a_socket_that_refuses():
    sock = socket.socket()
    sock.close()  # setsockopt on a closed socket fails
    assert plat.set_send_timeout(sock, 10) is False


def test_check_parent_refuses_ids_that_are_not_processes():
    with pytest.raises(plat.ParentError) as info:
        plat.check_parent(0)
    assert str(info.value) == "--parent-pid must be a positive process id, got 0"
    assert info.value.error == "bad-option"
    for bad in (-1, -4242, 2**40):
        with pytest.raises(plat.ParentError, match="must be a positive process id"):
            plat.check_parent(bad)
    assert plat.process_running(0) is False
    plat.check_parent(os.getpid())  # alive: no error


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process that lives until its stdin closes (or it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    if proc.stdin:
        proc.stdin.close()


def test_check_parent_refuses_a_process_that_has_ended(child):
    child.kill()
    child.wait(5)
    with pytest.raises(plat.ParentError) as info:
        plat.check_parent(child.pid)
    assert str(info.value) == f"parent process {child.pid} is not running"
    assert info.value.error == "parent-gone"


@linux_only
def test_a_zombie_parent_counts_as_ended(child):
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
    assert plat.process_running(child.pid) is False
    with pytest.raises(plat.ParentError, match="is not running"):
        plat.check_parent(child.pid)


def _watch(child: subprocess.Popen[bytes], **kwargs) -> tuple[plat.ParentWatch, threading.Event]:
    fired = threading.Event()
    watch = plat.watch_parent(child.pid, fired.set, **kwargs)
    assert watch.thread is not None and watch.thread.daemon
    assert not fired.is_set()
    return watch, fired


def _assert_fires_within(fired: threading.Event, child: subprocess.Popen[bytes], limit: float):
    child.kill()
    started = time.monotonic()
    assert fired.wait(limit + 1), "the watch never fired"
    assert time.monotonic() - started < limit


@linux_only
def test_pidfd_watch_fires_when_the_process_dies(child):
    watch, fired = _watch(child)
    assert watch.method == "pidfd"
    _assert_fires_within(fired, child, 0.5)


@pytest.mark.posix_only("the POSIX fallback")
def test_poll_watch_fires_within_two_seconds(child):
    watch, fired = _watch(child, method="poll")
    assert watch.method == "poll"
    _assert_fires_within(fired, child, 2.0)


@linux_only
def test_a_missing_kqueue_falls_back_to_polling(child):
    watch, fired = _watch(child, method="kqueue", poll_interval=0.05)
    assert watch.method == "poll"
    _assert_fires_within(fired, child, 2.0)


@linux_only
def test_the_windows_watch_is_refused_off_windows(child):
    with pytest.raises(OSError, match="only on Windows"):
        plat.watch_parent(child.pid, lambda: None, method="windows")


def test_a_cancelled_watch_never_fires(child):
    watch, fired = _watch(child, method="poll", poll_interval=0.05)
    watch.cancel()
    assert watch.thread is not None
    watch.thread.join(2)
    assert not watch.thread.is_alive()
    child.kill()
    child.wait(5)
    assert not fired.is_set()


def test_watching_a_process_that_is_already_gone_calls_back_at_once(child):
    child.kill()
    child.wait(5)
    fired = threading.Event()
    watch = plat.watch_parent(child.pid, fired.set)
    assert fired.is_set()
    assert watch.thread is None
    with pytest.raises(plat.ParentError, match="got 0"):
        plat.watch_parent(0, fired.set)


@pytest.mark.posix_only("POSIX signals")
def test_stop_handlers_cover_term_int_and_hup_but_respect_nohup():
    saved = {s: signal.getsignal(s) for s in plat.stop_signals()}
    received: list[int] = []
    try:
        installed = plat.install_stop_handlers(lambda signum, _frame: received.append(signum))
        assert installed == (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        signal.raise_signal(signal.SIGHUP)
        assert received == [signal.SIGHUP]
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
        installed = plat.install_stop_handlers(lambda signum, _frame: received.append(signum))
        assert installed == (signal.SIGTERM, signal.SIGINT)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_stdin_is_a_pipe_only_for_pipes(tmp_path):
    read_end, write_end = os.pipe()
    with open(tmp_path / "file", "wb") as regular, open(os.devnull, "rb") as null:
        try:
            assert plat.stdin_is_pipe(read_end) is True
            assert plat.stdin_is_pipe(regular.fileno()) is False
            assert plat.stdin_is_pipe(null.fileno()) is False
        finally:
            for fd in (read_end, write_end):
                os.close(fd)
    assert plat.stdin_is_pipe(read_end) is False  # closed


@pytest.mark.posix_only("a socket's fileno is a descriptor only on POSIX (a SOCKET on Windows)")
def test_a_socket_as_stdin_counts_as_a_pipe():
    left, right = socket.socketpair()
    with left, right:
        assert plat.stdin_is_pipe(left.fileno()) is True


def test_watch_stdin_fires_at_end_of_file_and_ignores_data():
    read_end, write_end = os.pipe()
    eof = threading.Event()
    thread = plat.watch_stdin(eof.set, read_end)
    assert thread is not None and thread.daemon
    os.write(write_end, b"anything the parent writes\n")
    assert not eof.wait(0.1)
    os.close(write_end)
    assert eof.wait(2)
    thread.join(2)
    os.close(read_end)


def test_watch_stdin_ignores_dev_null():
    with open(os.devnull, "rb") as null:
        assert plat.watch_stdin(lambda: None, null.fileno()) is None


def test_fds_needed_leaves_headroom():
    assert plat.fds_needed(1024) == 1024 + plat.FD_HEADROOM


@pytest.mark.posix_only("RLIMIT_NOFILE")
def test_raise_fd_limit_raises_the_soft_limit_toward_the_hard_one():
    """In a child whose soft limit starts at 256 (as on macOS): raise it, never lower it."""
    script = textwrap.dedent(
        """
        import resource, sys
        from sidecar import platform as plat
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        want = 2048 if hard == resource.RLIM_INFINITY else min(2048, hard)
        print(plat.fd_limit(), plat.raise_fd_limit(100), plat.raise_fd_limit(2048), want)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.split()
    assert out[:2] == ["256", "256"]
    assert out[2] == out[3]


def test_exclusive_bind_is_a_windows_only_option():
    with socket.socket() as sock:
        assert plat.exclusive_bind(sock) is (sys.platform == "win32")
    assert plat.REUSE_ADDRESS is (sys.platform != "win32")
