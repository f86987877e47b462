"""The command line of ``scripts/bench``: options, pinning, the sweep and the output.

Threads: runs in the main thread; the watchdog is a SIGALRM handler in that thread.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import BenchError, BenchTimeout, stages
from .plot import plot
from .procfs import machine, machine_busy, raise_nofile, self_cpu_seconds
from .report import evaluate, render
from .sweep import Progress, bench_clients


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options; ``--quick`` changes the defaults of the sweep."""
    p = parser()
    args = p.parse_args(argv)
    settle(p, args)
    return args


def parser() -> argparse.ArgumentParser:
    """The options of ``scripts/bench``."""
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
        "  scripts/bench --stages                CPU per stage of publish -> fan-out (< 60 s)\n"
        "  scripts/bench --clients 1,10,100,300,1000 --channels 1000:1,1000:10,1000:100,"
        "10000:10000 --gunicorn --broker\n"
        "                                        the full matrix (docs/performance.md)\n"
        "  scripts/bench --quick --server-root /tmp/before   the same load against another "
        "checkout\n"
        "exit status: 0 done (targets may still be missed), 1 error, 3 timeout, 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_load_options(p)
    add_run_options(p)
    add_stage_options(p)
    return p


def add_stage_options(p: argparse.ArgumentParser) -> None:
    """Options of ``--stages`` (:mod:`benchkit.stages`)."""
    p.add_argument(
        "--stages",
        action="store_true",
        help="instead of the sweep: the CPU cost of each stage of the publish -> fan-out path "
        "(HTTP request, validation and encoding, hub hand-off, per-client offer), < 60 s",
    )
    p.add_argument(
        "--stage-clients",
        default="100,1000",
        metavar="M,...",
        help="--stages: connections of the offer and fan-out stages (100,1000)",
    )
    p.add_argument(
        "--stage-reps", type=int, default=5, help="--stages: repetitions of each stage (5)"
    )
    p.add_argument(
        "--stage-seconds",
        type=float,
        default=0.05,
        help="--stages: seconds of work in one repetition (0.05; the HTTP stage's last 20x as "
        "long: the server's CPU is read in 10 ms ticks)",
    )


def add_load_options(p: argparse.ArgumentParser) -> None:
    """Options of the load: client counts, phases, events, publishers, frames."""
    p.add_argument("--quick", action="store_true", help="a smoke run in under 60 s")
    p.add_argument(
        "--clients",
        help="comma-separated client counts on the default channel (default 1,10,100,300,1000; "
        "'none': only the --channels runs)",
    )
    p.add_argument(
        "--channels",
        default="",
        metavar="N:K,...",
        help="channel runs: N subscribers spread over K named channels (bench:0 … bench:K-1, "
        "subscriber i on bench:(i mod K)), events published round robin over them",
    )
    p.add_argument(
        "--channel-max-rate",
        type=float,
        default=20_000.0,
        help="the fixed-rate phase of a channel run publishes --rate x K events/s (the "
        "deliveries per second of a broadcast), at most this many (20000)",
    )
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


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of the run: limits, the server, pinning, output."""
    p.add_argument("--cap", type=float, help="max seconds of publishing per phase (30; quick 10)")
    p.add_argument("--drain", type=float, help="max seconds to wait for stragglers (10; quick 5)")
    p.add_argument(
        "--timeout",
        type=float,
        help="max seconds for the whole run (290; quick 58; twice that with --broker)",
    )
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
    p.add_argument(
        "--broker",
        action="store_true",
        help="also run each client count in broker mode: gunicorn with --workers processes "
        "on one port and a redis-server (needs the gunicorn and redis extras)",
    )
    p.add_argument(
        "--broker-only", action="store_true", help="run the broker mode only (implies --broker)"
    )
    p.add_argument(
        "--gunicorn",
        action="store_true",
        help="also run each client count under gunicorn (one gthread worker, no broker)",
    )
    p.add_argument(
        "--server-root",
        metavar="DIR",
        help="run the sidecar of another checkout (first on the server's PYTHONPATH, and "
        "gunicorn's directory): a before/after comparison with the same load generator",
    )
    p.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="leave out the probe (garbage-collection pauses, tracked objects) in the server",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="gunicorn worker processes in broker mode (2)"
    )


def settle(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the options and fill in the defaults that depend on ``--quick``."""
    quick = args.quick
    if args.stages:
        settle_stages(p, args)
    clients = args.clients or ("100,1000" if quick else "1,10,100,300,1000")
    try:
        args.clients = [] if clients == "none" else [int(x) for x in clients.split(",")]
        args.channel_runs = [
            tuple(int(v) for v in item.split(":", 1)) for item in args.channels.split(",") if item
        ]
    except ValueError:
        p.error("--clients takes counts, --channels N:K pairs")
    if any(n < 1 for n in args.clients):
        p.error("--clients: counts must be positive")
    if any(len(r) != 2 or r[0] < 1 or r[1] < 1 for r in args.channel_runs):
        p.error("--channels: N:K with N and K at least 1")
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
    if args.workers < 1:
        p.error("--workers must be at least 1")
    args.servers = [] if args.broker_only else ["in-process"]
    args.servers += ["gunicorn"] if args.gunicorn and not args.broker_only else []
    args.servers += ["broker"] if args.broker or args.broker_only else []
    args.runs = [(n, 0, kind) for n in args.clients for kind in args.servers]
    args.runs += [(n, k, kind) for n, k in args.channel_runs for kind in args.servers]
    if not args.runs:
        p.error("nothing to run: give --clients or --channels")
    # the default time is per run: a sweep of 5 counts took 290 s, of 2 (quick) 58 s
    per_run = 29.0 if quick else 60.0
    args.timeout = args.timeout or max(58.0, per_run * len(args.runs))


