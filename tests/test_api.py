"""The HTTP API: publishing events (single, batch, validation) and the hub's counters."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from sidecar.catalog import PublishError, parse_publish_body
from sidecar.config import Config
from tests.conftest import recv_json, wait_for


def _post(running, body: bytes | Any, token: str | None = "default", path="/api/v1/events"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(running.url + path, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token == "default":
        token = running.token
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


STREAM = {"type": "stream:created", "payload": {"projectId": "p", "streamId": "s", "name": "n"}}


def test_publish_one_event_broadcasts_it(sidecar):
    ws, _ = sidecar.connect_ready()
    wait_for(lambda: sidecar.hub.client_count() == 1)
    status, answer = _post(sidecar, STREAM)
    assert status == 202
    assert answer["accepted"] == 1
    assert answer["events"][0]["type"] == "stream:created"
    got = recv_json(ws)
    assert got["payload"] == STREAM["payload"]
    assert got["seq"] == 1
    assert got["timestamp"] == answer["events"][0]["timestamp"]


def test_the_202_lists_the_envelopes_byte_for_byte_as_subscribers_get_them(sidecar):
    ws, _ = sidecar.connect_ready("?channels=room:r1")
    wait_for(lambda: sidecar.hub.client_count() == 1)
    payload = {"name": "caf\u00e9 \u2028", "small": 1e-05, "big": 1e16, "n": 2**63 - 1}
    batch = [
        {"type": "app:tick", "payload": payload},
        {"type": "app:tick", "payload": {"i": 1}, "channel": "room:r1"},
    ]
    request = urllib.request.Request(
        sidecar.url + "/api/v1/events", data=json.dumps(batch).encode(), method="POST"
    )
    request.add_header("Authorization", f"Bearer {sidecar.token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        body = response.read()
    answer = json.loads(body)
    compact = json.dumps(answer, ensure_ascii=False, separators=(",", ":")) + "\n"
    assert body == compact.encode()  # compact UTF-8 JSON, keys in the envelope's order
    assert answer["seqs"] == [1, 1] and answer["accepted"] == 2
    got = [ws.recv_data()[1] for _ in batch]  # the frames' bytes, as sent
    sent = [
        json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in answer["events"]
    ]
    assert got == sent
    assert got[0].endswith(b',"seq":1}') and got[1].endswith(b',"seq":1,"channel":"room:r1"}')
    assert b'"small":1e-05,"big":1e+16' in got[0]  # floats as Python writes them


def test_publish_batch_keeps_order(sidecar):
    ws, _ = sidecar.connect_ready()
    wait_for(lambda: sidecar.hub.client_count() == 1)
    batch = [{"type": "app:tick", "payload": {"i": i}} for i in range(50)]
    status, answer = _post(sidecar, batch)
    assert (status, answer["accepted"]) == (202, 50)
    assert [recv_json(ws)["payload"]["i"] for _ in range(50)] == list(range(50))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"type": "stream:created", "payload": {"projectId": "p", "streamId": "s"}}, "name"),
        (
            {"type": "stream:created", "payload": {"projectId": 1, "streamId": "s", "name": "n"}},
            "projectId",
        ),
        ({"type": "Bad Name", "payload": {}}, "type"),
        ({"type": "app:x"}, "payload"),
        ({"type": "app:x", "payload": []}, "payload"),
        ({"type": "app:x", "payload": {}, "seq": 3}, "seq"),
        (
            {"type": "chat:send", "payload": {"conversationId": "c", "content": "x"}},
            "client-to-server",
        ),
        ([STREAM, {"type": "artifact:deleted", "payload": {"id": "a"}}], "events[1].payload.path"),
        ({"type": "connection:status", "payload": {"status": "connected"}}, "reserved"),
        ({"type": "stream:created\n", "payload": STREAM["payload"]}, "kebab-case"),
        ([], "empty"),
        ("just a string", "object"),
    ],
)
def test_invalid_events_get_422_naming_the_field(sidecar, body, needle):
    status, answer = _post(sidecar, body)
    assert status == 422
    assert needle in answer["error"]
    assert sidecar.hub.seq == 0  # nothing of a bad batch is broadcast


def test_not_json_is_400(sidecar):
    status, answer = _post(sidecar, b"{nope")
    assert status == 400
    assert "not JSON" in answer["error"]


def test_body_over_1_mib_is_413(sidecar):
    big = {"type": "app:big", "payload": {"x": "y" * Config().max_event_bytes}}
    assert _post(sidecar, big)[0] == 413


def test_one_event_near_the_body_limit_is_202_or_413(sidecar):
    # the body limit and the event limit (1 MiB each) differ by the envelope's timestamp and seq
    ws, _ = sidecar.connect_ready()
    wait_for(lambda: sidecar.hub.client_count() == 1)
    frame = len(json.dumps({"type": "app:big", "payload": {"x": ""}}))
    # the envelope is the body minus 4 spaces plus ,"timestamp":"<20-27>" plus ,"seq":<19 digits>
    limit = Config().max_event_bytes
    for size, expected in ((limit, 413), (limit - 50, 413), (limit - 100, 202)):
        body = {"type": "app:big", "payload": {"x": "y" * (size - frame)}}
        status, answer = _post(sidecar, body)
        assert status == expected, answer
        assert status == 202 or answer["error"].startswith("event: ")
    assert len(recv_json(ws)["payload"]["x"]) == limit - 100 - frame


def test_publish_requires_the_token(sidecar):
    assert _post(sidecar, STREAM, token=None)[0] == 401
    assert _post(sidecar, STREAM, token="wrong")[0] == 401


def test_hub_counters_need_the_token_and_report_activity(sidecar):
    ws, _ = sidecar.connect_ready()
    wait_for(lambda: sidecar.hub.client_count() == 1)
    _post(sidecar, STREAM)
    recv_json(ws)
    request = urllib.request.Request(sidecar.url + "/api/v1/hub")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 401
    request.add_header("Authorization", f"Bearer {sidecar.token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        state = json.loads(response.read())
    assert state["hub"]["clients"] == 1
    assert state["hub"]["broadcasts"] == 1
    assert state["hub"]["deliveries"] == 1
    assert state["sessions"]["rejectedRequests"]["token"] >= 1  # API refusals, not handshakes
    assert "token" not in state["sessions"]["rejectedHandshakes"]
    ws.close()
    wait_for(lambda: sidecar.sidecar.sessions.snapshot()["ended"])
    assert sidecar.sidecar.sessions.snapshot()["ended"] == {"client-close-1000": 1}


def test_drops_are_counted_by_reason(sidecar_factory):
    running = sidecar_factory(ping_interval=0.1)
    ws, _ = running.connect_ready()  # never answers pings: it does not read
    wait_for(
        lambda: running.sidecar.sessions.snapshot()["ended"].get("keepalive-timeout") == 1,
        timeout=5,
    )
    ws.close()


def test_health_is_open_and_secret_free(sidecar):
    with urllib.request.urlopen(sidecar.url + "/health", timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "ok"
    assert set(body) == {"status", "version", "uptime"}
    assert sidecar.token not in json.dumps(body)


def test_parse_events_accepts_app_specific_types():
    events = parse_publish_body(
        b'[{"type":"my-app:thing-done","payload":{"any":[1,2]}}]', max_event_bytes=1 << 20
    )
    assert events[0].type == "my-app:thing-done"
    with pytest.raises(PublishError):
        parse_publish_body(b'{"type":"my_app:thing","payload":{}}', max_event_bytes=1 << 20)


def test_client_chosen_close_codes_cannot_mint_counters_or_metric_series(sidecar):
    """Issue 19: every close code a client chose became a label value (2,000 series in 3.8 s).

    Codes the protocol defines are counted by number; the rest share one bucket.
    """
    from prometheus_client.parser import text_string_to_metric_families

    codes = [1000, 1001, *range(3000, 3040), *range(4500, 4520), 4321]
    for code in codes:
        ws, _ = sidecar.connect_ready()
        ws.close(status=code, timeout=2)
    wait_for(lambda: sum(sidecar.sidecar.sessions.snapshot()["ended"].values()) == len(codes))
    ended = sidecar.sidecar.sessions.snapshot()["ended"]
    assert ended == {"client-close-1000": 1, "client-close-1001": 1, "client-close-other": 61}
    request = urllib.request.Request(
        sidecar.url + "/metrics", headers={"Authorization": f"Bearer {sidecar.token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    series = [
        sample.labels["reason"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sidecar_sessions_ended_total"
    ]
    assert sorted(series) == ["client-close-1000", "client-close-1001", "client-close-other"]


@pytest.mark.parametrize(
    ("reason", "counted"),
    [
        ("client-close-1000", "client-close-1000"),
        ("client-close-1011", "client-close-1011"),
        ("client-close-4008", "client-close-4008"),
        ("client-close-3000", "client-close-other"),
        ("client-close-4999", "client-close-other"),
        ("client-close-1005x", "client-close-other"),
        ("server-close-4008", "server-close-4008"),
        ("slow-consumer", "slow-consumer"),
        ("eof", "eof"),
    ],
)
def test_session_ends_are_counted_in_a_bounded_set_of_reasons(reason, counted):
    from sidecar.web.state import end_bucket

    assert end_bucket(reason) == counted
