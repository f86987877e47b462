"""The hub inside a gunicorn worker, with or without ``sidecar.gunicorn_conf``.

``gunicorn -c python:sidecar.gunicorn_conf`` checks the deployment in the master. An app that
uses :class:`~sidecar.web.extension.EventHub` is often served without it (``gunicorn -k gthread
-w 2 'app:create_app()'``); this module makes such a worker as safe as it can be from the
inside. Nothing here imports gunicorn: the worker is found through the ``SIGTERM`` handler
gunicorn installs in each worker's main thread before it loads the app (its ``handle_exit``,
a method of the worker), which any thread may read.

* **No silent split.** Without a broker, the hub lives in one process: several workers would
  each run their own, and every client would see only its worker's events. Found at
  ``init_app`` (the app is loaded in the worker): a :class:`~sidecar.config.ConfigError`, so
  the worker fails to boot and gunicorn stops. With ``--preload`` (the app is loaded in the
  master, before any worker exists) it is found at first use in each worker: the hub refuses
  (503, publishing refused) and says why in one error line.
* **Thread budget.** Every WebSocket holds one of the worker's threads for its whole life; with
  every thread held, ``/health`` and publishes wait. Sessions are capped at
  :func:`session_cap` of ``--threads`` (503 with ``Retry-After`` beyond), with a warning when
  ``--max-clients`` is higher.
* **Graceful stop.** On SIGTERM gunicorn waits ``graceful_timeout`` (30 s by default) for
  requests to end, then kills the worker: WebSocket clients got no close frame. A watcher
  thread (``sidecar-worker-exit``) sees the worker stop (its ``alive`` flag), turns readiness
  503, serves open sessions for ``--drain`` seconds (0 by default) and closes every client with
  1001, so the worker exits at once. ``sidecar.gunicorn_conf`` does this itself, from its own
  SIGTERM handler (it also makes gunicorn's ``graceful_timeout`` cover the drain).
* **Memory.** The allocator's arenas are capped as the CLI caps them
  (:func:`sidecar.platform.tune_malloc`), at ``init_app`` (before the worker's threads take
  arenas of their own; in the master with ``--preload``), and again when the hub starts.
* **Garbage collection.** As in the CLI, the hub thread keeps long-lived objects out of full
  collections (:mod:`sidecar.core.gcpolicy`; ``--no-gc-freeze`` turns it off).

Threads: :func:`adopt` runs once per process (``SidecarState.ensure_started``, under its start
lock); the watcher thread only reads the worker's flag and stops the hub.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..platform import tune_malloc

if TYPE_CHECKING:
    from .state import SidecarState

log = logging.getLogger("sidecar")

#: ``--max-clients`` when not set (no warning then: the cap is simply the worker's).
DEFAULT_MAX_CLIENTS: int = Config.max_clients
#: How often the watcher looks at the worker's ``alive`` flag (seconds).
EXIT_POLL = 0.1
#: Threads kept free of WebSockets for ``/health``, publishes and refusals: at least this
#: many, and an eighth of the worker's threads (see :func:`session_cap`).
MIN_SPARE_THREADS = 2


@dataclass(frozen=True)
class Worker:
    """What the hub needs to know of the gunicorn worker it runs in."""

    workers: int
    threads: int
    worker_class: str
    #: The gunicorn worker object (its ``alive`` flag turns false on SIGTERM).
    handle: Any


def current_worker() -> Worker | None:
    """The gunicorn worker this process is, or ``None`` (not gunicorn, or its master)."""
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):  # pragma: no cover - no SIGTERM here
        return None
    owner = getattr(handler, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("gunicorn.workers."):
        return None
    cfg = getattr(owner, "cfg", None)
    try:
        workers, threads = int(cfg.workers), int(cfg.threads)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return None
    kind = str(getattr(cfg, "worker_class_str", "") or type(owner).__name__)
    return Worker(workers, threads, kind, owner)


def under_gunicorn() -> bool:
    """Whether gunicorn serves this process: a worker, or the master loading the app with
    ``--preload`` (its arbiter is imported there; nothing else imports it)."""
    return "gunicorn.arbiter" in sys.modules


def prepare_process() -> None:
    """At ``init_app`` under gunicorn: cap the allocator's arenas now, in the main thread,
    before the worker's threads take arenas of their own (a cap set later keeps those)."""
    if under_gunicorn():
        tune_malloc()


def split_problem(config: Config, worker: Worker | None) -> str | None:
    """Why this worker must not serve the hub (several workers, no broker), or ``None``.

    The text follows ``--broker`` (``--broker is required with 2 gunicorn workers: …``).
    """
    if worker is None or worker.workers <= 1 or config.broker:
        return None
    return (
        f"is required with {worker.workers} gunicorn worker processes: each would run a hub "
        "of its own and its clients would miss the other workers' events. Use -w 1 (and "
        "raise --threads), or set SIDECAR_BROKER=redis://… (see Scaling out)"
    )


def session_cap(threads: int) -> int:
    """WebSocket sessions a worker with ``threads`` threads may hold.

    The rest stay free for ``/health``, publishes and 503s: ``max(2, threads // 8)`` of them.
    """
    return max(0, threads - max(MIN_SPARE_THREADS, threads // 8))


def adopt(state: SidecarState, worker: Worker, *, hooked: bool) -> None:
    """Fit ``state`` to ``worker``: its thread budget, the arenas, a graceful stop.

    ``hooked``: ``sidecar.gunicorn_conf`` closes the clients on SIGTERM itself.
    """
    cap = session_cap(worker.threads)
    if cap < state.sessions.limit:
        state.sessions.cap(cap)
        if state.config.max_clients != DEFAULT_MAX_CLIENTS:
            log.warning(
                "--max-clients %d is more than this worker's threads allow: at most %d "
                "WebSocket sessions (--threads %d, %d kept for HTTP requests); raise --threads",
                state.config.max_clients,
                cap,
                worker.threads,
                worker.threads - cap,
            )
        else:
            log.info(
                "at most %d WebSocket sessions per worker (--threads %d, %d kept for HTTP)",
                cap,
                worker.threads,
                worker.threads - cap,
            )
    if cap == 0:
        log.warning(
            "the %s worker has %d thread(s): no WebSocket can be served "
            "(use -k gthread --threads N)",
            worker.worker_class,
            worker.threads,
        )
    tune_malloc()
    if state.config.gc_freeze:
        state.hub.manage_gc()
    if not hooked:
        threading.Thread(
            target=_close_on_exit, args=(state, worker), name="sidecar-worker-exit", daemon=True
        ).start()


def _close_on_exit(state: SidecarState, worker: Worker) -> None:
    """The watcher: once the worker stops (SIGTERM, max-requests), readiness turns 503, open
    sessions are served for ``--drain`` seconds, then every client gets 1001 (as
    ``sidecar.gunicorn_conf`` does from its SIGTERM handler)."""
    wake = threading.Event()  # never set: a bounded wait between looks
    while getattr(worker.handle, "alive", False):
        wake.wait(EXIT_POLL)
    drain = state.config.drain
    state.stopping = "draining" if drain > 0 else "stopping"
    if drain > 0:  # gunicorn accepts no new connections meanwhile
        state.sessions.wait_idle(drain)
        state.stopping = "stopping"
    if state.broker is not None:
        state.broker.stop()
    state.hub.stop(timeout=1.0)
