"""The pytest plugin as an app's suite meets it: installed, found by its entry point.

``examples/flask-app`` is a small app with its own test file that uses only the
``sidecar_server`` and ``sidecar_client`` fixtures; it runs here with plain ``pytest`` in a
fresh process, from its own folder (its own ``pytest.ini``, none of this suite's conftest).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import threading
from pathlib import Path
from xml.etree import ElementTree

import pytest

from sidecar.client import ChannelRefused, SubscriberClosed
from sidecar.envelope import new_event
from sidecar.pytest_plugin import ServerClosed
from tests.conftest import wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask-app"


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert names.get("sidecar") == "sidecar.pytest_plugin"


def test_a_downstream_suite_passes_with_plain_pytest(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command.append(f"--junitxml={report}")
    result = subprocess.run(command, cwd=EXAMPLE, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # counted from the JUnit report, not from pytest's summary wording
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": 3, "failures": 0, "errors": 0, "skipped": 0}, result.stdout


def test_a_client_times_out_with_timeout_error(sidecar_server, sidecar_client) -> None:
    server = sidecar_server()
    client = sidecar_client(server)
    with pytest.raises(TimeoutError):
        client.next(timeout=0.2)
    with pytest.raises(TimeoutError):
        client.collect(1, timeout=0.2)


def test_stop_closes_clients_with_1001_and_ends_every_thread(sidecar_server, sidecar_client):
    before = set(threading.enumerate())
    server = sidecar_server(queue_size=8)
    client = sidecar_client(server)
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    with pytest.raises(ServerClosed) as closed:  # not a JSON error: the close, named
        client.next(timeout=5)
    assert closed.value.code == 1001 and "1001" in str(closed.value)
    client.close()
    stopping.join(10)
    assert not stopping.is_alive()
    wait_for(lambda: not (set(threading.enumerate()) - before), timeout=5)


# -- issue 19: next(type), a server's close, one server per app ---------------------------------


def _broadcast(server, *types: str) -> None:
    for name in types:
        assert server.hub.broadcast_event({"type": name, "payload": {}})


def test_next_of_a_type_keeps_the_others_for_later_calls(sidecar_server, sidecar_client):
    server = sidecar_server()
    client = sidecar_client(server)
    _broadcast(server, "app:one", "app:two", "app:three", "app:two")
    assert client.next("app:three")["seq"] == 3
    assert [e["seq"] for e in client.collect(2)] == [1, 2]  # kept, in order
    assert client.next()["seq"] == 4
    _broadcast(server, "app:five", "app:six")
    assert client.next("app:six")["seq"] == 6
    assert client.next("app:five")["seq"] == 5


def test_a_timeout_names_the_type_and_what_was_kept(sidecar_server, sidecar_client):
    server = sidecar_server()
    client = sidecar_client(server)
    _broadcast(server, "app:other", "app:other")
    with pytest.raises(TimeoutError) as waited:
        client.next("app:wanted", timeout=0.5)
    assert "'app:wanted'" in str(waited.value) and "app:other x2" in str(waited.value)
    assert [e["type"] for e in client.collect(2)] == ["app:other", "app:other"]
    with pytest.raises(TimeoutError, match="0 of 1 events"):
        client.collect(1, timeout=0.2)


def test_after_the_server_closes_next_raises_server_closed_with_the_code(
    sidecar_server, sidecar_client
):
    """It raised JSONDecodeError (the close frame read as an empty text)."""
    from sidecar.pytest_plugin import ServerClosed

    server = sidecar_server()
    client = sidecar_client(server)
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    with pytest.raises(ServerClosed) as closed:
        client.next(timeout=5)
    assert closed.value.code == 1001 and isinstance(closed.value, ConnectionError)
    with pytest.raises(ServerClosed):
        client.collect(1, timeout=1)  # again, at once
    stopping.join(10)


def test_one_app_is_served_once_and_never_after_its_hub_stopped(sidecar_server, sidecar_client):
    """Serving one app twice and stopping one server stopped the other's hub."""
    from flask import Flask

    from sidecar import EventHub

    app = Flask("twice")
    EventHub(app, token="plugin-token-0123456789")
    first = sidecar_server(app)
    with pytest.raises(RuntimeError, match=f"already served at {first.url}"):
        sidecar_server(app)
    client = sidecar_client(first)
    _broadcast(first, "app:still-served")
    assert client.next()["type"] == "app:still-served"
    client.close()
    first.stop()
    with pytest.raises(RuntimeError, match="hub was stopped"):
        sidecar_server(app)
    with pytest.raises(ValueError, match="has no EventHub"):
        sidecar_server(Flask("bare"))


def test_events_before_a_close_are_still_there_then_the_close_is_named(
    sidecar_server, sidecar_client
):
    server = sidecar_server()
    client = sidecar_client(server)
    server.hub.publish([new_event("app:last", {})])
    assert server.hub.drop_all(4501, "not welcome")
    wait_for(lambda: client.subscriber.state == "closed")
    assert client.next()["type"] == "app:last"
    with pytest.raises(ServerClosed) as closed:
        client.next("app:more", timeout=5)
    assert (closed.value.code, closed.value.reason) == (4501, "not welcome")


def test_channels_subscribe_and_unsubscribe(sidecar_server, sidecar_client):
    server = sidecar_server(max_channels=2)
    server.hub.publish([new_event("app:tick", {"i": i}) for i in (1, 2)], "chat:c9")
    client = sidecar_client(server, channels=["project:p1"])
    assert set(client.status["channels"]) == {"project:p1"}
    epoch = server.hub.position("chat:c9").epoch
    answer = client.subscribe("chat:c9", since=f"{epoch}:1")
    assert answer == {"channel": "chat:c9", "epoch": epoch, "seq": 2, "recovered": True}
    replayed = client.next("app:tick", channel="chat:c9")
    assert (replayed["seq"], replayed["payload"]) == (2, {"i": 2})
    with pytest.raises(ChannelRefused) as refused:
        client.subscribe("doc:1")
    assert refused.value.error.code == "limit"
    client.unsubscribe("chat:c9")
    server.hub.publish([new_event("app:tick", {"i": 3})], "chat:c9")
    server.hub.publish([new_event("app:tick", {"i": 4})], "project:p1")
    event = client.next("app:tick")
    assert (event["channel"], event["payload"]) == ("project:p1", {"i": 4})


def test_a_reconnecting_client_resumes_by_itself(sidecar_server, sidecar_client):
    server = sidecar_server()
    client = sidecar_client(server, channels=["project:p1"], reconnect=True)
    assert server.hub.drop_all(4008, "slow consumer")
    server.hub.publish([new_event("app:tick", {"i": 1})], "project:p1")
    assert client.next("app:tick")["seq"] == 1
    assert client.status["recovered"] is True and client.subscriber.stats["connections"] == 2


def test_a_refused_client_raises_with_the_status(sidecar_server, sidecar_client):
    server = sidecar_server()
    with pytest.raises(SubscriberClosed) as refused:
        sidecar_client(ServedToken(server, "wrong-token-0123456789"))
    assert refused.value.status == 401


class ServedToken:
    """``server`` as seen by a client that has the wrong token."""

    def __init__(self, server, token):
        self.ws_url, self.token = server.ws_url, token
