"""``scripts/bench --stages``: the cost of each stage of the publish → fan-out path (issue 24 §2).

The sweep measures the server end to end; this mode times each stage of the path from a
received publish to the last ``send`` on its own, in one process, with real loopback TCP. Each
figure is the median of ``--stage-reps`` repetitions of ``--stage-seconds`` of work; every loop
is bounded in count and in time.

1. **http**: server CPU (``/proc``, 10 ms ticks: these repetitions last 20 times longer) per
   ``POST /api/v1/events`` of 1, 2 and 10 events to a real ``python -m sidecar`` (no
   subscribers, no probe) on the first core, posted one at a time from the second. Werkzeug
   answers ``Connection: close``: each POST is a new connection, so this is accept + request
   thread + parse + validate + encode + hand-off + 202 + close.
2. **codec**: :func:`sidecar.catalog.parse_publish_body` (what the API calls) per event, on 1-
   and 10-event bodies; :func:`sidecar.envelope.encode_decoded` (what it does next) alone.
3. **hub**: a :class:`~sidecar.core.hub.Hub` with no clients, per batch: the caller's CPU in
   ``publish_items`` (sequencing, inbox ``put``, wake-up) and the hub thread's (its CPU clock:
   wake-up, tracker, frame, history). The next batch goes once the hub counted this one
   (polled: the hub never has to notify anyone).
4. **offer**: M loopback connections whose far ends a child process drains
   (:mod:`benchkit.drain`, second core: the send buffers never fill, no GIL is shared), a blob
   of two ~200-byte frames: (a) a bare ``sock.send(blob, MSG_DONTWAIT)`` loop (the kernel's
   share and the least Python), (b) :meth:`Client.offer` over clients on
   :class:`~sidecar.core.connection.Connection` objects; (b) - (a) is Python's overhead.
5. **fan-out**: the hub thread's CPU per batch with M registered clients less the same batch
   with none (stage 3), per client: 2 events on the default channel, and 10 events over 10
   channels with the clients spread over them (the several-channel path).

Stages 1, 3, 5 also run 2-event batches paced, one every 10 ms like the sweep's fixed rate
(fewest clients only): caches then cool between batches, as in a server at 200 events/s.
In-process stages run pinned to the first core; CPU is each thread's own clock (user and
system, with a loopback send's softirq work done in its context). The prediction at N clients,
200 ev/s in 2-event POSTs: per POST the http stage of 2 events plus N times the fan-out per
client; per delivery that over 2N, the ``srv µs/deliv`` of ``scripts/bench --clients 100
--modes rate``.

Threads: the main thread, and a hub's thread while one runs. The drain and the server are
child processes, always stopped.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import select
import socket
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sidecar import frames
from sidecar.catalog import MAX_BATCH, parse_publish_body
from sidecar.config import Config
from sidecar.core.client import Client
from sidecar.core.connection import Connection
from sidecar.core.hub import Hub, HubStats
from sidecar.core.resume import ChannelRequest
from sidecar.envelope import encode_decoded, with_seq
from sidecar.protocol import DEFAULT_CHANNEL

from . import HOST, BenchError, BenchTimeout
from .procfs import raise_nofile
from .publisher import Publisher
from .server import SidecarServer

Progress = Callable[[str], None]
#: The http stage's repetitions last this many times ``--stage-seconds`` (CPU in 10 ms ticks).
HTTP_FACTOR = 20
#: Most calls in one repetition of an in-process stage.
MAX_CALLS = 1 << 20
#: Seconds between two paced batches (the sweep's fixed rate: a POST every 10 ms).
PACE = 0.010
#: ``(events per POST, seconds between POSTs)`` of the http stage: 2 every 10 ms is the sweep's
#: fixed rate (200 events/s, a POST every 10 ms); 0: back to back.
HTTP_RUNS = ((1, 0.0), (2, 0.0), (10, 0.0), (2, PACE))
#: Channels of the several-channel fan-out.
FANOUT_CHANNELS = 10
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


@dataclass
class Row:
    """One line of the table: µs per batch (request), per event and per client."""

    stage: str
    per_batch: float | None = None
    per_event: float | None = None
    per_client: float | None = None
    note: str = ""
    #: The repetitions' figures (µs per the row's unit), the median's source.
    samples: list[float] = field(default_factory=list)
    #: Computed from other rows, not measured.
    derived: bool = False

    @classmethod
    def per_batch_of(cls, stage: str, samples: list[float], size: int, note: str) -> Row:
        """A row measured a batch of ``size`` events at a time: the median per batch and per
        event."""
        mid = median(samples)
        return cls(stage, per_batch=mid, per_event=mid / size, note=note, samples=samples)

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "us_per_batch": self.per_batch,
            "us_per_event": self.per_event,
            "us_per_client": self.per_client,
            "note": self.note,
            "samples": [round(s, 3) for s in self.samples],
            "derived": self.derived,
        }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- timing -----------------------------------------------------------------------------------
def calls_for(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds`` of this thread's CPU (at most
    :data:`MAX_CALLS`)."""
    n, took = 1, 0.0
    while n < MAX_CALLS:
        start = time.thread_time()
        for _ in range(n):
            fn()
        took = time.thread_time() - start
        if took >= seconds / 8:
            break
        n *= 4
    return max(1, min(MAX_CALLS, int(n * seconds / max(took, 1e-7))))


