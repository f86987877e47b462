"""``EventHub`` on an existing Flask app: its routes stay, the hub's arrive with every guard.

Real sockets throughout (the ``sidecar_server`` and ``sidecar_client`` fixtures of the pytest
plugin serve the app on 127.0.0.1:0). Both ways of attaching the extension are covered:
``EventHub(app, …)`` and ``EventHub(…)`` + ``init_app(app)`` in an app factory.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest
import websocket
from flask import Flask, jsonify

from sidecar import EventHub
from sidecar.config import ConfigError
from sidecar.events import new_stream_created_event
from sidecar.pytest_plugin import ServedSidecar

TOKEN = "extension-token-0123456789"


def _app_with_routes() -> Flask:
    app = Flask("shop")

    @app.get("/")
    def index() -> Any:
        return jsonify(page="the app's own index")

    @app.get("/orders/<int:n>")
    def order(n: int) -> Any:
        return jsonify(order=n)

    return app


def direct() -> tuple[Flask, EventHub]:
    app = _app_with_routes()
    return app, EventHub(app, token=TOKEN)


hub_for_factory = EventHub(ping_interval=0)


def factory() -> tuple[Flask, EventHub]:
    app = _app_with_routes()
    app.config["SIDECAR_TOKEN"] = TOKEN
    hub_for_factory.init_app(app)
    return app, hub_for_factory


def _get(url: str, token: str | None = None, host: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            if response.headers.get_content_type() != "application/json":
                return response.status, body
            return response.status, json.loads(body)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict[str, Any], token: str | None) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("make", [direct, factory], ids=["EventHub(app)", "init_app"])
def test_an_existing_app_gains_the_hub_and_keeps_its_routes(
    make: Any, sidecar_server: Any, sidecar_client: Any
) -> None:
    app, hub = make()
    server: ServedSidecar = sidecar_server(app)
    # the app's own routes answer as before, without the token
    assert _get(server.url + "/") == (200, {"page": "the app's own index"})
    assert _get(server.url + "/orders/7") == (200, {"order": 7})
    # /ws with the token gets connection:status, and a broadcast through the extension
    client = sidecar_client(server)
    assert client.status["status"] == "connected" and client.status["seq"] == 0
    with app.app_context():
        assert hub.broadcast_event(new_stream_created_event("p", "s", "n"))
    assert client.next("stream:created")["seq"] == 1
    # the publish API, behind the token
    event = {"type": "stream:created", "payload": {"projectId": "p", "streamId": "s", "name": "x"}}
    assert _post(server.url + "/api/v1/events", event, token=None) == 401
    assert _post(server.url + "/api/v1/events", event, token=TOKEN) == 202
    assert client.next()["payload"]["name"] == "x"


@pytest.mark.parametrize("make", [direct, factory], ids=["EventHub(app)", "init_app"])
def test_the_hubs_routes_keep_their_guards(make: Any, sidecar_server: Any) -> None:
    app, _hub = make()
    server: ServedSidecar = sidecar_server(app)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.ws_url, timeout=5, suppress_origin=True)
    assert refused.value.status_code == 401  # no token
    with pytest.raises(websocket.WebSocketBadStatusException) as foreign:
        websocket.create_connection(
            server.ws_url, header=[f"Authorization: Bearer {TOKEN}"], origin="https://evil.test"
        )
    assert foreign.value.status_code == 403
    # DNS rebinding: the hub's routes refuse a foreign Host; the app's own routes are its own
    assert _get(server.url + "/api/v1/hub", TOKEN, host="evil.test")[0] == 403
    assert _get(server.url + "/", host="evil.test")[0] == 200


def test_a_hub_without_a_token_refuses_to_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SIDECAR_TOKEN", raising=False)
    monkeypatch.delenv("SIDECAR_AUTH", raising=False)
    with pytest.raises(ConfigError) as caught:
        EventHub(Flask("no-token"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("SIDECAR_TOKEN is not set")
    assert "auth=False" in message


@pytest.mark.parametrize(
    ("env", "options", "starts"),
    [
        ({"SIDECAR_AUTH": ""}, {}, "SIDECAR_AUTH is empty"),
        ({"SIDECAR_AUTH": "", "SIDECAR_TOKEN": TOKEN}, {}, "SIDECAR_AUTH is empty"),
        ({"SIDECAR_TOKEN": ""}, {}, "SIDECAR_TOKEN is empty"),
        ({"SIDECAR_TOKEN": TOKEN, "SIDECAR_ALLOWED_ORIGINS": ""}, {}, "SIDECAR_ALLOWED_ORIGINS"),
        ({"SIDECAR_TOKEN": TOKEN}, {"auth": ""}, "--auth is empty"),
        ({"SIDECAR_TOKEN": TOKEN}, {"broker": "localhost:6379"}, "--broker must be a Redis URL"),
        ({"SIDECAR_TOKEN": TOKEN, "SIDECAR_BROKER": "localhost:6379"}, {}, "SIDECAR_BROKER must"),
    ],
    ids=["auth", "auth-with-token", "token", "origins", "keyword", "broker", "broker-variable"],
)
def test_an_empty_or_unusable_setting_stops_the_app_with_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], options: dict[str, Any], starts: str
) -> None:
    """Issue 19 items 2 and 13: ``SIDECAR_AUTH=`` started an app with auth off; a broker URL
    without a scheme raised the driver's ValueError."""
    for name in ("SIDECAR_TOKEN", "SIDECAR_AUTH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        EventHub(Flask("empty"), **options)
    message = str(caught.value)
    assert message.startswith(starts) and "\n" not in message


def test_auth_off_is_explicit_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sidecar")
    EventHub(Flask("dev"), auth=False)
    assert any("auth is off" in r.getMessage() for r in caplog.records)


def test_options_come_from_arguments_then_app_config_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDECAR_QUEUE_SIZE", "11")
    monkeypatch.setenv("SIDECAR_HISTORY_SIZE", "12")
    monkeypatch.setenv("SIDECAR_MAX_CLIENTS", "13")
    app = Flask("precedence")
    app.config.update(SIDECAR_HISTORY_SIZE=22, SIDECAR_MAX_CLIENTS=23)
    EventHub(app, token=TOKEN, max_clients=33)
    config = app.extensions["sidecar"].config
    assert (config.queue_size, config.history_size, config.max_clients) == (11, 22, 33)


def test_a_bad_app_config_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("bad")
    app.config["SIDECAR_QUEUE_SIZE"] = 0
    named = r'^app.config\["SIDECAR_QUEUE_SIZE"\] must be at least 1'
    with pytest.raises(ConfigError, match=named):
        EventHub(app, token=TOKEN)


def test_one_extension_serves_several_apps_inside_their_contexts() -> None:
    shared = EventHub(ping_interval=0)
    first, second = Flask("a"), Flask("b")
    for app in (first, second):
        app.config["SIDECAR_TOKEN"] = TOKEN
        shared.init_app(app)
    with first.app_context():
        first_hub = shared.hub
    with second.app_context():
        assert shared.hub is not first_hub
    with pytest.raises(RuntimeError, match="several apps"):
        shared.client_count()
    for app in (first, second):
        app.extensions["sidecar"].hub.stop()


def test_plain_dicts_are_events_for_send_to_client_and_broadcast_event(
    sidecar_server: Any, sidecar_client: Any
) -> None:
    """Issue 19: ``send_to_client(client, {"type": …, "payload": …})`` was a 500 (or 1011)."""
    app = _app_with_routes()
    hub = EventHub(app, token=TOKEN, ping_interval=0)

    @hub.on_message
    def answer(client: Any, event: dict[str, Any]) -> None:
        hub.send_to_client(client, {"type": "chat:ack", "payload": {"of": event["type"]}})

    @app.post("/announce")
    def announce() -> Any:
        return jsonify(sent=hub.broadcast_event({"type": "app:announced", "payload": {}})), 201

    server: ServedSidecar = sidecar_server(app)
    client = sidecar_client(server)
    client.send("chat:send", {"conversationId": "c", "content": "hi"})
    ack = client.next("chat:ack")
    assert ack["payload"] == {"of": "chat:send"} and "seq" not in ack
    assert _post(server.url + "/announce", {}, token=None) == 201
    assert client.next("app:announced")["seq"] == 1


def test_an_eventhub_app_serves_metrics_under_its_api_prefix(sidecar_server: Any) -> None:
    """Issue 19: ``/metrics`` was a 404 in an EventHub app unless ``metrics_path`` was passed,
    which only a docstring said. It never takes the app's own ``/metrics``."""
    app = _app_with_routes()

    @app.get("/metrics")
    def own_metrics() -> Any:
        return jsonify(owner="the app")

    EventHub(app, token=TOKEN)
    server: ServedSidecar = sidecar_server(app)
    status, body = _get(server.url + "/api/v1/metrics", TOKEN)
    assert status == 200 and b"sidecar_clients" in body
    assert _get(server.url + "/api/v1/metrics")[0] == 401  # the token, as for /api/v1/hub
    assert _get(server.url + "/metrics") == (200, {"owner": "the app"})
    elsewhere = _app_with_routes()
    EventHub(elsewhere, token=TOKEN, api_prefix="/hub-api", metrics_path=None)
    other: ServedSidecar = sidecar_server(elsewhere)
    assert _get(other.url + "/hub-api/metrics", TOKEN)[0] == 404


@pytest.mark.parametrize("second", ["same", "another"])
def test_init_app_twice_on_one_app_is_refused_and_leaves_it_whole(
    second: str, sidecar_server: Any, sidecar_client: Any
) -> None:
    """Issue 19: the second call failed half-way ("Working outside of application context")
    after replacing the app's hub state: the routes served one hub, the extension another."""
    app = _app_with_routes()
    hub = EventHub(token=TOKEN)
    hub.init_app(app)
    state = app.extensions["sidecar"]
    again = hub if second == "same" else EventHub(token=TOKEN)
    with pytest.raises(RuntimeError, match="already has an EventHub"):
        again.init_app(app)
    assert app.extensions["sidecar"] is state
    server: ServedSidecar = sidecar_server(app)
    client = sidecar_client(server)
    with app.app_context():
        assert hub.broadcast_event({"type": "app:whole", "payload": {}})
    assert client.next()["type"] == "app:whole"
