"""A multi-user Flask app: who may see what is the app's to say, the hub enforces it.

Users log in with a session cookie (``POST /login``). The hub asks the app who each WebSocket
is (``@hub.authenticate``, from the same cookie) and whether it may join a channel
(``@hub.authorize``): every user gets their own ``user:<id>`` channel for notifications, and a
team's channel ``team:<name>`` is for its members only. A page can also be handed a
short-lived subscription token for a team, and a member removed from a team is revoked at
once. Serve it under gunicorn gthread (see the docs: "Identity and authorization"):

    SECRET_KEY=… SIDECAR_TOKEN=… gunicorn -c python:sidecar.gunicorn_conf 'app:create_app()'

The shared token (``SIDECAR_TOKEN``) stays the server's key for publishers and tools; pages
never see it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, abort, current_app, jsonify, request, session

from sidecar import EventHub, Identity
from sidecar.envelope import new_event

hub = EventHub()


@hub.authenticate
def who_is_it(_request: Request) -> Identity | None:
    """The WebSocket's user, from the app's own session cookie (``None``: a 401)."""
    user = session.get("user")
    return Identity(user) if isinstance(user, str) else None


@hub.authorize
def may_join(identity: Identity, channel: str) -> bool:
    """``team:<name>`` for its members; nothing else (``user:<id>`` is the hub's rule)."""
    namespace, _, team = channel.partition(":")
    return namespace == "team" and identity.user in teams().get(team, set())


def teams() -> dict[str, set[str]]:
    teams: dict[str, set[str]] = current_app.config["TEAMS"]
    return teams


def current_user() -> str:
    user = session.get("user")
    if not isinstance(user, str):
        abort(401)
    return user


def member_of(team: str) -> str:
    user = current_user()
    if user not in teams().get(team, set()):
        abort(403)
    return user


def create_app(**config: Any) -> Flask:
    """The app factory: login, notifications, team messages, tokens, removal; and the hub."""
    app = Flask(__name__)
    app.config["TEAMS"] = {"red": {"alice", "bob"}, "blue": {"carol"}}
    app.config.update(config)
    hub.init_app(app)

    @app.post("/login")
    def login() -> Any:
        session["user"] = request.get_json(force=True)["user"]  # (a real app checks a password)
        return jsonify(user=session["user"])

    @app.post("/notify/<user>")
    def notify(user: str) -> Any:
        text = request.get_json(force=True)["text"]
        hub.send_to_user(user, new_event("app:notification", {"text": text}))
        return jsonify(sent=True)

    @app.post("/teams/<team>/say")
    def say(team: str) -> Any:
        user = member_of(team)
        text = request.get_json(force=True)["text"]
        seqs = hub.publish(
            [new_event("team:message", {"from": user, "text": text})], f"team:{team}"
        )
        return jsonify(seq=seqs[0])

    @app.get("/teams/<team>/token")
    def token(team: str) -> Any:
        user = member_of(team)
        return jsonify(token=hub.subscription_token(user, [f"team:{team}"], ttl=300))

    @app.post("/teams/<team>/remove/<user>")
    def remove(team: str, user: str) -> Any:
        member_of(team)
        teams()[team].discard(user)
        hub.revoke(user, f"team:{team}")  # their open pages stop getting the team's events
        return jsonify(removed=user)

    return app
