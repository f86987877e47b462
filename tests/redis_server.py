"""A real ``redis-server`` (Debian's) for the broker tests, in a temporary directory.

Listens on a unix socket in a short temporary directory (a socket path must fit in 108
bytes), and on TCP when asked (a free port). ``persistent=True`` turns the append-only file
on, so that a restart in the same directory keeps the data; without it a restart loses
everything (``--save ''``, no AOF), as after a crash of an unconfigured Redis.

Under ``CI=true`` a missing ``redis-server`` fails the test (``scripts/test`` installs it
there); elsewhere the test is skipped with a message saying how to install it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import wait_for
from tests.needs import unavailable

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; fails (CI) or skips (elsewhere) the test without it."""
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` and :meth:`start` again to restart it."""

    def __init__(
        self, *, persistent: bool = False, tcp: bool = False, password: str | None = None
    ) -> None:
        self.binary = redis_server_binary()
        self._tmp = tempfile.TemporaryDirectory(prefix="sidecar-redis-")
        self.dir = Path(self._tmp.name)
        self.socket_path = self.dir / "redis.sock"
        self.persistent = persistent
        self.port = free_port() if tcp else 0
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The unix-socket URL (``unix:///…/redis.sock?db=0``)."""
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    def tcp_url(self, db: int = 0) -> str:
        """The TCP URL (``redis://[:password@]127.0.0.1:port/db``)."""
        assert self.port, "started without tcp=True"
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        """A plain client (``redis.Redis``), for the test to look at or change what is in Redis.

        Typed ``Any``: redis-py types every reply as a union of its RESP2 and RESP3 forms.
        """
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            password=self.password,
            db=db,
            retry=Retry(NoBackoff(), 0),  # redis-py's default retries sleep about 1 s
        )

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        args += ["--dir", str(self.dir), "--save", "", "--daemonize", "no"]
        args += ["--appendonly", "yes" if self.persistent else "no"]
        args += ["--logfile", str(self.dir / "redis.log")]
        # SIGTERM is acted on at the next serverCron tick: 10 ms apart at hz 100 (100 ms at the
        # default 10), which every stop and restart of a test waits for
        args += ["--hz", "100"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        probe = self.client()
        try:
            wait_for(lambda: self._answers(probe), START_TIMEOUT)
        except AssertionError:
            self.stop()
            raise AssertionError(f"redis-server did not start: {self.log_tail()}") from None
        finally:
            probe.close()

    def _answers(self, probe: redis.Redis) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited: {self.log_tail()}")
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM: an AOF is flushed) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again in the same directory, on the same socket and port."""
        self.stop()
        self.start()

    def log_tail(self) -> str:
        """The last lines of the server's log (for failure messages)."""
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:])

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._tmp.cleanup()


def running(*, persistent: bool = False) -> Iterator[RedisServer]:
    """A started server, closed afterwards: the body of a fixture (``yield from running()``)."""
    server = RedisServer(persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.close()
