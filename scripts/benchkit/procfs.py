"""``/proc`` readers: a process's memory, threads and CPU; each core's busy time; the machine.

Pure reads of Linux's ``/proc`` (and ``resource``); called from the bench's main thread.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
from contextlib import suppress
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` (KiB), ``VmHWM`` (KiB) and ``Threads`` of process ``pid``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def proc_pss_kib(pid: int) -> int:
    """The proportional set size of process ``pid`` (KiB): its RSS with every page shared with
    other processes counted in proportion (a forked worker shares its master's); 0 if unknown."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


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
