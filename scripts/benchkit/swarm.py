"""The subscribers: N raw WebSocket clients and the publishers in one epoll loop.

:class:`Swarm` opens the subscribers (non-blocking connect and handshake, at most
``in_flight`` at once), reads every readable socket in one ``recv_into`` of a shared 256 KiB
buffer and walks the frame headers with :func:`sidecar.frames.walk_frames` without copying
payloads: it counts text frames, samples latency while a phase measures, answers pings and
echoes close frames. The publishers' sockets are in the same epoll set.

Threads: everything here runs in the bench's main thread, inside :meth:`Swarm.pump`.
"""

from __future__ import annotations

import errno
import math
import re
import select
import signal
import socket
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sidecar.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    accept_key,
    build_frame,
    close_code,
    new_key,
    parse_response_head,
    upgrade_request,
    walk_frames,
)

from . import HOST, BenchTimeout
from .publisher import Publisher
from .server import Server
from .stats import percentile

# Subscriber states.
CONNECTING, UPGRADING, WAIT_STATUS, OPEN, DEAD = range(5)

T_RE = re.compile(rb'"t":(\d+)')
#: The tail of a numbered envelope: its ``seq``, and its ``channel`` when it has one.
TAIL_RE = re.compile(rb'"seq":(\d+)(?:,"channel":"([^"]*)")?\}')
#: The channels the subscribers of a channel run join: ``bench:0`` … ``bench:K-1``.
CHANNEL_PREFIX = "bench:"
#: The masking key of the frames a subscriber sends (close echoes and pongs).
ZERO_KEY = bytes(4)

CLOSE_NAMES = {
    1000: "normal",
    1001: "going away",
    1008: "policy",
    1009: "too big",
    1011: "internal error",
    1013: "try again later",
    4008: "slow consumer",
}


@dataclass
class ConnectResult:
    """How connecting the subscribers went."""

    clients: int
    connected: int
    failed: dict[str, int]
    seconds: float
    handshake_p50_ms: float
    handshake_p99_ms: float
    handshake_max_ms: float
    in_flight: int