def per_call_us(
    fn: Callable[[], object],
    reps: int,
    seconds: float,
    between: Callable[[], None] | None = None,
) -> list[float]:
    """This thread's CPU per call of ``fn`` (µs), one figure per repetition; ``between``
    runs before each repetition, outside the measure."""
    n = calls_for(fn, seconds)
    out = []
    for _ in range(reps):
        if between is not None:
            between()
        start = time.thread_time_ns()
        for _ in range(n):
            fn()
        out.append((time.thread_time_ns() - start) / n / 1000)
    return out


def poll(predicate: Callable[[], bool], deadline: float, what: str) -> None:
    """Wait until ``predicate()`` (checked at first at once, then every 0.1 ms up to 2 ms),
    or raise :class:`BenchTimeout` at ``deadline``."""
    pause = 0.0001
    ticker = threading.Event()  # never set: its wait is the polling interval
    while not predicate():
        if time.monotonic() >= deadline:
            raise BenchTimeout(f"stages: {what} did not happen in time")
        ticker.wait(pause)
        pause = min(pause * 2, 0.002)


# -- 1. http ----------------------------------------------------------------------------------
def http_stage(
    args: argparse.Namespace, cores: tuple[int | None, int | None], deadline: float
) -> list[Row]:
    """Server CPU per POST of 1, 2 and 10 events back to back, and of 2 every 10 ms (a real
    server, no subscribers)."""
    server = SidecarServer(args, 16, token=secrets.token_urlsafe(24), core=cores[0])
    server.start(min(30.0, deadline - time.monotonic()))
    ep = select.epoll()
    by_fd: dict[int, Publisher] = {}
    pub = Publisher(ep, by_fd, server.port, server.token, args.frame_bytes)
    rows = []
    try:
        for size, pace in HTTP_RUNS:
            for _ in range(10):  # warm-up: code paths, the allocator
                post(pub, ep, by_fd, size, deadline)
            # paced: fewer POSTs per second, so longer repetitions (and at most 3 of them)
            seconds = args.stage_seconds * HTTP_FACTOR * (3 if pace else 1)
            reps = min(args.stage_reps, 3) if pace else args.stage_reps
            samples, walls = [], []
            for _ in range(reps):
                cpu, wall, n = server.cpu(), time.monotonic(), 0
                while n < 5 or time.monotonic() - wall < seconds:
                    post(pub, ep, by_fd, size, deadline, pace)
                    n += 1
                samples.append((server.cpu() - cpu) * 1e6 / n)
                walls.append((time.monotonic() - wall) * 1e6 / n)
            label = f"{size} event{'s' * (size > 1)}" + (
                f" every {pace * 1000:.0f} ms" * bool(pace)
            )
            how = f"one each {pace * 1000:.0f} ms" if pace else f"round trip {median(walls):.0f} µs"
            note = f"server CPU (/proc ticks); a new connection each; {how}"
            rows.append(Row.per_batch_of(f"http: POST of {label}", samples, size, note))
    finally:
        pub.close()
        ep.close()
        server.stop(args.stop_grace)
    return rows


