"""An app with an :class:`~sidecar.EventHub`, served by gunicorn in ``tests/test_gunicorn_apps.py``.

Besides the hub's routes (and its health at ``/hub-health``): ``/health``;
``POST /broadcast`` (the app's own code broadcasting, 202 or 503); ``GET /arenas``, which
starts 16 threads that each allocate through malloc and then reports how many arenas glibc's
allocator has (``malloc_info``), so that a test can see whether the arenas were capped in
this worker.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from flask import Flask, jsonify

from sidecar import EventHub
from sidecar.envelope import new_event

#: Threads started by ``/arenas``: each would get an arena of its own if nothing capped them.
CHURN_THREADS = 16


def _churn(ready: threading.Barrier) -> None:
    ready.wait(10)  # all alive at once: each thread's first malloc picks its arena
    blocks = [bytes(2048 + n) for n in range(200)]  # above pymalloc's 512 B: plain malloc
    del blocks


def malloc_arenas() -> int:
    """The number of arenas glibc's allocator has in this process (0 where unknown)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return 0
    libc.open_memstream.restype = ctypes.c_void_p
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    xml = ctypes.string_at(buffer, size.value)
    libc.free(buffer)
    return xml.count(b"<heap nr=")


def create_app() -> Flask:
    """The app (options from ``SIDECAR_*`` variables)."""
    app = Flask(__name__)
    hub = EventHub(app, health_path="/hub-health")

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    @app.post("/broadcast")
    def broadcast() -> Any:
        done = hub.broadcast_event(new_event("app:broadcast", {}))
        return jsonify(broadcast=done), 202 if done else 503

    @app.get("/arenas")
    def arenas() -> Any:
        ready = threading.Barrier(CHURN_THREADS)
        threads = [threading.Thread(target=_churn, args=(ready,)) for _ in range(CHURN_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return jsonify(arenas=malloc_arenas())

    return app
