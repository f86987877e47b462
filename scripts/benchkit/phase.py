"""One measured phase: publish M events, count what every subscriber receives, report it.

Two modes. ``max``: POSTs of ``batch`` events as fast as possible, never letting the slowest
subscriber fall more than ``window`` events behind. ``rate``: R events/s, a POST every
``tick`` with the events due. The phase ends when every live subscriber has every accepted
event, after ``drain`` seconds past the last publish, or at the phase ``cap``.

Threads: a :class:`PhaseRun` runs in the bench's main thread; it drives the swarm's loop
(:meth:`~benchkit.swarm.Swarm.pump`) and sets the swarm's measurement state while it runs.
"""

from __future__ import annotations

import gc
import math
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import BenchError, BenchTimeout
from .procfs import core_busy, core_irq, core_times, self_cpu_seconds
from .publisher import PostResult, Publisher
from .server import Server
from .stats import percentile, saturation
from .swarm import DEAD, OPEN, Swarm

#: The "live" count when every subscriber has gone: larger than any phase.
NOBODY_LEFT = 1 << 62


@dataclass
class PhaseSpec:
    """What one measured phase does."""

    mode: str
    """``"max"`` (as fast as possible) or ``"rate"`` (fixed rate)."""
    events: int
    """Events to publish."""
    cap: float
    """Most seconds of publishing."""
    drain: float
    """Most seconds to wait for stragglers after the last publish."""
    rate: float = 0.0
    """Events per second (``rate`` mode)."""
    batch: int = 100
    """Events per POST (``max`` mode)."""
    window: int = 500
    """Events the slowest subscriber may lag behind the publisher (``max`` mode)."""
    tick: float = 0.01
    """Seconds between POSTs (``rate`` mode)."""
    samples: int = 50_000
    """About how many latency samples to take."""


@dataclass
class Window:
    """What was measured around the phase: CPU of both sides, cores, wall time, the hub."""

    wall: float = 0.0
    srv_cpu: float = 0.0
    gen_cpu: float = 0.0
    cores: dict[int, float] | None = None
    irq: dict[int, float] | None = None
    hub0: dict[str, Any] | None = None
    hub1: dict[str, Any] | None = None
    extra_cpu: dict[str, float] | None = None
    gc0: dict[int, dict[str, Any]] | None = None
    gc1: dict[int, dict[str, Any]] | None = None


