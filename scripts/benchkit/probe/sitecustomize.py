"""The bench's probe inside the server under test: garbage-collection pauses, tracked objects.

``scripts/bench`` puts this directory first on the server's ``PYTHONPATH`` and names a
directory in ``SIDECAR_BENCH_PROBE``; Python imports ``sitecustomize`` at start-up, in every
interpreter that sees that path (the CLI, gunicorn's master; a forked worker inherits it and
starts its own listener). It works the same for any version of the sidecar (the "before" of a
before/after comparison too), because it only uses the interpreter: ``gc.callbacks``.

* Every collection is timed (``gc.callbacks``, start to stop) into per-generation counters: a
  count, the total and longest pause, a histogram, and the last :data:`KEPT` pauses of
  :data:`KEPT_FROM_NS` or more with when they ended (``time.monotonic_ns``, the bench's clock).
* A daemon thread (``bench-probe``) blocked in ``accept`` on ``DIR/probe-PID.sock`` answers one
  command per connection with a JSON line: ``gc`` (the counters), ``objects`` (tracked objects
  per generation and the most common types: a full heap walk, for diagnosis only).

Threads: the callback runs in whichever thread collects, with the GIL held (so the counters
need no lock); the listener thread only reads them (a snapshot copied under the GIL).
Nothing here runs unless ``SIDECAR_BENCH_PROBE`` is set.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import socket
import sys
import threading
import time
from typing import Any

#: Histogram bucket edges of a pause, in microseconds (the last bucket is "longer").
EDGES_US = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
#: Pauses at least this long are kept one by one (the rest only counted).
KEPT_FROM_NS = 1_000_000
#: Most pauses kept one by one (the oldest go first).
KEPT = 4096


class GcStats:
    """Per-generation pause counters, written by the collecting thread (GIL held)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self.hist = [[0] * (len(EDGES_US) + 1) for _ in range(3)]
        self.long: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=KEPT)
        self._started = 0
        self._edges_ns = [e * 1000 for e in EDGES_US]

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
            return
        took = time.perf_counter_ns() - self._started
        gen = info.get("generation", 2)
        self.count[gen] += 1
        self.total_ns[gen] += took
        if took > self.max_ns[gen]:
            self.max_ns[gen] = took
        bucket = 0
        for edge in self._edges_ns:
            if took < edge:
                break
            bucket += 1
        self.hist[gen][bucket] += 1
        if took >= KEPT_FROM_NS:
            self.long.append((time.monotonic_ns(), took, gen, info.get("collected", 0)))

    def snapshot(self) -> dict[str, Any]:
        freeze = gc.get_freeze_count() if hasattr(gc, "get_freeze_count") else None
        return {
            "pid": os.getpid(),
            "now_ns": time.monotonic_ns(),
            "edges_us": list(EDGES_US),
            "count": list(self.count),
            "total_ns": list(self.total_ns),
            "max_ns": list(self.max_ns),
            "hist": [list(h) for h in self.hist],
            "long": list(self.long),
            "threshold": list(gc.get_threshold()),
            "gen_counts": list(gc.get_count()),
            "frozen": freeze,
            "enabled": gc.isenabled(),
        }


def objects() -> dict[str, Any]:
    """Tracked objects by generation, and the most common types (walks the heap)."""
    per_gen = [len(gc.get_objects(generation=g)) for g in range(3)]
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return {
        "pid": os.getpid(),
        "tracked": per_gen,
        "frozen": gc.get_freeze_count(),
        "types": types.most_common(40),
        "threads": threading.active_count(),
    }


STATS = GcStats()
_SNAPSHOTS: list[Any] = []


def allocations() -> dict[str, Any]:
    """With ``PYTHONTRACEMALLOC`` set: the allocation sites that grew most since the last
    call (the first call only takes the reference snapshot)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return {"error": "start the server with PYTHONTRACEMALLOC=1"}
    snap = tracemalloc.take_snapshot()
    if not _SNAPSHOTS:
        _SNAPSHOTS.append(snap)
        return {"reference": True}
    stats = snap.compare_to(_SNAPSHOTS[0], "lineno")
    top = [(str(s.traceback), s.size_diff, s.count_diff) for s in stats[:40]]
    total = sum(s.size_diff for s in stats)
    return {"total": total, "top": top}


COMMANDS = {"objects": objects, "allocations": allocations}


def _serve(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(8)
        while True:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5.0)
                try:
                    command = conn.recv(64).strip().decode()
                    answer = COMMANDS.get(command, STATS.snapshot)()
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass


def _start() -> None:
    directory = os.environ.get("SIDECAR_BENCH_PROBE")
    if not directory:
        return
    path = os.path.join(directory, f"probe-{os.getpid()}.sock")
    if os.path.exists(path):
        os.unlink(path)
    threading.Thread(target=_serve, args=(path,), name="bench-probe", daemon=True).start()


def _after_fork() -> None:
    global STATS
    gc.callbacks.remove(STATS.callback)
    STATS = GcStats()
    gc.callbacks.append(STATS.callback)
    _start()


if os.environ.get("SIDECAR_BENCH_PROBE") and sys.platform != "win32":
    gc.callbacks.append(STATS.callback)
    os.register_at_fork(after_in_child=_after_fork)
    _start()
