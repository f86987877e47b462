"""Operating-system specific paths (placeholder: Linux only; the desktop branch replaces it)."""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable


class ParentError(Exception):
    """``--parent-pid`` names no usable process."""


def set_send_timeout(sock: socket.socket, seconds: float) -> bool:
    """Give blocking sends on ``sock`` a deadline (``SO_SNDTIMEO``); whether it applied."""
    whole = int(seconds)
    try:
        sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_SNDTIMEO,
            struct.pack("ll", whole, int((seconds - whole) * 1_000_000)),
        )
    except OSError:
        return False
    return True


def exclusive_bind(sock: socket.socket) -> None:
    """Keep other processes off the port (Windows only needs it)."""


def raise_fd_limit(needed: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE toward ``needed``; the resulting limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop the sidecar gracefully."""
    return (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def check_parent(pid: int) -> None:
    """Raise :class:`ParentError` unless ``pid`` is a running process."""
    if pid <= 0:
        raise ParentError(f"--parent-pid must be a positive process id, got {pid}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ParentError(f"parent process {pid} is not running") from None
    except PermissionError:
        pass


def watch_parent(pid: int, on_exit: Callable[[], None]) -> None:
    """Call ``on_exit`` (from a daemon thread) when process ``pid`` ends."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        on_exit()
        return

    def wait() -> None:
        select.select([fd], [], [])
        os.close(fd)
        on_exit()

    threading.Thread(target=wait, name="sidecar-parent-watch", daemon=True).start()


def stdin_is_pipe() -> bool:
    """Whether stdin is a pipe or a socket (``</dev/null`` is not)."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def watch_stdin(on_eof: Callable[[], None]) -> None:
    """Call ``on_eof`` (from a daemon thread) when stdin reaches EOF."""

    def read_to_eof() -> None:
        while os.read(0, 65536):
            pass
        on_eof()

    threading.Thread(target=read_to_eof, name="sidecar-stdin-watch", daemon=True).start()


def tune_malloc(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas; whether it applied."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, arenas))
    except (OSError, AttributeError):
        return False
