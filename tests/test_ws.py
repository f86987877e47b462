"""The seed story's acceptance criteria and issue 2's connection behaviour, over real sockets."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time

import pytest
import websocket

from sidecar import events
from tests import wsreader
from tests.conftest import recv_close, recv_json, wait_for


def _stream_created(i: int = 0) -> events.Event:
    return events.new_stream_created_event("p1", f"s{i}", f"name {i}")


# -- AC 1, 3, 4: connection:status first, to that client only -----------------------------


def test_connect_gets_connection_status_first(sidecar):
    ws = sidecar.connect()
    first = recv_json(ws)
    assert first["type"] == "connection:status"
    assert first["payload"]["status"] == "connected"
    assert first["timestamp"].endswith("Z")
    assert "seq" not in first  # only broadcasts carry seq
    wait_for(lambda: sidecar.hub.client_count() == 1)


def test_connection_status_goes_only_to_the_new_client(sidecar_server, sidecar_client):
    server = sidecar_server()
    a, b = sidecar_client(server), sidecar_client(server)
    wait_for(lambda: server.hub.client_count() == 2)
    server.hub.broadcast_event(_stream_created())
    # a's next frame is the broadcast, not b's connection:status
    assert a.next()["type"] == "stream:created"
    assert b.next()["type"] == "stream:created"


def test_each_of_several_clients_gets_its_own_status(sidecar_server, sidecar_client):
    server = sidecar_server()
    clients = [sidecar_client(server) for _ in range(5)]
    assert all(c.status["status"] == "connected" for c in clients)
    wait_for(lambda: server.hub.client_count() == 5)


def test_reconnect_registers_again_and_gets_status(sidecar_server, sidecar_client):
    server = sidecar_server()
    first = sidecar_client(server)
    wait_for(lambda: server.hub.client_count() == 1)
    first.close()
    wait_for(lambda: server.hub.client_count() == 0)
    assert sidecar_client(server).status["status"] == "connected"
    wait_for(lambda: server.hub.client_count() == 1)


def test_broadcast_reaches_all_clients_after_their_status(sidecar_server, sidecar_client):
    server = sidecar_server()
    clients = [sidecar_client(server) for _ in range(4)]
    wait_for(lambda: server.hub.client_count() == 4)
    for i in range(3):
        assert server.hub.broadcast_event(_stream_created(i))
    for client in clients:
        got = client.collect(3)
        assert [e["payload"]["streamId"] for e in got] == ["s0", "s1", "s2"]
        assert [e["seq"] for e in got] == [1, 2, 3]


def test_status_is_first_even_while_broadcasts_flow(sidecar):
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            sidecar.hub.broadcast_event(_stream_created())

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        for _ in range(5):
            ws = sidecar.connect()
            assert recv_json(ws)["type"] == "connection:status"
            ws.close()
    finally:
        stop.set()
        publisher.join(5)


def test_disconnect_lowers_client_count(sidecar):
    clients = [sidecar.connect_ready()[0] for _ in range(3)]
    wait_for(lambda: sidecar.hub.client_count() == 3)
    clients[0].close()
    wait_for(lambda: sidecar.hub.client_count() == 2)
    clients[1].sock.close()  # no close frame: EOF
    wait_for(lambda: sidecar.hub.client_count() == 1)


# -- Origin ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://localhost:5173", "http://127.0.0.1:3007", "tauri://localhost", "file://"],
)
def test_allowed_origins_connect(sidecar, origin):
    _ws, status = sidecar.connect_ready(origin=origin)
    assert status["payload"]["status"] == "connected"


def test_own_origin_connects(sidecar):
    sidecar.connect_ready(origin=sidecar.url)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://localhost.evil.example",
        "http://localhost:5173.evil.example",
        "http://127.0.0.1:3008@evil.example",
        "https://localhost:5173",
        "http://localhost:5174",
    ],
)
def test_foreign_origin_gets_403_before_upgrade(sidecar, origin):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        sidecar.connect(origin=origin)
    assert info.value.status_code == 403
    assert sidecar.hub.client_count() == 0


# -- inbound messages -----------------------------------------------------------------------


def test_oversize_message_closes_with_1009(sidecar_factory):
    running = sidecar_factory(max_message_size=1024)
    ws, _ = running.connect_ready()
    ws.send("x" * 2048)
    assert recv_close(ws) == 1009
    wait_for(lambda: running.hub.client_count() == 0)


def test_binary_message_closes_with_1003(sidecar):
    ws, _ = sidecar.connect_ready()
    ws.send_binary(b"\x00\x01")
    assert recv_close(ws) == 1003


def test_malformed_json_is_ignored_and_connection_keeps_working(sidecar, caplog):
    received = []
    sidecar.set_message_handler(lambda client, event: received.append(event))
    ws, _ = sidecar.connect_ready()
    ws.send("{not json")
    ws.send("[1, 2]")
    ws.send(json.dumps({"type": "chat:send", "payload": {"conversationId": "c", "content": "hi"}}))
    wait_for(lambda: received)
    assert received == [{"type": "chat:send", "payload": {"conversationId": "c", "content": "hi"}}]
    sidecar.hub.broadcast_event(_stream_created())
    assert recv_json(ws)["type"] == "stream:created"
    assert "malformed JSON" in caplog.text


def test_message_handler_error_closes_with_1011_and_is_logged(sidecar, caplog):
    def broken(client, event):
        raise RuntimeError("boom")

    sidecar.set_message_handler(broken)
    ws, _ = sidecar.connect_ready()
    ws.send(json.dumps({"type": "chat:send", "payload": {}}))
    assert recv_close(ws) == 1011
    assert "message handler failed" in caplog.text


def test_send_to_client_only_reaches_that_client_and_reports_gone_clients(sidecar):
    clients = {}
    sidecar.set_message_handler(lambda client, event: clients.setdefault("c", client))
    a, _ = sidecar.connect_ready()
    b, _ = sidecar.connect_ready()
    a.send(json.dumps({"type": "chat:cancel", "payload": {"conversationId": "x"}}))
    client = wait_for(lambda: clients.get("c"))
    event = events.new_chat_error_event("x", "only for a")
    assert sidecar.hub.send_to_client(client, event) is True
    got = recv_json(a)
    assert got["type"] == "chat:error" and "seq" not in got
    sidecar.hub.broadcast_event(_stream_created())
    assert recv_json(b)["type"] == "stream:created"  # b never saw chat:error
    a.close()
    wait_for(lambda: client.gone)
    assert sidecar.hub.send_to_client(client, event) is False


# -- slow consumers -------------------------------------------------------------------------


def test_client_that_stops_reading_is_dropped_and_others_get_everything(sidecar_factory):
    running = sidecar_factory(queue_size=8)
    stalled = wsreader.connect(running.port, token=running.token, rcvbuf=4096)
    assert stalled.recv_json()["type"] == "connection:status"
    fast, _ = running.connect_ready()
    wait_for(lambda: running.hub.client_count() == 2)
    payload = {"projectId": "p", "streamId": "s", "changes": {"blob": "x" * 4000}}
    total = 2000
    got = []
    for i in range(total):
        assert running.hub.broadcast_event(events.new_event("stream:updated", {**payload, "i": i}))
        if i % 50 == 49:  # keep the fast reader level with the flood
            while len(got) < i - 100:
                got.append(recv_json(fast)["payload"]["i"])
    while len(got) < total:
        got.append(recv_json(fast)["payload"]["i"])
    assert got == list(range(total))
    wait_for(lambda: running.hub.stats.evicted == 1)
    assert running.hub.client_count() == 1
    stalled.read_to_eof()  # its socket was shut down


def test_write_deadline_drops_a_client_whose_writes_stall(sidecar_factory, caplog):
    caplog.set_level(logging.INFO)
    running = sidecar_factory(write_deadline=0.3, queue_size=100000, max_pending_bytes=1 << 30)
    stalled = wsreader.connect(running.port, token=running.token, rcvbuf=4096)
    assert stalled.recv_json()["type"] == "connection:status"
    wait_for(lambda: running.hub.client_count() == 1)
    blob = events.new_event("bench:blob", {"x": "y" * 60000})
    for _ in range(200):
        running.hub.broadcast_event(blob)
    wait_for(lambda: running.hub.client_count() == 0, timeout=10)
    assert "write deadline exceeded" in caplog.text
    assert running.hub.stats.evicted == 0  # dropped by the deadline, not the queue bound


# -- keepalive and the write lock ------------------------------------------------------------


def test_peer_that_never_answers_pings_is_dropped_within_two_intervals(sidecar_factory):
    running = sidecar_factory(ping_interval=0.2)
    silent = wsreader.connect(running.port, token=running.token)  # never answers pings
    assert silent.recv_json()["type"] == "connection:status"
    wait_for(lambda: running.hub.client_count() == 1)
    frames = silent.read_to_eof(timeout=3)
    assert [f.opcode for f in frames][:1] == [wsreader.OP_PING]
    assert frames[-1].close_code == 1011
    wait_for(lambda: running.hub.client_count() == 0)


def test_client_answering_pings_stays_connected(sidecar_factory):
    running = sidecar_factory(ping_interval=0.05, ping_timeout=0.3)
    ws, _ = running.connect_ready()
    pings = 0
    while pings < 16:  # 0.8 s or more: a silent peer would have been dropped after 0.35 s
        frame = ws.recv_data_frame(control_frame=True)[1]  # answers each ping with a pong
        assert frame.opcode == websocket.ABNF.OPCODE_PING
        pings += 1
    assert running.hub.client_count() == 1
    assert running.hub.stats.keepalive_drops == 0


def test_ping_timeout_longer_than_the_interval_waits_for_the_pong(sidecar_factory):
    """With ``ping_timeout`` > ``ping_interval`` the hub waits: one ping outstanding, then 1011."""
    running = sidecar_factory(ping_interval=0.05, ping_timeout=0.6)
    silent = wsreader.connect(running.port, token=running.token)  # never answers pings
    assert silent.recv_json()["type"] == "connection:status"
    started = time.monotonic()
    frames = silent.read_to_eof(timeout=5)
    elapsed = time.monotonic() - started
    assert [f.opcode for f in frames[:-1]] == [wsreader.OP_PING]  # no second ping meanwhile
    assert frames[-1].close_code == 1011
    assert elapsed >= 0.3  # not at the next interval (0.05 s): the timeout was waited for


def test_flood_with_pings_arrives_intact_and_in_order(sidecar_factory):
    """The fast path keeps order and whole frames under a burst, with pings and a stalled peer.

    Pings from the hub thread interleave with the hub's direct writes; a client that never
    reads is dropped without holding anyone up.
    """
    # Pings every 10 ms; this test answers them only between bursts, so it allows 30 s per pong.
    running = sidecar_factory(ping_interval=0.01, ping_timeout=30, queue_size=16, write_deadline=2)
    stalled = wsreader.connect(running.port, token=running.token, rcvbuf=4096)
    raw = wsreader.connect(running.port, token=running.token)
    assert raw.recv_json()["type"] == "connection:status"
    wait_for(lambda: running.hub.client_count() == 2)
    total = 0
    seqs: list[int] = []
    pings = 0

    def drain() -> None:
        nonlocal pings
        received = raw.take(timeout=0.5)
        assert not raw.eof, "connection closed during the flood"
        for frame in received:
            if frame.opcode == wsreader.OP_PING:
                pings += 1
                mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as is
                raw.sock.sendall(bytes((0x8A, 0x80 | len(frame.payload))) + mask + frame.payload)
            else:
                seqs.append(frame.json()["seq"])

    # Flood in bursts of 100 until at least 5000 events went out and pings came between them.
    limit = time.monotonic() + 20
    while total < 5000 or pings < 3:
        assert time.monotonic() < limit and total < 100_000, f"{pings} pings during the flood"
        for i in range(total, total + 100):
            running.hub.broadcast_event(events.new_event("test:tick", {"i": i, "pad": "p" * 1000}))
        total += 100
        drain()
    deadline = threading.Event()
    timer = threading.Timer(10, deadline.set)
    timer.start()
    while len(seqs) < total and not deadline.is_set():
        drain()
    timer.cancel()
    assert seqs == list(range(1, total + 1))
    # 5 MB is more than the kernel buffers hold for the stalled client: its backlog overflows
    # (4008), or, if the hub's batches kept the queue short, its writer misses the deadline.
    wait_for(lambda: running.hub.client_count() == 1)
    assert set(running.sidecar.sessions.snapshot()["ended"]) <= {"slow-consumer", "write-deadline"}
    assert stalled.read_to_eof()


# -- closing ----------------------------------------------------------------------------------


def _raw_upgrade(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _close_frame_end(data: bytes) -> int:
    """Index just past the first close frame in ``data`` (after the HTTP head)."""
    pos = data.index(b"\r\n\r\n") + 4
    while pos < len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        head = 2 + (2 if length == 126 else 8 if length == 127 else 0)
        if length >= 126:
            length = int.from_bytes(data[pos + 2 : pos + head], "big")
        pos += head + length
        if opcode == 0x8:
            return pos
    raise AssertionError("no close frame")


def test_no_bytes_after_close_frame_when_client_closes(sidecar):
    sock = _raw_upgrade(sidecar.port, sidecar.token)
    wait_for(lambda: sidecar.hub.client_count() == 1)
    mask = b"\x01\x02\x03\x04"
    payload = struct.pack("!H", 1000)
    sock.sendall(
        bytes([0x88, 0x80 | 2]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    data = _read_all(sock)  # to EOF
    assert data.startswith(b"HTTP/1.1 101")
    end = _close_frame_end(data)
    assert data[end:] == b"", f"bytes after the close frame: {data[end:]!r}"


def test_no_bytes_after_close_frame_when_server_closes(sidecar):
    sock = _raw_upgrade(sidecar.port, sidecar.token)
    wait_for(lambda: sidecar.hub.client_count() == 1)
    sidecar.hub.stop()
    data = _read_all(sock)
    end = _close_frame_end(data)
    assert data[end - 2 - len(b"server shutting down") : end - len(b"server shutting down")] == (
        struct.pack("!H", 1001)
    )
    assert data[end:] == b""


def test_without_the_fast_path_every_frame_goes_through_the_writer_in_order(sidecar_factory):
    running = sidecar_factory(fast_path=False)
    ws, _ = running.connect_ready()
    wait_for(lambda: running.hub.client_count() == 1)
    for i in range(500):
        running.hub.broadcast_event(events.new_event("test:tick", {"i": i}))
    assert [recv_json(ws)["payload"]["i"] for _ in range(500)] == list(range(500))


def test_send_to_client_never_raises_even_for_an_oversized_event(sidecar_factory):
    running = sidecar_factory(max_event_bytes=1024)
    captured = []
    running.set_message_handler(lambda client, event: captured.append(client))
    ws, _ = running.connect_ready()
    ws.send(json.dumps({"type": "chat:cancel", "payload": {"conversationId": "x"}}))
    client = wait_for(lambda: captured and captured[0])
    big = events.new_chat_error_event("x", "y" * 4096)
    assert running.hub.send_to_client(client, big) is False
    assert running.hub.send_to_client(client, events.new_chat_error_event("x", "ok")) is True
    assert recv_json(ws)["payload"]["message"] == "ok"
