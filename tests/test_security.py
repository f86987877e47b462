"""Issue 3's handshake rules: token, Host, Origin, handshake validation, limits, log redaction."""

from __future__ import annotations

import http.client
import logging
import socket
import time

import pytest
import websocket

from sidecar.web import guards as security
from tests.conftest import recv_json, wait_for


def _status(ws_call) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        ws_call()
    return info.value.status_code


def _raw_request(port: int, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request head; return (status, headers, body). A 101 is not read further."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            while chunk := sock.recv(65536):
                data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _upgrade_head(port: int, **overrides: str | None) -> str:
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Authorization": "Bearer test-token-0123456789",
    }
    method = overrides.pop("method", None) or "GET"
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"{method} /ws HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


# -- token ------------------------------------------------------------------------------------


def test_missing_and_wrong_token_get_the_same_401(sidecar):
    missing = _raw_request(sidecar.port, _upgrade_head(sidecar.port, Authorization=None))
    wrong = _raw_request(sidecar.port, _upgrade_head(sidecar.port, Authorization="Bearer nope"))
    assert missing[0] == wrong[0] == 401
    assert missing[2] == wrong[2]
    assert b"101" not in missing[2]


def test_token_via_subprotocol_selects_sidecar_v1_and_never_echoes_the_token(sidecar):
    ws = sidecar.connect(token=None, subprotocols=["sidecar.v1", f"auth.{sidecar.token}"])
    assert ws.getsubprotocol() == "sidecar.v1"
    response_headers = str(ws.getheaders())
    assert sidecar.token not in response_headers
    assert recv_json(ws)["type"] == "connection:status"


def test_token_subprotocol_without_sidecar_v1_is_refused(sidecar):
    assert (
        _status(lambda: sidecar.connect(token=None, subprotocols=[f"auth.{sidecar.token}"])) == 400
    )


def test_token_via_bearer_header(sidecar):
    sidecar.connect_ready()


def test_token_via_query_is_accepted_and_redacted_from_logs(sidecar, caplog):
    caplog.set_level(logging.DEBUG)
    sidecar.connect_ready(f"?token={sidecar.token}", token=None)
    assert _status(lambda: sidecar.connect("?token=wrong-token-value", token=None)) == 401
    assert "wrong-token-value" not in caplog.text
    assert sidecar.token not in caplog.text
    assert "token=[redacted]" in caplog.text


def test_wrong_token_in_subprotocol_is_401(sidecar):
    assert (
        _status(lambda: sidecar.connect(token=None, subprotocols=["sidecar.v1", "auth.x"])) == 401
    )


def test_no_auth_mode_accepts_clients_without_token(sidecar_factory):
    running = sidecar_factory(auth=False)
    running.connect_ready(token=None)


# -- Host (DNS rebinding) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:3008", "127.0.0.1.evil.example", ""]
)
def test_foreign_host_gets_403_on_every_route(sidecar, host):
    assert _raw_request(sidecar.port, _upgrade_head(sidecar.port, Host=host))[0] == 403
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=5)
    conn.putrequest("GET", "/health", skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    assert conn.getresponse().status == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:1234", "[::1]:80", "LOCALHOST"])
def test_loopback_hosts_pass(sidecar, host):
    status, _, _ = _raw_request(sidecar.port, _upgrade_head(sidecar.port, Host=host))
    assert status == 101


# -- Origin ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "http://localhost.evil.example",
        "http://127.0.0.1:{port}.evil.example",
        "http://127.0.0.1:{port}/path",
        "http://user@127.0.0.1:{port}",
        "http://127.0.0.2:{port}",
    ],
)
def test_origin_tricks_get_403(sidecar, origin):
    origin = origin.format(port=sidecar.port)
    assert _raw_request(sidecar.port, _upgrade_head(sidecar.port, Origin=origin))[0] == 403


def test_absent_origin_needs_the_token(sidecar):
    assert _raw_request(sidecar.port, _upgrade_head(sidecar.port, Authorization=None))[0] == 401
    assert _raw_request(sidecar.port, _upgrade_head(sidecar.port))[0] == 101


def test_configured_origins_replace_the_defaults(sidecar_factory):
    running = sidecar_factory(allowed_origins=("https://app.example",))
    running.connect_ready(origin="https://app.example")
    assert _status(lambda: running.connect(origin="http://localhost:5173")) == 403


