"""A tiny raw-socket WebSocket client for protocol tests (RFC 6455), with nothing validated.

:func:`build_frame` makes any frame a client could send, valid or not: FIN, RSV bits, any
opcode, masked or not, and the payload length in the minimal or a longer form. :class:`RawWS`
does the opening handshake, sends bytes, reads frames (``(opcode, payload)`` plus FIN/RSV)
and tells a close frame and EOF apart. Every socket operation has a timeout.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import Config
from sidecar.conformance import conformance_app
from tests.conftest import TOKEN, RunningSidecar, start_sidecar

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: Close code reported when the peer ended the TCP stream without a close frame.
EOF = None


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key``."""
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool | bytes = True,
    length_form: int | None = None,
) -> bytes:
    """One frame, as a client would send it (masked by default).

    ``rsv`` is the three RSV bits as an integer 0-7 (RSV1 = 4). ``mask`` is ``True`` (random
    key), ``False`` (unmasked: a protocol error from a client) or an explicit 4-byte key.
    ``length_form`` forces the length encoding: 7 (only if it fits), 16 or 64 bits; longer
    forms than needed are a protocol error (RFC 6455 5.2, "minimal number of bytes").
    """
    n = len(payload)
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    form = length_form or (7 if n < 126 else 16 if n < 0x10000 else 64)
    mask_bit = 0x80 if mask is not False else 0
    if form == 7:
        if n > 125:
            raise ValueError("payload too long for the 7-bit length form")
        head = bytes((first, mask_bit | n))
    elif form == 16:
        if n > 0xFFFF:
            raise ValueError("payload too long for the 16-bit length form")
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is False:
        return head + payload
    key = os.urandom(4) if mask is True else bytes(mask)
    return head + key + mask_bytes(payload, key)


def close_payload(code: int | None = None, reason: bytes = b"") -> bytes:
    """The payload of a close frame (empty when ``code`` is ``None``)."""
    return b"" if code is None else struct.pack("!H", code) + reason


@dataclass
class Frame:
    """A frame read from the server."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool = False

    @property
    def close_code(self) -> int:
        """The code of a close frame (1005 when it carries none)."""
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005


class HandshakeFailed(Exception):
    """The server answered the upgrade with something other than ``101``."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP {status}: {head[:200]!r}")
        self.status = status
        self.head = head


