"""What the web layer's views share: configuration, the hub, session counts, policies.

One :class:`SidecarState` per Flask app (``app.extensions["sidecar"]``), built by
:class:`sidecar.web.extension.EventHub`. Its configuration and policies are immutable once
built; the mutable parts each have one guard:

* :class:`Sessions` — its ``_lock`` guards the number of live WebSocket sessions (the
  connection cap) and the counters of refusals and ended sessions; other threads read them
  through :meth:`Sessions.snapshot`.
* :class:`ReplayBudget` — its ``_lock`` guards the token buckets (bytes of replay per peer
  address per second).
* ``SidecarState._start_lock`` guards starting what must run in the serving process (the
  hub thread, a broker's relay) and fitting the state to a gunicorn worker
  (:mod:`sidecar.web.gunicorn_worker`): once per process, on first use, never before a fork.
* the hub: see :mod:`sidecar.core.hub` (its inbox is its only synchronisation).
* ``SidecarState.stopping`` (``None``, ``"draining"`` or ``"stopping"``) is written by
  whoever stops the process (the main thread's signal handler, gunicorn's SIGTERM handler)
  and read by request threads: one reference assignment, no lock (a signal handler must not
  take one).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..config import Config, ConfigError
from ..core.hub import Hub, PublishRefused
from ..logs import LogLimiter
from ..protocol import CloseCode
from .access import Access
from .guards import OriginPolicy, allowed_hosts
from .gunicorn_worker import adopt, current_worker, split_problem

log = logging.getLogger("sidecar")

#: Longest :meth:`SidecarState.ensure_started` waits for the hub to take the broker's epoch.
START_TIMEOUT = 5.0
#: Sessions that ended, named by who ended them: ``client-close-1000``, ``slow-consumer`` …
EndReason = str
#: Close codes a client's close frame is counted under by number: the ones RFC 6455 and IANA
#: define for frames, and the sidecar's own. Any other code (3000-4999 are the peer's to
#: choose) counts as ``client-close-other``, so that clients cannot mint label values: 2,000
#: codes made 2,000 series of ``sidecar_sessions_ended_total`` in 3.8 s.
KNOWN_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
    | {int(code) for code in CloseCode}
)
_CLIENT_CLOSE = "client-close-"


def end_bucket(reason: EndReason) -> EndReason:
    """``reason`` as counted: a client-chosen close code outside :data:`KNOWN_CLOSE_CODES`
    becomes ``client-close-other``; everything else names a bounded set already."""
    if reason.startswith(_CLIENT_CLOSE):
        code = reason[len(_CLIENT_CLOSE) :]
        if not code.isdecimal() or int(code) not in KNOWN_CLOSE_CODES:
            return _CLIENT_CLOSE + "other"
    return reason


class Sessions:
    """Live WebSocket sessions, capped, and what happened to the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._handshakes: dict[str, int] = {}
        self._requests: dict[str, int] = {}
        self._ended: dict[str, int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def active(self) -> int:
        """Live sessions now."""
        return self._active

    def cap(self, limit: int) -> None:
        """Lower the limit to ``limit`` (a gunicorn worker's thread budget)."""
        with self._lock:
            self.limit = min(self.limit, limit)

    def try_enter(self) -> bool:
        """Take a slot if one is free."""
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        """Give a slot back."""
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def count_end(self, reason: EndReason) -> None:
        """Count a finished session under ``reason`` (bucketed: :func:`end_bucket`)."""
        reason = end_bucket(reason)
        with self._lock:
            self._ended[reason] = self._ended.get(reason, 0) + 1

    def count_rejection(self, reason: str, *, handshake: bool) -> None:
        """Count a refused WebSocket handshake, or another refused request, under ``reason``."""
        with self._lock:
            table = self._handshakes if handshake else self._requests
            table[reason] = table.get(reason, 0) + 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no session is live; ``False`` if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the counts, as ``/api/v1/hub`` shows them."""
        with self._lock:
            return {
                "active": self._active,
                "limit": self.limit,
                "rejectedHandshakes": dict(self._handshakes),
                "rejectedRequests": dict(self._requests),
                "ended": dict(self._ended),
            }


class ReplayBudget:
    """Bytes of replay a peer address may ask for: ``rate`` per second, bursts of ``2 * rate``.

    A resume costs what its replay will send; one whose cost the bucket cannot cover is
    refused with 503 before the upgrade. ``rate`` 0 turns the budget off. At most
    ``max_peers`` addresses are tracked (least recently used out).
    """

    def __init__(
        self, rate: int, max_peers: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = 2 * rate
        self.max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, peer: str, cost: int) -> float:
        """Charge ``cost`` bytes to ``peer``; 0 if granted, else the seconds to wait first."""
        if self.rate <= 0 or cost <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            level, then = self._buckets.pop(peer, (float(self.burst), now))
            level = min(float(self.burst), level + (now - then) * self.rate)
            if level >= min(cost, self.burst):
                level -= cost
                wait = 0.0
            else:
                wait = (min(cost, self.burst) - level) / self.rate
            self._buckets[peer] = (level, now)
            if len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        return wait


class NotServing(PublishRefused):
    """This process must not serve the hub (a gunicorn worker among several, no broker)."""


class SidecarState:
    """Everything the views of one app share (``app.extensions["sidecar"]``)."""

    def __init__(self, config: Config, hub: Hub, *, broker: Any = None) -> None:
        if config.auth and not config.token:
            raise ConfigError("SIDECAR_TOKEN", "is not set")
        try:
            self.origins = OriginPolicy(config.allowed_origins)
        except ValueError as exc:
            raise ConfigError("--allowed-origins:", str(exc)) from None
        if self.origins.allows_null and not config.auth:
            raise ConfigError(
                "--allowed-origins null", "needs the token: sandboxed iframes of any site send it"
            )
        self.config = config
        self.hub = hub
        #: The :class:`~sidecar.web.extension.EventHub` that built this state.
        self.extension: Any = None
        self.broker = broker
        self.token = config.token if config.auth else None
        self.hosts = allowed_hosts(config.host)
        self.sessions = Sessions(config.max_clients)
        self.replays = ReplayBudget(config.replay_rate)
        #: Rate limit for log lines a client can cause (malformed messages, refusals).
        self.log_limit = LogLimiter()
        #: The app's identity hooks and the access rules.
        self.access = Access(self.token, self.log_limit)
        #: Paths of the app's WebSocket endpoints (the upgrade-header middleware's list).
        self.ws_paths: set[str] = set()
        self.started = time.monotonic()
        #: Why a stop is under way: ``"draining"`` (open sessions still served, new ones
        #: refused) or ``"stopping"``; ``None`` while serving. See :meth:`not_ready`.
        self.stopping: str | None = None
        self._started_pid: int | None = None
        #: Why this process refuses to serve the hub, once found (see :class:`NotServing`).
        self._refusal: str | None = None
        #: Set by ``sidecar.gunicorn_conf``: it closes the clients on SIGTERM itself.
        self.gunicorn_hooked = False
        self._fitted_pid: int | None = None
        self._start_lock = threading.Lock()
        if sys.platform != "win32":  # Windows has no fork
            # A weak reference: a handler can never be unregistered, and a bound method would
            # keep every state (its config, hub and history) alive for the process's life.
            os.register_at_fork(after_in_child=_forked(weakref.ref(self)))

    def ensure_started(self) -> None:
        """Start the hub thread, and the broker's relay, in this process if not yet done.

        With a broker, the hub first takes the broker's epoch and ``seq`` so that clients of
        this process join the one numbered stream. Raises the broker's error when it cannot
        be reached (the caller answers 503, or reports it at start), and :class:`NotServing`
        in a gunicorn worker that must not serve the hub (several workers, no broker).
        """
        pid = os.getpid()
        if self._started_pid != pid:
            with self._start_lock:
                if self._started_pid != pid:
                    self._start(pid)
        if self._refusal is not None:
            raise NotServing(self._refusal)

    def _start(self, pid: int) -> None:
        """:meth:`ensure_started`'s work, once per process (start lock held)."""
        if self._fitted_pid != pid:
            self._fitted_pid = pid
            if (problem := self._fit_server()) is not None:
                self._refusal = f"--broker {problem}"
                self.hub.stop(timeout=0)  # broadcasts from the app's own code are refused too
                log.error("sidecar: %s", self._refusal)
                self._started_pid = pid
                return
        if self.broker is not None:
            epoch, pos, seq = self.broker.stream_head()
            self.hub.reset(epoch, seq, "start", pos=pos)
            # the relay starts where the hub does: a second head could be later
            self.broker.start_relay(self.hub, (epoch, pos))
            # the hub thread takes the reset in turn; until then hub.epoch is its own
            self.hub.wait_for_seq(epoch, seq, START_TIMEOUT)
        self.hub.is_running()  # starts the hub thread here (autostart)
        self._started_pid = pid

    def _fit_server(self) -> str | None:
        """In a gunicorn worker: fit the thread budget and stop gracefully (see
        :mod:`sidecar.web.gunicorn_worker`); why the hub must not be served here, if so."""
        worker = current_worker()
        if worker is None:
            return None
        problem = split_problem(self.config, worker)
        if problem is None:
            adopt(self, worker, hooked=self.gunicorn_hooked)
        return problem

    def not_ready(self) -> str | None:
        """Why ``/health/ready`` answers 503 now, or ``None`` when this process is ready.

        ``starting`` (the hub, or with a broker its relay, has not started in this process),
        ``draining`` or ``stopping`` (a stop is under way), ``broker-disconnected`` (the
        relay cannot read the stream), ``broker-lagging`` (the relay is more than
        ``--ready-max-lag`` events behind what Redis holds) or ``not-serving`` (a gunicorn
        worker among several without a broker: see :class:`NotServing`).
        """
        if self._refusal is not None:
            return "not-serving"
        if self.stopping is not None:
            return self.stopping
        if self._started_pid != os.getpid():
            return "starting"
        if not self.hub.is_running():
            return "stopping"
        if self.broker is not None:
            stats = self.broker.relay_stats()
            if not stats.connected:
                return "broker-disconnected"
            bound = self.config.ready_max_lag
            if bound and stats.last_published_seq - stats.last_delivered_seq > bound:
                return "broker-lagging"
        return None

    def allow_own_origin(self, port: int) -> None:
        """Allow pages served by the sidecar itself (``http://127.0.0.1:PORT`` and friends)."""
        for host in ("127.0.0.1", "localhost", "[::1]"):
            self.origins.add(f"http://{host}:{port}")


def _forked(ref: weakref.ReferenceType[SidecarState]) -> Callable[[], None]:
    """An at-fork handler: in the child, a fresh start lock (another thread may have held it)."""

    def after_in_child() -> None:
        state = ref()
        if state is not None:
            state._start_lock = threading.Lock()

    return after_in_child
