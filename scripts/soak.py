"""Soak test: a real sidecar process, clients coming and going while events flow.

Run through ``scripts/soak [--minutes N] [--clients N] [--rate N] [--burst-every S] [--seed N]``.

Starts ``python -m sidecar --port 0`` (production app, keepalive every ``--ping-interval``
seconds) with its stderr captured, publishes events over ``POST /api/v1/events`` at
``--rate`` per second, and runs ``--clients`` client threads on ``/ws``. Each thread loops
over sessions of random kinds:

* **reader**: reads for a while (sometimes resuming with ``?since=``), checking that the
  ``seq`` of every event follows the previous one, then leaves by a clean close, a TCP RST,
  a FIN without a close frame, or by just closing its socket;
* **staller**: stops reading for 3-25 s (a burst of ~3 MB every 10 s overflows it), then
  reads again: it must either get every event in order or have been dropped (4008 slow
  consumer, 1011 keepalive timeout, or EOF);
* **oversize**: sends a message over the limit and expects 1009;
* **chatty**: sends client→server envelopes and malformed JSON while reading.

Once a minute it prints the server's RSS, threads and open fds, the hub's drops and the
soak's error count. At the end it closes every client, checks that the server's threads and
fds return to where they were with no client, stops the server with SIGTERM (exit 0 within
5 s) and reports any ERROR or traceback in its log. Exit 1 on any error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

from sidecar.launcher import LaunchError, SidecarProcess, python_module

ROOT = Path(__file__).resolve().parent.parent

#: Close codes a client may get from the server, by session kind.
DROP_CODES = {4008, 1011}


@dataclass
class Stats:
    """Counters shared by the soak's threads (``lock`` guards them)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    journal_file: Any = None

    def journal(self, record: dict[str, Any]) -> None:
        """One line per session in ``sessions.jsonl`` (kind, local port, times, outcome)."""
        with self.lock:
            if self.journal_file is not None:
                self.journal_file.write(json.dumps(record) + "\n")

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {message}")
            self.counts["errors"] += 1


