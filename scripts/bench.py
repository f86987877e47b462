"""Fan-out benchmark of the sidecar (issue 5): one command, numbers next to the targets.

``scripts/bench`` runs this file with the repository's ``.venv``. For every client count N of
the sweep it:

1. starts the sidecar as a subprocess (``python -m sidecar --port 0``, a fresh token, pinned
   to core 0 when the machine has two or more) and reads its ready line;
2. connects N raw WebSocket subscribers, at most ``--handshakes`` (50) in flight, and times
   it until the last one has received its ``connection:status`` frame; then reads the
   server's RSS and thread count with N idle connections;
3. **as fast as possible**: publishes M events of ~200 bytes through ``POST /api/v1/events``
   in batches, never letting the slowest subscriber fall more than ``--window`` events
   behind (so it measures the delivery rate, not queue overflow);
4. **fixed rate**: publishes R events/s (default 200) for ``--duration`` seconds;
5. stops the sidecar (SIGTERM, then SIGKILL) whatever happens.

The load generator is this single process, pinned to core 1: one epoll loop drives every
subscriber and the publisher. Subscribers are raw sockets (the handshake is done here):
each readable socket is read in one ``recv_into`` of up to 256 KiB, frame headers are walked
without decoding payloads, every frame is counted, and latency is sampled: the ``"t"`` field
(the publisher's ``time.monotonic_ns()``, the same clock as the receipt time) of every k-th
frame for the percentiles, and of the first frame of every read (the oldest, so the exact
maximum). A few "checked" subscribers also verify that ``seq`` is contiguous.

Each phase reports the CPU used by the server (``/proc/PID/stat``) and by this process over
the measured window, and which side saturated its core: a figure limited by the load
generator is only a lower bound for the server.

Everything targets 127.0.0.1, and every loop is bounded in count and in time (``--timeout``
for the whole run, a cap per phase).
"""

from __future__ import annotations

import argparse
import base64
import errno
import gc
import hashlib
import http.client
import json
import math
import os
import platform
import re
import resource
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
EVENT_TYPE = "bench:tick"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Subscriber states.
CONNECTING, UPGRADING, WAIT_STATUS, OPEN, DEAD = range(5)

T_RE = re.compile(rb'"t":(\d+)')
SEQ_RE = re.compile(rb'"seq":(\d+)')
ACCEPTED_RE = re.compile(rb'"accepted":(\d+)')
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Share of a core above which a side counts as saturated.
SATURATED = 0.85

CLOSE_NAMES = {
    1000: "normal",
    1001: "going away",
    1008: "policy",
    1009: "too big",
    1011: "internal error",
    1013: "try again later",
    4008: "slow consumer",
}


class BenchError(Exception):
    """A run that cannot go on (the server did not start, a handshake was refused, ...)."""


class BenchTimeout(BenchError):
    """The overall ``--timeout`` (or the watchdog) expired."""


# --------------------------------------------------------------------------------------
# /proc readers
# --------------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` (KiB), ``VmHWM`` (KiB) and ``Threads`` of process ``pid``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads, live and ended)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        rest = f.read().rpartition(")")[2].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CoreTimes = dict[int, tuple[int, int, int]]


def core_times() -> CoreTimes:
    """``{core: (busy, irq + softirq, total)}`` in clock ticks, from ``/proc/stat``."""
    out: CoreTimes = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total = sum(ticks)
            out[int(name[3:])] = (total - ticks[3] - ticks[4], ticks[5] + ticks[6], total)
    return out


def core_busy(before: CoreTimes, after: CoreTimes) -> dict[int, float]:
    """Busy fraction of each core between two :func:`core_times` snapshots."""
    out = {}
    for core, (busy1, _irq1, total1) in after.items():
        busy0, _irq0, total0 = before.get(core, (busy1, 0, total1))
        span = total1 - total0
        out[core] = (busy1 - busy0) / span if span > 0 else 0.0
    return out


def core_irq(before: CoreTimes, after: CoreTimes) -> dict[int, float]:
    """Fraction of each core spent in interrupts and softirqs (loopback TCP delivery)."""
    out = {}
    for core, (_busy1, irq1, total1) in after.items():
        _busy0, irq0, total0 = before.get(core, (0, irq1, total1))
        span = total1 - total0
        out[core] = (irq1 - irq0) / span if span > 0 else 0.0
    return out


def machine_busy(seconds: float = 1.0) -> dict[int, float]:
    """How busy each core is while the bench does nothing (a pre-flight noise check)."""
    before = core_times()
    threading.Event().wait(seconds)  # a measurement interval, not synchronisation
    return core_busy(before, core_times())


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE towards ``need`` (up to the hard limit); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


# --------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------
class Server:
    """The sidecar as a subprocess: started with a fresh token, always stopped."""

    def __init__(
        self,
        cmd: list[str],
        *,
        token: str,
        core: int | None,
        log_path: Path,
        nice: int = 0,
    ) -> None:
        self.cmd = cmd
        self.nice = nice
        self.token = token
        self.core = core
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.exit: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        """The server's process id (the ready line's ``pid``)."""
        return int(self.ready.get("pid") or (self.proc.pid if self.proc else 0))

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.ready["port"])

    def start(self, timeout: float) -> dict[str, Any]:
        """Start the server and wait (at most ``timeout`` s) for its ready line."""
        env = dict(os.environ)
        env["SIDECAR_TOKEN"] = self.token
        env.pop("SIDECAR_PORT", None)
        env.pop("SIDECAR_HOST", None)
        core = self.core
        nice = self.nice

        def pin() -> None:  # runs in the child, before exec: every server thread inherits it
            if core is not None:
                os.sched_setaffinity(0, {core})
            if nice:
                os.setpriority(os.PRIO_PROCESS, 0, nice)

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops the server
                preexec_fn=pin,
            )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"the server printed no ready line within {timeout:.0f} s")
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(5)
                    raise BenchError(
                        f"the server exited ({code}) before its ready line; "
                        f"log tail:\n{self.log_tail()}"
                    )
                data += chunk
        line = data.split(b"\n", 1)[0]
        try:
            self.ready = json.loads(line)
        except ValueError:
            raise BenchError(f"unexpected first line from the server: {line[:200]!r}") from None
        if self.ready.get("event") != "ready" or "port" not in self.ready:
            raise BenchError(f"unexpected ready line: {self.ready}")
        return self.ready

    def stop(self, grace: float = 5.0, signalled: bool = False) -> dict[str, Any]:
        """SIGTERM (unless ``signalled``), wait up to ``grace`` s, then SIGKILL.

        A server that overstays gets its stacks dumped with py-spy first, when py-spy is
        installed. Idempotent; never raises.
        """
        proc = self.proc
        if proc is None or self.exit:
            return self.exit
        started = time.monotonic()
        killed = False
        dump = ""
        if proc.poll() is None:
            if not signalled:
                with suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                dump = self.dump_stacks("hung-after-sigterm")
                killed = True
                with suppress(ProcessLookupError):
                    proc.kill()
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self.exit = {
            "code": proc.returncode,
            "seconds": round(time.monotonic() - started, 3),
            "killed": killed,
        }
        if dump:
            self.exit["stacks"] = dump
        return self.exit

    def dump_stacks(self, label: str) -> str:
        """``py-spy dump`` of the server into the log directory; returns the path or ``""``."""
        spy = find_py_spy()
        if not spy or not self.proc or self.proc.poll() is not None:
            return ""
        path = self.log_path.with_name(f"{self.log_path.stem}-{label}.txt")
        with open(path, "w") as out, suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [spy, "dump", "--pid", str(self.pid)], stdout=out, stderr=out, timeout=60
            )
        return str(path)

    def status(self) -> dict[str, int]:
        """RSS (KiB), peak RSS and thread count now."""
        return proc_status(self.pid)

    def cpu(self) -> float:
        """CPU seconds used so far."""
        return proc_cpu_seconds(self.pid)

    def hub(self, timeout: float = 5.0) -> dict[str, Any]:
        """``GET /api/v1/hub`` (the hub's counters); ``{}`` if unavailable."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", "/api/v1/hub", headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return {}
            return dict(json.loads(body).get("hub") or {})
        except (OSError, ValueError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_counts(self) -> dict[str, int]:
        """Counts of notable lines in the server's stderr (warnings, errors, drops)."""
        counts: Counter[str] = Counter()
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if " WARNING " in line:
                        counts["warning"] += 1
                    if " ERROR " in line or " CRITICAL " in line:
                        counts["error"] += 1
                    if "Traceback" in line:
                        counts["traceback"] += 1
                    if "slow consumer" in line:
                        counts["slow consumer"] += 1
        except OSError:
            pass
        return dict(counts)


