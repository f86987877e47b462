"""Fan-out benchmark of the sidecar (issues 5, 18, 24): one command, numbers next to the targets.

``scripts/bench`` runs :func:`benchkit.cli.main` with the repository's ``.venv``. For every
client count N of the sweep it:

1. starts the sidecar as a subprocess (``python -m sidecar --port 0``, a fresh token, pinned
   to core 0 when the machine has two or more) and reads its ready line;
2. connects N raw WebSocket subscribers, at most ``--handshakes`` (50) in flight, and times
   it until the last one has received its ``connection:status`` frame; then reads the
   server's RSS and thread count with N idle connections;
3. **as fast as possible**: publishes M events of ~200 bytes through ``POST /api/v1/events``
   in batches, never letting the slowest subscriber fall more than ``--window`` events
   behind (so it measures the delivery rate, not queue overflow);
4. **fixed rate**: publishes R events/s (default 200) for ``--duration`` seconds;
5. stops the sidecar (SIGTERM, then SIGKILL) whatever happens.

The load generator is this single process, pinned to core 1: one epoll loop drives every
subscriber and the publisher. Subscribers are raw sockets (the handshake is done here):
each readable socket is read in one ``recv_into`` of up to 256 KiB, frame headers are walked
without decoding payloads (:func:`sidecar.frames.walk_frames`), every frame is counted, and
latency is sampled: the ``"t"`` field (the publisher's ``time.monotonic_ns()``, the same
clock as the receipt time) of every k-th frame for the percentiles, and of the first frame of
every read (the oldest, so the exact maximum). A few "checked" subscribers also verify that
``seq`` is contiguous.

Each phase reports the CPU used by the server (``/proc/PID/stat``) and by this process over
the measured window, and which side saturated its core: a figure limited by the load
generator is only a lower bound for the server.

``--broker`` (gunicorn -w 2 and Redis) and ``--gunicorn`` (one worker) run each N under
gunicorn too (:mod:`benchkit.broker`); ``--channels N:K`` adds runs over named channels, and
the probe reports garbage-collection pauses (:mod:`benchkit.sweep`). Everything targets
127.0.0.1; every loop is bounded in count and in time (``--timeout``).

Modules: procfs, server (the server under test), broker (the broker and gunicorn modes'
server), probe (in the server), publisher (POSTs), swarm (the subscribers, the epoll loop),
phase, stats, report, plot, sweep (one client count), stages and drain (``--stages``), cli.
Threads: the main thread only (the launcher adds two reader threads per server, for its
pipes); nothing is shared.
"""

from __future__ import annotations

#: Every socket of the bench connects here.
HOST = "127.0.0.1"
#: The event type the publisher sends.
EVENT_TYPE = "bench:tick"


class BenchError(Exception):
    """A run that cannot go on (the server did not start, a handshake was refused, ...)."""


class BenchTimeout(BenchError):
    """The overall ``--timeout`` (or the watchdog) expired."""
