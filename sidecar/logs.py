"""Logging that can never wedge the process, and rate limits for noisy log lines.

A desktop parent that pipes stderr and never reads it (Node's default) fills the pipe, and a
plain ``StreamHandler`` then blocks whichever thread logs: the hub thread, a request thread.
:func:`setup` installs a :class:`DroppingQueueHandler` instead: records go into a bounded
queue and **one writer thread** (``sidecar-log``) writes them to stderr
or ``--log-file``. When the queue is full the record is dropped and counted
(:func:`dropped`, reported in ``/api/v1/hub``); no thread that logs ever waits, and stopping
waits for the writer at most :data:`FLUSH_TIMEOUT` (it holds no lock that exiting needs).

Formats (``--log-format``): ``text`` (``FORMAT``), ``json`` (:class:`JsonFormatter`: one
object per line with ``ts``, ``level``, ``logger``, ``msg`` and the record's own fields, such
as ``client``, ``peer``, ``code``, ``reason``), or ``auto`` (JSON unless the target is a
terminal). Every secret given to :func:`hide` is scrubbed from both, fields included. Under
gunicorn, :func:`gunicorn_logconfig` is a ``logconfig_dict`` with the same JSON lines.

Threads: any thread logs; the writer thread alone touches the stream. ``_lock`` in
:class:`LogLimiter` guards its table.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any, TextIO

#: Records waiting for the writer thread before new ones are dropped.
QUEUE_SIZE = 10_000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The loggers the sidecar configures: its own, and the servers' it runs under.
LOGGERS = ("sidecar", "werkzeug", "gunicorn.error")


#: Secrets no log line may show (:func:`hide`); shorter ones are not scrubbed (too common).
_SECRETS: set[str] = set()
MIN_SECRET = 8


def hide(secret: str | None) -> None:
    """Replace ``secret`` by ``[redacted]`` in every log line from now on (see :func:`scrub`)."""
    if secret and len(secret) >= MIN_SECRET:
        _SECRETS.add(secret)  # a set add under the GIL; readers copy it first


def scrub(text: str) -> str:
    """``text`` without any secret given to :func:`hide`."""
    for secret in tuple(_SECRETS):
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


#: The attributes every ``LogRecord`` has: anything else on a record is a field of its own.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _field(value: Any) -> Any:
    """A field's value as JSON can hold it, scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines and control characters escaped).

    ``ts`` (RFC 3339, UTC, milliseconds), ``level`` (``debug`` … ``critical``), ``logger``,
    ``msg`` (with any traceback), then the record's own fields (``extra=``). Every secret given
    to :func:`hide` is scrubbed, from the message and from the fields; the output is ASCII.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(message),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in line:
                line[key] = _field(value)
        return json.dumps(line, separators=(",", ":"))


def json_wanted(log_format: str, stream: TextIO | None) -> bool:
    """Whether ``log_format`` (``text``, ``json``, ``auto``) means JSON lines on ``stream``
    (``None``: a file, never a terminal)."""
    if log_format != "auto":
        return log_format == "json"
    try:
        return stream is None or not stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return True


