"""gunicorn settings for the sidecar.

``gunicorn -c python:sidecar.gunicorn_conf 'sidecar.wsgi:create_app()'``

* ``gthread``; **one** worker process without a broker (more would split the hub: refused at
  start), any number with ``SIDECAR_BROKER`` (``SIDECAR_WORKERS``, default 1);
* the configuration (the token above all) is checked once in the master, before any worker
  boots: a missing ``SIDECAR_TOKEN`` stops gunicorn with one line and a non-zero exit, not a
  crash loop of workers; so does a broker that cannot be reached (one ``PING``-like round
  trip, then the master's connection is closed: no thread, no socket survives into a fork);
* ``threads`` is the thread budget per worker: every WebSocket holds one thread for its whole
  life, and ``/health`` and the publish API need free ones too (``SIDECAR_THREADS``, 256);
* the hub thread (and the broker's relay) start in each worker after the fork
  (``post_worker_init``), so ``--preload`` works; a worker (re)started while Redis is down
  boots anyway, answers 503 and starts them on a later request, so an outage never halts
  gunicorn. On SIGTERM readiness (``/health/ready``) turns 503 at once; open sessions are
  served for ``SIDECAR_DRAIN`` seconds (default 0), then every client gets close 1001
  before the worker exits; ``graceful_timeout`` is the drain plus 5 s;
* with ``PROMETHEUS_MULTIPROC_DIR`` set (``/metrics`` over several workers), the master
  empties that directory of its ``*.db`` files at start and marks each worker that ends as
  dead (``child_exit``), as prometheus_client's multiprocess mode wants;
* the access log format leaves the query string (which may hold the token) out;
* a large listen backlog, so that bursts of handshakes do not wait on SYN retries;
* the allocator's arenas capped as the CLI caps them (``MALLOC_ARENA_MAX`` wins if set);
* WebSocket sessions capped below ``threads`` (see :mod:`sidecar.web.gunicorn_worker`), and
  every request target in gunicorn's access and error logs redacted (the EventHub's filter).

Override any of them on the command line as usual (``--bind``, ``--threads``, ``-w``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import sys
import threading
from typing import Any

from sidecar import logs
from sidecar.config import LOG_LEVELS, Config, ConfigError, load, resolve_token
from sidecar.platform import tune_malloc


def _refuse(message: str) -> None:
    print(f"sidecar: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _env_int(name: str, default: int) -> int:
    """A positive whole number from ``name``; one line and exit 2 when it is not one."""
    text = os.environ.get(name)
    if text is None:
        return default
    if not text.strip():
        _refuse(f"{name} is empty: give a number, or unset it for the default ({default})")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        _refuse(f"{name} must be a whole number of at least 1, got {text!r}")
    return value


bind = os.environ.get("SIDECAR_BIND") or "127.0.0.1:3008"
if "SIDECAR_BIND" in os.environ and not os.environ["SIDECAR_BIND"].strip():
    _refuse("SIDECAR_BIND is empty: give HOST:PORT, or unset it for the default (127.0.0.1:3008)")
worker_class = "gthread"
workers = _env_int("SIDECAR_WORKERS", 1)
threads = _env_int("SIDECAR_THREADS", 256)
backlog = 2048


def _drain_seconds() -> float:
    """``SIDECAR_DRAIN`` (0 when unset; a bad value is refused by :func:`on_starting`)."""
    try:
        return max(0.0, float(os.environ.get("SIDECAR_DRAIN", "0") or 0))
    except ValueError:
        return 0.0


#: The drain window, then 5 s to close every client with 1001 and exit: the master waits
#: this long for its workers after SIGTERM (and a worker for its sessions) before SIGKILL.
graceful_timeout = math.ceil(_drain_seconds()) + 5
timeout = 30
keepalive = 2
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def _log_format() -> str:
    return os.environ.get("SIDECAR_LOG_FORMAT", "text").strip().lower()


#: ``SIDECAR_LOG_FORMAT=json`` (or ``auto`` with stderr not a terminal): gunicorn's, the
#: sidecar's and Werkzeug's log lines as JSON objects on stderr (see sidecar.logs).
if logs.json_wanted(_log_format(), sys.stderr):
    _level = os.environ.get("SIDECAR_LOG_LEVEL", "info").strip().lower()
    logconfig_dict = logs.gunicorn_logconfig(_level if _level in LOG_LEVELS else "info")
#: gunicorn >= 27 opens a control socket under ~/.gunicorn by default; a sidecar needs none.
control_socket_disable = True


def _check_broker(config: Config) -> None:
    """Stop the master with one line if the broker cannot be reached (or used) now."""
    try:
        from sidecar.broker.redis import RedisBroker
    except ImportError as exc:
        _refuse(str(exc))
        return
    from sidecar.core.hub import PublishRefused

    try:
        broker = RedisBroker(config.broker or "", prefix=config.broker_prefix, history_size=None)
    except ValueError as exc:  # what the driver refuses in the URL
        _refuse(f"SIDECAR_BROKER cannot be used: {exc}")
        return
    try:
        broker.head()
    except PublishRefused as exc:
        _refuse(str(exc))
    finally:
        broker.close()


def on_starting(server: Any) -> None:
    """Check the configuration once, in the master: bad settings stop gunicorn at once.

    Also caps the allocator's arenas, as the CLI does (each worker does it again when its hub
    starts): with a thread per WebSocket, glibc's arenas per thread kept ~5x the memory.
    """
    tune_malloc()
    try:
        config = resolve_token(load(), generate=False)
    except ConfigError as exc:
        _refuse(str(exc))
        return
    if config.broker:
        _check_broker(config)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        if importlib.util.find_spec("prometheus_client") is None:
            _refuse(
                "PROMETHEUS_MULTIPROC_DIR is set but prometheus_client is not installed: "
                "pip install 'sidecar-hub[metrics]'"
            )
        from sidecar.web.metrics import clear_multiprocess_dir

        clear_multiprocess_dir()
    if server.cfg.workers != 1 and not config.broker:
        _refuse(
            f"refusing to start with {server.cfg.workers} worker processes without a broker: "
            "the hub lives in one process and clients of other workers would miss its events. "
            "Use -w 1 and raise --threads, or set SIDECAR_BROKER=redis://… (see Scaling out)."
        )
    if server.cfg.worker_class_str != "gthread":
        _refuse("use the gthread worker (-k gthread): every WebSocket needs a thread of its own.")


def post_worker_init(worker: Any) -> None:
    """Start the hub in this worker; on SIGTERM, close every WebSocket with 1001."""
    from sidecar.core.hub import PublishRefused

    state = getattr(worker.wsgi, "extensions", {}).get("sidecar")
    if state is None:  # an app wrapped in middleware: its EventHub stops by itself on SIGTERM
        worker.log.warning("sidecar: no EventHub on the WSGI app; not hooking SIGTERM")
        return
    state.gunicorn_hooked = True  # the closer below replaces the EventHub's own watcher
    try:
        state.ensure_started()
    except PublishRefused as exc:  # Redis is down: every request tries again (503 until then)
        worker.log.warning("sidecar: %s; starting on a later request", exc)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from sidecar.web.metrics import start_sampler

        start_sampler(state)
    previous = signal.getsignal(signal.SIGTERM)
    term = threading.Event()  # only the closer thread ever holds its lock
    drain = state.config.drain

    def close_clients() -> None:
        term.wait()
        if drain > 0:  # open sessions go on for the window (gunicorn accepts no new ones)
            worker.log.info("sidecar: draining for up to %g s", drain)
            state.sessions.wait_idle(drain)
        state.stopping = "stopping"
        if state.broker is not None:
            state.broker.stop()
        state.hub.stop(timeout=1.0)
        state.sessions.wait_idle(max(1.0, worker.cfg.graceful_timeout - drain - 1))

    def on_term(signum: int, frame: Any) -> None:
        state.stopping = "draining" if drain > 0 else "stopping"  # readiness: 503 at once
        term.set()  # no thread start in a signal handler: it may run while a lock is held
        if callable(previous):
            previous(signum, frame)

    threading.Thread(target=close_clients, name="sidecar-stop", daemon=True).start()
    signal.signal(signal.SIGTERM, on_term)


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended: its live gauges leave ``/metrics`` (prometheus_client multiprocess)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
