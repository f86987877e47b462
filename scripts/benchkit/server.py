"""The server under test: started with a fresh token, measured through ``/proc``, always stopped.

:class:`Server` is the seam between the bench and what it measures. The bench uses only its
interface: :meth:`~Server.start`, :attr:`~Server.port`, :attr:`~Server.token`,
:meth:`~Server.status` and :meth:`~Server.cpu` (summed over :meth:`~Server.pids`),
:meth:`~Server.hub`, :meth:`~Server.send_signal` / :meth:`~Server.poll` (for the SIGTERM
watch) and :meth:`~Server.stop`. :class:`SidecarServer` is one ``python -m sidecar`` process,
started through :mod:`sidecar.launcher`. The broker mode (gunicorn with N workers sharing
one port, and Redis) is another subclass, :class:`benchkit.broker.BrokerServer`: its
:meth:`~Server.command` runs gunicorn, its :meth:`~Server.pids` adds the workers (the
master's children) so that CPU and memory count every process, its :meth:`~Server.hub` sums
the workers, and :meth:`~Server.sample` takes relay-lag samples; :func:`make_server` picks
the class by kind.

Threads: a :class:`Server` belongs to the bench's main thread (the launcher's reader threads
own the child's pipes and the log file).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sidecar.launcher import LaunchError, SidecarProcess

from . import HOST, BenchError
from .procfs import proc_cpu_seconds, proc_pss_kib, proc_status

ROOT = Path(__file__).resolve().parent.parent.parent
#: The directory whose ``sitecustomize`` the server imports (:mod:`benchkit.probe`).
PROBE_DIR = Path(__file__).resolve().parent / "probe"

#: Lines of the server's log counted in the report, by the text that marks them.
LOG_MARKS = {
    "warning": (" WARNING ",),
    "error": (" ERROR ", " CRITICAL "),
    "traceback": ("Traceback",),
    "slow consumer": ("slow consumer",),
}


def find_py_spy() -> str | None:
    """py-spy on PATH or next to this Python, if installed."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


class Server:
    """A server process under test (see the module docstring for the seam it is)."""

    #: How reports name this kind of server.
    kind = "in-process"

    def __init__(
        self, args: argparse.Namespace, max_clients: int, *, token: str, core: int | None
    ) -> None:
        self.args = args
        self.max_clients = max_clients
        self.token = token
        self.core = core
        self.nice = int(args.nice)
        self.log_path = Path(args.log_dir) / f"server-{max_clients}.log"
        self.cmd = self.command()
        self.process: SidecarProcess | None = None
        self.ready: dict[str, Any] = {}
        self.exit: dict[str, Any] = {}
        #: Relay-lag samples (events) taken by :meth:`sample` during the current phase.
        self.lag_samples: list[int] = []
        self._next_sample = 0.0

    # -- what a subclass may change ---------------------------------------------------------
    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Every process whose CPU and memory count as the server's."""
        return [self.pid]

    def start(self, timeout: float) -> dict[str, Any]:
        """Start the server and wait (at most ``timeout`` s) for it to serve; its ready line."""
        raise NotImplementedError

    def extra_cpu(self) -> dict[str, float]:
        """CPU seconds so far of helper processes, reported apart (the broker mode's Redis)."""
        return {}

    def redis_memory(self) -> dict[str, int]:
        """A broker's memory and keys (the broker mode's Redis); ``{}`` without one."""
        return {}

    def sample(self, now: float) -> None:
        """Called at every step of a phase's loop; a subclass may sample cheaply (at ``now``,
        ``time.monotonic()``) into :attr:`lag_samples`."""

    # -- the process ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The server's environment: ours, with the token and without a port or host; the
        probe (``--no-probe`` leaves it out) and ``--server-root`` first on the path."""
        env = dict(os.environ)
        env["SIDECAR_TOKEN"] = self.token
        env.pop("SIDECAR_PORT", None)
        env.pop("SIDECAR_HOST", None)
        path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if self.args.server_root:
            path.insert(0, str(Path(self.args.server_root).resolve()))
        if self.args.probe:
            path.insert(0, str(PROBE_DIR))
            env["SIDECAR_BENCH_PROBE"] = str(self.args.log_dir)
        if path:
            env["PYTHONPATH"] = os.pathsep.join(path)
        return env

    @property
    def cwd(self) -> Path:
        """Where the server runs: ``--server-root`` (gunicorn imports from its directory),
        else this checkout."""
        return Path(self.args.server_root).resolve() if self.args.server_root else ROOT

    def gc_stats(self) -> dict[int, dict[str, Any]]:
        """The probe's garbage-collection counters of each server process (``{}`` without)."""
        if not self.args.probe:
            return {}
        out = {}
        for pid in self.pids():
            answer = probe(Path(self.args.log_dir), pid, "gc")
            if answer:
                out[pid] = answer
        return out

    def tracked_objects(self) -> dict[int, dict[str, Any]]:
        """The probe's count of tracked objects in each server process (walks the heap)."""
        if not self.args.probe:
            return {}
        return {pid: probe(Path(self.args.log_dir), pid, "objects") for pid in self.pids()}

    def pin(self) -> None:
        """Runs in the child before exec: every server thread inherits the core and nice."""
        if self.core is not None:
            os.sched_setaffinity(0, {self.core})
        if self.nice:
            os.setpriority(os.PRIO_PROCESS, 0, self.nice)

    @property
    def pid(self) -> int:
        """The server's (main) process id."""
        return int(self.ready.get("pid") or (self.process.pid if self.process else 0))

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.ready["port"])

    def send_signal(self, sig: int) -> None:
        """Signal the server's main process."""
        assert self.process is not None
        self.process.send_signal(sig)

    def poll(self) -> int | None:
        """The exit status if the server has ended, else ``None``."""
        return self.process.poll() if self.process is not None else None

    def stop(self, grace: float = 5.0, signalled: bool = False) -> dict[str, Any]:
        """SIGTERM (unless ``signalled``), wait up to ``grace`` s, then SIGKILL.

        A server that overstays gets its stacks dumped with py-spy first, when py-spy is
        installed. Idempotent; never raises.
        """
        process = self.process
        if process is None or self.exit:
            return self.exit
        started = time.monotonic()
        dumps: list[str] = []
        code = process.stop(
            None if signalled else signal.SIGTERM,
            grace,
            on_hang=lambda: dumps.append(self.dump_stacks("hung-after-sigterm")),
        )
        self.exit = {
            "code": code,
            "seconds": round(time.monotonic() - started, 3),
            "killed": process.killed,
        }
        if dumps and dumps[0]:
            self.exit["stacks"] = dumps[0]
        return self.exit

    def dump_stacks(self, label: str) -> str:
        """``py-spy dump`` of the server into the log directory; returns the path or ``""``."""
        spy = find_py_spy()
        if not spy or self.poll() is not None:
            return ""
        path = self.log_path.with_name(f"{self.log_path.stem}-{label}.txt")
        with open(path, "w") as out, suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [spy, "dump", "--pid", str(self.pid)], stdout=out, stderr=out, timeout=60
            )
        return str(path)

    # -- measuring --------------------------------------------------------------------------
    def status(self) -> dict[str, int]:
        """RSS (KiB), peak RSS, PSS (KiB) and thread count now, summed over :meth:`pids`."""
        total: Counter[str] = Counter()
        for pid in self.pids():
            total.update(proc_status(pid))
            total["Pss"] += proc_pss_kib(pid)
        return dict(total)

    def cpu(self) -> float:
        """CPU seconds used so far, summed over :meth:`pids`."""
        return sum(proc_cpu_seconds(pid) for pid in self.pids())

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

    def log_counts(self) -> dict[str, int]:
        """Counts of notable lines in the server's stderr (warnings, errors, drops)."""
        counts: Counter[str] = Counter()
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    counts.update(
                        k for k, marks in LOG_MARKS.items() if any(m in line for m in marks)
                    )
        except OSError:
            pass
        return dict(counts)


