"""Identity and authorization, adversarially: who connects, who joins what, tokens, expiry.

The app under test is ``examples/flask-users`` (users with a session cookie, per-user
channels, team channels behind ``authorize``), served in this process; its own suite also
runs here with plain ``pytest``. What is checked is what a user would notice: a socket that
is refused, a ``channel:error`` code, the events that do (and never) arrive.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from flask import Flask

from sidecar import EventHub, Identity
from sidecar.core.identity import SubscriptionTokens
from sidecar.envelope import new_event
from tests.conftest import recv_close, recv_json, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask-users"
SECRET = "test-secret-key-0123456789"
TOKEN = "test-token-0123456789"
sys.path.insert(0, str(EXAMPLE))
from app import create_app  # noqa: E402  (the example is a folder, not a package)


class Browser:
    """One user's browser: the session cookie, and WebSockets that carry it."""

    def __init__(self, server: Any, user: str | None) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.http = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        if user is not None:
            self.call("POST", "/login", {"user": user})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server.url + path, data=data, method=method)
        with self.http.open(request, timeout=5) as response:
            return json.loads(response.read())

    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def connect(self, query: str = "", **options: Any) -> websocket.WebSocket:
        headers = [f"Cookie: {self.cookie()}", *options.pop("header", [])]
        ws = websocket.create_connection(
            self.server.ws_url + query, header=headers, timeout=5, **options
        )
        self.server.sockets.append(ws)
        return ws

    def ready(self, query: str = "") -> tuple[websocket.WebSocket, dict[str, Any]]:
        ws = self.connect(query)
        status = recv_json(ws)
        assert status["type"] == "connection:status"
        return ws, status["payload"]


@pytest.fixture
def server(sidecar_server: Any) -> Iterator[Any]:
    served = sidecar_server(create_app(SECRET_KEY=SECRET, SIDECAR_TOKEN=TOKEN))
    served.sockets = []
    yield served
    for ws in served.sockets:
        ws.close()


def subscribe(ws: websocket.WebSocket, channel: str, **extra: Any) -> dict[str, Any]:
    ws.send(json.dumps({"type": "channel:subscribe", "payload": {"channel": channel, **extra}}))
    answer = recv_json(ws)
    assert answer["type"] in ("channel:subscribed", "channel:error"), answer
    return answer


def test_the_examples_own_suite_passes_with_plain_pytest() -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=EXAMPLE, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# -- who connects ---------------------------------------------------------------------------------


def test_a_request_without_a_session_is_a_401_before_the_upgrade(server: Any) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Browser(server, None).connect()
    assert refused.value.status_code == 401


def test_a_foreign_origin_with_a_valid_session_cookie_is_a_403(server: Any) -> None:
    alice = Browser(server, "alice")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        alice.connect(origin="http://evil.example")  # cross-site WebSocket hijacking
    assert refused.value.status_code == 403


def test_the_shared_token_is_the_superuser(server: Any) -> None:
    ws = websocket.create_connection(
        server.ws_url + "?channels=team:blue,user:alice",
        header=[f"Authorization: Bearer {TOKEN}"],
        timeout=5,
    )
    server.sockets.append(ws)
    status = recv_json(ws)["payload"]
    assert set(status["channels"]) == {"team:blue", "user:alice"}  # a tool sees what it asks


def test_a_hook_that_raises_refuses_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import start_sidecar

    app = Flask("raising")
    hub = EventHub(app, token=TOKEN)

    @hub.authenticate
    def broken(_request: Any) -> Identity | None:
        raise RuntimeError("the user database is down")

    sc = start_sidecar(app)
    try:
        for _ in range(3):
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                websocket.create_connection(sc.ws_url, timeout=5)
            assert refused.value.status_code == 401
    finally:
        sc.close()
    lines = [r.getMessage() for r in caplog.records if "authenticate hook" in r.getMessage()]
    assert len(lines) == 1 and "database is down" in lines[0], lines
    assert not [r for r in caplog.records if r.exc_info]