# -- handshake validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Upgrade": None, "Connection": None}, 400),
        ({"Sec_WebSocket_Version": "8"}, 426),
        ({"Sec_WebSocket_Version": None}, 426),
        ({"Sec_WebSocket_Key": None}, 400),
        ({"Sec_WebSocket_Key": "not base64!"}, 400),
        ({"Sec_WebSocket_Key": "c2hvcnQ="}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"method": "POST"}, 405),
        ({"method": "PUT", "Upgrade": None}, 405),
    ],
)
def test_handshake_negatives_get_the_rfc_status_and_never_500(sidecar, overrides, status):
    got, headers, body = _raw_request(sidecar.port, _upgrade_head(sidecar.port, **overrides))
    assert got == status, body
    assert b"Traceback" not in body
    if status == 426:
        assert headers["sec-websocket-version"] == "13"


def test_plain_get_without_upgrade_is_400(sidecar):
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=5)
    conn.request("GET", "/ws")
    assert conn.getresponse().status == 400


# -- limits --------------------------------------------------------------------------------------


def test_connection_cap_answers_503_then_admits_after_one_leaves(sidecar_factory):
    running = sidecar_factory(max_clients=2)
    first, _ = running.connect_ready()
    running.connect_ready()
    status, headers, _ = _raw_request(running.port, _upgrade_head(running.port))
    assert status == 503
    assert headers["retry-after"] == "1"
    first.close()
    wait_for(lambda: running.sidecar.sessions.active == 1)
    running.connect_ready()


def test_slowloris_sockets_are_closed_within_the_handshake_timeout(sidecar_factory):
    running = sidecar_factory(handshake_timeout=0.5)
    slow = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes the head
        slow.append(sock)
    running.connect_ready()  # a real client still gets in
    started = time.monotonic()
    for sock in slow:
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(1024):  # the server answers 408 and hangs up
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        sock.close()
    assert time.monotonic() - started < 3


def test_idle_websocket_outlives_the_handshake_timeout(sidecar_factory):
    running = sidecar_factory(handshake_timeout=0.2, ping_interval=0)
    ws, _ = running.connect_ready()
    ws.settimeout(0.6)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()  # nothing for 3 handshake timeouts; the connection must still be up
    running.hub.broadcast_event(
        __import__("sidecar.events").events.new_stream_created_event("p", "s", "n")
    )
    ws.settimeout(5)
    assert recv_json(ws)["type"] == "stream:created"


def test_compression_is_off_by_default(sidecar):
    ws = sidecar.connect(header=["Sec-WebSocket-Extensions: permessage-deflate"])
    assert "sec-websocket-extensions" not in {k.lower() for k in ws.getheaders()}


def test_compression_can_be_enabled(sidecar_factory):
    running = sidecar_factory(compression=True)
    status, headers, _ = _raw_request(
        running.port,
        _upgrade_head(running.port, Sec_WebSocket_Extensions="permessage-deflate"),
    )
    assert status == 101
    assert "permessage-deflate" in headers.get("sec-websocket-extensions", "")


# -- pure helpers ----------------------------------------------------------------------------------


def test_parse_origin_is_exact():
    assert security.parse_origin("http://LOCALHOST:5173") == ("http", "localhost", 5173)
    assert security.parse_origin("http://localhost") == ("http", "localhost", 80)
    assert security.parse_origin("file://") == ("file", "", None)
    for bad in ["null", "", "localhost:5173", "http://a:99999", "http://a/b", "http://u@a"]:
        assert security.parse_origin(bad) is None, bad


def test_redact_hides_every_token_value():
    assert security.redact("GET /ws?token=abc&since=x:1 HTTP/1.1") == (
        "GET /ws?token=[redacted]&since=x:1 HTTP/1.1"
    )


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; client_max_window_bits=x",
    ],
)
def test_a_head_the_websocket_library_refuses_is_a_400_not_a_500(sidecar_factory, offer):
    """Our checks pass it, simple-websocket's parser raises before the 101: a plain 400."""
    running = sidecar_factory(compression=True)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        running.connect(header=[f"Sec-WebSocket-Extensions: {offer}"])
    assert refused.value.status_code == 400
    counts = running.sidecar.sessions.snapshot()["rejectedHandshakes"]
    assert counts == {"handshake": 1}
    running.connect_ready()  # the server goes on
