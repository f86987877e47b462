"""The broker mode: gunicorn with ``--workers`` processes sharing one port, and a redis-server;
and the gunicorn mode: one gunicorn worker, no broker (``--gunicorn``).

:class:`BrokerServer` is the :class:`~benchkit.server.Server` seam's second implementation
(``broker=False`` is the gunicorn mode: no Redis, one worker, everything else the same).
Its ``start`` starts a ``redis-server`` (Debian's; a unix socket in the log directory, no
persistence), then gunicorn with the shipped settings plus a ready line
(:mod:`benchkit.gunicorn_ready`) and ``SIDECAR_BROKER`` pointing at that Redis, and waits
until every worker answers ``/api/v1/hub``. The server's CPU and memory are the sum over the
master and its workers (:meth:`BrokerServer.pids`); Redis's CPU is reported on its own.
Both are pinned to the server's core, so the server side has one core in either mode.

:meth:`BrokerServer.hub` sums the workers' counters (a request lands on any worker, so it
asks until each has answered); :meth:`BrokerServer.sample`, called at every step of a
phase, takes one relay-lag sample every :data:`LAG_EVERY` seconds: the broker's last stream
position minus the position the answering worker has fanned out (events behind).

Threads: the bench's main thread only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from sidecar.launcher import LaunchError, SidecarProcess

from . import HOST, BenchError
from .procfs import proc_cpu_seconds
from .server import Server

#: Seconds between two relay-lag samples during a phase.
LAG_EVERY = 0.2
_READY_CONF = Path(__file__).with_name("gunicorn_ready.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A throwaway ``redis-server`` on a unix socket in ``directory``."""

    def __init__(self, directory: Path, pin: Any) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("--broker needs redis-server (apt-get install redis-server)")
        self.socket_path = directory / "redis.sock"
        self.url = f"unix://{self.socket_path}?db=0"
        args = [binary, "--port", "0", "--unixsocket", str(self.socket_path)]
        args += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(directory), "--logfile", str(directory / "redis.log")]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=pin)

    def wait_ready(self, timeout: float) -> None:
        """Wait until the socket accepts a PING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(1.0)
                    sock.connect(str(self.socket_path))
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(0.02)  # an exit ends the wait at once
        raise BenchError(f"redis-server did not answer within {timeout:g} s")

    def cpu(self) -> float:
        """CPU seconds used so far."""
        return proc_cpu_seconds(self.process.pid) if self.process.poll() is None else 0.0

    def memory(self) -> dict[str, int]:
        """``used_memory`` (bytes) and the number of keys, or ``{}`` if Redis does not say."""
        out: dict[str, int] = {}
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"INFO memory\r\nDBSIZE\r\n")
                data = b""
                while data.count(b"\r\n:") < 1 or not data.endswith(b"\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return out
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("used_memory:"):
                out["used_memory"] = int(line.split(":", 1)[1])
            elif line.startswith(":"):
                out["keys"] = int(line[1:])
        return out

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class BrokerServer(Server):
    """gunicorn, ``--workers`` processes on one port, with a broker (see the module docstring)."""

    kind = "broker"

    def __init__(
        self,
        args: argparse.Namespace,
        max_clients: int,
        *,
        token: str,
        core: int | None,
        broker: bool = True,
    ) -> None:
        self.bind_port = _free_port()  # gunicorn cannot bind port 0 and say which it got
        self.redis: RedisProcess | None = None
        self.worker_pids: list[int] = []
        self.broker = broker
        self.kind = "broker" if broker else "gunicorn"
        self.workers = args.workers if broker else 1
        super().__init__(args, max_clients, token=token, core=core)

    def command(self) -> list[str]:
        # one thread per WebSocket, however they split; a worker keeps an eighth for HTTP
        threads = self.max_clients * 8 // 7 + 64
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(_READY_CONF)]
        cmd += ["--bind", f"{HOST}:{self.bind_port}", "-w", str(self.workers)]
        # gthread keeps (worker_connections - threads) idle HTTP connections alive
        cmd += ["--threads", str(threads), "--worker-connections", str(threads + 64)]
        return [*cmd, "sidecar.wsgi:create_app()"]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["SIDECAR_MAX_CLIENTS"] = str(self.max_clients + 16)
        if self.redis is not None:
            env["SIDECAR_BROKER"] = self.redis.url
        return env

    def pids(self) -> list[int]:
        """The master and its workers (read afresh: a worker may have been replaced)."""
        master = self.pid
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            children = []
        return [master, *(int(c) for c in children)]

    def start(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        if self.broker:
            self.redis = RedisProcess(Path(self.args.log_dir), self.pin)
            self.redis.wait_ready(timeout)
        self.process = SidecarProcess(
            self.command(),
            env=self.env(),
            cwd=self.cwd,
            log_path=self.log_path,
            same_package=False,
            start_new_session=True,
            preexec_fn=self.pin,
        )
        try:
            self.ready = self.process.start(max(1.0, deadline - time.monotonic()))
        except LaunchError as exc:
            raise BenchError(f"gunicorn did not start: {exc}") from None
        self.worker_pids = sorted(self.workers_hub(deadline))
        return self.ready

    def stop(self, grace: float = 5.0, signalled: bool = False) -> dict[str, Any]:
        try:
            return super().stop(grace, signalled)
        finally:
            if self.redis is not None:
                self.redis.stop()

    def _get_hub(self, timeout: float) -> dict[str, Any]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Connection": "close"}
            conn.request("GET", "/api/v1/hub", headers=headers)
            response = conn.getresponse()
            body = response.read()
            return dict(json.loads(body)) if response.status == 200 else {}
        except (OSError, ValueError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def workers_hub(self, deadline: float) -> dict[int, dict[str, Any]]:
        """``/api/v1/hub`` of each worker, by pid (asking until every one has answered)."""
        seen: dict[int, dict[str, Any]] = {}
        while len(seen) < self.workers:
            if time.monotonic() >= deadline:
                raise BenchError(f"only {len(seen)} of {self.workers} workers answered")
            if self.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.poll()}")
            answer = self._get_hub(2.0)
            if answer:
                seen[int(answer["pid"])] = answer
        return seen

    def hub(self, timeout: float = 5.0) -> dict[str, Any]:
        """The workers' hub counters, summed (numbers only)."""
        try:
            workers = self.workers_hub(time.monotonic() + timeout)
        except BenchError:
            return {}
        total: dict[str, Any] = {}
        for answer in workers.values():
            for key, value in answer["hub"].items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        total["clients_by_worker"] = {p: a["hub"]["clients"] for p, a in workers.items()}
        return total

    def extra_cpu(self) -> dict[str, float]:
        return {"redis": self.redis.cpu()} if self.redis is not None else {}

    def redis_memory(self) -> dict[str, int]:
        """Redis's memory and keys (``{}`` without a broker)."""
        return self.redis.memory() if self.redis is not None else {}

    def sample(self, now: float) -> None:
        if now < self._next_sample:
            return
        self._next_sample = now + LAG_EVERY
        answer = self._get_hub(1.0)
        relay, hub = answer.get("relay") or {}, answer.get("hub") or {}
        if relay and relay.get("epoch") == hub.get("epoch"):
            done = hub.get("pos", hub["seq"])  # the stream position (channels: not a seq)
            self.lag_samples.append(max(0, int(relay["last_published_seq"]) - int(done)))
