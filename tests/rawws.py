"""A tiny raw-socket WebSocket client for protocol tests (RFC 6455), with nothing validated.

The framing is :mod:`sidecar.frames` (re-exported here): :func:`build_frame` makes any frame a
client could send, valid or not: FIN, RSV bits, any opcode, masked or not, and the payload
length in the minimal or a longer form. :class:`RawWS` does the opening handshake, sends
bytes, reads frames (``(opcode, payload)`` plus FIN/RSV, through a
:class:`~sidecar.frames.FrameParser`) and tells a close frame and EOF apart. Every socket
operation has a timeout. A :class:`RawWS` belongs to the one test thread that uses it.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

from sidecar import frames
from sidecar.config import Config
from sidecar.conformance import conformance_app
from sidecar.frames import Frame, FrameOptions, FrameParser, parse_response_head
from tests.conftest import TOKEN, RunningSidecar, start_sidecar, wait_for

# The codec's names the tests import from here.
OP_CONT, OP_TEXT, OP_BINARY = frames.OP_CONT, frames.OP_TEXT, frames.OP_BINARY
OP_CLOSE, OP_PING, OP_PONG = frames.OP_CLOSE, frames.OP_PING, frames.OP_PONG
build_frame, close_payload, mask_bytes = frames.build_frame, frames.close_payload, frames.mask_bytes
upgrade_request = frames.upgrade_request

#: Close code reported when the peer ended the TCP stream without a close frame.
EOF = None


class HandshakeFailed(Exception):
    """The server answered the upgrade with something other than ``101``."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP {status}: {head[:200]!r}")
        self.status = status
        self.head = head


@dataclass
class RawWS:
    """A client WebSocket over a plain socket (construct with :meth:`connect`)."""

    sock: socket.socket
    timeout: float
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    #: The response head as it arrives; what follows it goes to ``parser``.
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False
    parser: FrameParser = field(default_factory=FrameParser)

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
        self.status, _, headers = parse_response_head(head)
        self.headers.update(headers)
        if self.status != 101:
            raise HandshakeFailed(self.status, head)
        self.parser.append(self.buffer)  # frames that came with the response head
        self.buffer.clear()

    def finish_upgrade(self) -> bytes:
        """Read the response head of an upgrade sent by hand; frames that came with it are
        kept for :meth:`read_frame`. Returns the head."""
        head = self._read_head()
        self.parser.append(self.buffer)
        self.buffer.clear()
        return head

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

    def send_frame(
        self, opcode: int, payload: bytes = b"", **options: Unpack[FrameOptions]
    ) -> bool:
        """Build (see :func:`build_frame`) and send one frame."""
        return self.send_raw(build_frame(opcode, payload, **options))

    def send_close(self, code: int | None = 1000, reason: bytes = b"") -> bool:
        """Send a (masked) close frame."""
        return self.send_frame(OP_CLOSE, close_payload(code, reason))

    # -- reading ----------------------------------------------------------------------------
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
        """The next frame, or ``None`` at EOF. Raises ``TimeoutError`` after ``timeout``.

        Masked frames (a protocol error from a server) are unmasked and marked ``masked``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (frame := self.parser.pop()) is None:
            chunk = self._recv(deadline, "no complete frame from the server in time")
            if not chunk:
                return None
            self.parser.append(chunk)
        return frame

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
                code = frame.close_code
                if reply:
                    self.send_close(code if code != 1005 else None)
                return code

    def read_eof(self, timeout: float | None = None) -> bytes:
        """Read to EOF and return whatever bytes came (b"" for a clean end after the close)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        rest = self.parser.take_bytes()
        while not self.eof:
            rest += self._recv(deadline, "the server did not close the TCP connection in time")
        return rest

    def discard_until_eof(self, timeout: float | None = None) -> int:
        """Read and drop everything until EOF (no parsing, no buffering); bytes dropped.

        Raises ``TimeoutError`` if the server does not end the stream in time.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        dropped = len(self.parser.take_bytes())
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

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (no closing handshake)."""
        self.sock.close()


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


def wait_for_baseline(
    threads: int, fds: int, settled: Callable[[], bool] = lambda: True, timeout: float = 5.0
) -> None:
    """Wait until threads and descriptors are back to a baseline (and ``settled()``); fail
    the test with what is still there."""
    try:
        wait_for(
            lambda: threading.active_count() <= threads and open_fds() <= fds and settled(),
            timeout=timeout,
        )
    except AssertionError:
        names = sorted(t.name for t in threading.enumerate())
        raise AssertionError(
            f"threads {names} (baseline {threads}); fds {fd_targets()} (baseline {fds})"
        ) from None


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