def upgrade_request(
    path: str,
    host: str,
    *,
    token: str | None = None,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    extensions: str | None = None,
) -> bytes:
    """A valid WebSocket upgrade request head (random key, version 13)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if origin:
        lines.append(f"Origin: {origin}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class RawWS:
    """A client WebSocket over a plain socket (construct with :meth:`connect`)."""

    sock: socket.socket
    timeout: float
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False

    # -- opening handshake ------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        port: int,
        path: str = "/ws",
        *,
        token: str | None = None,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        extensions: str | None = None,
        timeout: float = 5.0,
        host: str = "127.0.0.1",
        rcvbuf: int | None = None,
    ) -> RawWS:
        """Connect and upgrade; raise :class:`HandshakeFailed` unless the answer is ``101``.

        ``rcvbuf`` sets ``SO_RCVBUF`` before connecting (a small window: a slow reader).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        ws = cls(sock, timeout)
        try:
            ws.handshake(
                f"{host}:{port}",
                path,
                token=token,
                origin=origin,
                headers=headers,
                extensions=extensions,
            )
        except BaseException:
            sock.close()
            raise
        return ws

    def handshake(
        self,
        host: str,
        path: str,
        *,
        token: str | None,
        origin: str | None,
        headers: dict[str, str] | None,
        extensions: str | None,
    ) -> None:
        """Send the upgrade request and read the response head."""
        self.sock.sendall(
            upgrade_request(
                path, host, token=token, origin=origin, headers=headers, extensions=extensions
            )
        )
        head = self._read_head()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.status != 101:
            raise HandshakeFailed(self.status, head)

    def _read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HandshakeFailed(0, bytes(self.buffer))
            self.buffer += chunk
        end = self.buffer.index(b"\r\n\r\n")
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    # -- writing ----------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> bool:
        """Send bytes; ``False`` if the server has already closed or reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send_frame(self, opcode: int, payload: bytes = b"", **options: object) -> bool:
        """Build (see :func:`build_frame`) and send one frame."""
        return self.send_raw(build_frame(opcode, payload, **options))  # type: ignore[arg-type]

    def send_close(self, code: int | None = 1000, reason: bytes = b"") -> bool:
        """Send a (masked) close frame."""
        return self.send_frame(OP_CLOSE, close_payload(code, reason))

    # -- reading ----------------------------------------------------------------------------
    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            chunk = self._recv(deadline, "no complete frame from the server in time")
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def _recv(self, deadline: float, late: str) -> bytes:
        """One read before ``deadline`` (``TimeoutError(late)`` after it); ``b""`` marks EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(late)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        return chunk

    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` at EOF. Raises ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if not self._fill(2, deadline):
            return None
        b0, b1 = self.buffer[0], self.buffer[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if not self._fill(4, deadline):
                return None
            n = struct.unpack("!H", self.buffer[2:4])[0]
            pos = 4
        elif n == 127:
            if not self._fill(10, deadline):
                return None
            n = struct.unpack("!Q", self.buffer[2:10])[0]
            pos = 10
        masked = bool(b1 & 0x80)
        key = b""
        if masked:
            if not self._fill(pos + 4, deadline):
                return None
            key = bytes(self.buffer[pos : pos + 4])
            pos += 4
        if not self._fill(pos + n, deadline):
            return None
        payload = bytes(self.buffer[pos : pos + n])
        del self.buffer[: pos + n]
        if masked:
            payload = mask_bytes(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload, masked)

    def read_message(self, timeout: float | None = None) -> Frame | None:
        """The next non-control frame (pings are answered, pongs skipped), or the close frame."""
        while True:
            frame = self.read_frame(timeout)
            if frame is None or frame.opcode not in (OP_PING, OP_PONG):
                return frame
            if frame.opcode == OP_PING:
                self.send_frame(OP_PONG, frame.payload)

    def read_close(self, timeout: float | None = None, reply: bool = True) -> int | None:
        """Read until the server's close frame; return its code, or ``None`` at EOF.

        Data frames before the close are discarded; with ``reply`` the close is echoed (the
        closing handshake). Raises ``TimeoutError`` if neither comes within ``timeout``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.read_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return EOF
            if frame.opcode == OP_CLOSE:
                if reply:
                    self.send_close(frame.close_code if frame.close_code != 1005 else None)
                return frame.close_code

    def read_eof(self, timeout: float | None = None) -> bytes:
        """Read to EOF and return whatever bytes came (b"" for a clean end after the close)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        rest = bytes(self.buffer)
        self.buffer.clear()
        while not self.eof:
            rest += self._recv(deadline, "the server did not close the TCP connection in time")
        return rest

    def discard_until_eof(self, timeout: float | None = None) -> int:
        """Read and drop everything until EOF (no parsing, no buffering); bytes dropped.

        Raises ``TimeoutError`` if the server does not end the stream in time.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        dropped = len(self.buffer)
        self.buffer.clear()
        scratch = bytearray(65536)
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the server did not close the TCP connection in time")
            self.sock.settimeout(remaining)
            try:
                n = self.sock.recv_into(scratch)
            except ConnectionResetError:
                n = 0
            if not n:
                self.eof = True
            dropped += n
        return dropped

    # -- ending -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Abort the connection with a TCP RST (``SO_LINGER`` 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def shutdown_write(self) -> None:
        """Send a TCP FIN without a close frame (half-close)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket (no closing handshake)."""
        self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- process gauges and an in-process conformance server ----------------------------------------


def open_fds() -> int:
    """Number of open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> list[str]:
    """What this process's file descriptors point at (for failure messages)."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
        except OSError:
            pass
    return sorted(targets)


def rss_bytes() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_conformance(**overrides: Any) -> RunningSidecar:
    """Serve :func:`sidecar.conformance.conformance_app` on 127.0.0.1:0 in this process.

    The caller stops it with ``.close()`` (every client is closed with 1001).
    """
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "token": TOKEN}
    options.update(overrides)
    return start_sidecar(conformance_app(Config(**options)), **overrides)


class Problems(logging.Handler):
    """Collects log records with a traceback and uncaught exceptions of any thread.

    Attach with :meth:`install` (sets the ``sidecar`` loggers to DEBUG by default, so that
    every level is seen) and detach with :meth:`uninstall`; :attr:`found` lists what went
    wrong.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []
        self._saved_hook: Any = None
        self._saved_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info or record.exc_text or "Traceback" in text:
            self.found.append(f"{record.name} {record.levelname}: {self.format(record)}")
        elif record.levelno >= logging.ERROR:
            self.found.append(f"{record.name} {record.levelname}: {text}")

    def _thread_hook(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        self.found.append(f"uncaught {args.exc_type.__name__} in thread {name}: {args.exc_value}")

    def install(self, level: int = logging.DEBUG) -> Problems:
        """Start collecting; the ``sidecar`` loggers emit from ``level`` on meanwhile."""
        logging.getLogger().addHandler(self)
        sidecar_logger = logging.getLogger("sidecar")
        self._saved_level = sidecar_logger.level
        sidecar_logger.setLevel(level)
        self._saved_hook = threading.excepthook
        threading.excepthook = self._thread_hook
        return self

    def uninstall(self) -> None:
        """Stop collecting."""
        logging.getLogger().removeHandler(self)
        logging.getLogger("sidecar").setLevel(self._saved_level)
        if self._saved_hook is not None:
            threading.excepthook = self._saved_hook