# --------------------------------------------------------------------------------------
# The publisher: HTTP/1.1 POSTs on a non-blocking socket in the swarm's epoll loop
# --------------------------------------------------------------------------------------
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
    ) -> None:
        self.ep = ep
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
        self.pad = self._pad(frame_bytes)

    @staticmethod
    def _pad(frame_bytes: int) -> str:
        """Padding that makes the server's frame about ``frame_bytes`` bytes long."""
        sample = (
            f'{{"type":"{EVENT_TYPE}","payload":{{"t":{time.monotonic_ns()},"i":1000,"pad":""}},'
            '"timestamp":"2026-01-01T00:00:00.123456Z","seq":100000}'
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
        """A JSON array of ``count`` events stamped ``t_ns``, numbered from ``first``."""
        head = f'{{"type":"{EVENT_TYPE}","payload":{{"t":{t_ns},"i":'
        tail = f',"pad":"{self.pad}"}}}}'
        return (
            "[" + ",".join([f"{head}{i}{tail}" for i in range(first, first + count)]) + "]"
        ).encode()

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
        head = bytes(self.inbuf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
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
        closing = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
        if closing:
            self._disconnect()

    def close(self) -> None:
        """Close the connection."""
        self._disconnect()


# --------------------------------------------------------------------------------------
# The subscribers
# --------------------------------------------------------------------------------------
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


@dataclass
class PhaseSpec:
    """What one measured phase does."""

    mode: str  # "max" or "rate"
    events: int
    rate: float = 0.0
    batch: int = 100
    window: int = 500
    tick: float = 0.01
    cap: float = 30.0
    drain: float = 10.0
    samples: int = 50_000


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
    ) -> None:
        self.port = port
        self.token = token
        self.ep = select.epoll()
        self.buf = bytearray(bufsize)
        self.mv = memoryview(self.buf)
        self.socks: list[socket.socket] = []
        self.fd2idx: dict[int, int] = {}
        self.states: list[int] = []
        self.carry: list[bytes] = []
        self.counts: list[int] = []  # text frames received, connection:status included
        self.hs: list[bytearray] = []
        self.keys: list[bytes] = []
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
        # measurement state (set by run_phase)
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
            Publisher(self.ep, self.pub_by_fd, port, token, frame_bytes)
            for _ in range(max(1, publishers))
        ]
        self.request_tail = (
            f"Host: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        )

    # -- loop --------------------------------------------------------------------------
    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for readiness and handle everything that is ready."""
        events = self.ep.poll(timeout, len(self.socks) + 8)
        fd2idx = self.fd2idx
        states = self.states
        socks = self.socks
        carry = self.carry
        buf = self.buf
        mv = self.mv
        walk = self._walk
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
            try:
                n = socks[idx].recv_into(mv[off:])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                self._dead(idx, f"socket error ({errno.errorcode.get(exc.errno or 0, exc)})")
                continue
            if not n:
                self._dead(idx, "EOF without close frame")
                continue
            self.rx_bytes += n
            walk(idx, off + n, now_ns())

    def _walk(self, idx: int, end: int, now: int) -> None:
        """Count (and sample) the whole frames in ``buf[:end]``; carry the incomplete tail."""
        buf = self.buf
        pos = 0
        c0 = ci = self.counts[idx]
        measuring = self.measuring
        first = measuring
        countdown = self.countdown
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                hdr = 2
            elif length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            else:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            fend = pos + hdr + length
            if fend > end:
                if hdr + length > len(buf):
                    self.counts[idx] = ci
                    self.total += ci - c0
                    self.integrity["frame larger than the read buffer"] += 1
                    self._dead(idx, "protocol error (frame too large)")
                    return
                break
            if b0 == 0x81 and b1 < 0x80:  # a final, unmasked text frame
                if ci == 0:
                    self._status(idx, pos + hdr, fend)
                elif measuring:
                    if first:
                        first = False
                        m = T_RE.search(buf, pos + hdr, fend)
                        if m is not None:
                            lat = now - int(m.group(1))
                            if lat > self.max_latency:
                                self.max_latency = lat
                    countdown -= 1
                    if countdown <= 0:
                        countdown = self.stride
                        m = T_RE.search(buf, pos + hdr, fend)
                        if m is not None:
                            self.samples.append(now - int(m.group(1)))
                    self.last_rx_ns = now
                if self.checked[idx] and ci:
                    self._check_seq(idx, pos + hdr, fend, now)
                ci += 1
            else:
                self.counts[idx] = ci
                if not self._control(idx, b0, b1, pos + hdr, fend):
                    self.total += ci - c0
                    self.countdown = countdown
                    return
            pos = fend
        self.total += ci - c0
        self.counts[idx] = ci
        self.countdown = countdown
        self.carry[idx] = bytes(buf[pos:end]) if pos < end else b""
        if self.states[idx] == WAIT_STATUS and ci:
            self.states[idx] = OPEN
            self.ready += 1
            self.ready_ns[idx] = now

    def _status(self, idx: int, start: int, end: int) -> None:
        frame = bytes(self.buf[start:end])
        if b'"connection:status"' not in frame:
            self.integrity["first frame is not connection:status"] += 1
            return
        match = re.search(rb'"seq":(\d+)', frame)
        self.last_seq[idx] = int(match.group(1)) if match else -1

    def _check_seq(self, idx: int, start: int, end: int, now: int) -> None:
        m = SEQ_RE.search(self.buf, max(start, end - 32), end)
        if m is None:
            self.integrity["broadcast without seq"] += 1
            return
        seq = int(m.group(1))
        last = self.last_seq[idx]
        if last >= 0 and seq != last + 1:
            self.integrity["seq gap or reorder"] += 1
        self.last_seq[idx] = seq

    def _control(self, idx: int, b0: int, b1: int, start: int, end: int) -> bool:
        """Handle a frame that is not a final unmasked text frame; ``False`` ends the read."""
        opcode = b0 & 0x0F
        if b1 & 0x80 or b0 & 0x70 or not b0 & 0x80:
            self.integrity["masked, fragmented or RSV frame from the server"] += 1
            self._dead(idx, "protocol error (bad frame)")
            return False
        if opcode == 0x8:
            payload = bytes(self.buf[start:end])
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            with suppress(OSError):  # echo the close (masked with a zero key)
                echo = payload[:2]
                self.socks[idx].send(bytes((0x88, 0x80 | len(echo))) + bytes(4) + echo)
            name = CLOSE_NAMES.get(code, "")
            self._dead(idx, f"closed by server {code}" + (f" ({name})" if name else ""))
            return False
        if opcode == 0x9:
            payload = bytes(self.buf[start:end])
            with suppress(OSError):
                self.socks[idx].send(bytes((0x8A, 0x80 | len(payload))) + bytes(4) + payload)
            self.pongs += 1
            return True
        if opcode == 0xA:
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
        key = base64.b64encode(secrets.token_bytes(16))
        self.socks.append(sock)
        self.states.append(CONNECTING)
        self.carry.append(b"")
        self.counts.append(0)
        self.hs.append(bytearray())
        self.keys.append(base64.b64encode(hashlib.sha1(key + WS_GUID).digest()))
        self.started_ns.append(time.monotonic_ns())
        self.ready_ns.append(0)
        self.checked.append(False)
        self.last_seq.append(-1)
        fd = sock.fileno()
        self.fd2idx[fd] = idx
        self.hs[idx] += (
            f"GET /ws HTTP/1.1\r\nSec-WebSocket-Key: {key.decode()}\r\n" + self.request_tail
        ).encode()
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
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._dead(idx, f"handshake: {exc.strerror or exc}")
            return
        if not chunk:
            self._dead(idx, "handshake: connection closed")
            return
        data = self.hs[idx]
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 65536:
                self._dead(idx, "handshake: response head too large")
            return
        head = bytes(data[:end]).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            self._dead(idx, f"handshake refused: {' '.join(parts[1:]) or status_line}")
            return
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept", "").encode() != self.keys[idx]:
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
        for i in opened[:checked]:
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

    def settle(self, seconds: float) -> None:
        """Keep serving the sockets for ``seconds`` (answers pings, notices closes)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.05))

    # -- measuring ---------------------------------------------------------------------
    def run_phase(self, spec: PhaseSpec, server: Server, deadline: float) -> dict[str, Any]:
        """Publish ``spec.events`` events and count what every subscriber receives."""
        live = self.live()
        n = len(live)
        if not n:
            raise BenchError("no subscriber left to measure")
        hub0 = server.hub()
        counts = self.counts
        self.base = counts[:]
        base = self.base
        total0 = self.total
        self.dead_phase_sum = 0
        deaths0 = self.deaths
        self.samples = []
        self.max_latency = 0
        self.last_rx_ns = 0
        self.stride = max(1, (spec.events * n) // max(1, spec.samples))
        self.countdown = 1 + secrets.randbelow(self.stride)
        pubs = self.publishers
        for pub in pubs:
            pub.results.clear()
        connects0 = sum(pub.connects for pub in pubs)
        posts: list[PostResult] = []
        lags: list[int] = []
        published = 0
        answered = 0
        accepted = 0
        failures = 0
        events = spec.events
        stopped_early = ""
        drain_until = 0.0
        live_now = live
        deaths_seen = deaths0
        first_post_ns = 0
        next_post_ns = 0
        tick_ns = int(spec.tick * 1e9)
        interval_ns = 1e9 / spec.rate if spec.mode == "rate" else 0.0

        def progress_min() -> int:
            nonlocal live_now, deaths_seen
            if self.deaths != deaths_seen:
                deaths_seen = self.deaths
                live_now = [i for i in live_now if self.states[i] == OPEN]
            if not live_now:
                return 1 << 62
            return min([counts[i] - base[i] for i in live_now])

        def live_sum() -> tuple[int, int]:
            progress_min()  # refreshes live_now
            return (self.total - total0) - self.dead_phase_sum, len(live_now)

        gc_was = gc.isenabled()
        gc.disable()
        self.measuring = True
        srv0 = server.cpu()
        gen0 = self_cpu_seconds()
        cores0 = core_times()
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        cap_at = t0 + spec.cap
        try:
            while True:
                now = time.monotonic()
                now_ns = time.monotonic_ns()
                if now >= deadline:
                    raise BenchTimeout(f"{spec.mode} phase with {n} subscribers")
                if now >= cap_at and published < events and not stopped_early:
                    stopped_early = f"phase cap of {spec.cap:.0f} s reached"
                    events = published
                # collect answers
                for pub in pubs:
                    if not pub.results:
                        continue
                    for result in pub.results:
                        answered += result.sent
                        accepted += result.accepted
                        failures = failures + 1 if result.status == 0 else 0
                    posts += pub.results
                    pub.results.clear()
                    if failures >= 20 and published < events:
                        stopped_early = f"publishing failed {failures} times in a row"
                        events = published
                # publish
                pub = next((p for p in pubs if p.idle), None)
                if pub is not None and published < events:
                    if spec.mode == "max":
                        k = min(spec.batch, events - published)
                        # events the slowest subscriber must have; in flight counts as sent
                        need = published - (answered - accepted) + k - spec.window
                        if need <= 0:
                            ok = True
                        else:
                            total, nlive = live_sum()
                            ok = nlive == 0 or (total >= need * nlive and progress_min() >= need)
                        if ok:
                            stamp = pub.post(published, k)
                            first_post_ns = first_post_ns or stamp
                            published += k
                    else:
                        due = min(events, int((now_ns - t0_ns) / interval_ns) + 1)
                        if due > published and now_ns >= next_post_ns:
                            k = min(due - published, 1000)
                            stamp = pub.post(published, k)
                            lags.append(stamp - (t0_ns + int(published * interval_ns)))
                            first_post_ns = first_post_ns or stamp
                            next_post_ns = stamp + tick_ns
                            published += k
                # done?
                if published >= events and answered >= published:
                    if not drain_until:
                        drain_until = time.monotonic() + spec.drain
                    total, nlive = live_sum()
                    if nlive == 0 or (total >= accepted * nlive and progress_min() >= accepted):
                        break
                    if time.monotonic() >= drain_until:
                        stopped_early = stopped_early or (
                            f"drain timeout: not every subscriber had everything "
                            f"{spec.drain:.0f} s after the last publish"
                        )
                        break
                # wait
                if spec.mode == "rate" and published < events:
                    due_ns = max(t0_ns + int(published * interval_ns), next_post_ns)
                    wait = max(0.0, min(0.01, (due_ns - time.monotonic_ns()) / 1e9))
                else:
                    wait = 0.01
                self.pump(wait)
        finally:
            self.measuring = False
            srv1 = server.cpu()
            gen1 = self_cpu_seconds()
            cores1 = core_times()
            t1 = time.monotonic()
            if gc_was:
                gc.enable()
        hub1 = server.hub()
        return self._phase_report(
            spec=spec,
            clients=live,
            published=published,
            accepted=accepted,
            posts=posts,
            connects=sum(pub.connects for pub in pubs) - connects0,
            first_post_ns=first_post_ns,
            wall=t1 - t0,
            srv_cpu=srv1 - srv0,
            gen_cpu=gen1 - gen0,
            cores=core_busy(cores0, cores1),
            irq=core_irq(cores0, cores1),
            server_core=server.core,
            lags=lags,
            hub0=hub0,
            hub1=hub1,
            stopped_early=stopped_early,
        )

    def _phase_report(
        self,
        *,
        spec: PhaseSpec,
        clients: list[int],
        published: int,
        accepted: int,
        posts: list[PostResult],
        connects: int,
        first_post_ns: int,
        wall: float,
        srv_cpu: float,
        gen_cpu: float,
        cores: dict[int, float],
        irq: dict[int, float],
        server_core: int | None,
        lags: list[int],
        hub0: dict[str, Any],
        hub1: dict[str, Any],
        stopped_early: str,
    ) -> dict[str, Any]:
        n = len(clients)
        progress = {i: self.counts[i] - self.base[i] for i in clients}
        received = sum(progress.values())
        expected = published * n
        losses: Counter[str] = Counter()
        lost_clients: Counter[str] = Counter()
        for i in clients:
            short = accepted - progress[i]
            if short <= 0:
                continue
            reason = self.dead_reason.get(i) if self.states[i] == DEAD else None
            key = reason or "still connected, had not received everything (lagging)"
            losses[key] += short
            lost_clients[key] += 1
        refused = published - accepted
        if refused:
            losses["refused by the publish API (not broadcast)"] += refused * n
            lost_clients["refused by the publish API (not broadcast)"] += 0
        statuses = Counter(p.status for p in posts)
        errors = Counter(p.error for p in posts if p.error)
        span = (self.last_rx_ns - first_post_ns) / 1e9 if self.last_rx_ns and first_post_ns else 0
        samples = sorted(self.samples)
        srv_util = srv_cpu / wall if wall else 0.0
        gen_util = gen_cpu / wall if wall else 0.0
        gen_core = (
            next(iter(os.sched_getaffinity(0))) if len(os.sched_getaffinity(0)) == 1 else None
        )
        lag_ms = sorted(v / 1e6 for v in lags)
        rtt_ms = sorted((p.answered_ns - p.posted_ns) / 1e6 for p in posts if p.status)
        deliveries_hub = int(hub1.get("deliveries", 0)) - int(hub0.get("deliveries", 0))
        return {
            "mode": spec.mode,
            "clients": n,
            "events_planned": spec.events,
            "events_sent": published,
            "events_accepted": accepted,
            "posts": len(posts),
            "post_status": {str(k): v for k, v in sorted(statuses.items())},
            "post_errors": dict(errors.most_common(5)),
            "rate": spec.rate if spec.mode == "rate" else None,
            "batch": spec.batch if spec.mode == "max" else None,
            "window": spec.window if spec.mode == "max" else None,
            "tick_ms": spec.tick * 1000 if spec.mode == "rate" else None,
            "expected": expected,
            "received": received,
            "missing": expected - received,
            "delivered_fraction": received / expected if expected else math.nan,
            "losses": dict(losses),
            "lost_clients": {k: v for k, v in lost_clients.items() if v},
            "seconds": span,
            "wall_seconds": wall,
            "msgs_per_s": received / span if span > 0 else math.nan,
            "latency_samples": len(samples),
            "sample_stride": self.stride,
            "p50_ms": percentile(samples, 0.50) / 1e6,
            "p90_ms": percentile(samples, 0.90) / 1e6,
            "p99_ms": percentile(samples, 0.99) / 1e6,
            "max_ms": self.max_latency / 1e6 if self.max_latency else math.nan,
            "publish_lag_p99_ms": percentile(lag_ms, 0.99) if lag_ms else None,
            "post_rtt_p50_ms": percentile(rtt_ms, 0.50),
            "post_rtt_p99_ms": percentile(rtt_ms, 0.99),
            "post_rtt_max_ms": rtt_ms[-1] if rtt_ms else math.nan,
            "publish_lag_max_ms": lag_ms[-1] if lag_ms else None,
            "server_cpu_s": srv_cpu,
            "server_cpu_util": srv_util,
            "gen_cpu_s": gen_cpu,
            "gen_cpu_util": gen_util,
            "cpu_us_per_delivery": srv_cpu * 1e6 / received if received else math.nan,
            "gen_cpu_us_per_delivery": gen_cpu * 1e6 / received if received else math.nan,
            "core_busy": {str(k): round(v, 3) for k, v in cores.items()},
            "core_irq": {str(k): round(v, 3) for k, v in irq.items()},
            "server_core": server_core,
            "publisher_connections": connects,
            "saturated": saturation(srv_util, gen_util, cores, irq, server_core, gen_core),
            "hub_deliveries": deliveries_hub,
            "hub_evicted": int(hub1.get("evicted", 0)) - int(hub0.get("evicted", 0)),
            "hub_refused": int(hub1.get("refused_broadcasts", 0))
            - int(hub0.get("refused_broadcasts", 0)),
            "stopped_early": stopped_early,
            "integrity": dict(self.integrity),
        }

    def watch_shutdown(self, proc: subprocess.Popen[bytes], limit: float) -> dict[str, Any]:
        """SIGTERM the server while the subscribers are connected; time its exit.

        The subscribers keep answering: a close frame from the server is echoed, so each
        connection gets a clean closing handshake. Returns the exit time and the close codes.
        """
        open_before = len(self.live())
        known = set(self.dead_reason)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() - started < limit:
            self.pump(0.02)
        seconds = time.monotonic() - started
        for _ in range(100):  # read what arrived just before the exit (bounded)
            if not self.ep.poll(0, 1):
                break
            self.pump(0)
        closes = Counter(r for i, r in self.dead_reason.items() if i not in known)
        return {
            "clients": open_before,
            "exited": proc.poll() is not None,
            "exit_code": proc.poll(),
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


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def saturation(
    srv: float,
    gen: float,
    cores: dict[int, float],
    irq: dict[int, float],
    server_core: int | None,
    gen_core: int | None,
) -> str:
    """Which side used up its core during a phase, in words."""
    pinned = server_core is not None and gen_core is not None
    srv_full = srv >= SATURATED
    gen_full = gen >= SATURATED
    notes = []
    if pinned:
        for core, own in ((server_core, srv), (gen_core, gen)):
            busy = cores.get(int(core), 0.0)  # type: ignore[arg-type]
            other = busy - own - irq.get(int(core), 0.0)  # type: ignore[arg-type]
            if other > 0.15:
                notes.append(f"core {core} also {other:.0%} busy with other processes")
    elif srv + gen >= SATURATED * 2 * 0.9 or sum(cores.values()) >= 0.9 * len(cores):
        notes.append("unpinned: both share the cores")
    if srv_full and gen_full:
        verdict = f"both (server {srv:.0%}, load generator {gen:.0%})"
    elif srv_full:
        verdict = f"server ({srv:.0%} of a core)"
    elif gen_full:
        verdict = f"LOAD GENERATOR ({gen:.0%} of a core): the figure is a lower bound"
    else:
        verdict = f"neither (server {srv:.0%}, load generator {gen:.0%})"
    return verdict + ("; " + "; ".join(notes) if notes else "")


# --------------------------------------------------------------------------------------
# Targets (issue 5)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One row of the issue's target table."""

    label: str
    where: str  # "max", "rate", "connect", "idle"
    clients: int
    metric: str
    op: str  # "<=" or ">="
    value: float
    unit: str
    rate: float | None = None


TARGETS = (
    Target(
        "delivered msg/s, N=1000, as fast as possible",
        "max",
        1000,
        "msgs_per_s",
        ">=",
        250_000,
        "msg/s",
    ),
    Target("delivered, N=1000, as fast as possible", "max", 1000, "delivered_pct", ">=", 100, "%"),
    Target("p50 latency, N=1000, 200 ev/s", "rate", 1000, "p50_ms", "<=", 15, "ms", 200),
    Target("p99 latency, N=1000, 200 ev/s", "rate", 1000, "p99_ms", "<=", 50, "ms", 200),
    Target("delivered, N=1000, 200 ev/s", "rate", 1000, "delivered_pct", ">=", 100, "%", 200),
    Target("p99 latency, N=100, 200 ev/s", "rate", 100, "p99_ms", "<=", 5, "ms", 200),
    Target(
        "server CPU per delivery, N=1000, fixed rate",
        "rate",
        1000,
        "cpu_us_per_delivery",
        "<=",
        6,
        "µs",
    ),
    Target("RSS per idle connection, N=1000", "idle", 1000, "kib_per_conn_idle", "<=", 100, "KiB"),
    Target("connect 1000 clients, 50 in flight", "connect", 1000, "seconds", "<=", 2, "s"),
)


def evaluate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured value and ``pass`` (``None`` when not measured)."""
    out = []
    for target in TARGETS:
        run = next((r for r in runs if r["clients"] == target.clients), None)
        measured: float | None = None
        note = ""
        if run is not None:
            if target.where == "connect":
                conn = run.get("connect") or {}
                if conn.get("connected") == target.clients and conn.get("in_flight", 0) <= 50:
                    measured = conn.get("seconds")
                elif conn:
                    note = f"{conn.get('connected')} of {target.clients} connected"
            elif target.where == "idle":
                measured = (run.get("memory") or {}).get("kib_per_conn_idle")
            else:
                phase = (run.get("phases") or {}).get(target.where)
                if phase and target.rate is not None and phase.get("rate") != target.rate:
                    note = f"run at {phase.get('rate')} ev/s, not {target.rate:g}"
                elif phase:
                    if target.metric == "delivered_pct":
                        measured = 100.0 * phase["delivered_fraction"]
                    else:
                        measured = phase.get(target.metric)
                    if "LOAD GENERATOR" in phase.get("saturated", "") and target.unit == "msg/s":
                        note = "load generator saturated"
        if measured is not None and isinstance(measured, float) and math.isnan(measured):
            measured = None
        ok: bool | None = None
        if measured is not None:
            if target.metric == "delivered_pct":
                ok = measured >= 100.0 - 1e-9
            else:
                ok = measured >= target.value if target.op == ">=" else measured <= target.value
        out.append(
            {
                "target": target.label,
                "op": target.op,
                "value": target.value,
                "unit": target.unit,
                "measured": measured,
                "pass": ok,
                "note": note,
            }
        )
    return out


# --------------------------------------------------------------------------------------
# One client count
# --------------------------------------------------------------------------------------
def server_command(args: argparse.Namespace, max_clients: int) -> list[str]:
    """The command line that starts the server under test."""
    base = shlex.split(args.server_cmd) if args.server_cmd else [sys.executable, "-m", "sidecar"]
    cmd = [*base, "--port", "0", "--max-clients", str(max_clients + 16)]
    if not args.server_cmd:
        cmd += ["--parent-pid", str(os.getpid())]
    for extra in args.server_arg or []:
        cmd += shlex.split(extra)
    return cmd


def events_for(args: argparse.Namespace, n: int) -> int:
    """Events for the as-fast-as-possible phase at ``n`` subscribers."""
    if args.events:
        return int(args.events)
    return int(min(args.max_events, max(args.min_events, args.deliveries // n)))


def bench_clients(
    n: int,
    args: argparse.Namespace,
    deadline: float,
    cores: tuple[int | None, int | None],
    log_dir: Path,
    progress: Any,
) -> dict[str, Any]:
    """Start a server, connect ``n`` subscribers, run the phases, stop the server."""
    token = secrets.token_urlsafe(24)
    cmd = server_command(args, n)
    server = Server(
        cmd, token=token, core=cores[0], log_path=log_dir / f"server-{n}.log", nice=args.nice
    )
    run: dict[str, Any] = {"clients": n, "command": shlex.join(cmd), "phases": {}}
    swarm: Swarm | None = None
    try:
        ready = server.start(timeout=min(30.0, max(1.0, deadline - time.monotonic())))
        run["server_version"] = ready.get("version")
        base_status = server.status()
        swarm = Swarm(server.port, token, frame_bytes=args.frame_bytes, publishers=args.publishers)
        progress(f"N={n}: connecting ({args.handshakes} handshakes in flight)")
        conn = swarm.connect(n, args.handshakes, deadline, checked=args.checked)
        run["connect"] = conn.__dict__
        if conn.connected < n:
            progress(f"N={n}: only {conn.connected} of {n} connected: {conn.failed}")
        # Idle: let the server's threads settle, then read its memory.
        swarm.settle(0.3)
        idle = server.status()
        for _ in range(20):
            swarm.settle(0.1)
            again = server.status()
            if again["Threads"] == idle["Threads"] and abs(again["VmRSS"] - idle["VmRSS"]) < 256:
                idle = again
                break
            idle = again
        live = len(swarm.live())
        run["memory"] = {
            "rss_base_kib": base_status["VmRSS"],
            "threads_base": base_status["Threads"],
            "rss_idle_kib": idle["VmRSS"],
            "threads_idle": idle["Threads"],
            "kib_per_conn_idle": (idle["VmRSS"] - base_status["VmRSS"]) / live if live else None,
        }
        phases = []
        if "max" in args.modes:
            phases.append(
                PhaseSpec(
                    "max",
                    events_for(args, n),
                    batch=args.batch,
                    window=args.window,
                    cap=args.cap,
                    drain=args.drain,
                )
            )
        if "rate" in args.modes and args.rate > 0:
            phases.append(
                PhaseSpec(
                    "rate",
                    max(1, int(args.rate * args.duration)),
                    rate=args.rate,
                    tick=args.tick / 1000,
                    cap=args.duration * 1.5 + 5,
                    drain=args.drain,
                )
            )
        for spec in phases:
            if not swarm.live():
                break
            what = (
                f"{spec.events} events as fast as possible"
                if spec.mode == "max"
                else f"{spec.rate:g} events/s for {spec.events / spec.rate:g} s"
            )
            progress(f"N={n}: {what}")
            with profiler(args.profile, server, f"n{n}-{spec.mode}", cores[1]) as prof:
                phase = swarm.run_phase(spec, server, deadline)
            if prof:
                phase["profile"] = prof
            run["phases"][spec.mode] = phase
            progress(f"N={n}: {phase_line(phase)}")
            swarm.settle(0.2)
        end = server.status()
        run["memory"].update(
            rss_end_kib=end["VmRSS"],
            rss_peak_kib=end.get("VmHWM"),
            threads_end=end["Threads"],
            kib_per_conn_end=(end["VmRSS"] - base_status["VmRSS"]) / n if n else None,
        )
        run["pongs_sent"] = swarm.pongs
        progress(f"N={n}: SIGTERM with {len(swarm.live())} subscribers connected")
        assert server.proc is not None
        run["shutdown"] = swarm.watch_shutdown(server.proc, args.stop_grace)
    finally:
        if swarm is not None:
            swarm.close()
        if "shutdown" in run:  # already signalled and watched for --stop-grace seconds
            run["server_exit"] = server.stop(grace=0.5, signalled=True)
        else:
            run["server_exit"] = server.stop(grace=args.stop_grace)
        run["server_log"] = server.log_counts()
        run["server_log_path"] = str(server.log_path)
    return run


def find_py_spy() -> str | None:
    """py-spy on PATH or next to this Python, if installed."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


@contextmanager
def profiler(directory: str | None, server: Server, label: str, core: int | None) -> Iterator[str]:
    """Sample the server with ``py-spy record`` (GIL holders only) while the block runs.

    Yields the output path (``""`` when not profiling). py-spy runs on the load generator's
    core, so the server keeps its own; the load generator's figures suffer a little instead.
    """
    if not directory:
        yield ""
        return
    spy = find_py_spy()
    if not spy:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = str(Path(directory) / f"{label}.txt")

    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})

    spy_cmd = [spy, "record", "--pid", str(server.pid), "--format", "raw", "--gil"]
    spy_cmd += ["--nonblocking", "--rate", "100", "--output", path]
    proc = subprocess.Popen(
        spy_cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin,
    )
    try:
        yield path
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def phase_line(p: dict[str, Any]) -> str:
    """A one-line summary of a phase for progress output."""
    return (
        f"{p['msgs_per_s']:,.0f} msg/s, delivered {100 * p['delivered_fraction']:.2f} %, "
        f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
        f"server {p['cpu_us_per_delivery']:.2f} µs/delivery, saturated: {p['saturated']}"
    )


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def fmt(value: Any, spec: str = ",.0f", missing: str = "-") -> str:
    """Format a number, or ``missing`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def table(headers: list[str], rows: list[list[str]], left: frozenset[int] = frozenset()) -> str:
    """A plain text table: columns in ``left`` left-aligned, the others right-aligned."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    out: list[str] = []
    m = report["machine"]
    c = report["config"]
    out.append(
        f"sidecar fan-out bench — {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, "
        f"Python {m['python']}, sidecar {report.get('server_version') or '?'}"
    )
    busy = m.get("busy_before") or {}
    out.append(
        f"pinning: {m['pinning']}; cores busy before the run: "
        + (", ".join(f"{k}: {v:.0%}" for k, v in sorted(busy.items())) or "?")
        + f"; load average {m['loadavg'][0]:.2f} at start"
    )
    out.append(
        f"frames ~{c['frame_bytes']} B; {c['publishers']} publish connection(s), one POST in "
        f"flight on each; as fast as possible: POSTs of {c['batch']} events, window "
        f"{c['window']} events; fixed rate: {c['rate']:g} events/s for {c['duration']:g} s, "
        f"a POST every {c['tick_ms']:g} ms with the events due"
    )
    runs = report["runs"]
    out.append("")
    out.append("Connect and memory (server process)")
    rows = []
    for r in runs:
        cn = r.get("connect") or {}
        mem = r.get("memory") or {}
        rows.append(
            [
                str(r["clients"]),
                f"{cn.get('connected', 0)}/{r['clients']}",
                fmt(cn.get("seconds"), ".2f"),
                fmt(cn.get("handshake_p50_ms"), ".1f"),
                fmt(cn.get("handshake_max_ms"), ".1f"),
                fmt((mem.get("rss_base_kib") or math.nan) / 1024, ".1f"),
                fmt((mem.get("rss_idle_kib") or math.nan) / 1024, ".1f"),
                fmt(mem.get("kib_per_conn_idle"), ".1f"),
                fmt(mem.get("threads_idle"), "d"),
                fmt((mem.get("rss_end_kib") or math.nan) / 1024, ".1f"),
                fmt(mem.get("kib_per_conn_end"), ".1f"),
                fmt(mem.get("threads_end"), "d"),
                fmt((r.get("shutdown") or {}).get("seconds"), ".2f"),
                fmt((r.get("shutdown") or {}).get("closed_1001"), "d"),
            ]
        )
    out.append(
        table(
            [
                "N",
                "connected",
                "connect s",
                "hs p50 ms",
                "hs max ms",
                "RSS base MiB",
                "RSS idle MiB",
                "KiB/conn idle",
                "threads idle",
                "RSS end MiB",
                "KiB/conn end",
                "threads end",
                "SIGTERM→exit s",
                "got 1001",
            ],
            rows,
        )
    )
    for mode, title in (
        ("max", "As fast as possible (bounded window)"),
        ("rate", f"Fixed rate {c['rate']:g} events/s"),
    ):
        phases = [(r["clients"], r["phases"][mode]) for r in runs if mode in r.get("phases", {})]
        if not phases:
            continue
        out.append("")
        out.append(title)
        rows = []
        for n, p in phases:
            rows.append(
                [
                    str(n),
                    fmt(p["events_accepted"], ",d"),
                    fmt(p["received"], ",d"),
                    fmt(p["msgs_per_s"]),
                    fmt(100 * p["delivered_fraction"], ".2f"),
                    fmt(p["p50_ms"], ".2f"),
                    fmt(p["p99_ms"], ".2f"),
                    fmt(p["max_ms"], ".1f"),
                    fmt(p["cpu_us_per_delivery"], ".2f"),
                    f"{100 * p['server_cpu_util']:.0f}%",
                    f"{100 * p['gen_cpu_util']:.0f}%",
                    short_saturation(p["saturated"]),
                ]
            )
        out.append(
            table(
                [
                    "N",
                    "events",
                    "deliveries",
                    "msg/s",
                    "deliv %",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "srv µs/deliv",
                    "srv CPU",
                    "gen CPU",
                    "saturated",
                ],
                rows,
            )
        )
    notes = []
    reconnects = 0
    for r in runs:
        for mode, p in r.get("phases", {}).items():
            label = f"N={r['clients']} {mode}"
            if p["missing"]:
                parts = [
                    f"{v:,} {k}"
                    + (f" ({p['lost_clients'][k]} clients)" if p["lost_clients"].get(k) else "")
                    for k, v in p["losses"].items()
                ]
                notes.append(
                    f"{label}: sent x N - received = {p['expected']:,} - {p['received']:,} = "
                    f"{p['missing']:,}: " + "; ".join(parts)
                )
            if p["stopped_early"]:
                notes.append(f"{label}: {p['stopped_early']}")
            if p["integrity"]:
                notes.append(f"{label}: integrity problems: {p['integrity']}")
            if set(p["post_status"]) - {"202"}:
                notes.append(f"{label}: publish answers {p['post_status']} {p['post_errors']}")
            if "; " in p["saturated"] or "LOAD" in p["saturated"]:
                notes.append(f"{label}: saturated: {p['saturated']}")
            if p.get("posts") and p.get("publisher_connections", 0) >= p["posts"]:
                reconnects += 1
            core = p.get("server_core")
            soft = p.get("core_irq", {}).get(str(core), 0.0) if core is not None else 0.0
            if soft >= 0.1:
                notes.append(
                    f"{label}: core {core} also spent {soft:.0%} in softirq (loopback TCP "
                    "delivery triggered by the server's sends; not in its CPU figure)"
                )
            if p.get("publish_lag_max_ms") and p["publish_lag_max_ms"] > 20:
                notes.append(
                    f"{label}: the publisher ran up to {p['publish_lag_max_ms']:.0f} ms "
                    "behind schedule"
                )
        sd = r.get("shutdown") or {}
        if sd and (
            sd.get("closed_1001") != sd.get("clients")
            or not sd.get("exited")
            or sd.get("seconds", 0) > 3
        ):
            notes.append(
                f"N={r['clients']}: after SIGTERM: {sd.get('closes')} of {sd.get('clients')} "
                f"subscribers; exited: {sd.get('exited')} ({sd.get('exit_code')}) "
                f"in {sd.get('seconds', 0):.2f} s"
            )
        ex = r.get("server_exit") or {}
        if ex and (ex.get("code") != 0 or ex.get("killed")):
            notes.append(
                f"N={r['clients']}: server exit {ex.get('code')} after SIGTERM "
                f"({ex.get('seconds')} s{', killed' if ex.get('killed') else ''})"
                + (f"; its stacks: {ex['stacks']}" if ex.get("stacks") else "")
            )
        if r.get("error"):
            notes.append(f"N={r['clients']}: {r['error']}")
    if reconnects:
        notes.append(
            "every POST needed its own TCP connection: the server answers each request with "
            "'Connection: close' (Werkzeug), so each publish pays a connect and a new thread"
        )
    if notes:
        out.append("")
        out.append("Notes")
        out += [f"  {n}" for n in notes]
    out.append("")
    out += textwrap.wrap(
        "latency = POST sent by the publisher -> frame read by a subscriber (one clock); "
        "p50/p99 from every k-th frame, max over the oldest frame of every read. "
        "srv µs/deliv = server CPU (all threads) / frames delivered. saturated = the side "
        f"using >= {SATURATED:.0%} of its core; a figure limited by the load generator is a "
        "lower bound for the server.",
        100,
    )
    out.append("")
    out.append("Targets (issue 5)")
    rows = []
    for t in report["targets"]:
        mark = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        spec = "," if t["unit"] == "msg/s" else ".2f" if t["unit"] in ("ms", "µs", "s") else ".1f"
        rows.append(
            [
                t["target"],
                f"{t['op']} {fmt(t['value'], ',g')} {t['unit']}",
                fmt(t["measured"], spec + ("d" if spec == "," else ""))
                if t["measured"] is None or spec != ","
                else f"{t['measured']:,.0f}",
                mark,
                t["note"],
            ]
        )
    out.append(table(["metric", "target", "measured", "", "note"], rows, left=frozenset({0, 3, 4})))
    out.append("")
    out.append(
        f"load generator: {report['gen_cpu_s']:.1f} s CPU in total; run took "
        f"{report['elapsed_s']:.1f} s; status: {report['status']}"
    )
    return "\n".join(out)


