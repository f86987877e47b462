"""Fuzzing the channel inputs: the ``channels``/``since`` query and the ``channel:*`` messages.

Each input is checked against a small model written here from the wire's definition (not by
calling the parser under test): a query is either upgraded with exactly the channels it named
(101) or refused with a 400 before the upgrade; a message gets ``channel:subscribed``,
``channel:unsubscribed`` or ``channel:error`` with the code the model expects, and the
connection stays open. A sentinel client must keep receiving events after every example.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.envelope import new_event
from tests.conftest import TOKEN, RunningSidecar, recv_json, start_sidecar

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

MAX_EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "300"))
MAX_CHANNELS = 4

# The model: the wire's definition of a channel name and of a resume point, written again.
NAMESPACE = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,64}\Z")
POSITION = re.compile(r"[A-Za-z0-9_-]{1,64}:[0-9]{1,18}\Z")


def model_name(name: object) -> bool:
    if not isinstance(name, str) or len(name.encode("utf-8", "surrogatepass")) > 128:
        return False
    head, *segments = name.split(":")
    return (
        NAMESPACE.match(head) is not None
        and len(segments) <= 3
        and all(SEGMENT.match(s) for s in segments)
    )


def model_query(channels: str | None, since: str | None) -> list[str] | None:
    """The channels a connection is granted (the first MAX_CHANNELS), or None for a 400."""
    names = [] if channels is None else channels.split(",")
    if channels is not None and (
        not all(model_name(n) for n in names) or len(set(names)) != len(names)
    ):
        return None
    if since is not None:
        seen = set()
        for item in since.split(","):
            channel, at, position = item.rpartition("@")
            if (at and not model_name(channel)) or not POSITION.match(position):
                return None
            if channel in seen or (channel and channel not in names):
                return None
            seen.add(channel)
    return names[:MAX_CHANNELS]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningSidecar]:
    sc = start_sidecar(max_channels=MAX_CHANNELS, replay_rate=0)
    try:
        yield sc
    finally:
        sc.close()


@pytest.fixture(scope="module")
def sentinel(server: RunningSidecar) -> websocket.WebSocket:
    ws, _status = server.connect_ready("?channels=sentinel:s")
    return ws


def check_sentinel(server: RunningSidecar, ws: websocket.WebSocket) -> None:
    server.hub.publish([new_event("test:tick", {"i": 0})], "sentinel:s")
    frame = recv_json(ws)
    assert frame["channel"] == "sentinel:s", frame


_PARTS = st.sampled_from(
    ["project", "p1", "chat", "c9", "Bad", "a-b", "x_y", "é", "", "~", ".", "9", "a" * 33]
)


@st.composite
def channel_name(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_PARTS, min_size=1, max_size=5))
    return ":".join(parts)


@st.composite
def query(draw: st.DrawFn) -> tuple[str | None, str | None]:
    names: list[str] = draw(st.lists(channel_name(), max_size=6))
    repeat, empty = draw(st.tuples(st.booleans(), st.booleans()))
    if repeat and names:
        names.append(names[0])  # a repeat
    channels = ",".join(names) if names or empty else None
    items = []
    for _ in range(draw(st.integers(0, 3))):
        channel = draw(st.sampled_from([*names, "", "other:o", "Bad@x"]))
        position = draw(st.sampled_from(["e1:0", "e1:7", "abc", "e:x", "e1:" + "9" * 19, ":1"]))
        items.append(f"{channel}@{position}" if channel else position)
    since = ",".join(items) if items else None
    return channels, since


@settings(
    max_examples=max(30, MAX_EXAMPLES // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(asked=query())
def test_channel_queries(
    server: RunningSidecar, sentinel: websocket.WebSocket, asked: tuple[str | None, str | None]
) -> None:
    channels, since = asked
    params = []
    if channels is not None:
        params.append(f"channels={quote(channels, safe=':,@')}")
    if since is not None:
        params.append(f"since={quote(since, safe=':,@')}")
    path = "/ws" + ("?" + "&".join(params) if params else "")
    expected = model_query(channels, since)
    try:
        ws = server.connect(path.removeprefix("/ws"))
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 400 and expected is None, (path, exc.status_code)
    else:
        try:
            status = recv_json(ws)["payload"]
            assert expected is not None, path
            assert sorted(status.get("channels", {})) == sorted(expected), (path, status)
        finally:
            ws.close()
    check_sentinel(server, sentinel)


_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    channel_name(),
    st.sampled_from(["project:p1", "chat:c9", "e1:0", "x", ""]),
    st.text(max_size=20),
)


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["channel:subscribe"] * 3 + ["channel:unsubscribe", "channel:x"]))
    payload: dict[str, Any] = {}
    if draw(st.integers(0, 4)):  # mostly with a channel
        payload["channel"] = draw(_VALUES)
    if draw(st.booleans()):
        payload["since"] = draw(_VALUES)
    return {"type": kind, "payload": draw(st.sampled_from([payload, payload, [], "x"]))}


def model_answer(msg: dict[str, Any], joined: set[str]) -> tuple[str, str | None]:
    """The frame type the hub answers with, and the error code if it is an error."""
    payload = msg["payload"] if isinstance(msg["payload"], dict) else {}
    channel = payload.get("channel")
    if msg["type"] not in ("channel:subscribe", "channel:unsubscribe"):
        return "channel:error", "invalid"
    if not model_name(channel):
        return "channel:error", "invalid"
    if msg["type"] == "channel:unsubscribe":
        if channel in joined:
            joined.discard(channel)
            return "channel:unsubscribed", None
        return "channel:error", "not_subscribed"
    since = payload.get("since")
    if since is not None and not (isinstance(since, str) and POSITION.match(since)):
        return "channel:error", "invalid"
    assert isinstance(channel, str)
    if channel in joined:
        return "channel:error", "already_subscribed"
    if len(joined) >= MAX_CHANNELS:
        return "channel:error", "limit"
    joined.add(channel)
    return "channel:subscribed", None


@settings(
    max_examples=max(20, MAX_EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(messages=st.lists(message(), min_size=1, max_size=10))
def test_channel_messages(
    server: RunningSidecar, sentinel: websocket.WebSocket, messages: list[dict[str, Any]]
) -> None:
    ws, _status = server.connect_ready()
    joined: set[str] = set()
    try:
        for msg in messages:  # fewer than the rate limit: each gets its answer
            ws.send(json.dumps(msg))
            kind, code = model_answer(msg, joined)
            frame = recv_json(ws)
            assert frame["type"] == kind, (msg, frame)
            assert frame["payload"].get("code") == code, (msg, frame)
    finally:
        ws.close()
    check_sentinel(server, sentinel)


def test_a_raw_query_with_control_bytes_is_refused_cleanly(server: RunningSidecar) -> None:
    port = server.port
    for raw in (
        b"channels=%00",
        b"channels=a:%0d%0a",
        b"since=%ff@e:1",
        b"channels=" + b"a," * 900,
    ):
        head = (
            b"GET /ws?" + raw + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head)
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400"), (raw[:40], reply[:100])
