"""A scripted WebSocket server that plays the hub's part of a test vector over real sockets.

It accepts one connection at a time on 127.0.0.1 (port 0), answers the handshake with 101 and
the ``sidecar.v1`` subprotocol (or with a status of the test's choosing), and then sends what
the test tells it to and reads what the client sends. Built on the project's codec
(:mod:`sidecar.frames`). Every wait has a deadline. Threads: the test's only.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from sidecar.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameParser, accept_key, frame
from sidecar.frames import close_frame as make_close_frame
from sidecar.frames import text_frame as make_text_frame

WAIT = 10.0


class ScriptedHub:
    """A listening socket; :meth:`accept` takes the next client."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def accept(self, timeout: float = WAIT, *, refuse: int | None = None) -> ScriptedConnection:
        """The next connection, upgraded (or answered with HTTP ``refuse`` and closed)."""
        self.listener.settimeout(timeout)
        sock, _ = self.listener.accept()
        sock.settimeout(timeout)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"the client closed during its request: {head!r}")
            head += chunk
        request, _, rest = head.partition(b"\r\n\r\n")
        lines = request.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        connection = ScriptedConnection(sock, target, headers, rest)
        if refuse is not None:
            body = b"refused by the script\n"
            sock.sendall(
                b"HTTP/1.1 %d Refused\r\nContent-Length: %d\r\n\r\n%s" % (refuse, len(body), body)
            )
            sock.close()
            return connection
        answer = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}\r\n"
            "Sec-WebSocket-Protocol: sidecar.v1\r\n\r\n"
        )
        sock.sendall(answer.encode())
        return connection

    def close(self) -> None:
        self.listener.close()


class ScriptedConnection:
    """One upgraded connection: send frames, read the client's messages, close."""

    def __init__(self, sock: socket.socket, target: str, headers: dict[str, str], rest: bytes):
        self.sock = sock
        self.target = target
        self.headers = headers
        self.parser = FrameParser()
        self.parser.append(rest)
        self.closed = False

    def send_text(self, text: str) -> None:
        self.sock.sendall(make_text_frame(text.encode()))

    def send_json(self, value: Any) -> None:
        self.send_text(json.dumps(value))

    def _frame(self, deadline: float) -> Any:
        while True:
            got = self.parser.pop()
            if got is not None:
                return got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                return None
            self.parser.append(data)

    def recv_json(self, timeout: float = WAIT) -> Any:
        """The client's next text message, decoded (pings are answered on the way)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self._frame(deadline)
            if got is None:
                raise AssertionError("the client closed instead of sending a message")
            if got.opcode == OP_PING:
                self.sock.sendall(frame(OP_PONG, got.payload))
            elif got.opcode == OP_TEXT:
                return json.loads(got.payload)
            elif got.opcode == OP_CLOSE:
                raise AssertionError(f"the client closed ({got.close_code}) instead of sending")

    def close(self, code: int, reason: str = "", timeout: float = WAIT) -> int | None:
        """Close with ``code`` (1006: cut the connection, no close frame); the code of the
        client's answering close frame, if it sent one in time."""
        self.closed = True
        if code == 1006:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            return None
        self.sock.sendall(make_close_frame(code, reason))
        deadline = time.monotonic() + timeout
        answer = None
        try:
            while True:
                got = self._frame(deadline)
                if got is None or got.opcode == OP_CLOSE:
                    answer = None if got is None else got.close_code
                    break
        except OSError:
            pass
        self.sock.close()
        return answer

    def silence(self) -> None:
        """Stop answering pings and reading (the caller keeps the socket open)."""
        self.parser = FrameParser()


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)
