"""The app's own test suite, on the sidecar's pytest plugin: real sockets, no mocks.

``sidecar_server`` and ``sidecar_client`` come from the installed package (a ``pytest11``
entry point); nothing else is needed: run ``pytest`` in this folder.
"""

from __future__ import annotations

import json
import urllib.request

from app import create_app

TOKEN = "a-test-token-0123456789"


def create_stream(server, stream_id: str) -> None:
    body = json.dumps({"projectId": "p1", "id": stream_id, "name": "Refactor"}).encode()
    request = urllib.request.Request(server.url + "/streams", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201


def test_creating_a_stream_reaches_every_connected_page(sidecar_server, sidecar_client):
    server = sidecar_server(create_app(SIDECAR_TOKEN=TOKEN))
    first, second = sidecar_client(server), sidecar_client(server)
    assert first.status["status"] == "connected"
    create_stream(server, "s1")
    for client in (first, second):
        event = client.next("stream:created", timeout=5)
        assert event["payload"] == {"projectId": "p1", "streamId": "s1", "name": "Refactor"}
        assert event["seq"] == first.status["seq"] + 1


def test_a_client_message_gets_an_answer_for_that_client_only(sidecar_server, sidecar_client):
    server = sidecar_server(create_app(SIDECAR_TOKEN=TOKEN))
    asker, bystander = sidecar_client(server), sidecar_client(server)
    asker.send("chat:cancel", {"conversationId": "c1"})
    answer = asker.next(timeout=5)
    assert answer["payload"]["streamId"] == "cancelled" and "seq" not in answer
    create_stream(server, "s2")  # the bystander's next event is this broadcast, not the answer
    assert bystander.next(timeout=5)["payload"]["streamId"] == "s2"


def test_a_page_that_reconnects_gets_what_it_missed(sidecar_server, sidecar_client):
    server = sidecar_server(create_app(SIDECAR_TOKEN=TOKEN))
    page = sidecar_client(server)
    seen = page.status["seq"]
    page.close()
    for n in range(3):
        create_stream(server, f"missed-{n}")
    back = sidecar_client(server, since=f"{page.status['epoch']}:{seen}")
    assert back.status["recovered"] is True
    replayed = back.collect(3, timeout=5)
    assert [e["payload"]["streamId"] for e in replayed] == ["missed-0", "missed-1", "missed-2"]
    assert [e["seq"] for e in replayed] == [seen + 1, seen + 2, seen + 3]