class Server:
    """The sidecar subprocess (through :mod:`sidecar.launcher`), its ready line and its log."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        env = dict(
            os.environ,
            SIDECAR_TOKEN=self.token,
            SIDECAR_MAX_PENDING_BYTES=str(args.max_pending_bytes),
        )
        argv = python_module(
            "sidecar",
            "--port",
            "0",
            "--ping-interval",
            str(args.ping_interval),
            "--queue-size",
            str(args.queue_size),
            "--max-message-size",
            str(args.max_message_size),
            "--exit-on-stdin-eof",
        )
        self.log_path = log_path
        log_path.unlink(missing_ok=True)  # one log per soak
        self.process = SidecarProcess(
            argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, log_path=log_path
        )
        try:
            ready = self.process.start(timeout=30)
        except LaunchError as exc:
            raise RuntimeError(f"the sidecar did not start (log: {log_path}): {exc}") from exc
        self.port: int = ready["port"]
        self.pid: int = ready["pid"]

    @property
    def bad_lines(self) -> list[str]:
        """The first lines of the server's log with an ERROR, CRITICAL or a traceback."""
        return self.process.error_lines()

    @property
    def bad_line_count(self) -> int:
        """How many such lines there are (all of them, not only those kept)."""
        return self.process.log.error_count

    def gauges(self) -> dict[str, int]:
        """RSS (bytes), threads and open fds of the server process."""
        out = {"rss": 0, "threads": 0, "fds": 0}
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        out["rss"] = int(line.split()[1]) * 1024
                    elif line.startswith("Threads:"):
                        out["threads"] = int(line.split()[1])
            out["fds"] = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            pass
        return out

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One HTTP request with the token; ``(status, decoded JSON or None)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, None
        finally:
            conn.close()

    def hub(self) -> dict[str, Any]:
        """``GET /api/v1/hub`` (``{}`` if it fails)."""
        try:
            status, data = self.request("GET", "/api/v1/hub")
        except OSError:
            return {}
        return data if status == 200 and isinstance(data, dict) else {}

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM; the exit code, or ``None`` if it had to be killed."""
        code = self.process.stop(timeout=timeout)
        return None if self.process.killed else code


class Publisher(threading.Thread):
    """Publishes ``rate`` events per second in batches, plus a burst every ``burst_every`` s."""

    def __init__(
        self,
        server: Server,
        rate: int,
        stats: Stats,
        stop: threading.Event,
        burst_every: float = 0.0,
    ) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self.server, self.rate, self.stats, self.stop = server, rate, stats, stop
        self.burst_every = burst_every
        self.n = 0

    def run(self) -> None:
        rng = random.Random(1)
        tick = 0.2
        next_at = time.monotonic()
        next_burst = next_at + self.burst_every
        while not self.stop.is_set():
            batches = [self.batch(max(1, round(self.rate * tick)), rng, (0, 50, 400, 2000))]
            if self.burst_every and time.monotonic() >= next_burst:
                # A burst (~3.2 MB to every client) overflows whoever is not reading.
                batches += [self.batch(50, rng, (16000,)) for _ in range(4)]
                next_burst += self.burst_every
                self.stats.add("bursts")
            for batch in batches:
                self.post(batch)
            next_at += tick
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def batch(self, n: int, rng: random.Random, pads: tuple[int, ...]) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            self.n += 1
            pad = "x" * rng.choice(pads)
            out.append({"type": "soak:tick", "payload": {"n": self.n, "pad": pad}})
        return out

    def post(self, batch: list[dict[str, Any]]) -> None:
        try:
            status, body = self.server.request("POST", "/api/v1/events", batch)
        except OSError as exc:
            if not self.stop.is_set():
                self.stats.error(f"publish failed: {exc}")
            return
        if status == 202:
            self.stats.add("published", len(batch))
        elif status == 503:
            self.stats.add("refused", len(batch) - int((body or {}).get("accepted", 0)))
        else:
            self.stats.error(f"publish answered {status}: {body}")


class ClientLoop(threading.Thread):
    """One simulated user: sessions of random kinds, back to back, until ``stop``."""

    KINDS = ["reader"] * 6 + ["staller"] * 2 + ["oversize"] + ["chatty"]

    def __init__(
        self, index: int, server: Server, args: argparse.Namespace, stats: Stats, stop: Any
    ) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.server, self.args, self.stats, self.stop = server, args, stats, stop
        self.rng = random.Random(args.seed * 1000 + index)
        self.resume: str | None = None  # "epoch:seq" of the last event seen

    def run(self) -> None:
        while not self.stop.is_set():
            kind = self.rng.choice(self.KINDS)
            self.session = {"kind": kind, "start": round(time.time(), 3)}
            try:
                getattr(self, kind)()
            except Exception as exc:  # a soak client must never die silently
                self.session["error"] = repr(exc)
                if not self.stop.is_set():
                    self.stats.error(f"{self.name} {kind}: {type(exc).__name__}: {exc}")
            self.session["end"] = round(time.time(), 3)
            self.stats.journal(self.session)
            self.stop.wait(self.rng.expovariate(1 / 0.5))

    # -- helpers -----------------------------------------------------------------------------
    def connect(self, resume: bool = False) -> tuple[websocket.WebSocket, int]:
        """Open a session; return it and the next ``seq`` it must receive."""
        query = f"?since={self.resume}" if resume and self.resume else ""
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.server.port}/ws{query}",
            header=[f"Authorization: Bearer {self.server.token}"],
            timeout=10,
            suppress_origin=True,
            skip_utf8_validation=True,  # pure Python in websocket-client; json.loads checks
        )
        self.stats.add("sessions")
        self.session["port"] = ws.sock.getsockname()[1] if ws.sock else None
        _opcode, data = ws.recv_data()
        status = json.loads(data)
        if status.get("type") != "connection:status":
            raise AssertionError(f"first frame is not connection:status: {data[:80]!r}")
        payload = status["payload"]
        epoch, seq = payload["epoch"], payload["seq"]
        if query and payload.get("recovered"):
            self.stats.add("resumed")
            next_seq = int(self.resume.rpartition(":")[2]) + 1  # type: ignore[union-attr]
        else:
            next_seq = seq + 1
        self.epoch = epoch
        return ws, next_seq

    def read(self, ws: websocket.WebSocket, next_seq: int, seconds: float) -> tuple[int, Any]:
        """Read events for ``seconds``; check order. Returns (next_seq, close code or None).

        The close code is ``"open"`` if the session is still open when the time is up.
        """
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop.is_set():
                return next_seq, "open"
            ws.settimeout(min(remaining, 1.0))
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                return next_seq, None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                return next_seq, code
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            event = json.loads(data)
            seq = event.get("seq")
            if seq is None:
                continue
            if seq != next_seq:
                self.stats.error(f"{self.name}: seq {seq} after {next_seq - 1} (silent loss)")
            next_seq = seq + 1
            self.resume = f"{self.epoch}:{seq}"
            self.stats.add("received")

    def leave(self, ws: websocket.WebSocket) -> None:
        """End a session in one of four ways."""
        how = self.rng.choice(["close", "close", "rst", "fin", "vanish"])
        self.stats.add(f"left-{how}")
        self.session["outcome"] = f"left-{how}"
        sock = ws.sock
        if how == "close":
            ws.close(timeout=2)
            return
        if sock is None:
            return
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "fin":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        sock.close()

    def dropped(self, code: Any, kind: str) -> None:
        self.session["outcome"] = f"dropped-{code or 'eof'}"
        if code in DROP_CODES or code is None:
            self.stats.add(f"dropped-{code or 'eof'}")
        else:
            self.stats.error(f"{self.name} {kind}: unexpected close {code}")

    def end(self, ws: websocket.WebSocket, code: Any, kind: str) -> None:
        """Leave a session still ``"open"``; otherwise count how the server ended it."""
        if code == "open":
            self.leave(ws)
        else:
            self.dropped(code, kind)
            ws.close(timeout=1)

    # -- session kinds -----------------------------------------------------------------------
    def reader(self) -> None:
        ws, next_seq = self.connect(resume=self.rng.random() < 0.5)
        next_seq, code = self.read(ws, next_seq, self.rng.uniform(1, 30))
        self.end(ws, code, "reader")

    def staller(self) -> None:
        ws, next_seq = self.connect()
        self.stats.add("stalls")
        self.stop.wait(self.rng.uniform(3, 25))  # not reading: the point of this session
        next_seq, code = self.read(ws, next_seq, self.rng.uniform(1, 5))
        self.end(ws, code, "staller")

    def oversize(self) -> None:
        ws, next_seq = self.connect()
        ws.send(json.dumps({"type": "soak:big", "payload": "y" * self.args.max_message_size}))
        next_seq, code = self.read(ws, next_seq, 10)
        if code == "open" and self.stop.is_set():
            ws.close(timeout=1)
            return
        if code == 1009:
            self.stats.add("closed-1009")
        elif code in DROP_CODES:
            self.dropped(code, "oversize")
        else:
            self.stats.error(f"{self.name} oversize: expected 1009, got {code}")
        ws.close(timeout=1)

    def chatty(self) -> None:
        ws, next_seq = self.connect()
        for _ in range(self.rng.randint(1, 10)):
            if self.rng.random() < 0.3:
                ws.send("{not json")
            else:
                ws.send(json.dumps({"type": "chat:message", "payload": {"text": "hi"}}))
            self.stats.add("sent")
            next_seq, code = self.read(ws, next_seq, self.rng.uniform(0.2, 2))
            if code != "open":
                self.dropped(code, "chatty")
                ws.close(timeout=1)
                return
        self.leave(ws)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def report(elapsed: float, server: Server, stats: Stats, publisher: Publisher) -> None:
    """One status line."""
    g = server.gauges()
    state = server.hub()
    hub = state.get("hub", {})
    ended = state.get("sessions", {}).get("ended", {})
    drops = {k: v for k, v in ended.items() if not k.startswith(("client", "eof"))}
    with stats.lock:
        c = dict(stats.counts)
    print(
        f"[soak {int(elapsed // 60):02d}:{int(elapsed % 60):02d}] "
        f"rss {_mib(g['rss'])}  threads {g['threads']}  fds {g['fds']}  "
        f"clients {hub.get('clients', '?')}  seq {hub.get('seq', '?')}  "
        f"sessions {c.get('sessions', 0)}  received {c.get('received', 0)}  "
        f"evicted {hub.get('evicted', '?')}  refused {hub.get('refused_broadcasts', '?')}  "
        f"server-drops {drops}  errors {c.get('errors', 0) + server.bad_line_count}",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The soak's options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (10)")
    parser.add_argument("--clients", type=int, default=40, help="concurrent client loops (40)")
    parser.add_argument("--rate", type=int, default=100, help="events per second (100)")
    parser.add_argument("--burst-every", type=float, default=10.0, help="seconds between bursts")
    parser.add_argument("--ping-interval", type=float, default=10.0, help="server keepalive (10)")
    parser.add_argument(
        "--max-pending-bytes", type=int, default=2 << 20, help="server per-client bytes (2 MiB)"
    )
    parser.add_argument("--queue-size", type=int, default=64, help="server queue size (64)")
    parser.add_argument("--max-message-size", type=int, default=64 * 1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "soak")
    return parser.parse_args(argv)


def idle_gauges(server: Server, stop: threading.Event) -> dict[str, int]:
    """Idle gauges once the startup threads (watchers) are up: the most of two samples."""
    idle = server.gauges()
    stop.wait(0.5)
    return {k: max(v, server.gauges()[k]) for k, v in idle.items()}


def run_load(args: argparse.Namespace, server: Server, stats: Stats, started: float) -> None:
    """The publisher and the client loops for ``--minutes``, a report a minute; all stopped."""
    stop = threading.Event()
    publisher = Publisher(server, args.rate, stats, stop, args.burst_every)
    publisher.start()
    loops = [ClientLoop(i, server, args, stats, stop) for i in range(args.clients)]
    for loop in loops:
        loop.start()
    end = started + args.minutes * 60
    next_report = started + 60
    try:
        while time.monotonic() < end:
            if server.process.poll() is not None:
                stats.error(f"the sidecar exited with {server.process.returncode}")
                break
            stop.wait(max(0.0, min(end, next_report) - time.monotonic()))
            if time.monotonic() >= next_report:
                report(time.monotonic() - started, server, stats, publisher)
                next_report += 60
    except KeyboardInterrupt:
        stats.error("interrupted")
    stop.set()
    for thread in [publisher, *loops]:
        thread.join(15)
        if thread.is_alive():
            stats.error(f"{thread.name} did not stop")
    report(time.monotonic() - started, server, stats, publisher)


def check_idle(server: Server, stats: Stats, idle: dict[str, int]) -> None:
    """With every client gone, the server's threads and fds come back to the idle level."""
    deadline = time.monotonic() + 15
    settled = False
    while time.monotonic() < deadline:
        hub = server.hub().get("hub", {})
        g = server.gauges()
        if hub.get("clients") == 0 and g["threads"] <= idle["threads"] and g["fds"] <= idle["fds"]:
            settled = True
            break
        threading.Event().wait(0.2)  # polling a condition with a deadline
    g = server.gauges()
    print(
        f"soak: idle before {idle['threads']} threads / {idle['fds']} fds / "
        f"{_mib(idle['rss'])}; after {g['threads']} / {g['fds']} / {_mib(g['rss'])}",
        flush=True,
    )
    if not settled:
        stats.error(f"server did not return to idle: {g} (was {idle})")