def short_saturation(text: str) -> str:
    """The first word of a saturation verdict."""
    head = text.split(" ", 1)[0]
    return {"LOAD": "load gen", "server": "server", "neither": "neither", "both": "both"}.get(
        head, head
    )


def plot(report: dict[str, Any], path: str) -> None:
    """Write a PNG: delivered msg/s (as fast as possible) and latency (fixed rate) against N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib: run through scripts/bench (it installs it into .venv) "
            "or .venv/bin/pip install matplotlib"
        ) from None
    runs = report["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    maxes = [(r["clients"], r["phases"]["max"]) for r in runs if "max" in r.get("phases", {})]
    if maxes:
        ax1.plot(
            [n for n, _ in maxes], [p["msgs_per_s"] for _, p in maxes], "o-", label="delivered"
        )
        capped = [(n, p) for n, p in maxes if "LOAD" in p["saturated"]]
        if capped:
            ax1.plot(
                [n for n, _ in capped],
                [p["msgs_per_s"] for _, p in capped],
                "o",
                ms=13,
                mfc="none",
                color="tab:red",
                label="load generator saturated (lower bound)",
            )
    batch = report["config"]["batch"]
    ax1.set_title(f"As fast as possible (POSTs of {batch} events)")
    ax1.plot([1000], [250_000], "*", color="grey", ms=12, label="target (≥ at N=1000)")
    ax1.yaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v / 1000:,.0f} k")
    )
    ax1.set_ylabel("messages delivered/s")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    rate = report["config"]["rate"]
    for mode, style, label in (
        ("rate", "-", f"{rate:g} ev/s"),
        ("max", ":", "as fast as possible"),
    ):
        ph = [(r["clients"], r["phases"][mode]) for r in runs if mode in r.get("phases", {})]
        if not ph:
            continue
        ns = [n for n, _ in ph]
        for key, marker in (("p50_ms", "o"), ("p99_ms", "s")):
            ax2.plot(ns, [p[key] for _, p in ph], marker + style, label=f"{key[:3]} {label}")
    ax2.plot([100, 1000, 1000], [5, 15, 50], "x", color="grey", ms=9, label="targets (≤, 200 ev/s)")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency, ms (publish → receipt)")
    ax2.set_title("End-to-end latency")
    ax2.legend(fontsize=8)
    ticks = sorted({r["clients"] for r in runs} | {1000})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("subscribers (N)")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"sidecar fan-out: {m['cores']} cores, {m['pinning']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options; ``--quick`` changes the defaults of the sweep."""
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Fan-out benchmark of the sidecar: connect N subscribers, publish through "
        "POST /api/v1/events, report delivery rate, latency, CPU and memory against the "
        "targets of issue 5. Targets 127.0.0.1 only.",
        epilog="examples:\n"
        "  scripts/bench --quick                 smoke run: N=100,1000, < 60 s\n"
        "  scripts/bench --json --plot out.png   full sweep, JSON on stdout, a PNG\n"
        "  scripts/bench --clients 1000 --modes max --batch 1 --publishers 4 --window 100\n"
        "                                        per-event POSTs: the fan-out path, uncoalesced\n"
        "  scripts/bench --profile /tmp/prof     py-spy samples of the server per phase\n"
        "exit status: 0 done (targets may still be missed), 1 error, 3 timeout, 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a smoke run in under 60 s")
    p.add_argument("--clients", help="comma-separated client counts (default 1,10,100,300,1000)")
    p.add_argument("--modes", default="max,rate", help="phases to run: max, rate (default both)")
    p.add_argument(
        "--events", type=int, help="events in the as-fast-as-possible phase (default: auto)"
    )
    p.add_argument("--deliveries", type=int, help="auto events: aim at this many deliveries")
    p.add_argument("--min-events", type=int, default=2000, help=argparse.SUPPRESS)
    p.add_argument("--max-events", type=int, default=50_000, help=argparse.SUPPRESS)
    p.add_argument(
        "--batch", type=int, default=100, help="events per POST, as fast as possible (100)"
    )
    p.add_argument(
        "--window", type=int, default=500, help="events the slowest subscriber may lag (500)"
    )
    p.add_argument(
        "--publishers",
        type=int,
        default=2,
        help="concurrent publish connections, one POST in flight on each (2)",
    )
    p.add_argument(
        "--rate", type=float, default=200.0, help="events/s of the fixed-rate phase (200; 0 = skip)"
    )
    p.add_argument("--duration", type=float, help="seconds of the fixed-rate phase (10; quick 3)")
    p.add_argument("--tick", type=float, default=10.0, help="ms between POSTs at fixed rate (10)")
    p.add_argument("--frame-bytes", type=int, default=200, help="size of a delivered frame (200)")
    p.add_argument("--handshakes", type=int, default=50, help="handshakes in flight (50)")
    p.add_argument("--checked", type=int, default=8, help="subscribers that verify seq order (8)")
    p.add_argument("--cap", type=float, help="max seconds of publishing per phase (30; quick 10)")
    p.add_argument("--drain", type=float, help="max seconds to wait for stragglers (10; quick 5)")
    p.add_argument("--timeout", type=float, help="max seconds for the whole run (290; quick 58)")
    p.add_argument(
        "--stop-grace",
        type=float,
        default=5.0,
        help="seconds the server may take to exit after SIGTERM before SIGKILL (5)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the server and the load generator, e.g. -5 on a shared machine "
        "(negative values need root; 0)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server and load generator")
    p.add_argument(
        "--server-cmd", help="command that starts the server (default: python -m sidecar)"
    )
    p.add_argument(
        "--server-arg",
        action="append",
        metavar="ARGS",
        help="extra server options, e.g. --server-arg='--queue-size 512' (repeatable)",
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON on stdout (the table goes to stderr)"
    )
    p.add_argument("--plot", metavar="FILE", help="write a PNG of throughput and latency against N")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="sample the server with py-spy (GIL holders) during each phase into DIR/*.txt",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the server logs (path printed)")
    args = p.parse_args(argv)
    quick = args.quick
    args.clients = [
        int(x) for x in (args.clients or ("100,1000" if quick else "1,10,100,300,1000")).split(",")
    ]
    if any(n < 1 for n in args.clients):
        p.error("--clients: counts must be positive")
    if args.batch < 1 or args.window < args.batch:
        p.error("--batch must be at least 1 and --window at least --batch")
    args.modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if not args.modes <= {"max", "rate"}:
        p.error("--modes: max and/or rate")
    args.deliveries = args.deliveries or (1_000_000 if quick else 3_000_000)
    if quick:
        args.max_events = min(args.max_events, 20_000)
        args.min_events = min(args.min_events, 1000)
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.cap = args.cap or (10.0 if quick else 30.0)
    args.drain = args.drain or (5.0 if quick else 10.0)
    args.timeout = args.timeout or (58.0 if quick else 290.0)
    return args


