"""The HTTP API under ``/api/v1``: publish events, read the counters. Token required.

Request threads only; it reads the shared :class:`~sidecar.web.state.SidecarState` and hands
events to the hub (whose inbox is its only synchronisation) or to the broker.

``POST /api/v1/events`` takes one envelope ``{"type", "payload"}`` or a JSON array of them
(all or nothing). Known types are validated against the catalog (422 naming the field); other
names must be ``namespace:kebab-case`` (app-specific events pass through). The server stamps
the timestamp; the hub (or the broker) assigns ``seq``. Answers 202 with the envelopes as
broadcast, ``seq`` included. Every error is JSON ``{"error": "…"}``, 404 and 405 included.
Not broadcast (overloaded, stopping, Redis unreachable): 503 ``"outcome": "not-broadcast"``.
Sent to Redis and no answer: 504 ``"outcome": "unknown"``. An ``Idempotency-Key`` header
makes a retry safe: the same key within the window answers 202 with the first request's
seqs and ``"duplicate": true`` instead of publishing again.

``GET /metrics`` (:func:`metrics_blueprint`, token required) serves Prometheus text from
:mod:`sidecar.web.metrics`, which imports ``prometheus_client`` only then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import logs
from ..catalog import PublishError, parse_publish_body
from ..core.hub import PublishRefused
from ..envelope import encode_decoded, with_seq
from ..protocol import IdempotencyKeyReused, PublishOutcomeUnknown, check_idempotency_key
from .guards import check_token
from .state import SidecarState

#: Most events in one batch.
MAX_BATCH = 10_000
#: The request header that makes a publish idempotent (as Stripe's and the IETF draft's).
IDEMPOTENCY_HEADER = "Idempotency-Key"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n",
        status=status,
        mimetype="application/json",
    )
    response.headers.update(headers or {})
    return response


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error response ``{"error": message}``."""
    return _json(status, {"error": message}, headers)


