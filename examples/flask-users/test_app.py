"""The multi-user app's own suite, on the sidecar's pytest plugin: real sockets, real cookies.

``sidecar_server`` (a ``pytest11`` fixture of the installed package) serves the app; each
user logs in over HTTP and opens WebSockets with that session cookie, as a browser would.
Run ``pytest`` in this folder.
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import websocket
from app import create_app

CONFIG = {"SECRET_KEY": "test-secret-key-0123456789", "SIDECAR_TOKEN": "test-token-0123456789"}


class User:
    """A browser: a cookie jar for the app's session, and WebSockets that send it."""

    def __init__(self, server: Any, name: str) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.http = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.sockets: list[websocket.WebSocket] = []
        self.call("POST", "/login", {"user": name})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server.url + path, data=data, method=method)
        with self.http.open(request, timeout=5) as response:
            return json.loads(response.read())

    def connect(self, query: str = "") -> tuple[websocket.WebSocket, dict[str, Any]]:
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.jar)
        ws = websocket.create_connection(
            self.server.ws_url + query, header=[f"Cookie: {cookie}"], timeout=5
        )
        self.sockets.append(ws)
        status = json.loads(ws.recv())
        return ws, status["payload"]

    def close(self) -> None:
        for ws in self.sockets:
            ws.close()


@pytest.fixture
def users(sidecar_server: Any) -> Any:
    server = sidecar_server(create_app(**CONFIG))
    made: list[User] = []

    def login(name: str) -> User:
        made.append(User(server, name))
        return made[-1]

    yield login
    for user in made:
        user.close()


def next_of(ws: websocket.WebSocket, type: str) -> dict[str, Any]:
    while True:
        frame = json.loads(ws.recv())
        if frame["type"] == type:
            return frame


def test_each_user_gets_their_own_notifications_in_every_tab(users: Any) -> None:
    alice, bob = users("alice"), users("bob")
    (tab1, status), (tab2, _) = alice.connect(), alice.connect()
    (other, _) = bob.connect()
    assert "user:alice" in status["channels"]
    alice.call("POST", "/notify/bob", {"text": "for bob"})
    alice.call("POST", "/notify/alice", {"text": "for alice"})
    for tab in (tab1, tab2):
        assert next_of(tab, "app:notification")["payload"] == {"text": "for alice"}
    assert next_of(other, "app:notification")["payload"] == {"text": "for bob"}


def test_a_team_channel_is_for_its_members_only(users: Any) -> None:
    alice, carol = users("alice"), users("carol")
    ws, status = carol.connect("?channels=team:red,user:alice")  # not hers, either of them
    assert status.get("channels", {}).keys() == {"user:carol"}
    refused = [json.loads(ws.recv())["payload"] for _ in range(2)]
    assert {(r["channel"], r["code"]) for r in refused} == {
        ("team:red", "forbidden"),
        ("user:alice", "forbidden"),
    }
    member, status = alice.connect("?channels=team:red")
    assert "team:red" in status["channels"]
    alice.call("POST", "/teams/red/say", {"text": "hi"})
    assert next_of(member, "team:message")["channel"] == "team:red"


def test_a_subscription_token_admits_its_user_and_no_one_else(users: Any) -> None:
    alice, carol = users("alice"), users("carol")
    token = alice.call("GET", "/teams/red/token")["token"]
    mine, _ = alice.connect()
    mine.send(
        json.dumps(
            {"type": "channel:subscribe", "payload": {"channel": "team:red", "token": token}}
        )
    )
    assert next_of(mine, "channel:subscribed")["payload"]["channel"] == "team:red"
    theirs, _ = carol.connect()
    theirs.send(
        json.dumps(
            {"type": "channel:subscribe", "payload": {"channel": "team:red", "token": token}}
        )
    )
    assert next_of(theirs, "channel:error")["payload"]["code"] == "forbidden"


def test_a_removed_member_is_revoked_at_once(users: Any) -> None:
    alice, bob = users("alice"), users("bob")
    ws, _ = bob.connect("?channels=team:red")
    alice.call("POST", "/teams/red/remove/bob")
    assert next_of(ws, "channel:unsubscribed")["payload"] == {
        "channel": "team:red",
        "reason": "revoked",
    }
    alice.call("POST", "/teams/red/say", {"text": "after"})
    alice.call("POST", "/notify/bob", {"text": "still here"})
    assert next_of(ws, "app:notification")["payload"] == {"text": "still here"}  # nothing before


def test_no_session_no_socket(sidecar_server: Any) -> None:
    server = sidecar_server(create_app(**CONFIG))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.ws_url, timeout=5)
    assert refused.value.status_code == 401