# -- who joins what --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    [
        "user:bob",
        "user:Alice",  # case
        "user:alice2",
        "user:bob:alice",
        "user",
        "team:blue",
        "team:Red",
        "team:red:x",
    ],
)
def test_channel_name_tricks_are_forbidden(server: Any, channel: str) -> None:
    ws, status = Browser(server, "alice").ready(f"?channels={channel}")
    assert set(status["channels"]) == {"user:alice"}
    refused = recv_json(ws)["payload"]
    assert (refused["channel"], refused["code"]) == (channel, "forbidden")
    assert subscribe(ws, channel)["payload"]["code"] == "forbidden"


def test_encoded_names_are_not_decoded_into_someone_elses(server: Any) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Browser(server, "alice").connect("?channels=user%3Abob%2Cteam%3Ablue%00")
    assert refused.value.status_code == 400


def test_a_user_never_receives_another_users_events_live_or_replayed(server: Any) -> None:
    alice, bob = Browser(server, "alice"), Browser(server, "bob")
    ws, status = alice.ready("?channels=team:blue,user:bob")
    for _ in range(2):
        recv_json(ws)  # the two refusals
    epoch = server.hub.position("user:bob").epoch
    bob.call("POST", "/notify/bob", {"text": "secret"})
    alice.call("POST", "/notify/alice", {"text": "mine"})
    assert recv_json(ws)["payload"] == {"text": "mine"}
    ws.close()
    again, status = alice.ready(f"?channels=user:bob&since=user:bob@{epoch}:0")
    assert "user:bob" not in status["channels"]
    assert recv_json(again)["payload"]["code"] == "forbidden"
    alice.call("POST", "/notify/alice", {"text": "next"})
    assert recv_json(again)["payload"] == {"text": "next"}  # no replay of bob's came first


def test_send_to_user_reaches_every_tab_in_one_order(server: Any) -> None:
    alice = Browser(server, "alice")
    tabs = [alice.ready()[0] for _ in range(3)]
    for i in range(5):
        alice.call("POST", "/notify/alice", {"text": str(i)})
    for tab in tabs:
        got = [recv_json(tab) for _ in range(5)]
        assert [(e["channel"], e["seq"]) for e in got] == [("user:alice", s) for s in range(1, 6)]


def test_default_channel_off_keeps_the_stream_from_users() -> None:
    from tests.conftest import start_sidecar

    app = Flask("users")
    app.secret_key = SECRET
    hub = EventHub(app, token=TOKEN, default_channel=False)
    hub.authenticate(lambda request: Identity(request.headers.get("X-User")))
    sc = start_sidecar(app)
    try:
        ws = websocket.create_connection(sc.ws_url, header=["X-User: alice"], timeout=5)
        status = recv_json(ws)["payload"]
        assert set(status["channels"]) == {"user:alice"}
        sc.hub.publish([new_event("app:all", {})])
        sc.hub.publish([new_event("app:mine", {})], "user:alice")
        assert recv_json(ws)["type"] == "app:mine"
        ws.close()
    finally:
        sc.close()


# -- subscription tokens ---------------------------------------------------------------------------


def test_a_tampered_token_is_a_bad_token_at_every_byte(server: Any) -> None:
    alice = Browser(server, "alice")
    token = alice.call("GET", "/teams/red/token")["token"]
    tokens = SubscriptionTokens(SECRET)
    forged = []
    for i in range(len(token)):
        candidate = token[:i] + ("B" if token[i] == "A" else "A") + token[i + 1 :]
        if tokens.read(candidate) is None:  # (a base64 padding bit can decode the same)
            forged.append(candidate)
    assert len(forged) >= len(token) - 2
    codes = []
    for start in range(0, len(forged), 15):  # under the rate limit: a socket per 15
        ws, _status = alice.ready()
        codes += [
            subscribe(ws, "team:red", token=f)["payload"]["code"]
            for f in forged[start : start + 15]
        ]
        ws.close()
    assert set(codes) == {"bad_token"} and len(codes) == len(forged)


def test_another_users_token_and_another_channels_are_forbidden(server: Any) -> None:
    alice, bob = Browser(server, "alice"), Browser(server, "bob")
    token = alice.call("GET", "/teams/red/token")["token"]
    ws, _ = bob.ready()
    assert subscribe(ws, "team:red", token=token)["payload"]["code"] == "forbidden"
    own, _ = alice.ready()
    assert subscribe(own, "team:blue", token=token)["payload"]["code"] == "forbidden"
    assert subscribe(own, "team:red", token=token)["type"] == "channel:subscribed"