def gunicorn_logconfig(level: str = "info") -> dict[str, Any]:
    """A gunicorn ``logconfig_dict``: gunicorn's, the sidecar's and Werkzeug's loggers as JSON
    lines (:class:`JsonFormatter`) on stderr, at ``level`` (the access log at ``info``).

    gunicorn applies it in the master before forking, so it uses a plain ``StreamHandler``
    (no writer thread, which would not survive the fork).
    """
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stderr",
    }
    named = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "sidecar.logs.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "gunicorn.error": named,
            "gunicorn.access": {**named, "level": "INFO"},
            "sidecar": named,
            "werkzeug": {**named, "level": "WARNING"},
        },
    }


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` that drops (and counts) instead of blocking or raising when full,
    and scrubs the secrets given to :func:`hide` from every record (tracebacks included)."""

    def __init__(self, q: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(q)
        self.dropped = 0  # benign race between logging threads: a monitoring counter

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record as queued: its message formatted (with any traceback) and scrubbed."""
        record = super().prepare(record)
        record.msg = scrub(str(record.msg))
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record`` without waiting; count it when there is no room."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer:
    """The one thread that writes log lines (``sidecar-log``), straight to a file descriptor.

    Nothing waits for it without a deadline, and while one of its writes blocks (a pipe nobody
    reads) it holds no lock anyone else takes: the line goes out with ``os.write`` on the
    descriptor, not through a ``logging.Handler`` (whose lock ``logging.shutdown`` takes at
    exit: the process hung there) nor a buffered stream (whose lock the interpreter takes to
    flush it at exit).
    """

    def __init__(
        self,
        records: queue.Queue[logging.LogRecord | None],
        write: Callable[[bytes], None],
        close: Callable[[], None],
        formatter: logging.Formatter,
    ) -> None:
        self.records = records
        self._write = write
        self._close = close
        self._format = formatter.format
        #: When the write in progress started (``None`` between writes).
        self.busy_since: float | None = None
        self.thread = threading.Thread(target=self._run, name="sidecar-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (record := self.records.get()) is not None:
            data = (self._format(record) + "\n").encode("utf-8", "backslashreplace")
            self.busy_since = time.monotonic()
            try:
                self._write(data)
            except (OSError, ValueError):  # stderr closed, a full disk: the line is lost
                pass
            self.busy_since = None
        self._close()

    def stop(self, timeout: float) -> bool:
        """Write what is queued and end, waiting at most ``timeout`` in all; whether it ended.

        A writer stuck in one write for :data:`STUCK` (a full pipe) is not waited for at all.
        """
        deadline = time.monotonic() + timeout
        try:
            self.records.put_nowait(None)
        except queue.Full:  # lines are being dropped: the target is not keeping up
            return False
        while self.thread.is_alive() and (remaining := deadline - time.monotonic()) > 0:
            since = self.busy_since
            if since is not None and time.monotonic() - since >= STUCK:
                return False
            self.thread.join(min(remaining, STUCK / 2))
        return not self.thread.is_alive()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _target(
    log_file: str | None, stream: TextIO | None
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """How the writer writes a line, and how it closes its target."""
    if log_file is not None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(log_file, flags, 0o644)
        return (lambda data: _write_all(fd, data)), (lambda: os.close(fd))
    out = stream if stream is not None else sys.stderr
    try:
        fd = out.fileno()  # the descriptor itself: no buffer, no lock
    except (AttributeError, OSError, ValueError):  # no descriptor (pythonw, a test's buffer)
        if out is None:
            return (lambda data: None), (lambda: None)

        def write(data: bytes) -> None:
            out.write(data.decode("utf-8"))
            out.flush()

        return write, (lambda: None)
    return (lambda data: _write_all(fd, data)), (lambda: None)


class _State:
    handler: DroppingQueueHandler | None = None
    writer: _Writer | None = None
    excepthook: Callable[[threading.ExceptHookArgs], Any] | None = None


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """An uncaught exception in a thread: one record through the queue, never stderr itself."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("sidecar").error(
        "thread %s ended with an uncaught exception",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def setup(
    level: str,
    *,
    log_file: str | None = None,
    stream: TextIO | None = None,
    log_format: str = "text",
) -> None:
    """Send the sidecar's log lines through the bounded queue to ``log_file`` or stderr.

    ``log_format`` is ``text``, ``json`` or ``auto`` (see :func:`json_wanted`). Raises
    ``OSError`` when ``log_file`` cannot be opened for appending. Werkzeug's request lines are
    shown only at ``debug``. An uncaught exception in a thread is logged the same way
    (``threading.excepthook``) instead of being printed on stderr. Calling it again replaces
    the previous setup.
    """
    write, close = _target(log_file, stream)
    wanted = json_wanted(log_format, None if log_file is not None else stream or sys.stderr)
    formatter = JsonFormatter() if wanted else logging.Formatter(FORMAT)
    shutdown()
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    numeric = getattr(logging, level.upper(), logging.INFO)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(numeric)
    logging.getLogger("werkzeug").setLevel(logging.INFO if level == "debug" else logging.WARNING)
    _State.handler, _State.writer = handler, _Writer(records, write, close, formatter)
    _State.excepthook, threading.excepthook = threading.excepthook, _thread_died


def dropped() -> int:
    """Log records dropped because the writer could not keep up (0 without :func:`setup`)."""
    return _State.handler.dropped if _State.handler is not None else 0


#: Longest :func:`shutdown` waits for the writer to write what is queued (a graceful stop
#: has 2 s in all; a pipe nobody reads would never drain).
FLUSH_TIMEOUT = 0.5
#: A write blocked this long means a full pipe nobody reads: stopping does not wait for it.
STUCK = 0.1


def shutdown(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Write what is queued, waiting at most ``timeout``, and stop the writer thread.

    Whether everything queued was written. A writer blocked on a full pipe is left behind (a
    daemon holding no lock anyone takes), and the process can exit.
    """
    writer, _State.writer = _State.writer, None
    if _State.excepthook is not None:
        threading.excepthook, _State.excepthook = _State.excepthook, None
    return True if writer is None else writer.stop(timeout)


class LogLimiter:
    """At most one line per key and interval: the first occurrence, then a count.

    ``check(key)`` returns ``None`` to stay silent, ``0`` for a first occurrence, or the
    number of occurrences suppressed since the last line. The table is bounded
    (``max_keys``, least recently used first out). Thread-safe.
    """

    def __init__(
        self,
        interval: float = 10.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[Hashable, list[float | int]] = OrderedDict()

    def check(self, key: Hashable) -> int | None:
        """Record one occurrence of ``key``; whether (and with what count) to log it."""
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None:
                self._seen[key] = [now, 0]
                if len(self._seen) > self.max_keys:
                    self._seen.popitem(last=False)
                return 0
            self._seen.move_to_end(key)
            if now - entry[0] >= self.interval:
                suppressed = int(entry[1])
                entry[0], entry[1] = now, 0
                return suppressed
            entry[1] += 1
            return None

    def pop(self, key: Hashable) -> int:
        """Forget ``key``; the occurrences suppressed since its last line."""
        with self._lock:
            entry = self._seen.pop(key, None)
        return 0 if entry is None else int(entry[1])