def read_body(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes; raises :class:`PublishError` (400/413)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PublishError(413, f"body of {length} bytes; at most {limit}")
    try:
        body = request.stream.read(limit + 1)
    except RequestEntityTooLarge as exc:  # a chunk larger than the limit (sidecar.httphead)
        raise PublishError(413, f"body too large: {exc.description}") from None
    except HTTPException as exc:  # a cut-off body
        raise PublishError(400, f"malformed request body: {exc.description}") from None
    except (OSError, ValueError) as exc:  # a malformed chunk
        raise PublishError(400, f"malformed request body: {exc}") from None
    if len(body) > limit:
        raise PublishError(413, f"body larger than {limit} bytes")
    return body


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` (one pair of quotes around it dropped, as the IETF
    draft writes it), or ``None``; raises :class:`PublishError` (400) when malformed."""
    values = request.headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None
    key = values[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    try:
        if len(values) > 1:
            raise ValueError(f"one {IDEMPOTENCY_HEADER} header, not {len(values)}")
        return check_idempotency_key(key)
    except ValueError as exc:
        raise PublishError(400, f"{IDEMPOTENCY_HEADER}: {exc}") from None


def _publish(state: SidecarState) -> Response:
    try:
        key = idempotency_key()
        body = read_body(state.config.max_event_bytes)
        events = parse_publish_body(
            body, max_event_bytes=state.config.max_event_bytes, max_batch=MAX_BATCH
        )
    except PublishError as exc:
        return error(exc.status, exc.message)
    try:
        items = [(event.channel, encode_decoded(event)) for event in events]
        seqs = state.hub.publish_items(items, idempotency_key=key)
    except PublishOutcomeUnknown as exc:
        retry = "retry with the same Idempotency-Key"
        answer = {"error": f"outcome unknown: {exc}; {retry}", "outcome": "unknown"}
        return _json(504, answer, {"Retry-After": "1"})
    except PublishRefused as exc:
        answer = {"error": f"not broadcast: {exc}; retry", "outcome": "not-broadcast"}
        return _json(503, answer, {"Retry-After": "1"})
    except IdempotencyKeyReused as exc:
        return error(422, f"{IDEMPOTENCY_HEADER}: {exc}")
    except ValueError as exc:  # larger than the hub's limit (the parser checks this too)
        return error(413, str(exc))
    if seqs.duplicate:  # published before, by a request with this key
        return _json(202, {"accepted": len(seqs), "seqs": list(seqs), "duplicate": True})
    return _accepted(items, seqs)


def _accepted(items: list[tuple[str, bytes]], seqs: list[int]) -> Response:
    """The 202: ``{"accepted", "seqs", "events"}``, each event the envelope as broadcast
    (with its ``seq``, and its ``channel`` if it has one), as :func:`_json` writes it: the
    encoded envelopes are spliced in, not decoded and encoded again."""
    events = b",".join(
        with_seq(data, seq, channel) for (channel, data), seq in zip(items, seqs, strict=True)
    )
    numbers = b",".join(b"%d" % seq for seq in seqs)
    body = b'{"accepted":%d,"seqs":[%s],"events":[%s]}\n' % (len(seqs), numbers, events)
    return Response(body, status=202, mimetype="application/json")


def _counters(state: SidecarState) -> dict[str, Any]:
    counters: dict[str, Any] = {
        "pid": os.getpid(),
        "hub": state.hub.snapshot(),
        "sessions": state.sessions.snapshot(),
        "logs": {"dropped": logs.dropped()},
    }
    if state.broker is not None:
        counters["relay"] = asdict(state.broker.relay_stats())
    return counters


def _unauthorized(state: SidecarState) -> Response | None:
    if check_token(request.environ, state.token):
        state.sessions.count_rejection("token", handshake=False)
        return error(401, "Unauthorized: a valid token is required")
    return None


def _metrics(state: SidecarState) -> Response:
    if request.method not in ("GET", "HEAD"):
        return error(405, "method not allowed: use GET", {"Allow": "GET"})
    try:
        from .metrics import render

        body, content_type = render(state)
    except ImportError:
        return error(501, "metrics need prometheus_client: pip install 'sidecar-hub[metrics]'")
    return Response(body, status=200, content_type=content_type)


def metrics_blueprint(
    state: SidecarState, path: str = "/metrics", guard: Callable[[], Response | None] | None = None
) -> Blueprint:
    """``GET path``: Prometheus text (token required); ``guard`` runs first (the Host check)."""
    bp = Blueprint("sidecar_metrics", __name__)

    @bp.route(path, methods=_ALL_METHODS)
    def metrics() -> Response:
        if guard is not None and (response := guard()) is not None:
            return response
        return _unauthorized(state) or _metrics(state)

    return bp


def api_blueprint(
    state: SidecarState, prefix: str = "/api/v1", guard: Callable[[], Response | None] | None = None
) -> Blueprint:
    """The ``/api/v1`` routes bound to ``state``; ``guard`` runs first (the Host check)."""
    bp = Blueprint("sidecar_api", __name__, url_prefix=prefix)

    @bp.before_request
    def authenticate() -> Response | None:
        if guard is not None and (response := guard()) is not None:
            return response
        return _unauthorized(state)

    def route(path: str, method: str, view: Callable[[], Response]) -> None:
        def dispatch() -> Response:
            if request.method == method or (method == "GET" and request.method == "HEAD"):
                return view()
            return error(405, f"method not allowed: use {method}", {"Allow": method})

        bp.add_url_rule(path, path.strip("/") or "index", dispatch, methods=_ALL_METHODS)

    route("/events", "POST", lambda: _publish(state))
    route("/hub", "GET", lambda: _json(200, _counters(state)))

    @bp.route("/", defaults={"rest": ""}, methods=_ALL_METHODS)
    @bp.route("/<path:rest>", methods=_ALL_METHODS)
    def not_found(rest: str) -> Response:
        return error(404, f"no such endpoint: {prefix}/{rest}")

    return bp
