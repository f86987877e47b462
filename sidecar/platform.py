"""Every operating-system-specific path of the sidecar: Linux, macOS (and the BSDs), Windows.

Each function here either works on each OS or refuses with a message that says why. Pure
standard library (``ctypes`` for the Windows and glibc calls); nothing here imports Flask or
the rest of the sidecar, so the CLI can call it before anything else is loaded.

Functions that take ``system`` accept a :data:`sys.platform` value (``"linux"``, ``"darwin"``,
``"win32"``, ``"freebsd14"`` …) and default to the running OS. They only *choose* (option
bytes, signal names, which parent watch): that lets the tests run every OS's choice on Linux.
Functions that act (set an option, open a process handle) always act for the running OS.

Threads
    * the caller (the CLI's main thread, at start-up) runs everything here except the watch
      loops; errors of a watch (no such process, no permission) surface in the caller;
    * :func:`watch_parent` starts one daemon thread, ``sidecar-parent-watch``, that owns the
      pidfd, kqueue or process handle it waits on and calls ``on_exit`` at most once;
    * :func:`watch_stdin` starts one daemon thread, ``sidecar-stdin-watch``, the only reader
      of stdin, that calls ``on_eof`` at most once.

    Callbacks run on those threads: they should only set an event or a flag.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("sidecar.platform")

#: What the sidecar needs to know about an OS: ``linux``, ``macos``, ``bsd`` (FreeBSD,
#: OpenBSD, NetBSD, DragonFly), ``windows``, or ``posix`` for any other POSIX system.
Family = Literal["linux", "macos", "bsd", "windows", "posix"]
#: How :func:`watch_parent` waits for the parent's end.
ParentWatchMethod = Literal["pidfd", "kqueue", "windows", "poll"]

_BSD_PREFIXES = ("freebsd", "openbsd", "netbsd", "dragonfly")


def os_family(system: str | None = None) -> Family:
    """The family of ``system`` (a ``sys.platform`` value; default: the running OS)."""
    name = sys.platform if system is None else system
    if name.startswith("linux"):
        return "linux"
    if name == "darwin":
        return "macos"
    if name.startswith(_BSD_PREFIXES):
        return "bsd"
    if name == "win32":
        return "windows"
    return "posix"  # cygwin, AIX, Solaris …: POSIX calls, no special watcher


# -- the write deadline (SO_SNDTIMEO) ----------------------------------------------------------


class _TimevalLong(ctypes.Structure):
    """``struct timeval`` of Linux and the BSDs: ``time_t`` and ``suseconds_t`` are ``long``."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _TimevalDarwin(ctypes.Structure):
    """macOS's ``struct timeval``: ``long tv_sec; int tv_usec`` (``__darwin_suseconds_t`` is
    ``int32``), padded to 16 bytes by the ``long``'s alignment on 64-bit macOS."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_int32)]


#: Largest Windows timeout: a DWORD of milliseconds (about 49.7 days).
_MAX_DWORD = 0xFFFFFFFF


def send_timeout_option(seconds: float, system: str | None = None) -> bytes:
    """The ``SO_SNDTIMEO`` option value for ``seconds``, in ``system``'s format.

    * Linux, the BSDs, other POSIX: ``struct timeval {long tv_sec; long tv_usec}``;
    * macOS: ``struct timeval {long tv_sec; int tv_usec}`` (16 bytes with padding);
    * Windows: a DWORD of **milliseconds** (a ``timeval`` there would read as ~10 ms for 10 s).

    A positive timeout is rounded up to the unit (1 µs, 1 ms) so that it never becomes 0,
    which means "no timeout" on every OS; ``0`` gives exactly that. Raises ``ValueError`` for a
    negative or non-finite value. The ``long`` sizes are the running interpreter's (8 bytes on
    64-bit Linux and macOS, the only builds the sidecar ships).
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a send timeout must be a finite number of seconds >= 0, got {seconds}")
    family = os_family(system)
    if family == "windows":
        millis = min(math.ceil(round(seconds * 1000, 6)), _MAX_DWORD)
        return struct.pack("<I", millis)
    whole = math.floor(seconds)
    # rounded to nanoseconds first, so that 0.3 s is 300000 µs and not 300001
    micros = math.ceil(round((seconds - whole) * 1_000_000, 3))
    if micros >= 1_000_000:
        whole, micros = whole + 1, 0
    timeval = _TimevalDarwin if family == "macos" else _TimevalLong
    return bytes(timeval(whole, micros))