def post(
    pub: Publisher,
    ep: select.epoll,
    by_fd: dict[int, Publisher],
    size: int,
    deadline: float,
    pace: float = 0.0,
) -> None:
    """One POST of ``size`` events, answered 202, within ``deadline``; with ``pace``, returns
    ``pace`` seconds after it was sent (or at once if the answer took longer)."""
    due = time.monotonic() + pace
    pub.post(0, size)
    while not pub.idle:
        if time.monotonic() >= deadline:
            raise BenchTimeout("stages: a POST was not answered in time")
        for fd, events in ep.poll(0.5):
            handler = by_fd.get(fd)
            if handler is not None:
                handler.on_event(events)
    result = pub.results.pop()
    if result.status != 202 or result.accepted != size:
        raise BenchError(f"stages: POST answered {result.status}: {result.error}")
    if pace:
        threading.Event().wait(max(0.0, min(due, deadline) - time.monotonic()))  # the pace


# -- 2. codec ---------------------------------------------------------------------------------
def codec_stage(args: argparse.Namespace, bodies: dict[int, bytes]) -> list[Row]:
    """Validation (parse_publish_body) per event, and the envelope encoding alone."""
    limit = Config().max_event_bytes
    rows = []
    for size in (1, 2, 10):
        body = bodies[size]
        parse = partial(parse_publish_body, body, max_event_bytes=limit, max_batch=MAX_BATCH)
        samples = per_call_us(parse, args.stage_reps, args.stage_seconds)
        stage = f"codec: parse + validate, {size}-event body"
        note = f"parse_publish_body, {len(body)} bytes"
        rows.append(Row.per_batch_of(stage, samples, size, note))
    event = parse_publish_body(bodies[1], max_event_bytes=limit)[0]
    samples = per_call_us(lambda: encode_decoded(event), args.stage_reps, args.stage_seconds)
    size = len(encode_decoded(event))
    rows.append(
        Row(
            "codec: encode the envelope",
            per_event=median(samples),
            note=f"encode_decoded, {size} bytes",
            samples=samples,
        )
    )
    return rows


# -- 3 and 5. the hub -------------------------------------------------------------------------
@dataclass
class HubCost:
    """Medians per batch (µs): the publisher's CPU in ``publish_items``, the hub thread's."""

    caller: float
    hub: float
    hub_samples: list[float]
    caller_samples: list[float]


def hub_thread_clock() -> int:
    """The CPU clock of the (one) running hub thread."""
    for thread in threading.enumerate():
        if thread.name == "sidecar-hub" and thread.ident is not None:
            return time.pthread_getcpuclockid(thread.ident)
    raise BenchError("stages: no hub thread")


def counted(stats: HubStats, target: int) -> bool:
    """Whether the hub has fanned out ``target`` events."""
    return stats.broadcasts >= target


def registered(hub: Hub, count: int) -> bool:
    """Whether ``count`` clients are registered."""
    return hub.client_count() == count


@dataclass
class Batch:
    """What one publish hands the hub, and how often (``pace`` s apart; 0: back to back)."""

    label: str
    items: list[tuple[str, bytes]]
    pace: float = 0.0


def hub_batches(hub: Hub, batch: Batch, reps: int, seconds: float, deadline: float) -> HubCost:
    """Publish ``batch`` one at a time, each once the hub has handled the one before (and,
    paced, once ``batch.pace`` has passed since the one before: caches cool down between
    batches as they do at a fixed rate)."""
    clock = hub_thread_clock()
    stats = hub.stats
    items = batch.items
    least = 20 if batch.pace else 10
    ticker = threading.Event()  # never set: its wait is the pace
    callers, hubs = [], []
    for rep in range(reps + 1):  # the first one warms up
        caller_ns, batches = 0, 0
        hub0, wall = time.clock_gettime_ns(clock), time.monotonic()
        while batches < least or (time.monotonic() - wall < seconds and batches < MAX_CALLS):
            due = time.monotonic() + batch.pace
            target = stats.broadcasts + len(items)
            start = time.thread_time_ns()
            hub.publish_items(items)
            caller_ns += time.thread_time_ns() - start
            poll(partial(counted, stats, target), deadline, "a batch")
            batches += 1
            if batch.pace:
                ticker.wait(max(0.0, due - time.monotonic()))
        if rep:
            hubs.append((time.clock_gettime_ns(clock) - hub0) / batches / 1000)
            callers.append(caller_ns / batches / 1000)
    return HubCost(median(callers), median(hubs), hubs, callers)


@contextmanager
def running_hub() -> Iterator[Hub]:
    """A hub with its thread (no keepalive pings), stopped afterwards."""
    hub = Hub(ping_interval=0)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop(timeout=5.0)