class Swarm:
    """N raw WebSocket subscribers and the publishers, driven by one epoll loop (this thread)."""

    def __init__(
        self,
        port: int,
        token: str,
        *,
        frame_bytes: int,
        publishers: int = 2,
        bufsize: int = 256 << 10,
        channels: int = 0,
    ) -> None:
        self.port = port
        self.token = token
        #: K: subscriber i joins ``bench:(i mod K)``; 0: every one on the default channel.
        self.channels = channels
        #: The stride of the round robin (1 for the default channel).
        self.kmod = max(1, channels)
        self.chan: list[int] = []  # each subscriber's channel index (0 on the default)
        self.ep = select.epoll()
        self.buf = bytearray(bufsize)
        self.mv = memoryview(self.buf)
        self.socks: list[socket.socket] = []
        self.fd2idx: dict[int, int] = {}
        self.states: list[int] = []
        self.carry: list[bytes] = []
        self.counts: list[int] = []  # text frames received, connection:status included
        self.hs: list[bytearray] = []
        self.accepts: list[str] = []  # the Sec-WebSocket-Accept each client must get
        self.started_ns: list[int] = []
        self.ready_ns: list[int] = []
        self.dead_reason: dict[int, str] = {}
        self.checked: list[bool] = []
        self.last_seq: list[int] = []
        self.fail_reasons: Counter[str] = Counter()
        self.integrity: Counter[str] = Counter()
        self.total = 0  # text frames received by every subscriber
        self.rx_bytes = 0
        self.ready = 0
        self.deaths = 0
        self.pongs = 0
        # measurement state (set by the phase: benchkit.phase.PhaseRun)
        self.measuring = False
        self.base: list[int] = []
        self.dead_phase_sum = 0
        self.stride = 1
        self.countdown = 1
        self.samples: list[int] = []
        self.max_latency = 0
        self.last_rx_ns = 0
        self.pub_by_fd: dict[int, Publisher] = {}
        self.publishers = [
            Publisher(self.ep, self.pub_by_fd, port, token, frame_bytes, channels)
            for _ in range(max(1, publishers))
        ]

    # -- loop --------------------------------------------------------------------------
    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for readiness and handle everything that is ready."""
        events = self.ep.poll(timeout, len(self.socks) + 8)
        fd2idx = self.fd2idx
        states = self.states
        carry = self.carry
        buf = self.buf
        walk = self._walk
        read = self._read
        now_ns = time.monotonic_ns
        for fd, ev in events:
            idx = fd2idx.get(fd)
            if idx is None:
                pub = self.pub_by_fd.get(fd)
                if pub is not None:
                    pub.on_event(ev)
                continue
            if states[idx] < WAIT_STATUS:
                self._handshake(idx, ev)
                continue
            c = carry[idx]
            off = len(c)
            if off:
                buf[:off] = c
            n = read(idx, off, False)
            if n > 0:
                self.rx_bytes += n
                walk(idx, off + n, now_ns())

    def _read(self, idx: int, off: int, handshake: bool) -> int:
        """One non-blocking ``recv_into(buf[off:])`` for subscriber ``idx``: the bytes read, 0
        when none were ready, -1 when the connection ended (EOF or an error: it is dead)."""
        try:
            n = self.socks[idx].recv_into(self.mv[off:])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if handshake:
                self._dead(idx, f"handshake: {exc.strerror or exc}")
            else:
                self._dead(idx, f"socket error ({errno.errorcode.get(exc.errno or 0, exc)})")
            return -1
        if not n:
            self._dead(
                idx, "handshake: connection closed" if handshake else "EOF without close frame"
            )
            return -1
        return n

    def _walk(self, idx: int, end: int, now: int) -> None:
        """Count (and sample) the whole frames in ``buf[:end]``; carry the incomplete tail."""
        buf = self.buf
        pos = 0
        c0 = ci = self.counts[idx]
        measuring = self.measuring
        first = measuring
        countdown = self.countdown
        for b0, b1, start, fend in walk_frames(buf, 0, end):
            if b0 == 0x81 and b1 < 0x80:  # a final, unmasked text frame
                if ci == 0:
                    self._status(idx, start, fend)
                elif measuring:
                    if first:
                        first = False
                        m = T_RE.search(buf, start, fend)
                        if m is not None:
                            lat = now - int(m.group(1))
                            if lat > self.max_latency:
                                self.max_latency = lat
                    countdown -= 1
                    if countdown <= 0:
                        countdown = self.stride
                        m = T_RE.search(buf, start, fend)
                        if m is not None:
                            self.samples.append(now - int(m.group(1)))
                    self.last_rx_ns = now
                if self.checked[idx] and ci:
                    self._check_seq(idx, start, fend, now)
                ci += 1
            else:
                self.counts[idx] = ci
                if not self._control(idx, b0, b1, start, fend):
                    self.total += ci - c0
                    self.countdown = countdown
                    return
            pos = fend
        self.total += ci - c0
        self.counts[idx] = ci
        self.countdown = countdown
        if pos == 0 and end == len(buf):  # the buffer is full and holds no whole frame
            self.integrity["frame larger than the read buffer"] += 1
            self._dead(idx, "protocol error (frame too large)")
            return
        self.carry[idx] = bytes(buf[pos:end]) if pos < end else b""
        if self.states[idx] == WAIT_STATUS and ci:
            self.states[idx] = OPEN
            self.ready += 1
            self.ready_ns[idx] = now

    def channel_name(self, idx: int) -> bytes:
        """The channel subscriber ``idx`` joined (``b""``: the default channel)."""
        return f"{CHANNEL_PREFIX}{self.chan[idx]}".encode() if self.channels else b""

    def _status(self, idx: int, start: int, end: int) -> None:
        """The ``connection:status`` frame: where the subscriber's channel starts."""
        frame = bytes(self.buf[start:end])
        if b'"connection:status"' not in frame:
            self.integrity["first frame is not connection:status"] += 1
            return
        if self.channels:  # the channel's own position, in the status's channel map
            name = re.escape(self.channel_name(idx))
            match = re.search(rb'"' + name + rb'":\{[^}]*"seq":(\d+)', frame)
            if match is None:
                self.integrity["channel missing from connection:status"] += 1
        else:
            match = re.search(rb'"seq":(\d+)', frame)
        self.last_seq[idx] = int(match.group(1)) if match else -1

    def _check_seq(self, idx: int, start: int, end: int, now: int) -> None:
        """The frame's channel is the subscriber's, and its ``seq`` follows the last one."""
        m = TAIL_RE.search(self.buf, max(start, end - 96), end)
        if m is None:
            self.integrity["broadcast without seq"] += 1
            return
        if (m.group(2) or b"") != self.channel_name(idx):
            self.integrity["event of a channel the subscriber is not in"] += 1
            return
        seq = int(m.group(1))
        last = self.last_seq[idx]
        if last >= 0 and seq != last + 1:
            self.integrity["seq gap or reorder (per channel)"] += 1
        self.last_seq[idx] = seq

    def _control(self, idx: int, b0: int, b1: int, start: int, end: int) -> bool:
        """Handle a frame that is not a final unmasked text frame; ``False`` ends the read."""
        opcode = b0 & 0x0F
        if b1 & 0x80 or b0 & 0x70 or not b0 & 0x80:
            self.integrity["masked, fragmented or RSV frame from the server"] += 1
            self._dead(idx, "protocol error (bad frame)")
            return False
        if opcode == OP_CLOSE:
            payload = bytes(self.buf[start:end])
            code = close_code(payload)
            with suppress(OSError):  # echo the close (masked with a zero key)
                self.socks[idx].send(build_frame(OP_CLOSE, payload[:2], mask=ZERO_KEY))
            name = CLOSE_NAMES.get(code, "")
            self._dead(idx, f"closed by server {code}" + (f" ({name})" if name else ""))
            return False
        if opcode == OP_PING:
            payload = bytes(self.buf[start:end])
            with suppress(OSError):
                self.socks[idx].send(build_frame(OP_PONG, payload, mask=ZERO_KEY))
            self.pongs += 1
            return True
        if opcode == OP_PONG:
            return True
        self.integrity[f"unexpected opcode {opcode}"] += 1
        self._dead(idx, "protocol error (opcode)")
        return False

    def _dead(self, idx: int, reason: str) -> None:
        if self.states[idx] == DEAD:
            return
        was_open = self.states[idx] >= WAIT_STATUS
        self.states[idx] = DEAD
        self.deaths += 1
        sock = self.socks[idx]
        fd = sock.fileno()
        with suppress(OSError, ValueError):
            self.ep.unregister(fd)
        self.fd2idx.pop(fd, None)
        sock.close()
        self.carry[idx] = b""
        if was_open:
            self.dead_reason[idx] = reason
            if self.measuring and idx < len(self.base):
                self.dead_phase_sum += self.counts[idx] - self.base[idx]
        else:
            self.fail_reasons[reason] += 1

    # -- connecting --------------------------------------------------------------------
    def _start_client(self) -> None:
        idx = len(self.socks)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = new_key()
        self.socks.append(sock)
        self.states.append(CONNECTING)
        self.carry.append(b"")
        self.counts.append(0)
        self.hs.append(bytearray())
        self.accepts.append(accept_key(key))
        self.started_ns.append(time.monotonic_ns())
        self.ready_ns.append(0)
        self.checked.append(False)
        self.last_seq.append(-1)
        self.chan.append(idx % self.kmod)
        fd = sock.fileno()
        self.fd2idx[fd] = idx
        path = f"/ws?channels={self.channel_name(idx).decode()}" if self.channels else "/ws"
        self.hs[idx] += upgrade_request(path, f"{HOST}:{self.port}", token=self.token, key=key)
        err = sock.connect_ex((HOST, self.port))
        if err not in (0, errno.EINPROGRESS):
            self.ep.register(fd, 0)
            self._dead(idx, f"connect: {errno.errorcode.get(err, err)}")
            return
        self.ep.register(fd, select.EPOLLOUT)

    def _handshake(self, idx: int, ev: int) -> None:
        sock = self.socks[idx]
        if self.states[idx] == CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._dead(idx, f"connect: {errno.errorcode.get(err, err)}")
                return
            request = bytes(self.hs[idx])
            try:
                sent = sock.send(request)
            except OSError as exc:
                self._dead(idx, f"send: {exc.strerror or exc}")
                return
            if sent != len(request):  # a few hundred bytes on a fresh socket: never partial
                self._dead(idx, "handshake request did not fit the socket buffer")
                return
            self.hs[idx] = bytearray()
            self.states[idx] = UPGRADING
            self.ep.modify(sock.fileno(), select.EPOLLIN)
            return
        n = self._read(idx, 0, True)
        if n <= 0:
            return
        data = self.hs[idx]
        data += self.mv[:n]
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 65536:
                self._dead(idx, "handshake: response head too large")
            return
        status, status_line, headers = parse_response_head(bytes(data[:end]))
        if status != 101:
            self._dead(idx, f"handshake refused: {status_line.partition(' ')[2] or status_line}")
            return
        if headers.get("sec-websocket-accept", "") != self.accepts[idx]:
            self._dead(idx, "handshake: bad Sec-WebSocket-Accept")
            return
        if headers.get("sec-websocket-extensions"):
            self._dead(idx, "handshake: the server negotiated an extension we did not offer")
            return
        self.hs[idx] = bytearray()
        self.states[idx] = WAIT_STATUS
        rest = bytes(data[end + 4 :])
        if rest:
            self.buf[: len(rest)] = rest
            self._walk(idx, len(rest), time.monotonic_ns())

    def connect(self, n: int, in_flight: int, deadline: float, checked: int) -> ConnectResult:
        """Connect ``n`` subscribers, at most ``in_flight`` handshakes at once.

        A handshake is in flight from ``connect()`` until the client has received its
        ``connection:status`` frame (it is then registered in the hub).
        """
        first = len(self.socks)
        ready0 = self.ready
        failed0 = sum(self.fail_reasons.values())
        t0 = time.monotonic()
        started = 0
        while True:
            done = (self.ready - ready0) + (sum(self.fail_reasons.values()) - failed0)
            while started < n and started - done < in_flight:
                self._start_client()
                started += 1
            if done >= n:
                break
            now = time.monotonic()
            if now >= deadline:
                raise BenchTimeout(f"connecting: {self.ready - ready0} of {n} subscribers ready")
            self.pump(min(0.05, deadline - now))
            for idx in self._stalled_handshakes(time.monotonic_ns(), 10.0):
                self._dead(idx, "handshake: no answer within 10 s")
        seconds = time.monotonic() - t0
        times = sorted(
            (self.ready_ns[i] - self.started_ns[i]) / 1e6
            for i in range(first, len(self.socks))
            if self.ready_ns[i]
        )
        opened = [i for i in range(first, len(self.socks)) if self.states[i] == OPEN]
        # at least one subscriber of each channel checks its seqs (the first K cover all)
        for i in opened[: max(checked, min(self.channels, len(opened)))]:
            self.checked[i] = True
        return ConnectResult(
            clients=n,
            connected=len(opened),
            failed=dict(self.fail_reasons),
            seconds=seconds,
            handshake_p50_ms=percentile(times, 0.50),
            handshake_p99_ms=percentile(times, 0.99),
            handshake_max_ms=times[-1] if times else math.nan,
            in_flight=in_flight,
        )

    def _stalled_handshakes(self, now: int, limit: float) -> list[int]:
        cutoff = now - int(limit * 1e9)
        return [
            i
            for i, state in enumerate(self.states)
            if state < OPEN and state != DEAD and self.started_ns[i] < cutoff
        ]

    def live(self) -> list[int]:
        """Indices of the open subscribers."""
        return [i for i, state in enumerate(self.states) if state == OPEN]

    def expected(self, idx: int, events: int) -> int:
        """Events of subscriber ``idx``'s channel among the first ``events`` published
        (event ``e`` goes to channel ``e mod K``)."""
        k = self.chan[idx]
        return 0 if events <= k else (events - k + self.kmod - 1) // self.kmod

    def audience(self) -> float:
        """Subscribers per event, on average (N / K; N on the default channel)."""
        return len(self.socks) / self.kmod

    def settle(self, seconds: float) -> None:
        """Keep serving the sockets for ``seconds`` (answers pings, notices closes)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.05))

    def watch_shutdown(self, server: Server, limit: float) -> dict[str, Any]:
        """SIGTERM the server while the subscribers are connected; time its exit.

        The subscribers keep answering: a close frame from the server is echoed, so each
        connection gets a clean closing handshake. Returns the exit time and the close codes.
        """
        open_before = len(self.live())
        known = set(self.dead_reason)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        while server.poll() is None and time.monotonic() - started < limit:
            self.pump(0.02)
        seconds = time.monotonic() - started
        for _ in range(100):  # read what arrived just before the exit (bounded)
            if not self.ep.poll(0, 1):
                break
            self.pump(0)
        closes = Counter(r for i, r in self.dead_reason.items() if i not in known)
        return {
            "clients": open_before,
            "exited": server.poll() is not None,
            "exit_code": server.poll(),
            "seconds": seconds,
            "closes": dict(closes),
            "closed_1001": sum(v for k, v in closes.items() if "1001" in k),
            "still_open": len(self.live()),
        }

    def close(self) -> None:
        """Close every socket (no closing handshake: the server sees EOF)."""
        for pub in self.publishers:
            pub.close()
        for sock in self.socks:
            with suppress(OSError):
                sock.close()
        self.ep.close()