def machine(pinning: str) -> dict[str, Any]:
    """What the run ran on."""
    cpu = platform.processor() or "?"
    with suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pinning": pinning,
        "loadavg": os.getloadavg(),
    }


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`BenchTimeout` in the main thread if the run overstays ``seconds``."""

    def fire(_signum: int, _frame: Any) -> None:
        raise BenchTimeout(f"watchdog: the run exceeded {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; print the report; exit 0 (done), 1 (error), 3 (timeout), 130 (Ctrl-C)."""
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.timeout

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    raise_nofile(max(args.clients) * 2 + 256)
    allowed = sorted(os.sched_getaffinity(0))
    cores: tuple[int | None, int | None] = (None, None)
    if not args.no_pin and len(allowed) >= 2:
        cores = (allowed[0], allowed[1])
        os.sched_setaffinity(0, {allowed[1]})
        pinning = f"server on core {allowed[0]}, load generator on core {allowed[1]}"
    else:
        pinning = "not pinned" + (" (one core)" if len(allowed) < 2 else "")
    if args.nice:
        try:
            os.nice(args.nice)
        except PermissionError:
            print("bench: --nice below 0 needs root", file=sys.stderr)
            return 2
        pinning += f", both at nice {args.nice}"
    log_dir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    report: dict[str, Any] = {
        "machine": machine(pinning),
        "config": {
            "clients": args.clients,
            "modes": sorted(args.modes),
            "frame_bytes": args.frame_bytes,
            "batch": args.batch,
            "window": args.window,
            "publishers": args.publishers,
            "rate": args.rate,
            "duration": args.duration,
            "tick_ms": args.tick,
            "handshakes": args.handshakes,
            "deliveries": args.deliveries,
            "events": args.events,
            "cap": args.cap,
            "drain": args.drain,
            "timeout": args.timeout,
            "quick": args.quick,
            "server_args": args.server_arg or [],
            "server_cmd": args.server_cmd,
        },
        "runs": [],
    }
    status = "complete"
    code = 0
    busy = machine_busy(1.0)
    report["machine"]["busy_before"] = {str(k): round(v, 3) for k, v in busy.items()}
    if max(busy.values(), default=0.0) > 0.15:
        progress(
            "warning: the machine is busy before the run ("
            + ", ".join(f"core {k} {v:.0%}" for k, v in sorted(busy.items()))
            + "): numbers will be noisy"
        )
    gen0 = self_cpu_seconds()
    try:
        with watchdog(args.timeout + 20):
            for n in args.clients:
                if time.monotonic() >= deadline:
                    raise BenchTimeout("no time left for the next client count")
                try:
                    run = bench_clients(n, args, deadline, cores, log_dir, progress)
                except BenchError as exc:
                    if isinstance(exc, BenchTimeout):
                        raise
                    report["runs"].append({"clients": n, "phases": {}, "error": str(exc)})
                    progress(f"N={n}: {exc}")
                    status = "error"
                    code = 1
                    continue
                report["runs"].append(run)
                report["server_version"] = report.get("server_version") or run.get("server_version")
    except BenchTimeout as exc:
        status = f"timed out ({exc})"
        code = 3
        progress(status)
    except KeyboardInterrupt:
        status = "interrupted"
        code = 130
        progress(status)
    report["status"] = status
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = time.monotonic() - started
    report["gen_cpu_s"] = self_cpu_seconds() - gen0
    report["targets"] = evaluate(report["runs"])
    report["log_dir"] = str(log_dir)
    text = render(report)
    if args.json:
        print(text, file=sys.stderr)
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(text)
    if args.plot:
        try:
            plot(report, args.plot)
            progress(f"plot written to {args.plot}")
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            code = code or 2
    if args.keep_logs or code:
        progress(f"server logs kept in {log_dir}")
    else:
        for path in log_dir.iterdir():
            path.unlink()
        log_dir.rmdir()
    return code


if __name__ == "__main__":
    sys.exit(main())
