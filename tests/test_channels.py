"""Channels over real sockets, in one process: audiences, the wire, resume, bad input, bounds.

Every client is a websocket-client connection (or a raw socket where a client must not read)
to an in-process sidecar; publishing goes through the hub's API or ``POST /api/v1/events``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
import websocket

from sidecar.envelope import Event, encode, new_event, with_seq
from tests import wsreader
from tests.conftest import TOKEN, RunningSidecar, recv_close, recv_json, wait_for

P1, C9 = "project:p1", "chat:c9"


def tick(i: int) -> Event:
    return new_event("test:tick", {"i": i})


def post(sc: RunningSidecar, body: object) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{sc.url}/api/v1/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def until(ws: websocket.WebSocket, predicate: Any, limit: int = 1000) -> list[dict[str, Any]]:
    """Frames up to and including the first one ``predicate`` accepts."""
    seen = []
    for _ in range(limit):
        frame = recv_json(ws)
        seen.append(frame)
        if predicate(frame):
            return seen
    raise AssertionError(f"not seen in {limit} frames: {seen[-3:]}")


def send(ws: websocket.WebSocket, kind: str, payload: dict[str, Any]) -> None:
    ws.send(json.dumps({"type": kind, "payload": payload}))


def channel_of(frame: dict[str, Any]) -> tuple[str | None, int, int]:
    return frame.get("channel"), frame["seq"], frame["payload"]["i"]


# -- the done-when cases ---------------------------------------------------------------------


def test_two_windows_on_two_channels_get_only_their_own(sidecar: RunningSidecar) -> None:
    one, status_one = sidecar.connect_ready(f"?channels={P1}")
    two, status_two = sidecar.connect_ready(f"?channels={C9}")
    assert set(status_one["payload"]["channels"]) == {P1}
    assert set(status_two["payload"]["channels"]) == {C9}
    code, reply = post(
        sidecar,
        [
            {"type": "test:tick", "payload": {"i": 1}, "channel": P1},
            {"type": "test:tick", "payload": {"i": 2}, "channel": C9},
            {"type": "test:tick", "payload": {"i": 3}, "channel": P1},
            {"type": "test:tick", "payload": {"i": 4}},
        ],
    )
    assert code == 202 and reply["seqs"] == [1, 1, 2, 1], reply
    assert [e.get("channel") for e in reply["events"]] == [P1, C9, P1, None]
    got_one = [channel_of(f) for f in until(one, lambda f: f["payload"].get("i") == 4)]
    got_two = [channel_of(f) for f in until(two, lambda f: f["payload"].get("i") == 4)]
    assert got_one == [(P1, 1, 1), (P1, 2, 3), (None, 1, 4)]
    assert got_two == [(C9, 1, 2), (None, 1, 4)]


def test_a_client_that_names_no_channel_sees_todays_frames(sidecar: RunningSidecar) -> None:
    ws, status = sidecar.connect_ready()
    assert set(status["payload"]) == {"status", "epoch", "seq", "recovered"}
    sidecar.hub.publish([tick(0)], P1)  # another audience: nothing arrives, no seq used up
    event = Event("test:tick", {"i": 1}, "2026-12-06T00:00:00Z")
    sidecar.hub.publish([event])
    _opcode, data = ws.recv_data()
    assert data == with_seq(encode(event), 1)  # byte for byte


def test_publishing_while_a_client_subscribes_loses_and_repeats_nothing(
    sidecar: RunningSidecar,
) -> None:
    ws, _status = sidecar.connect_ready()
    stop, published = threading.Event(), list[int]()

    def publish() -> None:
        while not stop.is_set() and len(published) < 20_000:
            published.extend(sidecar.hub.publish([tick(len(published))], P1))

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        wait_for(lambda: len(published) > 100)
        send(ws, "channel:subscribe", {"channel": P1})
        answer = until(ws, lambda f: f["type"] == "channel:subscribed")[-1]["payload"]
        wait_for(lambda: len(published) > answer["seq"] + 100)
    finally:
        stop.set()
        thread.join(10)
    last = published[-1]
    seqs = [f["seq"] for f in until(ws, lambda f: f.get("seq") == last, 30_000)]
    assert seqs == list(range(answer["seq"] + 1, last + 1))


def test_resume_recovers_one_channel_and_not_another(sidecar_factory: Any) -> None:
    sc = sidecar_factory(history_size=4)
    ws, status = sc.connect_ready(f"?channels={P1},{C9}")
    epochs = {name: state["epoch"] for name, state in status["payload"]["channels"].items()}
    sc.hub.publish([tick(1)], P1)
    sc.hub.publish([tick(1)], C9)
    until(ws, lambda f: f.get("channel") == C9)
    ws.close()
    sc.hub.publish([tick(2), tick(3)], P1)  # within its window
    sc.hub.publish([tick(i) for i in range(2, 10)], C9)  # 2..5 are out of the window of 4
    since = f"{P1}@{epochs[P1]}:1,{C9}@{epochs[C9]}:1"
    again, status = sc.connect_ready(f"?channels={P1},{C9}&since={quote(since)}")
    states = status["payload"]["channels"]
    assert (states[P1]["recovered"], states[C9]["recovered"]) == (True, False)
    assert states[C9]["seq"] == 9
    sc.hub.publish([tick(99)])
    frames = until(again, lambda f: f["payload"].get("i") == 99)
    assert [channel_of(f) for f in frames] == [(P1, 2, 2), (P1, 3, 3), (None, 1, 99)]


def test_subscribe_by_message_resumes_and_unsubscribe_stops(sidecar: RunningSidecar) -> None:
    epoch = sidecar.hub.position(P1).epoch
    sidecar.hub.publish([tick(i) for i in range(1, 4)], P1)
    ws, _status = sidecar.connect_ready()
    send(ws, "channel:subscribe", {"channel": P1, "since": f"{epoch}:1"})
    frames = until(ws, lambda f: f.get("seq") == 3)
    assert frames[0]["payload"] == {"channel": P1, "epoch": epoch, "seq": 3, "recovered": True}
    send(ws, "channel:unsubscribe", {"channel": P1})
    assert recv_json(ws)["payload"] == {"channel": P1, "reason": "client"}
    sidecar.hub.publish([tick(4)], P1)
    sidecar.hub.publish([tick(5)])
    assert channel_of(recv_json(ws)) == (None, 1, 5)  # nothing of p1 came first


# -- wire details and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("?channels=Project:p1", "channels"),
        ("?channels=project:p1,,chat:c9", "channels"),
        ("?channels=project:p1,project:p1", "channels"),
        ("?channels=a:b:c:d:e", "channels"),
        ("?channels=" + "a" * 33, "channels"),
        ("?channels=project:p%C3%A9", "channels"),
        ("?channels=project:p1&since=chat:c9@abc:1", "since"),
        ("?channels=project:p1&since=project:p1@abc:x", "since"),
        ("?channels=project:p1&since=abc:1,abc:2", "since"),
        ("?since=BAD@abc:1", "since"),
    ],
)
def test_a_malformed_channels_or_since_is_a_400_before_the_upgrade(
    sidecar: RunningSidecar, query: str, names: str
) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        sidecar.connect(query)
    assert info.value.status_code == 400
    assert names in (info.value.resp_body or b"").decode(), info.value.resp_body


def test_channels_over_the_limit_are_refused_after_the_status(sidecar_factory: Any) -> None:
    sc = sidecar_factory(max_channels=2)
    ws, status = sc.connect_ready("?channels=a:1,a:2,a:3,a:4")
    assert set(status["payload"]["channels"]) == {"a:1", "a:2"}
    errors = [recv_json(ws)["payload"] for _ in range(2)]
    assert [(e["channel"], e["code"]) for e in errors] == [("a:3", "limit"), ("a:4", "limit")]


@pytest.mark.parametrize(
    ("message", "channel", "code"),
    [
        ({"type": "channel:subscribe", "payload": {"channel": "Bad"}}, "Bad", "invalid"),
        ({"type": "channel:subscribe", "payload": {"channel": 7}}, "", "invalid"),
        ({"type": "channel:subscribe", "payload": {}}, "", "invalid"),
        ({"type": "channel:subscribe", "payload": {"channel": P1, "since": "x"}}, P1, "invalid"),
        ({"type": "channel:subscribe", "payload": {"channel": P1, "since": 5}}, P1, "invalid"),
        ({"type": "channel:subscribe", "payload": {"channel": C9}}, C9, "already_subscribed"),
        ({"type": "channel:unsubscribe", "payload": {"channel": P1}}, P1, "not_subscribed"),
        ({"type": "channel:what", "payload": {"channel": P1}}, P1, "invalid"),
    ],
)
def test_bad_channel_messages_get_a_channel_error_and_the_connection_stays(
    sidecar: RunningSidecar, message: dict[str, Any], channel: str, code: str
) -> None:
    ws, _status = sidecar.connect_ready(f"?channels={C9}")
    ws.send(json.dumps(message))
    error = recv_json(ws)
    assert error["type"] == "channel:error", error
    assert (error["payload"]["channel"], error["payload"]["code"]) == (channel, code)
    assert isinstance(error["payload"]["message"], str) and error["payload"]["message"]
    sidecar.hub.publish([tick(1)], C9)
    assert channel_of(recv_json(ws)) == (C9, 1, 1)  # still open, still subscribed


def test_the_apps_handler_never_sees_the_hubs_namespaces(sidecar: RunningSidecar) -> None:
    seen: list[str] = []
    sidecar.set_message_handler(lambda _client, event: seen.append(event["type"]))
    ws, _status = sidecar.connect_ready()
    for kind in ("channel:subscribe", "connection:status", "app:hello"):
        send(ws, kind, {"channel": P1})
    until(ws, lambda f: f["type"] == "channel:subscribed")
    wait_for(lambda: seen)
    assert seen == ["app:hello"]


def test_more_than_20_channel_messages_a_second_close_with_1008(sidecar: RunningSidecar) -> None:
    ws, _status = sidecar.connect_ready()
    for i in range(25):
        send(ws, "channel:subscribe", {"channel": f"a:{i}"})
    assert recv_close(ws) == 1008


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"channel": 5}, "events[0].channel"),
        ({"channel": "Bad Name"}, "events[0].channel"),
        ({"channel": "a" * 200}, "events[0].channel"),
    ],
)
def test_a_bad_channel_in_a_publish_is_a_422_naming_it(
    sidecar: RunningSidecar, item: dict[str, Any], problem: str
) -> None:
    body = [{"type": "test:tick", "payload": {"i": 0}, **item}]
    code, reply = post(sidecar, body)
    assert code == 422 and reply["error"].startswith(problem), reply


def test_a_slow_subscriber_is_evicted_with_4008_and_others_go_on(sidecar_factory: Any) -> None:
    sc = sidecar_factory(queue_size=4, max_pending_bytes=256 * 1024)
    stuck = wsreader.connect(sc.port, f"?channels={P1}", token=TOKEN, rcvbuf=4096)
    quick, _status = sc.connect_ready(f"?channels={C9}")
    pad = "x" * 32 * 1024
    deadline = time.monotonic() + 20
    while sc.hub.snapshot()["evicted"] == 0:  # only the stuck one is on p1
        assert time.monotonic() < deadline, "the slow subscriber was never evicted"
        for _ in range(4):
            sc.hub.broadcast_event(new_event("test:tick", {"i": 0, "pad": pad}), P1)
        wait_for(lambda: sc.hub.snapshot()["pending"] == 0)
    sc.hub.publish([tick(7)], C9)
    assert channel_of(recv_json(quick)) == (C9, 1, 7)  # the other channel's client goes on
    closes = [f.close_code for f in stuck.read_to_eof() if f.opcode == wsreader.OP_CLOSE]
    assert closes in ([], [4008]), closes


def test_channel_replays_are_charged_to_the_peers_replay_budget(sidecar_factory: Any) -> None:
    sc = sidecar_factory(replay_rate=256 << 10, history_bytes=4 << 20)
    epoch = sc.hub.position(P1).epoch
    pad = "x" * (32 << 10)
    sc.hub.publish([new_event("test:tick", {"i": i, "pad": pad}) for i in range(40)], P1)
    since = quote(f"{P1}@{epoch}:0")
    statuses = []
    for _ in range(10):  # 1.3 MiB a resume: the 512 KiB burst runs out at once
        try:
            ws, status = sc.connect_ready(f"?channels={P1}&since={since}")
        except websocket.WebSocketBadStatusException as refused:
            statuses.append(refused.status_code)
            assert int((refused.resp_headers or {})["retry-after"]) >= 1
            break
        statuses.append(101)
        assert status["payload"]["channels"][P1]["recovered"] is True
        ws.close()
    assert statuses[-1] == 503 and len(statuses) <= 3, statuses
    # a subscribe by message over the budget is a join without replay: recovered false
    ws, _status = sc.connect_ready()
    send(ws, "channel:subscribe", {"channel": P1, "since": f"{epoch}:0"})
    answer = recv_json(ws)
    assert answer["type"] == "channel:subscribed" and answer["payload"]["recovered"] is False
    assert answer["payload"]["seq"] == 40
