"""The publisher: HTTP/1.1 POSTs to ``/api/v1/events`` on a non-blocking socket.

It has no loop of its own: the swarm's epoll loop (the bench's main thread) drives it through
:meth:`Publisher.on_event`, and the phase reads its :attr:`Publisher.results`.
"""

from __future__ import annotations

import re
import select
import socket
import time
from contextlib import suppress
from dataclasses import dataclass, field

from sidecar.frames import parse_response_head

from . import EVENT_TYPE, HOST

ACCEPTED_RE = re.compile(rb'"accepted":(\d+)')


@dataclass
class PostResult:
    """The answer to one publish request."""

    status: int
    sent: int
    accepted: int
    posted_ns: int
    error: str = ""
    answered_ns: int = field(default_factory=time.monotonic_ns)


class Publisher:
    """One POST at a time to ``/api/v1/events``; the swarm's loop drives it.

    The connection is kept alive when the server allows it; Werkzeug answers every request
    with ``Connection: close``, so then each POST opens a new connection (counted).
    """

    def __init__(
        self,
        ep: select.epoll,
        by_fd: dict[int, Publisher],
        port: int,
        token: str,
        frame_bytes: int,
        channels: int = 0,
    ) -> None:
        self.ep = ep
        #: K: event ``i`` goes to channel ``bench:(i mod K)``; 0: the default channel.
        self.channels = channels
        self.by_fd = by_fd
        self.port = port
        self.head = (
            f"POST /api/v1/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n"
        )
        self.sock: socket.socket | None = None
        self.fd = -1
        self.out = b""
        self.inbuf = bytearray()
        self.current: tuple[int, int] | None = None  # (events, posted_ns)
        self.results: list[PostResult] = []
        self.connects = 0
        self.pad = self._pad(frame_bytes, channels)

    @staticmethod
    def _pad(frame_bytes: int, channels: int = 0) -> str:
        """Padding that makes the server's frame about ``frame_bytes`` bytes long."""
        tail = f',"channel":"bench:{channels - 1}"' if channels else ""
        sample = (
            f'{{"type":"{EVENT_TYPE}","payload":{{"t":{time.monotonic_ns()},"i":1000,"pad":""}},'
            f'"timestamp":"2026-01-01T00:00:00.123456Z","seq":100000{tail}}}'
        )
        payload = frame_bytes - 4  # a 126..65535-byte payload has a 4-byte header
        return "x" * max(0, payload - len(sample))

    @property
    def idle(self) -> bool:
        """Whether no request is outstanding."""
        return self.current is None

    def _connect(self) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.connects += 1
        self.by_fd[self.fd] = self
        self.ep.register(self.fd, select.EPOLLIN)

    def _disconnect(self) -> None:
        if self.sock is not None:
            with suppress(OSError):
                self.ep.unregister(self.fd)
            self.by_fd.pop(self.fd, None)
            self.sock.close()
        self.sock = None
        self.fd = -1
        self.inbuf.clear()

    def body(self, first: int, count: int, t_ns: int) -> bytes:
        """A JSON array of ``count`` events stamped ``t_ns``, numbered from ``first`` (event
        ``i`` on channel ``bench:(i mod K)`` in a channel run)."""
        head = f'{{"type":"{EVENT_TYPE}","payload":{{"t":{t_ns},"i":'
        tail = f',"pad":"{self.pad}"}}'
        k = self.channels
        if k:
            items = [
                f'{head}{i}{tail},"channel":"bench:{i % k}"}}' for i in range(first, first + count)
            ]
        else:
            items = [f"{head}{i}{tail}}}" for i in range(first, first + count)]
        return ("[" + ",".join(items) + "]").encode()

    def post(self, first: int, count: int) -> int:
        """Send ``count`` events (stamped now); returns the stamp. Call only when idle."""
        t_ns = time.monotonic_ns()
        if self.sock is None:
            try:
                self._connect()
            except OSError as exc:
                self.results.append(
                    PostResult(0, count, 0, t_ns, f"connect failed: {exc.strerror or exc}")
                )
                return t_ns
        body = self.body(first, count, t_ns)
        data = (self.head % len(body)).encode() + body
        self.current = (count, t_ns)
        self.out = data
        self._flush()
        return t_ns

    def _flush(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(f"send failed: {exc.strerror or exc}")
            return
        self.out = self.out[sent:]
        self.ep.modify(self.fd, select.EPOLLIN | (select.EPOLLOUT if self.out else 0))

    def _fail(self, why: str) -> None:
        if self.current is not None:
            count, posted = self.current
            self.results.append(PostResult(0, count, 0, posted, why))
            self.current = None
        self._disconnect()

    def on_event(self, events: int) -> None:
        """Handle readiness of the publisher's socket."""
        if self.sock is None:
            return
        if events & select.EPOLLOUT and self.out:
            self._flush()
            if self.sock is None:
                return
        if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            chunk = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"recv failed: {exc.strerror or exc}")
            return
        if not chunk:
            if self.current is not None:
                self._fail("connection closed before the response")
            else:
                self._disconnect()  # keep-alive ended; reconnect on the next post
            return
        self.inbuf += chunk
        self._parse()

    def _parse(self) -> None:
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            return
        status, status_line, headers = parse_response_head(bytes(self.inbuf[:end]))
        length = int(headers.get("content-length", "0") or 0)
        if len(self.inbuf) < end + 4 + length:
            return
        body = bytes(self.inbuf[end + 4 : end + 4 + length])
        del self.inbuf[: end + 4 + length]
        count, posted = self.current or (0, 0)
        self.current = None
        match = ACCEPTED_RE.search(body)
        accepted = int(match.group(1)) if match else 0
        if status != 202:
            accepted = min(accepted, count)
        error = "" if status == 202 else body[:200].decode(errors="replace").strip()
        self.results.append(PostResult(status, count, accepted, posted, error))
        closing = headers.get("connection", "").lower() == "close"
        closing = closing or status_line.split(" ", 1)[0] == "HTTP/1.0"
        if closing:
            self._disconnect()

    def close(self) -> None:
        """Close the connection."""
        self._disconnect()
