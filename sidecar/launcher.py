"""Start a sidecar as a child process, read its ready line, stop it, scan its log.

The one launcher of the tests and the scripts (bench, soak, autobahn), and a reference for a
parent process written in Python. It relies only on the process contract:

* the child prints one JSON line on stdout: ``{"event": "ready", "port": ..., ...}`` once it
  serves, or ``{"event": "error", "error": "<code>", "message": "..."}`` when it cannot start
  (and exits non-zero); logs go to stderr;
* SIGTERM makes it close every client with 1001 and exit 0; on Windows, where a signal from
  a parent is ``TerminateProcess``, closing its stdin does (``--exit-on-stdin-eof``).

Standard library only: nothing here imports Flask or the server code, so any program can start
any argv with it (``python -m sidecar``, the conformance echo app, gunicorn, ...)::

    with SidecarProcess(env=env) as child:       # spawns, waits for the ready line
        connect(child.ws)
    # stopped: SIGTERM (Windows: stdin closed), then a kill after the timeout;
    # child.returncode, child.tracebacks()

Threads: the thread that creates a :class:`SidecarProcess` owns it: only that thread calls
:meth:`~SidecarProcess.start`, :meth:`~SidecarProcess.stop` and the signalling methods. Each
child has two daemon reader threads. The *stdout* thread owns the stdout pipe: it hands the
first line to :meth:`~SidecarProcess.start` through a queue, then drains and discards the
rest (so the child never blocks on a full pipe). The *stderr* thread owns the stderr pipe and
the log file: it writes each line to ``log_path`` (when given), keeps the last ``tail_bytes``
in memory and scans every line for tracebacks and error lines (:class:`LogScan`). The scan's
lock guards the tail, the excerpts and the counters; any thread may read them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

#: How :meth:`SidecarProcess.stop` asks a child to end: ``"signal"`` (SIGTERM) or ``"stdin"``
#: (close its stdin pipe; the child must run with ``--exit-on-stdin-eof``).
GracefulStop = Literal["signal", "stdin"]
#: The graceful stop of this OS: on Windows ``Popen.send_signal(SIGTERM)`` is
#: ``TerminateProcess`` (exit 1, no close frames), so there it is closing stdin.
OS_GRACEFUL_STOP: GracefulStop = "stdin" if sys.platform == "win32" else "signal"
#: What :class:`SidecarProcess` runs by default: the production server on an ephemeral port
#: (which, for the stdin stop, also exits when its stdin closes).
DEFAULT_ARGV = (sys.executable, "-m", "sidecar", "serve", "--port", "0") + (
    ("--exit-on-stdin-eof",) if OS_GRACEFUL_STOP == "stdin" else ()
)
#: ``stop()``'s default: the child's graceful stop (see :class:`SidecarProcess`).
GRACEFUL: Literal["graceful"] = "graceful"
#: The directory holding this ``sidecar`` package, put first on the child's ``PYTHONPATH``.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

#: Longest first line read from the child (a ready line is a few hundred bytes).
MAX_READY_LINE = 64 << 10
#: Longest log line read at once (a longer one is read, and scanned, in pieces).
MAX_LOG_LINE = 64 << 10
#: Most traceback excerpts kept, and most lines per excerpt.
MAX_EXCERPTS = 20
MAX_EXCERPT_LINES = 80
#: Most error lines kept (they are all counted).
MAX_ERROR_LINES = 200
#: How long :meth:`SidecarProcess.stop` waits for a killed child and for the reader threads.
REAP_TIMEOUT = 5.0

_TRACEBACK = "Traceback (most recent call last):"
_ERROR_RE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def python_module(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``: the argv of a module run by this Python."""
    return [sys.executable, "-m", module, *args]


class LaunchError(Exception):
    """The child did not start: it printed an error line, exited, timed out or said nonsense.

    ``error`` is the child's own code from its error line, or one of ``"exited"`` (it ended
    before printing a line), ``"timeout"`` (no line in time; it was killed) and
    ``"bad-ready-line"``. ``stderr`` is the tail of its log; ``returncode`` its exit status
    (``None`` if unknown).
    """

    def __init__(
        self, error: str, message: str, *, stderr: str = "", returncode: int | None = None
    ) -> None:
        detail = f"{error}: {message}"
        if stderr:
            detail += "\n--- stderr (tail) ---\n" + stderr[-4000:]
        super().__init__(detail)
        self.error = error
        self.message = message
        self.stderr = stderr
        self.returncode = returncode