def test_an_expired_token_is_refused_even_when_replayed(server: Any) -> None:
    issuer = SubscriptionTokens(SECRET, clock=lambda: time.time() - 400)
    token = issuer.issue("alice", ["team:red"], ttl=300)  # expired 100 s ago
    ws, _ = Browser(server, "alice").ready()
    for _ in range(2):
        assert subscribe(ws, "team:red", token=token)["payload"]["code"] == "token_expired"


def test_a_token_issued_before_a_revoke_no_longer_admits(server: Any) -> None:
    alice, bob = Browser(server, "alice"), Browser(server, "bob")
    token = bob.call("GET", "/teams/red/token")["token"]
    ws, _ = bob.ready("?channels=team:red")
    alice.call("POST", "/teams/red/remove/bob")
    assert recv_json(ws)["payload"] == {"channel": "team:red", "reason": "revoked"}
    assert subscribe(ws, "team:red", token=token)["payload"]["code"] == "forbidden"


def test_tokens_never_appear_in_a_log_line(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    alice = Browser(server, "alice")
    token = alice.call("GET", "/teams/red/token")["token"]
    ws, _ = alice.ready()
    subscribe(ws, "team:red", token=token)
    subscribe(ws, "team:blue", token=token + "x")
    ws.send("not json " + token)
    wait_for(lambda: any("malformed" in r.getMessage() for r in caplog.records))
    assert not [r for r in caplog.records if token[3:40] in r.getMessage()]


# -- expiry ------------------------------------------------------------------------------------


def test_a_connection_past_its_identitys_expiry_is_closed_with_4401() -> None:
    from tests.conftest import start_sidecar

    app = Flask("expiring")
    hub = EventHub(app, token=TOKEN)
    hub.authenticate(lambda _request: Identity("alice", expires_at=time.time() + 0.5))
    sc = start_sidecar(app)
    try:
        ws = websocket.create_connection(sc.ws_url, timeout=5)
        assert recv_json(ws)["type"] == "connection:status"
        started = time.monotonic()
        assert recv_close(ws, 5) == 4401
        assert time.monotonic() - started < 3
        assert sc.hub.snapshot()["expired"] == 1
    finally:
        sc.close()


def test_an_identity_already_expired_is_a_401() -> None:
    from tests.conftest import start_sidecar

    app = Flask("expired")
    hub = EventHub(app, token=TOKEN)
    hub.authenticate(lambda _request: Identity("alice", expires_at=time.time() - 1))
    sc = start_sidecar(app)
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(sc.ws_url, timeout=5)
        assert refused.value.status_code == 401
    finally:
        sc.close()


# -- publishing to a user ---------------------------------------------------------------------


def test_an_http_publish_can_target_a_user(server: Any) -> None:
    ws, _ = Browser(server, "alice").ready()
    body = json.dumps([{"type": "app:ping", "payload": {}, "user": "alice"}]).encode()
    request = urllib.request.Request(
        server.url + "/api/v1/events", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert json.loads(reply.read())["events"][0]["channel"] == "user:alice"
    assert recv_json(ws)["channel"] == "user:alice"


def test_the_token_codec_round_trips_and_bounds_its_inputs() -> None:
    tokens = SubscriptionTokens(SECRET)
    token = tokens.issue("alice", ["team:red", "team:red"], ttl=60)
    grant = tokens.read(token)
    assert grant is not None and grant.channels == ("team:red",) and grant.user == "alice"
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["exp"] - payload["iat"] == 60
    bads: list[dict[str, Any]] = [{"ttl": 0}, {"ttl": 3601}, {"channels": []}, {"user": "a b"}]
    for bad in bads:
        args: dict[str, Any] = {"user": "alice", "channels": ["team:red"], "ttl": 60, **bad}
        with pytest.raises(ValueError):
            tokens.issue(args["user"], args["channels"], args["ttl"])
    assert SubscriptionTokens("another-secret").read(token) is None