def hub_stage(
    args: argparse.Namespace, batches: list[Batch], deadline: float
) -> tuple[list[Row], dict[str, HubCost]]:
    """Each batch through a hub with no clients: the hand-off and the hub thread's share."""
    rows, costs = [], {}
    for batch in batches:
        label = batch.label
        with running_hub() as hub:
            cost = hub_batches(hub, batch, args.stage_reps, args.stage_seconds, deadline)
        costs[label] = cost
        n = len(batch.items)
        rows.append(
            Row(
                f"hub: publish_items, {label}",
                per_batch=cost.caller,
                per_event=cost.caller / n,
                note="the publisher's thread: sequencing, inbox put, wake-up",
                samples=cost.caller_samples,
            )
        )
        rows.append(
            Row(
                f"hub thread, no clients, {label}",
                per_batch=cost.hub,
                per_event=cost.hub / n,
                note="wake-up, tracker, frame, history (its thread's CPU clock)",
                samples=cost.hub_samples,
            )
        )
    return rows, costs


# -- 4. offers over drained loopback connections ----------------------------------------------
@contextmanager
def drained(count: int, core: int | None, seconds: float) -> Iterator[list[socket.socket]]:
    """``count`` connected loopback TCP sockets whose far ends a child process drains
    (:mod:`benchkit.drain`, pinned to ``core``); closed, and the child stopped, afterwards."""
    listener = socket.create_server((HOST, 0), backlog=min(count + 16, 4096))
    listener.settimeout(10.0)
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])

    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})

    port = str(listener.getsockname()[1])
    cmd = [sys.executable, "-m", "benchkit.drain", port, str(count), f"{seconds:.0f}"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, preexec_fn=pin
    )
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock, _addr = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        if not ready or proc.stdout.readline().strip() != b"ready":
            raise BenchError("stages: the drain process did not get ready")
        yield socks
    except TimeoutError:
        raise BenchError(f"stages: {len(socks)} of {count} drain connections opened") from None
    finally:
        for sock in socks:
            sock.close()
        listener.close()
        with suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


def unsent(sock: socket.socket) -> int:
    """Bytes in the socket's send queue (``SIOCOUTQ``)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


def settled(socks: Sequence[socket.socket], deadline: float) -> Callable[[], None]:
    """A ``between`` for :func:`per_call_us`: wait until every send queue is empty."""

    def wait() -> None:
        limit = min(deadline, time.monotonic() + 10.0)
        poll(lambda: not any(unsent(s) for s in socks), limit, "draining the send queues")

    return wait


def new_clients(socks: Sequence[socket.socket], config: Config) -> list[Client]:
    """A :class:`Client` on a :class:`Connection` per socket (no reader thread: nothing is
    read here), as the server builds them."""
    return [
        Client(
            Connection(
                sock,
                write_deadline=config.write_deadline,
                max_message_size=config.max_message_size,
            ),
            config,
            remote="stages",
        )
        for sock in socks
    ]


def writer_threads() -> int:
    """Client writer threads running: each one is a client that left the fast path."""
    return sum(t.name.startswith("sidecar-writer-") for t in threading.enumerate())


def send_loop(
    socks: Sequence[socket.socket], blob: bytes, blocked: list[int]
) -> Callable[[], None]:
    """One ``send(blob, MSG_DONTWAIT)`` per socket; a full buffer counts in ``blocked[0]``."""
    sends = [s.send for s in socks]

    def loop() -> None:
        try:
            for send in sends:
                send(blob, _DONTWAIT)
        except BlockingIOError:
            blocked[0] += 1

    return loop


def offer_loop(clients: Sequence[Client], blob: bytes) -> Callable[[], None]:
    """:meth:`Client.offer` of ``blob`` to each client, as the hub's fan-out calls it."""

    def loop() -> None:
        [c for c in clients if not c.offer(blob)]

    return loop