def settle_stages(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the ``--stages`` options; its run takes 58 s at most unless ``--timeout``."""
    try:
        args.stage_clients = [int(x) for x in args.stage_clients.split(",") if x]
    except ValueError:
        p.error("--stage-clients takes counts")
    if not args.stage_clients or any(n < 1 or n > 10_000 for n in args.stage_clients):
        p.error("--stage-clients: counts from 1 to 10000")
    if not 1 <= args.stage_reps <= 100 or not 0 < args.stage_seconds <= 10:
        p.error("--stage-reps: 1 to 100; --stage-seconds: above 0, at most 10")
    args.timeout = args.timeout or 58.0
    args.probe = False  # the probe's collection callbacks would count as the server's CPU


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

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    raise_nofile(max(n for n, _k, _kind in args.runs) * 2 + 256)
    cores, pinning = pin(args)
    if args.nice:
        try:
            os.nice(args.nice)
        except PermissionError:
            print("bench: --nice below 0 needs root", file=sys.stderr)
            return 2
        pinning += f", both at nice {args.nice}"
    log_dir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    args.log_dir = str(log_dir)
    if args.stages:
        code = run_stages(args, cores, pinning, started, progress)
    else:
        code = run_sweep(args, cores, pinning, started, progress)
    if args.keep_logs or code:
        progress(f"server logs kept in {log_dir}")
    else:
        for path in log_dir.iterdir():
            path.unlink()
        log_dir.rmdir()
    return code


def run_sweep(
    args: argparse.Namespace,
    cores: tuple[int | None, int | None],
    pinning: str,
    started: float,
    progress: Progress,
) -> int:
    """The sweep and its report (text, JSON, plot); the exit code."""
    report: dict[str, Any] = {"machine": machine(pinning), "config": config(args), "runs": []}
    preflight(report, progress)
    gen0 = self_cpu_seconds()
    code = sweep(args, report, cores, started + args.timeout, progress)
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = time.monotonic() - started
    report["gen_cpu_s"] = self_cpu_seconds() - gen0
    report["targets"] = evaluate(report["runs"])
    report["log_dir"] = args.log_dir
    plot_code = output(report, args, progress)
    return code or plot_code


def run_stages(
    args: argparse.Namespace,
    cores: tuple[int | None, int | None],
    pinning: str,
    started: float,
    progress: Progress,
) -> int:
    """``--stages`` (:mod:`benchkit.stages`) and its report; the exit code."""
    if cores[0] is not None:
        pinning = (
            f"server and in-process stages on core {cores[0]}, "
            f"publisher and drain on core {cores[1]}"
        )
    report: dict[str, Any] = {"machine": machine(pinning), "config": stage_config(args)}
    preflight(report, progress)
    with watchdog(args.timeout + 20):
        report.update(stages.run(args, cores, started + args.timeout, progress))
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = time.monotonic() - started
    text = stages.render(report)
    if args.json:
        print(text, file=sys.stderr)
        json.dump(stages.as_json(report), sys.stdout, indent=2, default=str)
        print()
    else:
        print(text)
    status = report["status"]
    if status.startswith("timed out"):
        return 3
    return {"complete": 0, "interrupted": 130}.get(status, 1)


def stage_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--stages`` options as the report records them."""
    return {
        "clients": args.stage_clients,
        "reps": args.stage_reps,
        "seconds": args.stage_seconds,
        "frame_bytes": args.frame_bytes,
        "timeout": args.timeout,
        "server_cmd": args.server_cmd,
        "server_args": args.server_arg or [],
        "server_root": args.server_root,
    }


def pin(args: argparse.Namespace) -> tuple[tuple[int | None, int | None], str]:
    """Pin this process (the load generator) to the second allowed core; the server's core,
    the load generator's, and the pinning in words."""
    allowed = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(allowed) >= 2:
        os.sched_setaffinity(0, {allowed[1]})
        pinning = f"server on core {allowed[0]}, load generator on core {allowed[1]}"
        return (allowed[0], allowed[1]), pinning
    return (None, None), "not pinned" + (" (one core)" if len(allowed) < 2 else "")


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the report records them."""
    return {
        "clients": args.clients,
        "channel_runs": args.channel_runs,
        "channel_max_rate": args.channel_max_rate,
        "server_root": args.server_root,
        "probe": args.probe,
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
        "servers": args.servers,
        "workers": args.workers,
    }


def preflight(report: dict[str, Any], progress: Progress) -> None:
    """How busy the cores are before the run (a warning when they are)."""
    busy = machine_busy(1.0)
    report["machine"]["busy_before"] = {str(k): round(v, 3) for k, v in busy.items()}
    if max(busy.values(), default=0.0) > 0.15:
        progress(
            "warning: the machine is busy before the run ("
            + ", ".join(f"core {k} {v:.0%}" for k, v in sorted(busy.items()))
            + "): numbers will be noisy"
        )


def sweep(
    args: argparse.Namespace,
    report: dict[str, Any],
    cores: tuple[int | None, int | None],
    deadline: float,
    progress: Progress,
) -> int:
    """Every client count in turn, into ``report``; the exit code so far."""
    status = "complete"
    code = 0
    try:
        with watchdog(args.timeout + 20):
            for n, k, kind in args.runs:
                if time.monotonic() >= deadline:
                    raise BenchTimeout("no time left for the next client count")
                try:
                    run = bench_clients(n, args, deadline, cores, progress, kind, k)
                except BenchError as exc:
                    if isinstance(exc, BenchTimeout):
                        raise
                    failed = {
                        "clients": n,
                        "channels": k,
                        "server": kind,
                        "phases": {},
                        "error": str(exc),
                    }
                    report["runs"].append(failed)
                    progress(f"N={n}: {exc}")
                    status = "error"
                    code = 1
                    continue
                report["runs"].append(run)
                report["server_version"] = report.get("server_version") or run.get("server_version")
    except BenchTimeout as exc:
        status, code = f"timed out ({exc})", 3
        progress(status)
    except KeyboardInterrupt:
        status, code = "interrupted", 130
        progress(status)
    report["status"] = status
    return code


def output(report: dict[str, Any], args: argparse.Namespace, progress: Progress) -> int:
    """Print the report (and the JSON), write the plot; 2 if the plot failed, else 0."""
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
            return 2
    return 0
