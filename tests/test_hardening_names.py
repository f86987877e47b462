"""Issue 11, class 4: names that almost match are refused by every way of publishing.

A type must be ``namespace:kebab-case`` as a whole string (``re.match`` with ``$`` let a
trailing newline through), and nobody but the hub may broadcast ``connection:*`` or a
client-to-server type (``chat:send``, ``chat:cancel``): a client library would take a
published ``connection:status`` for its own. Each name below is tried on every path: the HTTP
API, ``Hub.broadcast`` of raw JSON, ``broadcast_event``/``broadcast_many``/``publish`` with an
:class:`~sidecar.envelope.Event` built directly (no constructor check), the
:class:`~sidecar.EventHub` methods, and the broker's :class:`~sidecar.broker.Publisher`
against a real ``redis-server``. A WebSocket client sees none of them, and the valid sibling
name passes everywhere.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.catalog import CATALOG
from sidecar.envelope import Event, encode, new_event
from sidecar.protocol import CLIENT_EVENT_TYPES
from tests.conftest import RunningSidecar, recv_json, wait_for
from tests.redis_server import RedisServer

REFUSED = [
    "app:thing\n",
    "app:thing\r\n",
    "app:thing ",
    "\napp:thing",
    "app:thing\u2028",
    "App:Thing",
    "connection:status",
    "connection:anything-else",
    "chat:send",
    "chat:cancel",
]
VALID = "app:thing"


def _post(running: RunningSidecar, name: str) -> int:
    body = json.dumps({"type": name, "payload": {}}).encode()
    request = urllib.request.Request(running.url + "/api/v1/events", data=body, method="POST")
    request.add_header("Authorization", f"Bearer {running.token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _paths(running: RunningSidecar) -> dict[str, Callable[[str], Any]]:
    """Every way to publish a type, each raising ``ValueError`` (or answering 4xx) if refused."""
    hub, extension = running.hub, running.state.extension

    def api(name: str) -> None:
        """POST one event; ``ValueError`` unless it was accepted."""
        status = _post(running, name)
        if status != 202:
            raise ValueError(f"HTTP {status}")

    return {
        "api": api,
        "hub.broadcast": lambda name: hub.broadcast(encode(Event(name, {}))),
        "hub.broadcast str": lambda name: hub.broadcast(json.dumps({"type": name, "payload": {}})),
        "hub.broadcast_event": lambda name: hub.broadcast_event(Event(name, {})),
        "hub.broadcast_many": lambda name: hub.broadcast_many([Event(name, {})]),
        "hub.publish": lambda name: hub.publish([new_event(VALID, {}), Event(name, {})]),
        "EventHub.broadcast_event": lambda name: extension.broadcast_event(Event(name, {})),
        "EventHub.publish": lambda name: extension.publish([Event(name, {})]),
    }


@pytest.fixture
def watched(sidecar: RunningSidecar) -> Iterator[tuple[RunningSidecar, Any]]:
    """The sidecar and a connected WebSocket client."""
    ws, _status = sidecar.connect_ready()
    wait_for(lambda: sidecar.hub.client_count() == 1)
    yield sidecar, ws


@pytest.mark.parametrize("name", REFUSED, ids=[repr(n) for n in REFUSED])
def test_a_name_that_almost_matches_is_refused_on_every_path(watched, name):
    running, ws = watched
    for path, publish in _paths(running).items():
        with pytest.raises(ValueError):
            publish(name)
            pytest.fail(f"{path} accepted {name!r}")
    assert running.hub.seq == 0, "something was broadcast"
    running.hub.broadcast_event(new_event("test:marker", {}))
    assert recv_json(ws)["type"] == "test:marker"  # the first frame since: nothing leaked


def test_the_valid_sibling_passes_every_path(watched):
    running, ws = watched
    paths = _paths(running)
    for publish in paths.values():
        publish(VALID)
    received = [recv_json(ws)["type"] for _ in range(len(paths) + 1)]  # hub.publish sends 2
    assert received == [VALID] * (len(paths) + 1)


def test_the_protocol_list_of_client_types_is_the_catalog_s():
    assert {name for name, spec in CATALOG.items() if spec.direction != "server"} == set(
        CLIENT_EVENT_TYPES
    )


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of a real redis-server, stopped afterwards."""
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def test_the_broker_publisher_refuses_them_and_publishes_the_sibling(redis_url):
    from sidecar.broker import Publisher

    with Publisher(redis_url) as publisher:
        for name in REFUSED:
            with pytest.raises(ValueError):
                publisher.publish(name, {})
            with pytest.raises(ValueError):
                publisher.publish_many([(VALID, {}), Event(name, {})])
        _epoch, seq = publisher.head()
        assert seq == 0, "a refused event reached Redis"
        assert publisher.publish(VALID, {}) == 1
