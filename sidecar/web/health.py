"""Liveness and readiness: ``<path>/live`` (and ``<path>`` itself, its alias) and ``<path>/ready``.

* **live**: 200 while the process serves HTTP at all, ``{"status", "version", "uptime"}``
  (``status`` is ``ok``, or ``stopping`` once the hub has stopped). It never starts the hub
  or asks the broker anything: a Redis outage must not make an orchestrator restart workers.
* **ready**: 200 ``{"status": "ready"}`` when this process should get new clients; 503
  ``{"status": "unavailable", "reason": …}`` while starting, draining or stopping, and with a
  broker while the relay is disconnected or lagging (:meth:`SidecarState.not_ready`). A
  readiness probe is also what starts the hub (and the relay) in a process that has had no
  other request yet, so a probe alone brings a fresh gunicorn worker to ready.

Both are open (no token) and secret-free; the Host guard applies as to every hub route.
Request threads only; no state of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Response, jsonify

from .. import __version__
from ..core.hub import PublishRefused
from .state import SidecarState

#: The blueprint's name; the Host guard of the sidecar's own app starts nothing for it.
NAME = "sidecar_health"


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def health_blueprint(
    state: SidecarState, path: str, *, guard: Callable[[], Response | None] | None = None
) -> Blueprint:
    """``path`` and ``path + "/live"`` (liveness), ``path + "/ready"`` (readiness)."""
    health = Blueprint(NAME, __name__)
    if guard is not None:
        health.before_request(guard)
    base = path.rstrip("/")

    @health.get(base or "/", endpoint="alias")
    @health.get(f"{base}/live", endpoint="live")
    def live() -> Response:
        return _no_store(
            jsonify(
                status="ok" if state.stopping is None and not state.hub.closed else "stopping",
                version=__version__,
                uptime=round(time.monotonic() - state.started, 3),
            )
        )

    @health.get(f"{base}/ready", endpoint="ready")
    def ready() -> Response:
        try:
            if state.stopping is None:
                state.ensure_started()
            reason = state.not_ready()
        except PublishRefused:  # the broker cannot be reached yet: tried again next time
            reason = "starting"
        if reason is None:
            return _no_store(jsonify(status="ready"))
        response = _no_store(jsonify(status="unavailable", reason=reason))
        response.status_code = 503
        return response

    return health