def offer_stage(
    args: argparse.Namespace, socks: list[socket.socket], blob: bytes, deadline: float
) -> list[Row]:
    """A bare ``send`` loop and :meth:`Client.offer` over M drained connections."""
    rows = []
    config = Config()
    for m in args.stage_clients:
        some = socks[:m]
        blocked = [0]
        bare = send_loop(some, blob, blocked)
        between = settled(some, deadline)
        bare_us = [s / m for s in per_call_us(bare, args.stage_reps, args.stage_seconds, between)]
        clients = new_clients(some, config)
        offer = offer_loop(clients, blob)
        before = writer_threads()
        client_us = [
            s / m for s in per_call_us(offer, args.stage_reps, args.stage_seconds, between)
        ]
        slow = writer_threads() - before + sum(c.backlog() > 0 for c in clients)
        trouble = f"; {blocked[0]} loops hit a full buffer" if blocked[0] else ""
        if slow:
            trouble += f"; {slow} clients left the fast path"
        rows.append(
            Row(
                f"offer: bare sock.send, M={m}",
                per_client=median(bare_us),
                note=f"{len(blob)}-byte blob, MSG_DONTWAIT: the kernel's loopback send{trouble}",
                samples=bare_us,
            )
        )
        rows.append(
            Row(
                f"offer: Client.offer, M={m}",
                per_client=median(client_us),
                note=f"Python overhead {median(client_us) - median(bare_us):.2f} µs per client",
                samples=client_us,
            )
        )
    return rows


def fanout_stage(
    args: argparse.Namespace,
    socks: list[socket.socket],
    batches: list[Batch],
    bare: dict[str, HubCost],
    deadline: float,
) -> tuple[list[Row], dict[tuple[str, int], float]]:
    """The hub thread per batch with M subscribers, less the same without, per client (a
    paced batch with the fewest clients only: the fixed rate's case)."""
    rows, per_client = [], {}
    config = Config()
    for batch in batches:
        label = batch.label
        channels = sorted({name for name, _data in batch.items})
        for m in args.stage_clients:
            if batch.pace and m != min(args.stage_clients):
                continue
            with running_hub() as hub:
                clients = new_clients(socks[:m], config)
                for i, client in enumerate(clients):
                    request = ChannelRequest(channels[i % len(channels)])
                    if not hub.register(client, requests=[request]):
                        raise BenchError("stages: the hub refused a client")
                poll(partial(registered, hub, m), deadline, "registering the clients")
                settled(socks[:m], deadline)()
                cost = hub_batches(hub, batch, args.stage_reps, args.stage_seconds, deadline)
                evicted = hub.stats.evicted
            extra = [(h - bare[label].hub) / m for h in cost.hub_samples]
            per_client[(label, m)] = median(extra)
            trouble = f"; {evicted} clients evicted" if evicted else ""
            rows.append(
                Row(
                    f"fan-out: hub thread, {label}, M={m}",
                    per_batch=cost.hub,
                    per_client=median(extra),
                    note=f"per client: (batch - batch without clients) / M{trouble}",
                    samples=extra,
                )
            )
    return rows, per_client


# -- the run ----------------------------------------------------------------------------------
def workload(frame_bytes: int) -> tuple[dict[int, bytes], list[Batch], bytes]:
    """The publish bodies (1 and 10 events, as the sweep posts them), the hub's batches and
    the blob of two frames a client is offered."""
    with select.epoll() as ep:
        pub = Publisher(ep, {}, 0, "-", frame_bytes)
        stamp = time.monotonic_ns()
        bodies = {n: pub.body(0, n, stamp) for n in (1, 2, 10)}
    data = encode_decoded(parse_publish_body(bodies[1], max_event_bytes=1 << 20)[0])
    two = [(DEFAULT_CHANNEL, data)] * 2
    batches = [
        Batch("1 event", [(DEFAULT_CHANNEL, data)]),
        Batch("2 events", two),
        Batch(f"2 events every {PACE * 1000:.0f} ms", two, pace=PACE),
        Batch(
            f"{FANOUT_CHANNELS} events, {FANOUT_CHANNELS} channels",
            [(f"bench:{j}", data) for j in range(FANOUT_CHANNELS)],
        ),
    ]
    blob = b"".join(frames.text_frame(with_seq(data, seq)) for seq in (100_000, 100_001))
    return bodies, batches, blob


def the_rest(rows: list[Row]) -> Row | None:
    """What a 2-event POST costs beyond validation, encoding and the hub (back to back): the
    HTTP server's share (accept, the request thread, Werkzeug, Flask, the 202, the close)."""
    known = {r.stage: r for r in rows}
    parts = [
        "codec: parse + validate, 2-event body",
        "hub: publish_items, 2 events",
        "hub thread, no clients, 2 events",
    ]
    http = known.get("http: POST of 2 events")
    encode = known.get("codec: encode the envelope")
    if http is None or encode is None or any(p not in known for p in parts):
        return None
    assert http.per_batch is not None and encode.per_event is not None
    rest = http.per_batch - 2 * encode.per_event
    rest -= sum(known[p].per_batch or 0.0 for p in parts)
    return Row(
        "http: the rest of a POST of 2 events",
        per_batch=rest,
        per_event=rest / 2,
        note="derived: the POST less parse, 2 encodes, the hub (accept, thread, Werkzeug, Flask)",
        derived=True,
    )