class LogScan:
    """A bounded record of a log read line by line: its tail, tracebacks and error lines.

    :meth:`feed` is called by one thread (the reader); the readers may be any thread. ``lock``
    guards every attribute.
    """

    def __init__(self, tail_bytes: int = 256 << 10) -> None:
        self.lock = threading.Lock()
        self.tail_bytes = tail_bytes
        self._tail: deque[str] = deque()
        self._tail_size = 0
        self._previous = ""
        self._current: list[str] | None = None
        self._excerpts: list[str] = []
        self._errors: list[str] = []
        #: Tracebacks seen and error lines seen (``ERROR``, ``CRITICAL`` or ``Traceback``).
        self.traceback_count = 0
        self.error_count = 0

    def feed(self, line: str) -> None:
        """Record one line (without its newline)."""
        with self.lock:
            self._keep(line)
            if self._current is not None:
                self._current.append(line)
                if not line.startswith((" ", "\t")) or len(self._current) >= MAX_EXCERPT_LINES:
                    self._finish()
            if _ERROR_RE.search(line):
                self.error_count += 1
                if len(self._errors) < MAX_ERROR_LINES:
                    self._errors.append(line)
            if _TRACEBACK in line and self._current is None:
                self.traceback_count += 1
                self._current = [self._previous, line] if self._previous.strip() else [line]
            self._previous = line

    def close(self) -> None:
        """The log has ended: keep a traceback cut off by the end."""
        with self.lock:
            self._finish()

    def _keep(self, line: str) -> None:
        self._tail.append(line)
        self._tail_size += len(line) + 1
        while self._tail_size > self.tail_bytes and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft()) + 1

    def _finish(self) -> None:
        if self._current is not None and len(self._excerpts) < MAX_EXCERPTS:
            self._excerpts.append("\n".join(self._current).rstrip())
        self._current = None

    def text(self) -> str:
        """The last ``tail_bytes`` (about) of the log."""
        with self.lock:
            return "\n".join(self._tail) + ("\n" if self._tail else "")

    def tracebacks(self) -> list[str]:
        """Each traceback seen (the first :data:`MAX_EXCERPTS`), with the line before it."""
        with self.lock:
            return list(self._excerpts)

    def error_lines(self) -> list[str]:
        """The first :data:`MAX_ERROR_LINES` lines with ``ERROR``, ``CRITICAL`` or a traceback."""
        with self.lock:
            return list(self._errors)


