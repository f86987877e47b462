"""An existing Flask app that gains the sidecar's hub in a few lines.

Serve it under gunicorn with the sidecar's config (gthread, one worker without a broker, a
graceful stop, no token in gunicorn's logs):

    SIDECAR_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \
    gunicorn -c python:sidecar.gunicorn_conf --threads 64 -b 127.0.0.1:8000 'app:create_app()'

Browsers connect to ``ws://127.0.0.1:8000/ws`` with the subprotocols ``sidecar.v1`` and
``auth.<token>``; other processes publish with ``POST /api/v1/events``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from sidecar import EventHub
from sidecar.events import new_stream_created_event

hub = EventHub()  # options from create_app's config, then SIDECAR_* variables


def create_app(**config: Any) -> Flask:
    """The app factory: its own routes, plus /ws and /api/v1 from the hub."""
    app = Flask(__name__)
    app.config.update(config)
    hub.init_app(app)

    @app.post("/streams")
    def create_stream() -> Any:
        body = request.get_json(force=True)
        hub.broadcast_event(new_stream_created_event(body["projectId"], body["id"], body["name"]))
        return jsonify(created=body["id"]), 201

    @hub.on_message
    def on_client_event(client: Any, event: dict[str, Any]) -> None:
        if event["type"] == "chat:cancel":
            hub.send_to_client(client, new_stream_created_event("p", "cancelled", "ack"))

    return app