def verdict(server: Server, stats: Stats, started: float) -> int:
    """Print the counts and every problem; 0 when there is none."""
    with stats.lock:
        counts = dict(sorted(stats.counts.items()))
    print("soak: counts " + json.dumps(counts), flush=True)
    problems = stats.errors + [f"server log: {line}" for line in server.bad_lines]
    for line in problems[:30]:
        print("soak: ERROR " + line, flush=True)
    errors = len(stats.errors) + server.bad_line_count
    text = "PASS" if not problems else f"FAIL ({errors} errors)"
    print(f"soak: {text} after {time.monotonic() - started:.0f} s", flush=True)
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when nothing went wrong."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    stats.journal_file = (args.out / "sessions.jsonl").open("w")
    started = time.monotonic()
    server = Server(args, args.out / "server.log")
    try:
        print(
            f"soak: sidecar pid {server.pid} on port {server.port}; {args.clients} clients, "
            f"{args.rate} events/s, {args.minutes:g} min; log {server.log_path}",
            flush=True,
        )
        report(0, server, stats, Publisher(server, 0, stats, threading.Event()))
        idle = idle_gauges(server, threading.Event())
        run_load(args, server, stats, started)
        check_idle(server, stats, idle)
        with stats.lock:
            stats.journal_file.close()
            stats.journal_file = None
    finally:
        code = server.stop()
    if code != 0:
        stats.error(f"the sidecar exited with {code} on SIGTERM")
    return verdict(server, stats, started)


if __name__ == "__main__":
    sys.exit(main())