def child_env(env: Mapping[str, str] | None = None, *, same_package: bool = True) -> dict[str, str]:
    """The child's environment: ``env`` (default: this process's), with :data:`PACKAGE_ROOT`
    first on ``PYTHONPATH`` when ``same_package`` (the child imports this ``sidecar``)."""
    out = dict(os.environ if env is None else env)
    if same_package:
        rest = out.get("PYTHONPATH", "")
        out["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + rest if rest else "")
    return out


class SidecarProcess:
    """One child process speaking the ready-line contract (see the module docstring).

    ``argv`` defaults to :data:`DEFAULT_ARGV`; ``env`` is the whole environment (see
    :func:`child_env`). ``graceful`` is how :meth:`stop` asks the child to end (default
    :data:`OS_GRACEFUL_STOP`): ``"signal"`` sends SIGTERM, ``"stdin"`` closes the child's stdin
    pipe (a sidecar started with ``--exit-on-stdin-eof`` then closes every client with 1001
    and exits 0). ``stdin`` is passed to :class:`subprocess.Popen`: by default a pipe for the
    stdin stop, else ``DEVNULL``. ``log_path`` receives the child's stderr (appended).
    ``preexec_fn`` and ``start_new_session`` are passed to ``Popen`` (POSIX).
    """

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: int | IO[Any] | Literal["default"] | None = "default",
        log_path: str | Path | None = None,
        tail_bytes: int = 256 << 10,
        same_package: bool = True,
        start_new_session: bool = False,
        preexec_fn: Callable[[], None] | None = None,
        graceful: GracefulStop = OS_GRACEFUL_STOP,
    ) -> None:
        self.argv = list(DEFAULT_ARGV if argv is None else argv)
        self.graceful: GracefulStop = graceful
        if stdin == "default":
            stdin = subprocess.PIPE if graceful == "stdin" else subprocess.DEVNULL
        self.env = child_env(env, same_package=same_package)
        self.log_path = Path(log_path) if log_path is not None else None
        #: What :meth:`start` passes to ``Popen`` besides the argv, the env and the pipes.
        self.popen_options: dict[str, Any] = {
            "cwd": cwd,
            "stdin": stdin,
            "start_new_session": start_new_session,
            "preexec_fn": preexec_fn,
        }
        self.log = LogScan(tail_bytes)
        self.proc: subprocess.Popen[bytes] | None = None
        #: The parsed ready line (empty until :meth:`start` returns).
        self.ready: dict[str, Any] = {}
        #: Whether :meth:`stop` had to kill the child (SIGKILL, ``TerminateProcess``).
        self.killed = False
        self._first_line: queue.Queue[bytes] = queue.Queue(maxsize=1)
        self._readers: list[threading.Thread] = []

    # -- starting ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        """Spawn the child and wait up to ``timeout`` s for its first line; the ready line.

        Raises :class:`LaunchError` when the line is an error line, when the child exits first
        (with the tail of its stderr), or when no line comes in time (the child is killed).
        """
        if self.proc is not None:
            raise RuntimeError("start() was already called")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            **self.popen_options,
        )
        self._spawn_reader("stdout", self._read_stdout)
        self._spawn_reader("stderr", self._read_stderr)
        try:
            line = self._first_line.get(timeout=timeout)
        except queue.Empty:
            self._abort()
            raise self._error("timeout", f"no ready line within {timeout:g} s") from None
        if not line:
            code = self._reap()
            raise self._error("exited", f"the process exited ({code}) before its ready line")
        self.ready = self._parse(line)
        return self.ready

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: "[" * 100_000, say
            message = None
        if not isinstance(message, dict):
            self._abort()
            shown = f"{line[:300]!r}{' …' if len(line) > 300 else ''}"
            raise self._error("bad-ready-line", f"the first line is not a JSON object: {shown}")
        if message.get("event") == "error":
            self._reap()
            raise self._error(str(message.get("error") or "error"), str(message.get("message")))
        if message.get("event") != "ready" or "port" not in message:
            self._abort()
            raise self._error("bad-ready-line", f"unexpected first line: {line[:300]!r}")
        return message

    def _error(self, error: str, message: str) -> LaunchError:
        return LaunchError(error, message, stderr=self.log.text(), returncode=self.returncode)

    def _abort(self) -> None:
        """Kill a child that failed to start, and reap it."""
        self._kill()
        self._reap()

    def _reap(self) -> int | None:
        """Wait (bounded) for the child to end, killing it if it does not; join the readers."""
        assert self.proc is not None
        try:
            self.proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.killed = True
            self._kill()
            try:
                self.proc.wait(REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                return None
        self._join_readers()
        return self.proc.returncode

    # -- reader threads ---------------------------------------------------------------------
    def _spawn_reader(self, name: str, target: Callable[[IO[bytes]], None]) -> None:
        assert self.proc is not None
        stream = self.proc.stdout if name == "stdout" else self.proc.stderr
        assert stream is not None
        thread = threading.Thread(
            target=target, args=(stream,), name=f"launcher-{name}-{self.proc.pid}", daemon=True
        )
        thread.start()
        self._readers.append(thread)

    def _read_stdout(self, stream: IO[bytes]) -> None:
        """The stdout thread: the first line to :meth:`start` (``b""`` at EOF), the rest drained."""
        line = b""
        try:
            line = stream.readline(MAX_READY_LINE)
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        self._first_line.put(line)
        try:
            while stream.read(65536):
                pass
        except (OSError, ValueError):
            pass

    def _read_stderr(self, stream: IO[bytes]) -> None:
        """The stderr thread: each line to the log file, the tail and the scan."""
        log = self.log_path.open("ab") if self.log_path is not None else None
        try:
            for raw in iter(lambda: stream.readline(MAX_LOG_LINE), b""):
                if log is not None:
                    log.write(raw)
                    log.flush()
                self.log.feed(raw.decode(errors="replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self.log.close()
            if log is not None:
                log.close()

    def _join_readers(self) -> None:
        for thread in self._readers:
            thread.join(REAP_TIMEOUT)

    # -- the running child ------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The child's process id (0 before :meth:`start`)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def port(self) -> int:
        """The bound port, from the ready line."""
        return int(self.ready["port"])

    @property
    def url(self) -> str:
        """The ready line's HTTP base URL."""
        return str(self.ready["url"])

    @property
    def ws(self) -> str:
        """The ready line's WebSocket URL."""
        return str(self.ready["ws"])

    @property
    def token(self) -> str | None:
        """The token from the ready line (only when the child generated it)."""
        token = self.ready.get("token")
        return str(token) if token is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has ended, else ``None`` (negative: a signal)."""
        return self.proc.poll() if self.proc is not None else None

    def poll(self) -> int | None:
        """The exit status if the child has ended, else ``None``."""
        return self.returncode

    def wait(self, timeout: float) -> int:
        """Wait for the child to end; ``subprocess.TimeoutExpired`` after ``timeout`` s."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child (nothing if it has ended)."""
        self._signal(sig)

    def _kill(self) -> None:
        """SIGKILL (``TerminateProcess`` on Windows), if the child still runs."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(
        self,
        sig: int | Literal["graceful"] | None = GRACEFUL,
        timeout: float = 5.0,
        *,
        on_hang: Callable[[], object] | None = None,
    ) -> int | None:
        """Ask the child to end, wait up to ``timeout`` s, then kill it; the exit status.

        ``sig`` is ``"graceful"`` (the child's graceful stop, see :class:`SidecarProcess`: by
        default SIGTERM on POSIX, closing stdin on Windows), a signal number to send, or
        ``None`` (it was already asked). A stdin stop without a stdin pipe cannot be made: the
        child is killed at once. ``on_hang`` runs before the kill (to dump the stacks of a
        child that overstays). Joins the reader threads and closes the pipes. Idempotent;
        ``None`` only if even a killed child did not end within :data:`REAP_TIMEOUT`.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig == GRACEFUL and self.graceful == "stdin":
                if not self._close_stdin():
                    timeout = 0
            elif sig == GRACEFUL:
                self._signal(signal.SIGTERM)
            elif sig is not None:
                self._signal(int(sig))
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if on_hang is not None:
                    on_hang()
                self.killed = True
                self._kill()
        code = self._reap()
        self._close_pipes()
        return code

    def _close_stdin(self) -> bool:
        """The stdin stop: close our end of the child's stdin; whether there was a pipe."""
        assert self.proc is not None
        if self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.close()
        except OSError:  # the child has gone: the wait sees it
            pass
        return True

    def _close_pipes(self) -> None:
        assert self.proc is not None
        if any(thread.is_alive() for thread in self._readers):
            return  # a grandchild still holds a pipe: leave it to the daemon readers
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    # -- the log ----------------------------------------------------------------------------
    def log_text(self) -> str:
        """The last ``tail_bytes`` (about) of the child's stderr; ``log_path`` has all of it."""
        return self.log.text()

    def tracebacks(self) -> list[str]:
        """The tracebacks in the child's stderr so far, each with the log line before it."""
        return self.log.tracebacks()

    def error_lines(self) -> list[str]:
        """Lines of the child's stderr with ``ERROR``, ``CRITICAL`` or a traceback."""
        return self.log.error_lines()

    # -- context manager --------------------------------------------------------------------
    def __enter__(self) -> SidecarProcess:
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def launch(
    argv: Sequence[str] | None = None, *, timeout: float = 30.0, **options: Any
) -> SidecarProcess:
    """Start a :class:`SidecarProcess` (``options`` as its constructor's) and wait for ready.

    Raises :class:`LaunchError` like :meth:`SidecarProcess.start`.
    """
    child = SidecarProcess(argv, **options)
    try:
        child.start(timeout)
    except BaseException:
        child.stop(timeout=0)
        raise
    return child
