"""gunicorn settings for the sidecar.

``gunicorn -c python:sidecar.gunicorn_conf 'sidecar.wsgi:create_app()'``

* ``gthread``, **one** worker process (more would split the hub: refused at start);
* ``threads`` is the thread budget: every WebSocket holds one thread for its whole life, and
  ``/health`` and the publish API need free ones too (``SIDECAR_THREADS``, default 256);
* on SIGTERM every client gets close 1001 before the worker exits (``post_worker_init``
  wraps the worker's SIGTERM handler);
* a large listen backlog, so that bursts of handshakes do not wait on SYN retries.

Override any of them on the command line as usual (``--bind``, ``--threads``).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

bind = os.environ.get("SIDECAR_BIND", "127.0.0.1:3008")
worker_class = "gthread"
workers = 1
threads = int(os.environ.get("SIDECAR_THREADS", "256"))
backlog = 2048
graceful_timeout = 5
timeout = 30
keepalive = 2
#: gunicorn >= 27 opens a control socket under ~/.gunicorn by default; a sidecar needs none.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Refuse to start with more than one worker process."""
    if server.cfg.workers != 1:
        raise SystemExit(
            f"sidecar: refusing to start with {server.cfg.workers} worker processes: the hub "
            "lives in one process and clients of other workers would miss its events. "
            "Use -w 1 and raise --threads instead."
        )
    if server.cfg.worker_class_str != "gthread":
        raise SystemExit(
            "sidecar: use the gthread worker (-k gthread): every WebSocket "
            "needs a thread of its own."
        )


def post_worker_init(worker: Any) -> None:
    """On SIGTERM, close every WebSocket with 1001 while the worker drains."""
    previous = signal.getsignal(signal.SIGTERM)
    sidecar = worker.wsgi.extensions["sidecar"]
    term = threading.Event()  # only the closer thread ever holds its lock

    def close_clients() -> None:
        term.wait()
        sidecar.hub.stop(timeout=1.0)
        sidecar.sessions.wait_idle(graceful_timeout - 1)

    def on_term(signum: int, frame: Any) -> None:
        term.set()  # no thread start in a signal handler: it may run while a lock is held
        if callable(previous):
            previous(signum, frame)

    threading.Thread(target=close_clients, name="sidecar-stop", daemon=True).start()
    signal.signal(signal.SIGTERM, on_term)
