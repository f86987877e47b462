"""The HTTP API under ``/api/v1``: publish events, read the hub's counters. Token required.

Runs on request threads; it only reads the shared :class:`~sidecar.app.Sidecar` and hands
events to the hub (whose inbox is its only synchronisation).

``POST /api/v1/events`` takes one envelope ``{"type", "payload"}`` or a JSON array of them,
parsed by :func:`sidecar.catalog.parse_publish_body` (400 not JSON, 413 an event too large,
422 invalid, naming the field). The server stamps the timestamp; the hub assigns ``seq``.
Answers 202 with what was broadcast.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from .catalog.publish import PublishError, parse_publish_body
from .envelope import Event
from .security import check_token

if TYPE_CHECKING:
    from .app import Sidecar

#: Largest request body accepted by the publish endpoint.
MAX_BODY = 1 << 20
#: Most events in one batch.
MAX_BATCH = 10_000


#: A publish request that cannot be accepted: HTTP ``status`` and a one-line ``message``.
Invalid = PublishError


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )


def error(status: int, message: str) -> Response:
    """A JSON error response ``{"error": message}``."""
    return _json(status, {"error": message})


def parse_events(body: bytes, max_event_bytes: int = 1 << 20) -> list[Event]:
    """Validate a publish body and build its events; raise :class:`Invalid` on any problem."""
    return parse_publish_body(body, max_event_bytes=max_event_bytes, max_batch=MAX_BATCH)


def api_blueprint(sidecar: Sidecar) -> Blueprint:
    """The ``/api/v1`` routes bound to ``sidecar``."""
    bp = Blueprint("sidecar_api", __name__, url_prefix="/api/v1")

    @bp.before_request
    def authenticate() -> Response | None:
        if check_token(request.environ, sidecar.token):
            sidecar.sessions.count_rejection("token")
            return error(401, "Unauthorized: a valid token is required")
        return None

    @bp.post("/events")
    def publish() -> Response:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return error(413, f"body of {length} bytes; at most {MAX_BODY}")
        body = request.stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return error(413, f"body larger than {MAX_BODY} bytes")
        try:
            events = parse_events(body, sidecar.hub.max_event_bytes)
        except Invalid as exc:
            return error(exc.status, exc.message)
        hub = sidecar.hub
        if not hub.is_running():
            return error(503, "shutting down")
        accepted = hub.broadcast_many(events)
        if accepted < len(events):
            response = _json(
                503,
                {
                    "error": "hub overloaded: retry the events not accepted",
                    "accepted": accepted,
                },
            )
            response.headers["Retry-After"] = "1"
            return response
        return _json(202, {"accepted": accepted, "events": [e.to_dict() for e in events]})

    @bp.get("/hub")
    def hub_state() -> Response:
        with sidecar.sessions.lock:
            sessions = {
                "active": sidecar.sessions.active,
                "limit": sidecar.sessions.limit,
                "rejectedHandshakes": dict(sidecar.sessions.rejected),
                "ended": dict(sidecar.sessions.ended),
            }
        return _json(200, {"hub": sidecar.hub.snapshot(), "sessions": sessions})

    @bp.errorhandler(405)
    def method_not_allowed(_exc: Exception) -> Response:
        return error(405, "method not allowed")

    return bp