class SidecarServer(Server):
    """One ``python -m sidecar`` process (or ``--server-cmd``), started by the launcher."""

    def command(self) -> list[str]:
        args = self.args
        base = (
            shlex.split(args.server_cmd)
            if args.server_cmd
            else [sys.executable, "-P", "-m", "sidecar"]
        )
        cmd = [*base, "--port", "0", "--max-clients", str(self.max_clients + 16)]
        if not args.server_cmd:
            cmd += ["--parent-pid", str(os.getpid())]
        for extra in args.server_arg or []:
            cmd += shlex.split(extra)
        return cmd

    def start(self, timeout: float) -> dict[str, Any]:
        self.process = SidecarProcess(
            self.cmd,
            env=self.env(),
            cwd=self.cwd,
            log_path=self.log_path,
            same_package=False,  # cwd is the checkout; --server-cmd may run another one
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops the server
            preexec_fn=self.pin,
        )
        try:
            self.ready = self.process.start(timeout)
        except LaunchError as exc:
            raise BenchError(f"the server did not start: {exc}") from None
        return self.ready


def make_server(
    args: argparse.Namespace,
    max_clients: int,
    *,
    token: str,
    core: int | None,
    kind: str = "in-process",
) -> Server:
    """The server of ``kind`` (``in-process`` or ``broker``) for one client count."""
    if kind == SidecarServer.kind:
        return SidecarServer(args, max_clients, token=token, core=core)
    from .broker import BrokerServer

    return BrokerServer(args, max_clients, token=token, core=core, broker=kind == "broker")


def probe(directory: Path, pid: int, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Ask the probe in process ``pid`` (:mod:`benchkit.probe`); ``{}`` if it does not answer."""
    path = directory / f"probe-{pid}.sock"
    data = b""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode())
            while not data.endswith(b"\n") and len(data) < 64 << 20:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        return dict(json.loads(data))
    except (OSError, ValueError):
        return {}


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
    # (--subprocesses: gunicorn's workers, in broker and --gunicorn runs)
    spy_cmd += ["--subprocesses", "--nonblocking", "--rate", "250", "--output", path]
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
