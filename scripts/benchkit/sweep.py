"""One client count of the sweep: start a server, connect N subscribers, run the phases, stop.

Threads: runs in the bench's main thread.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import time
from collections.abc import Callable
from typing import Any

from .phase import PhaseRun, PhaseSpec
from .report import phase_line
from .server import Server, make_server, profiler
from .swarm import Swarm

Progress = Callable[[str], None]


def events_for(args: argparse.Namespace, n: int) -> int:
    """Events for the as-fast-as-possible phase at ``n`` subscribers."""
    if args.events:
        return int(args.events)
    return int(min(args.max_events, max(args.min_events, args.deliveries // n)))


def phase_specs(args: argparse.Namespace, n: int) -> list[PhaseSpec]:
    """The phases ``--modes`` asks for, at ``n`` subscribers."""
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
    return phases


def idle_memory(server: Server, swarm: Swarm, base: dict[str, int]) -> dict[str, Any]:
    """Let the server's threads settle with every subscriber idle, then read its memory."""
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
    return {
        "rss_base_kib": base["VmRSS"],
        "threads_base": base["Threads"],
        "rss_idle_kib": idle["VmRSS"],
        "threads_idle": idle["Threads"],
        "kib_per_conn_idle": (idle["VmRSS"] - base["VmRSS"]) / live if live else None,
    }


def run_phases(
    args: argparse.Namespace,
    n: int,
    server: Server,
    swarm: Swarm,
    deadline: float,
    gen_core: int | None,
    progress: Progress,
) -> dict[str, Any]:
    """Each phase in turn while subscribers are left; ``{mode: report}``."""
    out: dict[str, Any] = {}
    for spec in phase_specs(args, n):
        if not swarm.live():
            break
        what = (
            f"{spec.events} events as fast as possible"
            if spec.mode == "max"
            else f"{spec.rate:g} events/s for {spec.events / spec.rate:g} s"
        )
        progress(f"N={n}: {what}")
        with profiler(args.profile, server, f"n{n}-{spec.mode}", gen_core) as prof:
            phase = PhaseRun(swarm, spec, server, deadline).run()
        if prof:
            phase["profile"] = prof
        out[spec.mode] = phase
        progress(f"N={n}: {phase_line(phase)}")
        swarm.settle(0.2)
    return out


def measure(
    run: dict[str, Any],
    args: argparse.Namespace,
    server: Server,
    swarm: Swarm,
    deadline: float,
    gen_core: int | None,
    progress: Progress,
) -> None:
    """Connect, measure idle memory, run the phases, SIGTERM with everyone connected."""
    n = run["clients"]
    base = server.status()
    progress(f"N={n}: connecting ({args.handshakes} handshakes in flight)")
    conn = swarm.connect(n, args.handshakes, deadline, checked=args.checked)
    run["connect"] = conn.__dict__
    if conn.connected < n:
        progress(f"N={n}: only {conn.connected} of {n} connected: {conn.failed}")
    run["memory"] = idle_memory(server, swarm, base)
    run["phases"] = run_phases(args, n, server, swarm, deadline, gen_core, progress)
    end = server.status()
    run["memory"].update(
        rss_end_kib=end["VmRSS"],
        rss_peak_kib=end.get("VmHWM"),
        threads_end=end["Threads"],
        kib_per_conn_end=(end["VmRSS"] - base["VmRSS"]) / n if n else None,
    )
    run["pongs_sent"] = swarm.pongs
    progress(f"N={n}: SIGTERM with {len(swarm.live())} subscribers connected")
    run["shutdown"] = swarm.watch_shutdown(server, args.stop_grace)


def bench_clients(
    n: int,
    args: argparse.Namespace,
    deadline: float,
    cores: tuple[int | None, int | None],
    progress: Progress,
    kind: str = "in-process",
) -> dict[str, Any]:
    """Start a server of ``kind``, connect ``n`` subscribers, run the phases, stop it."""
    token = secrets.token_urlsafe(24)
    server = make_server(args, n, token=token, core=cores[0], kind=kind)
    run: dict[str, Any] = {
        "clients": n,
        "server": kind,
        "command": shlex.join(server.cmd),
        "phases": {},
    }
    swarm: Swarm | None = None
    try:
        ready = server.start(timeout=min(30.0, max(1.0, deadline - time.monotonic())))
        run["server_version"] = ready.get("version")
        swarm = Swarm(server.port, token, frame_bytes=args.frame_bytes, publishers=args.publishers)
        measure(run, args, server, swarm, deadline, cores[1], progress)
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