def set_send_timeout(sock: socket.socket, seconds: float) -> bool:
    """Give ``sock``'s sends a deadline of ``seconds`` (reads are not affected).

    Returns ``False`` where the OS refuses the option (some socket types, e.g. a
    ``socketpair`` on some systems). On Windows a send that timed out leaves the socket in an
    undefined state: drop the connection, as the sidecar does.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, send_timeout_option(seconds))
    except (OSError, AttributeError):
        return False
    return True


def nonblocking_send_flag(system: str | None = None) -> int | None:
    """The ``send()`` flag for one non-blocking write (``MSG_DONTWAIT``), or ``None``.

    Windows has no per-call flag: a caller gets ``None`` there and must queue the write for a
    thread that may block instead (the socket stays blocking for simple-websocket's reader).
    """
    if os_family(system) == "windows":
        return None
    return getattr(socket, "MSG_DONTWAIT", None)


# -- the parent process --------------------------------------------------------------------


class ParentError(ValueError):
    """``--parent-pid`` cannot be watched; ``str(exc)`` is one line for the parent to read.

    ``error`` is a short machine name for the JSON error line: ``bad-option`` (not a process
    id), ``parent-gone`` (no such process), ``parent-unwatchable`` (the OS refused).
    """

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


#: Largest process id: POSIX ``pid_t`` is a signed 32-bit int; Windows ids are DWORDs.
_MAX_POSIX_PID = 2**31 - 1
_MAX_WINDOWS_PID = 2**32 - 1

#: Seconds between two checks of the POSIX fallback watch.
POLL_INTERVAL = 0.5


def parent_watch_method(system: str | None = None) -> ParentWatchMethod:
    """How :func:`watch_parent` waits on ``system``: the OS's own wait, or a poll.

    Linux: ``pidfd`` (``os.pidfd_open``, Linux 5.3+); macOS and the BSDs: ``kqueue``
    (``EVFILT_PROC``/``NOTE_EXIT``); Windows: ``windows`` (``OpenProcess(SYNCHRONIZE)`` and
    ``WaitForSingleObject``); any other POSIX system: ``poll`` (``os.kill(pid, 0)`` every
    :data:`POLL_INTERVAL` s). On Linux and the BSDs the poll is also the fallback when the
    OS's wait is unavailable. Windows never gets ``os.kill(pid, 0)``: signal 0 is
    ``CTRL_C_EVENT`` there (a forced ``poll`` asks a process handle instead).
    """
    return _PARENT_WATCH.get(os_family(system), "poll")


_PARENT_WATCH: dict[Family, ParentWatchMethod] = {
    "linux": "pidfd",
    "macos": "kqueue",
    "bsd": "kqueue",
    "windows": "windows",
}


def check_parent(pid: int) -> None:
    """Refuse a ``--parent-pid`` that cannot be a parent: raise :class:`ParentError`.

    Refused: a pid that is not positive or too large ("--parent-pid must be a positive process
    id, got 0"), and a process that has already ended ("parent process 4242 is not running").
    A zombie (ended, not yet reaped) counts as ended on Linux and Windows.
    """
    _check_pid(pid)
    if not process_running(pid):
        raise ParentError(f"parent process {pid} is not running", "parent-gone")


def _valid_pid(pid: int) -> bool:
    limit = _MAX_WINDOWS_PID if os_family() == "windows" else _MAX_POSIX_PID
    return not isinstance(pid, bool) and 0 < pid <= limit


def _check_pid(pid: int) -> None:
    if not _valid_pid(pid):
        raise ParentError(f"--parent-pid must be a positive process id, got {pid}", "bad-option")


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (never sends a signal on Windows).

    ``False`` for a pid that cannot name a process (0 and negative ones name process groups).
    """
    if not _valid_pid(pid):
        return False
    if sys.platform == "win32":
        return _windows_process_running(pid)
    if sys.platform == "linux" and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:
            pass  # an old kernel or a sandbox without pidfd: ask with signal 0
        else:
            try:  # a pidfd is readable once the process has ended, zombie or not
                return not _readable_now(fd)
            finally:
                os.close(fd)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _readable_now(fd: int) -> bool:
    if sys.platform == "win32":
        raise OSError(errno.ENOSYS, "no poll() on Windows")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass
class ParentWatch:
    """A running parent watch (see :func:`watch_parent`)."""

    pid: int
    #: The method in use, after any fallback.
    method: ParentWatchMethod
    #: The watch thread; ``None`` if the parent was gone at once (``on_exit`` already ran).
    thread: threading.Thread | None
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Never call ``on_exit`` from now on (a poll also ends its thread)."""
        self._cancelled.set()


def watch_parent(
    pid: int,
    on_exit: Callable[[], None],
    *,
    method: ParentWatchMethod | None = None,
    poll_interval: float = POLL_INTERVAL,
) -> ParentWatch:
    """Call ``on_exit`` (once, on a daemon thread) when process ``pid`` ends.

    ``method`` defaults to :func:`parent_watch_method` for the running OS; on Linux and the
    BSDs an unavailable pidfd or kqueue falls back to ``poll``. The process handle is opened
    here, in the caller's thread: if the process is already gone, ``on_exit`` runs here and
    no thread starts. Raises :class:`ParentError` for a bad pid or a watch the OS refuses
    (e.g. no permission to open the process on Windows).
    While watching the process that is this one's parent, a POSIX poll also ends the wait
    when this process is re-parented (the parent became a zombie that nobody reaps).
    """
    _check_pid(pid)
    chosen = method or parent_watch_method()
    cancelled = threading.Event()
    try:
        wait, chosen = _open_wait(pid, chosen, cancelled, poll_interval)
    except ProcessLookupError:
        log.info("parent process %d is gone, shutting down", pid)
        on_exit()
        return ParentWatch(pid, chosen, None, cancelled)

    def run() -> None:
        if wait() and not cancelled.is_set():
            log.info("parent process %d ended, shutting down", pid)
            on_exit()

    thread = threading.Thread(target=run, name="sidecar-parent-watch", daemon=True)
    thread.start()
    return ParentWatch(pid, chosen, thread, cancelled)


#: A blocking wait for a process's end; returns False if it gave up (the watch failed).
_Wait = Callable[[], bool]


def _open_wait(
    pid: int, method: ParentWatchMethod, cancelled: threading.Event, interval: float
) -> tuple[_Wait, ParentWatchMethod]:
    """Open the OS resource for ``method`` (raising ``ProcessLookupError`` if ``pid`` is gone)."""
    if method == "windows":
        return _open_windows_wait(pid), method
    try:
        if method == "pidfd":
            return _open_pidfd_wait(pid), method
        if method == "kqueue":
            return _open_kqueue_wait(pid), method
    except ProcessLookupError:
        raise
    except (AttributeError, OSError) as exc:
        log.info("parent watch %s unavailable (%s); polling every %.1f s", method, exc, interval)
    if not process_running(pid):
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}")
    return _poll_wait(pid, cancelled, interval), "poll"


def _open_pidfd_wait(pid: int) -> _Wait:
    if sys.platform != "linux":
        raise OSError(errno.ENOSYS, "pidfd exists only on Linux")
    fd = os.pidfd_open(pid)  # ProcessLookupError if gone; OSError on kernels before 5.3

    def wait() -> bool:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll():  # readable once the process has ended
                pass
            return True
        finally:
            os.close(fd)

    return wait


def _open_kqueue_wait(pid: int) -> _Wait:
    if sys.platform == "linux" or sys.platform == "win32":
        raise OSError(errno.ENOSYS, "kqueue exists only on macOS and the BSDs")
    kq = select.kqueue()
    event = select.kevent(
        pid,
        filter=select.KQ_FILTER_PROC,
        flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT,
        fflags=select.KQ_NOTE_EXIT,
    )
    try:  # no room for events: a registration error is raised (ESRCH: ProcessLookupError)
        kq.control([event], 0, 0)
    except BaseException:
        kq.close()
        raise

    def wait() -> bool:
        try:
            while not kq.control(None, 1, None):
                pass
            return True
        finally:
            kq.close()

    return wait


def _poll_wait(pid: int, cancelled: threading.Event, interval: float) -> _Wait:
    own_parent = pid == os.getppid()

    def wait() -> bool:
        while not cancelled.wait(interval):
            if not process_running(pid) or (own_parent and os.getppid() != pid):
                return True
        return False

    return wait


# -- Windows process handles (ctypes; only ever called on Windows) --------------------------

_SYNCHRONIZE = 0x00100000
_INFINITE = 0xFFFFFFFF
_WAIT_OBJECT_0 = 0
_WAIT_TIMEOUT = 0x102
_ERROR_INVALID_PARAMETER = 87  # what OpenProcess says for a pid that does not exist
_FILE_TYPE_PIPE = 0x0003


def _kernel32() -> ctypes.CDLL:
    if sys.platform != "win32":
        raise OSError(errno.ENOSYS, "kernel32 exists only on Windows")
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.OpenProcess.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32]
    kernel32.WaitForSingleObject.restype = ctypes.c_uint32
    kernel32.WaitForSingleObject.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    kernel32.GetFileType.restype = ctypes.c_uint32
    kernel32.GetFileType.argtypes = [ctypes.c_void_p]
    return kernel32


def _open_process(kernel32: ctypes.CDLL, pid: int) -> int:
    """A ``SYNCHRONIZE`` handle on ``pid``; ``ProcessLookupError`` if there is no such process."""
    if sys.platform != "win32":
        raise OSError(errno.ENOSYS, "OpenProcess exists only on Windows")
    handle = kernel32.OpenProcess(_SYNCHRONIZE, False, pid)
    if handle:
        return int(handle)
    code = ctypes.get_last_error()
    if code == _ERROR_INVALID_PARAMETER:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}")
    raise ParentError(
        f"cannot watch parent process {pid}: OpenProcess failed with Windows error {code}",
        "parent-unwatchable",
    )


def _windows_process_running(pid: int) -> bool:
    kernel32 = _kernel32()
    try:
        handle = _open_process(kernel32, pid)
    except ProcessLookupError:
        return False
    except ParentError:
        return True  # it exists (access denied), though it cannot be watched
    try:
        return bool(kernel32.WaitForSingleObject(handle, 0) == _WAIT_TIMEOUT)
    finally:
        kernel32.CloseHandle(handle)


def _open_windows_wait(pid: int) -> _Wait:
    kernel32 = _kernel32()
    handle = _open_process(kernel32, pid)
    if kernel32.WaitForSingleObject(handle, 0) == _WAIT_OBJECT_0:
        # it has ended, but a handle someone holds (its parent's) keeps the process object
        kernel32.CloseHandle(handle)
        raise ProcessLookupError(errno.ESRCH, f"process {pid} has ended")

    def wait() -> bool:
        try:  # ctypes releases the GIL for the call
            result = kernel32.WaitForSingleObject(handle, _INFINITE)
        finally:
            kernel32.CloseHandle(handle)
        if result != _WAIT_OBJECT_0:
            log.error("parent watch failed: WaitForSingleObject returned %#x", result)
            return False
        return True

    return wait


# -- stop signals ------------------------------------------------------------------------


def stop_signal_names(system: str | None = None) -> tuple[str, ...]:
    """The names of the signals that stop the sidecar gracefully on ``system``.

    POSIX: ``SIGTERM``, ``SIGINT`` and ``SIGHUP`` (the terminal or the desktop session that
    started the sidecar went away: treated like ``SIGTERM``). Windows: ``SIGINT`` (Ctrl+C) and
    ``SIGBREAK`` (``CTRL_BREAK_EVENT``, what a parent that started the sidecar with
    ``CREATE_NEW_PROCESS_GROUP`` can send). Windows parents never send ``SIGTERM``: there
    ``TerminateProcess`` kills at once, so a parent closes the sidecar's stdin instead
    (``--exit-on-stdin-eof``).
    """
    if os_family(system) == "windows":
        return ("SIGINT", "SIGBREAK")
    return ("SIGTERM", "SIGINT", "SIGHUP")


def stop_signals(system: str | None = None) -> tuple[signal.Signals, ...]:
    """The :func:`stop_signal_names` that exist on the running OS, as ``signal.Signals``."""
    members = signal.Signals.__members__
    return tuple(members[name] for name in stop_signal_names(system) if name in members)


def install_stop_handlers(
    handler: Callable[[int, object], None],
) -> tuple[signal.Signals, ...]:
    """Install ``handler`` for every :func:`stop_signals`; return the ones installed.

    Call from the main thread. ``SIGHUP`` is skipped when it was ignored at start (``nohup``):
    whoever started the sidecar asked for it to outlive the terminal. The handler runs in the
    main thread between two bytecodes: it must not take a lock (record the signal only).
    """
    installed = []
    for signum in stop_signals():
        if signum.name == "SIGHUP" and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        signal.signal(signum, handler)
        installed.append(signum)
    return tuple(installed)


# -- stdin -----------------------------------------------------------------------------


def stdin_is_pipe(fd: int = 0) -> bool:
    """Whether ``fd`` (stdin) is a pipe, whose closing a parent can use as a stop signal.

    POSIX: a FIFO or a socket (``fstat``); Windows: ``GetFileType`` is ``FILE_TYPE_PIPE``
    (Node's and Tauri's pipes are named pipes). A terminal, a file, ``/dev/null`` (``NUL``) or
    no stdin at all is not.
    """
    if sys.platform == "win32":
        import msvcrt

        try:
            handle = msvcrt.get_osfhandle(fd)
        except OSError:
            return False
        return bool(_kernel32().GetFileType(handle) == _FILE_TYPE_PIPE)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def watch_stdin(on_eof: Callable[[], None], fd: int = 0) -> threading.Thread | None:
    """Call ``on_eof`` (once, on a daemon thread) when the stdin pipe reaches end of file.

    What the parent writes is read and discarded. Returns ``None`` (and watches nothing)
    when stdin is not a pipe: ``</dev/null`` would otherwise stop the sidecar at once. A read
    error (Windows reports a closed pipe as ``ERROR_BROKEN_PIPE``) counts as end of file.
    """
    if not stdin_is_pipe(fd):
        log.info("--exit-on-stdin-eof: stdin is not a pipe, not watching it")
        return None

    def read_to_eof() -> None:
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
        log.info("stdin closed, shutting down")
        on_eof()

    thread = threading.Thread(target=read_to_eof, name="sidecar-stdin-watch", daemon=True)
    thread.start()
    return thread


# -- the C library -----------------------------------------------------------------------


def glibc_version(system: str | None = None) -> str | None:
    """The running glibc's version (``"2.36"``), or ``None`` elsewhere (musl, macOS, Windows).

    For a ``system`` other than the running one the answer is ``None`` unless it is Linux and
    the running OS is too.
    """
    if os_family(system) != "linux" or sys.platform != "linux":
        return None
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None  # musl (Alpine) has no such name
    if not text or not text.startswith("glibc "):
        return None
    return text.split(" ", 1)[1]


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def tune_malloc(
    arenas: int = 2, *, system: str | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; call before threads start. Returns if applied.

    glibc gives threads up to 8 arenas per core; with a thread per connection the sidecar's
    frames and buffers end up spread over many arenas whose fragmentation is never returned:
    a 40-client soak levelled off at ~130 MiB RSS, ~60 MiB with two arenas, at the same
    throughput. Nothing is done when ``MALLOC_ARENA_MAX`` is set (the user's choice wins) or
    when the C library is not glibc (musl, macOS, Windows have no such knob).
    """
    env = os.environ if environ is None else environ
    if "MALLOC_ARENA_MAX" in env or glibc_version(system) is None:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


# -- file descriptors --------------------------------------------------------------------

#: Descriptors the sidecar needs besides one per WebSocket client: stdio, the listening
#: socket, the parent and stdin watches, a log file, HTTP requests in flight.
FD_HEADROOM = 64


def fds_needed(max_clients: int) -> int:
    """Descriptors a sidecar with ``max_clients`` WebSocket clients may hold at once."""
    return max_clients + FD_HEADROOM


def fd_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE``, or ``None`` when there is no limit to check.

    ``None`` on Windows, where sockets are kernel handles limited only by memory (the C
    runtime's 8192-descriptor table holds files, not sockets), and where the limit is
    ``RLIM_INFINITY``.
    """
    if sys.platform == "win32":
        return None
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


#: macOS refuses a soft limit above ``OPEN_MAX`` when the hard limit is unlimited.
_DARWIN_OPEN_MAX = 10240


def raise_fd_limit(needed: int) -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` toward ``needed`` (never above the hard limit).

    Returns the soft limit in force afterwards (it may still be below ``needed``: compare and
    refuse to start), or ``None`` where there is no limit (see :func:`fd_limit`). Never
    lowers the limit.
    """
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return fd_limit()
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    for attempt in (target, min(target, _DARWIN_OPEN_MAX)):
        if attempt <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (attempt, hard))
            break
        except (ValueError, OSError):
            continue
    return fd_limit()


# -- binding -----------------------------------------------------------------------------

#: Whether ``shutdown(SHUT_RDWR)`` wakes a thread blocked in ``recv``, ``select`` or ``send`` on
#: the same socket. POSIX: yes (end of file, or an error). Windows: no: Winsock completes none
#: of them (seen under Wine; Windows documents only ``closesocket`` as cancelling a pending
#: blocking call, with ``WSAEINTR``). So there a reader blocked on a silent peer ends when the
#: server closes the socket after the request, and a writer blocked on a stalled peer at its
#: write deadline (``SO_SNDTIMEO``), not at the shutdown.
SHUTDOWN_WAKES_READERS = sys.platform != "win32"

#: Whether a server may set ``SO_REUSEADDR`` (``allow_reuse_address``). On POSIX it only
#: allows binding over connections in TIME_WAIT; on Windows it lets a second process bind a
#: port that is in use, so it must be off there (see :func:`exclusive_bind`).
REUSE_ADDRESS = sys.platform != "win32"

#: ``SO_EXCLUSIVEADDRUSE`` (``~SO_REUSEADDR`` in winsock2.h) where Python lacks the name.
_SO_EXCLUSIVEADDRUSE = getattr(socket, "SO_EXCLUSIVEADDRUSE", ~4)


def exclusive_bind(sock: socket.socket) -> bool:
    """Before ``bind``: make ``sock``'s port impossible for another process to bind.

    On Windows sets ``SO_EXCLUSIVEADDRUSE``; without it another process can bind the same
    address with ``SO_REUSEADDR`` and take the traffic (port hijacking), and the two options
    cannot be combined, so the server must not set ``SO_REUSEADDR`` (:data:`REUSE_ADDRESS`).
    A no-op on POSIX, where a live listener's port is never shared without ``SO_REUSEPORT``.
    Returns whether the option was set.
    """
    if sys.platform != "win32":
        return False
    sock.setsockopt(socket.SOL_SOCKET, _SO_EXCLUSIVEADDRUSE, 1)
    return True


# -- names for packaging ------------------------------------------------------------------

_ARCHES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "i386": "i686",
    "i686": "i686",
    "x86": "i686",
    "armv7l": "armv7",
}


def target_triple(
    system: str | None = None, machine: str | None = None, libc: str | None = None
) -> str:
    """The Rust target triple of a build, as Tauri's ``externalBin`` names sidecars.

    ``x86_64-unknown-linux-gnu`` (``-musl`` with musl), ``aarch64-apple-darwin``,
    ``x86_64-pc-windows-msvc`` … ``machine`` is a :func:`platform.machine` value and
    ``libc`` ``"gnu"`` or ``"musl"``; both default to the running system's. Raises
    ``ValueError`` for an OS or a processor that has no triple here.
    """
    import platform as _platform

    family = os_family(system)
    raw = (machine or _platform.machine()).lower()
    arch = _ARCHES.get(raw)
    if arch is None:
        raise ValueError(f"no target triple for processor {raw!r}")
    if family == "linux":
        flavour = libc or ("gnu" if glibc_version() else "musl")
        suffix = "eabihf" if arch == "armv7" else ""
        return f"{arch}-unknown-linux-{flavour}{suffix}"
    if family == "macos":
        return f"{arch}-apple-darwin"
    if family == "windows":
        return f"{arch}-pc-windows-msvc"
    raise ValueError(f"no target triple for {system or sys.platform!r}")
