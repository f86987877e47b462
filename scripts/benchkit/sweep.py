"""One client count of the sweep: start a server, connect N subscribers, run the phases, stop.

**Channels** (issue 18): ``--channels N:K`` adds a run of N subscribers spread over K named
channels (subscriber ``i`` joins ``bench:(i mod K)`` with ``?channels=``; event ``e`` is
published on ``bench:(e mod K)``), with the same phases: the fixed rate is K times ``--rate``
(the deliveries per second of a broadcast; at most ``--channel-max-rate``), the maximum rate
is window-bounded in the stream's order. Progress, losses and latency count, for each
subscriber, only its channel's events; at least one subscriber per channel checks that every
frame is of its channel and that the channel's ``seq`` is contiguous from the position
``connection:status`` gave.

**Probe** (:mod:`benchkit.probe`, on unless ``--no-probe``): the server imports the bench's
``sitecustomize``, which times every garbage collection (``gc.callbacks``) and answers on a
unix socket; each phase (and the connect burst) reports the collections and their pauses,
and the connect table the objects the collector tracks per connection. It works for any
version of the sidecar, so ``--server-root DIR`` (another checkout, first on the server's
``PYTHONPATH``) gives before/after numbers from one load generator in one sitting.

Threads: runs in the bench's main thread.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import time
from collections.abc import Callable
from typing import Any

from .phase import PhaseRun, PhaseSpec, gc_delta
from .report import phase_line
from .server import Server, make_server, profiler
from .swarm import Swarm

Progress = Callable[[str], None]


def events_for(args: argparse.Namespace, n: int, channels: int = 0) -> int:
    """Events for the as-fast-as-possible phase at ``n`` subscribers over ``channels``."""
    if args.events:
        return int(args.events)
    audience = max(1, n // max(1, channels))
    return int(min(args.max_events, max(args.min_events, args.deliveries // audience)))


def rate_for(args: argparse.Namespace, channels: int) -> float:
    """Events/s of the fixed-rate phase: ``--rate`` on the default channel; over K channels
    K times that (the same deliveries per second), at most ``--channel-max-rate``."""
    if not channels:
        return float(args.rate)
    return float(min(args.rate * channels, args.channel_max_rate))


def phase_specs(args: argparse.Namespace, n: int, channels: int = 0) -> list[PhaseSpec]:
    """The phases ``--modes`` asks for, at ``n`` subscribers over ``channels`` channels."""
    phases = []
    rate = rate_for(args, channels)
    if "max" in args.modes:
        phases.append(
            PhaseSpec(
                "max",
                events_for(args, n, channels),
                batch=args.batch,
                window=args.window,
                cap=args.cap,
                drain=args.drain,
            )
        )
    if "rate" in args.modes and rate > 0:
        phases.append(
            PhaseSpec(
                "rate",
                max(1, int(rate * args.duration)),
                rate=rate,
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
        "pss_base_kib": base.get("Pss"),
        "threads_base": base["Threads"],
        "rss_idle_kib": idle["VmRSS"],
        "pss_idle_kib": idle.get("Pss"),
        "threads_idle": idle["Threads"],
        "kib_per_conn_idle": (idle["VmRSS"] - base["VmRSS"]) / live if live else None,
    }


def run_tag(n: int, channels: int) -> str:
    """How progress lines name a run."""
    return f"N={n}" + (f" over {channels} channels" if channels else "")


def tracked_per_connection(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], n: int
) -> dict[str, Any] | None:
    """Objects the garbage collector tracks, before and after connecting ``n`` clients."""
    if not before or not after or not n:
        return None

    def count(snapshots: dict[int, dict[str, Any]]) -> int:  # frozen ones included
        return sum(
            sum(s.get("tracked") or [0]) + int(s.get("frozen") or 0) for s in snapshots.values()
        )

    frozen = sum(int(a.get("frozen") or 0) for a in after.values())
    return {
        "before": count(before),
        "after": count(after),
        "frozen": frozen,
        "per_connection": (count(after) - count(before)) / n,
    }


def hub_memory(hub: dict[str, Any]) -> dict[str, Any]:
    """What the hub holds once the phases are over: channels and history bytes."""
    keys = ("channels", "channelHistoryBytes", "historyBytes", "historyEvents", "channelsForgotten")
    return {k: hub.get(k) for k in keys}


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
    tag = run_tag(n, swarm.channels)
    for spec in phase_specs(args, n, swarm.channels):
        if not swarm.live():
            break
        what = (
            f"{spec.events} events as fast as possible"
            if spec.mode == "max"
            else f"{spec.rate:g} events/s for {spec.events / spec.rate:g} s"
        )
        progress(f"{tag}: {what}")
        with profiler(args.profile, server, f"n{n}-{spec.mode}", gen_core) as prof:
            phase = PhaseRun(swarm, spec, server, deadline).run()
        if prof:
            phase["profile"] = prof
        out[spec.mode] = phase
        progress(f"{tag}: {phase_line(phase)}")
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
    tag = run_tag(n, swarm.channels)
    base = server.status()
    objects0 = server.tracked_objects()
    progress(f"{tag}: connecting ({args.handshakes} handshakes in flight)")
    gc0, t0 = server.gc_stats(), time.monotonic_ns()
    with profiler(args.profile, server, f"n{n}-connect", gen_core) as prof:
        conn = swarm.connect(n, args.handshakes, deadline, checked=args.checked)
    run["connect"] = conn.__dict__ | ({"profile": prof} if prof else {})
    if conn.connected < n:
        progress(f"{tag}: only {conn.connected} of {n} connected: {conn.failed}")
    run["memory"] = idle_memory(server, swarm, base)
    run["gc_connect"] = gc_delta(gc0, server.gc_stats(), t0)
    run["objects"] = tracked_per_connection(objects0, server.tracked_objects(), n)
    run["phases"] = run_phases(args, n, server, swarm, deadline, gen_core, progress)
    run["hub_end"] = hub_memory(server.hub())
    run["redis"] = server.redis_memory()
    end = server.status()
    run["memory"].update(
        rss_end_kib=end["VmRSS"],
        rss_peak_kib=end.get("VmHWM"),
        threads_end=end["Threads"],
        kib_per_conn_end=(end["VmRSS"] - base["VmRSS"]) / n if n else None,
    )
    run["pongs_sent"] = swarm.pongs
    progress(f"{tag}: SIGTERM with {len(swarm.live())} subscribers connected")
    run["shutdown"] = swarm.watch_shutdown(server, args.stop_grace)


def bench_clients(
    n: int,
    args: argparse.Namespace,
    deadline: float,
    cores: tuple[int | None, int | None],
    progress: Progress,
    kind: str = "in-process",
    channels: int = 0,
) -> dict[str, Any]:
    """Start a server of ``kind``, connect ``n`` subscribers (over ``channels`` named channels;
    0: the default channel), run the phases, stop it."""
    token = secrets.token_urlsafe(24)
    server = make_server(args, n, token=token, core=cores[0], kind=kind)
    run: dict[str, Any] = {
        "clients": n,
        "channels": channels,
        "server": kind,
        "command": shlex.join(server.cmd),
        "phases": {},
    }
    swarm: Swarm | None = None
    try:
        ready = server.start(timeout=min(30.0, max(1.0, deadline - time.monotonic())))
        run["server_version"] = ready.get("version")
        swarm = Swarm(
            server.port,
            token,
            frame_bytes=args.frame_bytes,
            publishers=args.publishers,
            channels=channels,
        )
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