def predict(rows: list[Row], fanout: dict[tuple[str, int], float]) -> list[dict[str, Any]]:
    """CPU per delivery at N clients, 200 ev/s in POSTs of 2 events, from the stages: the
    http stage of 2 events plus N times the fan-out per client (from the stages run back to
    back, and from those paced)."""
    https = {r.stage: r.per_batch for r in rows}
    out = []
    for (label, n), per_client in sorted(fanout.items(), key=lambda kv: kv[0][1]):
        http = https.get(f"http: POST of {label}")
        if not label.startswith("2 events") or http is None:
            continue
        per_post = http + n * per_client
        out.append(
            {
                "clients": n,
                "fan_out": label,
                "events_per_post": 2,
                "us_per_post": per_post,
                "us_per_delivery": per_post / (2 * n),
                "http_share": http / per_post,
            }
        )
    return out


def run(
    args: argparse.Namespace,
    cores: tuple[int | None, int | None],
    deadline: float,
    progress: Progress,
) -> dict[str, Any]:
    """Every stage in turn; the rows, the prediction and the status."""
    raise_nofile(max(args.stage_clients) + 256)
    bodies, batches, blob = workload(args.frame_bytes)
    rows: list[Row] = []
    fanout: dict[tuple[str, int], float] = {}
    out: dict[str, Any] = {"stages": rows, "predicted": [], "status": "complete"}
    try:
        progress("stages: http (a real server, this process on the other core)")
        rows += http_stage(args, cores, deadline)
        if cores[0] is not None:
            os.sched_setaffinity(0, {cores[0]})  # the hub threads started from here inherit it
        progress("stages: codec")
        rows += codec_stage(args, bodies)
        progress("stages: hub hand-off, no clients")
        hub_rows, bare = hub_stage(args, batches, deadline)
        rows += hub_rows
        rest = the_rest(rows)
        rows += [rest] if rest is not None else []
        seconds = max(5.0, deadline - time.monotonic())
        with drained(max(args.stage_clients), cores[1], seconds) as socks:
            progress(f"stages: offers to {max(args.stage_clients)} drained connections")
            rows += offer_stage(args, socks, blob, deadline)
            progress("stages: fan-out from the hub thread")
            fan = [b for b in batches if b.label != "1 event"]
            fan_rows, fanout = fanout_stage(args, socks, fan, bare, deadline)
            rows += fan_rows
    except BenchError as exc:  # a server that could not start in the time left: a timeout too
        late = isinstance(exc, BenchTimeout) or time.monotonic() >= deadline
        out["status"] = f"{'timed out' if late else 'error'} ({exc})"
    except KeyboardInterrupt:
        out["status"] = "interrupted"
    out["predicted"] = predict(rows, fanout)
    return out


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    """The table of the stages and the prediction, as text."""
    rows: list[Row] = report["stages"]
    head = ("stage", "µs/batch", "µs/event", "µs/client", "note")
    table = [head] + [
        (r.stage, fmt(r.per_batch), fmt(r.per_event), fmt(r.per_client), r.note) for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    lines = [
        f"Per-stage cost of publish → fan-out (CPU, median of {report['config']['reps']} "
        f"repetitions; {report['machine']['pinning']})",
        "",
    ]
    for line in table:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:4], widths[1:], strict=True)
        ]
        lines.append("  ".join([*cells, line[4]]).rstrip())
    lines.append("")
    for p in report["predicted"]:
        lines.append(
            f"predicted at N={p['clients']}, 200 ev/s in POSTs of 2 events, from stages "
            f"{'paced' if 'every' in p['fan_out'] else 'back to back'}: "
            f"{p['us_per_post']:.0f} µs per POST, {p['us_per_delivery']:.2f} µs CPU per "
            f"delivery ({p['http_share']:.0%} of it the HTTP request)"
        )
    lines.append(f"status: {report['status']}; {report['elapsed_s']:.1f} s")
    return "\n".join(lines)


def as_json(report: dict[str, Any]) -> dict[str, Any]:
    """The report with its rows as dicts."""
    return {**report, "stages": [r.as_json() for r in report["stages"]]}