class PhaseRun:
    """One phase over the swarm's live subscribers (construct, then :meth:`run` once)."""

    def __init__(self, swarm: Swarm, spec: PhaseSpec, server: Server, deadline: float) -> None:
        self.swarm = swarm
        self.spec = spec
        self.server = server
        self.deadline = deadline
        self.clients = swarm.live()
        if not self.clients:
            raise BenchError("no subscriber left to measure")
        self.live_now = self.clients
        self.deaths_seen = swarm.deaths
        self.total0 = swarm.total
        self.events = spec.events  # lowered when the phase stops early
        self.published = self.answered = self.accepted = self.failures = 0
        self.posts: list[PostResult] = []
        self.lags: list[int] = []
        self.stopped_early = ""
        self.drain_until = 0.0
        self.first_post_ns = self.next_post_ns = 0
        self.tick_ns = int(spec.tick * 1e9)
        self.interval_ns = 1e9 / spec.rate if spec.mode == "rate" else 0.0
        self.connects0 = sum(pub.connects for pub in swarm.publishers)
        self.window = Window()
        self.t0_ns = 0

    # -- progress of the subscribers --------------------------------------------------------
    def progress_min(self) -> int:
        """How far the slowest live subscriber is: the most events ``P`` such that it has
        every event of its channel among the first ``P`` published in this phase.

        On the default channel that is the events it has received; in a channel run a
        subscriber of channel ``k`` with ``r`` events has everything below ``k + r * K``.
        """
        swarm = self.swarm
        if swarm.deaths != self.deaths_seen:
            self.deaths_seen = swarm.deaths
            self.live_now = [i for i in self.live_now if swarm.states[i] == OPEN]
        if not self.live_now:
            return NOBODY_LEFT
        counts, base, kmod = swarm.counts, swarm.base, swarm.kmod
        if kmod == 1:
            return min([counts[i] - base[i] for i in self.live_now])
        chan = swarm.chan
        return min([chan[i] + (counts[i] - base[i]) * kmod for i in self.live_now])

    def expected_sum(self, events: int) -> int:
        """Deliveries the first ``events`` events of this phase make (all subscribers)."""
        expected = self.swarm.expected
        return sum(expected(i, events) for i in self.clients)

    def live_sum(self) -> tuple[int, int]:
        """Events received in this phase by the live subscribers, and how many they are."""
        self.progress_min()  # refreshes live_now
        swarm = self.swarm
        return (swarm.total - self.total0) - swarm.dead_phase_sum, len(self.live_now)

    def everyone_has(self, events: int) -> bool:
        """Whether every live subscriber has every event of its channel among the first
        ``events`` of this phase."""
        total, nlive = self.live_sum()
        if nlive == 0:
            return True
        if self.swarm.kmod == 1 and total < events * nlive:
            return False  # a cheap answer on the default channel
        return self.progress_min() >= events

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Publish the phase's events and count what every subscriber receives; the report."""
        swarm, spec = self.swarm, self.spec
        swarm.base = swarm.counts[:]
        swarm.dead_phase_sum = 0
        swarm.samples = []
        swarm.max_latency = 0
        swarm.last_rx_ns = 0
        deliveries = spec.events * len(self.clients) // swarm.kmod
        swarm.stride = max(1, deliveries // max(1, spec.samples))
        swarm.countdown = 1 + secrets.randbelow(swarm.stride)
        for pub in swarm.publishers:
            pub.results.clear()
        self.window.hub0 = self.server.hub()
        self.window.gc0 = self.server.gc_stats()
        self.server.lag_samples.clear()
        extra0 = self.server.extra_cpu()
        gc_was = gc.isenabled()
        gc.disable()
        swarm.measuring = True
        srv0, gen0, cores0 = self.server.cpu(), self_cpu_seconds(), core_times()
        t0 = time.monotonic()
        self.t0_ns = time.monotonic_ns()
        try:
            self._loop(t0 + spec.cap)
        finally:
            swarm.measuring = False
            w, cores1 = self.window, core_times()
            w.srv_cpu, w.gen_cpu = self.server.cpu() - srv0, self_cpu_seconds() - gen0
            w.cores, w.irq = core_busy(cores0, cores1), core_irq(cores0, cores1)
            w.wall = time.monotonic() - t0
            w.extra_cpu = {k: v - extra0.get(k, 0.0) for k, v in self.server.extra_cpu().items()}
            if gc_was:
                gc.enable()
        self.window.hub1 = self.server.hub()
        self.window.gc1 = self.server.gc_stats()
        return self.report()

    def _loop(self, cap_at: float) -> None:
        while True:
            now, now_ns = time.monotonic(), time.monotonic_ns()
            if now >= self.deadline:
                raise BenchTimeout(f"{self.spec.mode} phase with {len(self.clients)} subscribers")
            if now >= cap_at and self.published < self.events and not self.stopped_early:
                self.stop_early(f"phase cap of {self.spec.cap:.0f} s reached")
            self.collect()
            self.server.sample(now)
            pub = next((p for p in self.swarm.publishers if p.idle), None)
            if pub is not None and self.published < self.events:
                if self.spec.mode == "max":
                    self.publish_max(pub)
                else:
                    self.publish_rate(pub, now_ns)
            if self.published >= self.events and self.answered >= self.published and self.done():
                return
            self.swarm.pump(self.wait())

    def stop_early(self, why: str) -> None:
        """Publish no more (what is in flight still counts)."""
        self.stopped_early = why
        self.events = self.published

    def collect(self) -> None:
        """Take the publishers' answers."""
        for pub in self.swarm.publishers:
            if not pub.results:
                continue
            for result in pub.results:
                self.answered += result.sent
                self.accepted += result.accepted
                self.failures = self.failures + 1 if result.status == 0 else 0
            self.posts += pub.results
            pub.results.clear()
            if self.failures >= 20 and self.published < self.events:
                self.stop_early(f"publishing failed {self.failures} times in a row")

    def publish_max(self, pub: Publisher) -> None:
        """As fast as possible: a batch, unless the slowest subscriber is a window behind."""
        k = min(self.spec.batch, self.events - self.published)
        # events the slowest subscriber must have; in flight counts as sent
        need = self.published - (self.answered - self.accepted) + k - self.spec.window
        if need <= 0 or self.everyone_has(need):
            stamp = pub.post(self.published, k)
            self.first_post_ns = self.first_post_ns or stamp
            self.published += k

    def publish_rate(self, pub: Publisher, now_ns: int) -> None:
        """Fixed rate: the events due, at most one POST a tick."""
        due = min(self.events, int((now_ns - self.t0_ns) / self.interval_ns) + 1)
        if due > self.published and now_ns >= self.next_post_ns:
            k = min(due - self.published, 1000)
            stamp = pub.post(self.published, k)
            self.lags.append(stamp - (self.t0_ns + int(self.published * self.interval_ns)))
            self.first_post_ns = self.first_post_ns or stamp
            self.next_post_ns = stamp + self.tick_ns
            self.published += k

    def done(self) -> bool:
        """Everything is published and answered: whether every subscriber has it (or, after
        the drain time, that the phase gives up waiting)."""
        if not self.drain_until:
            self.drain_until = time.monotonic() + self.spec.drain
        if self.everyone_has(self.accepted):
            return True
        if time.monotonic() >= self.drain_until:
            self.stopped_early = self.stopped_early or (
                f"drain timeout: not every subscriber had everything "
                f"{self.spec.drain:.0f} s after the last publish"
            )
            return True
        return False

    def wait(self) -> float:
        """How long the loop may wait for readiness before its next step."""
        if self.spec.mode == "rate" and self.published < self.events:
            due_ns = max(self.t0_ns + int(self.published * self.interval_ns), self.next_post_ns)
            return max(0.0, min(0.01, (due_ns - time.monotonic_ns()) / 1e9))
        return 0.01

    # -- the report -------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """The phase's figures (the keys of ``--json``'s ``phases``)."""
        progress = {i: self.swarm.counts[i] - self.swarm.base[i] for i in self.clients}
        received = sum(progress.values())
        return {
            **self._publishing(),
            **self._delivery(progress, received),
            **self._latency(),
            **self._cpu(received),
            **self._hub(),
            "gc": gc_delta(self.window.gc0, self.window.gc1, self.t0_ns),
        }

    def _publishing(self) -> dict[str, Any]:
        spec, posts = self.spec, self.posts
        statuses = Counter(p.status for p in posts)
        errors = Counter(p.error for p in posts if p.error)
        return {
            "mode": spec.mode,
            "clients": len(self.clients),
            "channels": self.swarm.channels,
            "audience": len(self.clients) / self.swarm.kmod,
            "events_planned": spec.events,
            "events_sent": self.published,
            "events_accepted": self.accepted,
            "posts": len(posts),
            "post_status": {str(k): v for k, v in sorted(statuses.items())},
            "post_errors": dict(errors.most_common(5)),
            "rate": spec.rate if spec.mode == "rate" else None,
            "batch": spec.batch if spec.mode == "max" else None,
            "window": spec.window if spec.mode == "max" else None,
            "tick_ms": spec.tick * 1000 if spec.mode == "rate" else None,
        }

    def _losses(self, progress: dict[int, int]) -> tuple[Counter[str], Counter[str]]:
        """Events missing per reason, and the clients each reason affects."""
        losses: Counter[str] = Counter()
        lost_clients: Counter[str] = Counter()
        expected = self.swarm.expected
        for i in self.clients:
            short = expected(i, self.accepted) - progress[i]
            if short < 0:
                losses["more frames than its channel had (another channel's?)"] += short
                lost_clients["more frames than its channel had (another channel's?)"] += 1
            if short <= 0:
                continue
            reason = self.swarm.dead_reason.get(i) if self.swarm.states[i] == DEAD else None
            key = reason or "still connected, had not received everything (lagging)"
            losses[key] += short
            lost_clients[key] += 1
        refused = self.expected_sum(self.published) - self.expected_sum(self.accepted)
        if refused:
            losses["refused by the publish API (not broadcast)"] += refused
            lost_clients["refused by the publish API (not broadcast)"] += 0
        return losses, lost_clients

    def _delivery(self, progress: dict[int, int], received: int) -> dict[str, Any]:
        expected = self.expected_sum(self.published)
        losses, lost_clients = self._losses(progress)
        last_rx, first = self.swarm.last_rx_ns, self.first_post_ns
        span = (last_rx - first) / 1e9 if last_rx and first else 0
        return {
            "expected": expected,
            "received": received,
            "missing": expected - received,
            "delivered_fraction": received / expected if expected else math.nan,
            "losses": dict(losses),
            "lost_clients": {k: v for k, v in lost_clients.items() if v},
            "seconds": span,
            "wall_seconds": self.window.wall,
            "msgs_per_s": received / span if span > 0 else math.nan,
        }

    def _latency(self) -> dict[str, Any]:
        swarm = self.swarm
        samples = sorted(swarm.samples)
        lag_ms = sorted(v / 1e6 for v in self.lags)
        rtt_ms = sorted((p.answered_ns - p.posted_ns) / 1e6 for p in self.posts if p.status)
        return {
            "latency_samples": len(samples),
            "sample_stride": swarm.stride,
            "p50_ms": percentile(samples, 0.50) / 1e6,
            "p90_ms": percentile(samples, 0.90) / 1e6,
            "p99_ms": percentile(samples, 0.99) / 1e6,
            "max_ms": swarm.max_latency / 1e6 if swarm.max_latency else math.nan,
            "publish_lag_p99_ms": percentile(lag_ms, 0.99) if lag_ms else None,
            "post_rtt_p50_ms": percentile(rtt_ms, 0.50),
            "post_rtt_p99_ms": percentile(rtt_ms, 0.99),
            "post_rtt_max_ms": rtt_ms[-1] if rtt_ms else math.nan,
            "publish_lag_max_ms": lag_ms[-1] if lag_ms else None,
        }

    def _cpu(self, received: int) -> dict[str, Any]:
        w = self.window
        cores, irq = w.cores or {}, w.irq or {}
        srv_util = w.srv_cpu / w.wall if w.wall else 0.0
        gen_util = w.gen_cpu / w.wall if w.wall else 0.0
        allowed = os.sched_getaffinity(0)
        gen_core = next(iter(allowed)) if len(allowed) == 1 else None
        server_core = self.server.core
        connects = sum(pub.connects for pub in self.swarm.publishers) - self.connects0
        return {
            "server_cpu_s": w.srv_cpu,
            "server_cpu_util": srv_util,
            "gen_cpu_s": w.gen_cpu,
            "gen_cpu_util": gen_util,
            "cpu_us_per_delivery": w.srv_cpu * 1e6 / received if received else math.nan,
            "cpu_us_per_event": w.srv_cpu * 1e6 / self.accepted if self.accepted else math.nan,
            "extra_cpu_us_per_delivery": {
                k: v * 1e6 / received if received else math.nan
                for k, v in (w.extra_cpu or {}).items()
            },
            "gen_cpu_us_per_delivery": w.gen_cpu * 1e6 / received if received else math.nan,
            "core_busy": {str(k): round(v, 3) for k, v in cores.items()},
            "core_irq": {str(k): round(v, 3) for k, v in irq.items()},
            "server_core": server_core,
            "publisher_connections": connects,
            "saturated": saturation(srv_util, gen_util, cores, irq, server_core, gen_core),
        }

    def _hub(self) -> dict[str, Any]:
        hub0, hub1 = self.window.hub0 or {}, self.window.hub1 or {}

        def delta(key: str) -> int:
            return int(hub1.get(key, 0)) - int(hub0.get(key, 0))

        lags = sorted(self.server.lag_samples)
        return {
            "relay_lag_samples": len(lags),
            "relay_lag_p50": percentile(lags, 0.50) if lags else None,
            "relay_lag_max": lags[-1] if lags else None,
            "clients_by_worker": hub1.get("clients_by_worker"),
            "hub_deliveries": delta("deliveries"),
            "hub_evicted": delta("evicted"),
            "hub_refused": delta("refused_broadcasts"),
            "stopped_early": self.stopped_early,
            "integrity": dict(self.swarm.integrity),
        }


def gc_delta(
    before: dict[int, dict[str, Any]] | None, after: dict[int, dict[str, Any]] | None, t0_ns: int
) -> dict[str, Any] | None:
    """Garbage collections in the server between two probe snapshots (summed over its
    processes): per generation the count, total and longest pause, the histogram, and every
    pause of 1 ms or more (``ms``, and ``at_ms`` after the phase started)."""
    if not before or not after:
        return None
    out: dict[str, Any] = {"count": [0, 0, 0], "total_ms": [0.0] * 3, "max_ms": [0.0] * 3}
    hist: list[list[int]] = []
    long: list[dict[str, Any]] = []
    for pid, b1 in after.items():
        b0 = before.get(pid)
        if b0 is None:
            continue
        out["edges_us"] = b1["edges_us"]
        for gen in range(3):
            out["count"][gen] += b1["count"][gen] - b0["count"][gen]
            out["total_ms"][gen] += (b1["total_ns"][gen] - b0["total_ns"][gen]) / 1e6
            h = [x1 - x0 for x0, x1 in zip(b0["hist"][gen], b1["hist"][gen], strict=True)]
            if len(hist) <= gen:
                hist.append(h)
            else:
                hist[gen] = [a + b for a, b in zip(hist[gen], h, strict=True)]
        since = b0["now_ns"]
        long += [
            {"at_ms": (end - t0_ns) / 1e6, "ms": ns / 1e6, "gen": gen, "pid": pid}
            for end, ns, gen, _collected in b1["long"]
            if end > since
        ]
        out["frozen"] = (out.get("frozen") or 0) + (b1.get("frozen") or 0)
        out["threshold"] = b1["threshold"]
    out["hist"] = hist
    out["long"] = sorted(long, key=lambda x: x["at_ms"])
    out["max_ms"] = [
        max([x["ms"] for x in out["long"] if x["gen"] == gen], default=0.0) for gen in range(3)
    ]
    return out
