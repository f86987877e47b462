"""Prometheus metrics (``GET /metrics``), read from the counters the hub already keeps.

Nothing here runs on the hub thread or in a hot path: every value is read from the existing
snapshots (:meth:`Hub.snapshot <sidecar.core.hub.Hub.snapshot>`,
:meth:`Sessions.snapshot <sidecar.web.state.Sessions.snapshot>` and the broker's
:meth:`relay_stats <sidecar.broker.redis.RedisBroker.relay_stats>`), which are consistent
copies taken under their own locks. ``prometheus_client`` (the ``metrics`` extra) is imported
only when ``/metrics`` is asked for, or by a worker when ``PROMETHEUS_MULTIPROC_DIR`` is set.

Two modes
    * **one process** (``sidecar serve``, gunicorn ``-w 1``, no ``PROMETHEUS_MULTIPROC_DIR``):
      a scrape reads the snapshots through a custom collector (:class:`SnapshotCollector`);
      nothing runs between scrapes.
    * **several processes** (gunicorn ``-w N`` with ``PROMETHEUS_MULTIPROC_DIR`` set to an
      empty directory the workers may write, before gunicorn starts): prometheus_client's
      multiprocess mode. Each worker's sampler thread (``sidecar-metrics``) copies its
      snapshots every :data:`SAMPLE_INTERVAL` seconds into metrics backed by files in that
      directory; a scrape samples its own worker first, then sums every worker's files
      (``MultiProcessCollector``). Counters of ended workers stay in the sums (they never go
      down); gauges of ended workers leave them (``child_exit`` in
      :mod:`sidecar.gunicorn_conf`). Other workers' values are at most one interval old.

Threads and state: the sampler thread owns its :class:`_Sampler` (the metric objects and the
last values written, guarded by ``_lock`` because a scrape on a request thread samples too).
``_samplers`` (one per state and process) is guarded by ``_samplers_lock``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..broker.entries import Malformed

if TYPE_CHECKING:
    from .state import SidecarState

log = logging.getLogger("sidecar.metrics")

#: Seconds between two samples of a worker in multiprocess mode.
SAMPLE_INTERVAL = 1.0
#: The environment variable of prometheus_client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

Labels = tuple[str, ...]
Reading = list[tuple[Labels, float]]


@dataclass(frozen=True, slots=True)
class Metric:
    """One exported metric: its name, kind, help, label names and how to read it."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: Labels
    read: Callable[[dict[str, Any]], Reading]
    #: How multiprocess mode combines workers' gauges (prometheus_client's modes).
    mode: str = "livesum"


def _one(*path: str) -> Callable[[dict[str, Any]], Reading]:
    def read(sample: dict[str, Any]) -> Reading:
        value: Any = sample
        for key in path:
            value = value.get(key, 0) if isinstance(value, dict) else 0
        return [((), float(value or 0))]

    return read


def _table(part: str, key: str) -> Callable[[dict[str, Any]], Reading]:
    def read(sample: dict[str, Any]) -> Reading:
        return [((str(label),), float(n)) for label, n in sorted(sample[part][key].items())]

    return read


def _drops(sample: dict[str, Any]) -> Reading:
    hub = sample["hub"]
    return [
        (("4008",), hub["evicted"]),
        (("1011",), hub["keepalive_drops"]),
        (("4001",), hub["reset_drops"]),
    ]


def _resumes(sample: dict[str, Any]) -> Reading:
    hub = sample["hub"]
    return [(("recovered",), hub["replays"]), (("not_recovered",), hub["unrecovered_resumes"])]


def _malformed(sample: dict[str, Any]) -> Reading:
    """Every kind once the relay runs (0 until seen: a bounded set of series), none before."""
    if not sample["relay"]:
        return []
    counts = sample["relay"].get("malformed", {})
    return [((kind.value,), float(counts.get(kind.value, 0))) for kind in Malformed]


def _relay_lag(sample: dict[str, Any]) -> Reading:
    relay, hub = sample["relay"], sample["hub"]
    if not relay or relay["epoch"] != hub["epoch"]:
        return [((), 0.0)]
    # positions, both: every channel's events count (the default channel's seq would not)
    return [((), float(max(0, relay["last_published_seq"] - hub["pos"])))]


def _counter(
    name: str, help: str, read: Callable[[dict[str, Any]], Reading], *labels: str
) -> Metric:
    return Metric(name, "counter", help, labels, read)


def _gauge(name: str, help: str, read: Callable[[dict[str, Any]], Reading], mode: str) -> Metric:
    return Metric(name, "gauge", help, (), read, mode)


_HUB_EVENTS = "Events fanned out by each process (every worker fans out every event)"
METRICS: tuple[Metric, ...] = (
    _gauge("sidecar_clients", "Connected WebSocket clients", _one("hub", "clients"), "livesum"),
    _gauge("sidecar_seq", "Last seq fanned out", _one("hub", "seq"), "livemax"),
    _gauge(
        "sidecar_inbox_pending", "Events waiting for the hub", _one("hub", "pending"), "livesum"
    ),
    _counter("sidecar_broadcasts_total", _HUB_EVENTS, _one("hub", "broadcasts")),
    _counter("sidecar_deliveries_total", "Events delivered to clients", _one("hub", "deliveries")),
    _counter("sidecar_evictions_total", "Slow consumers dropped (4008)", _one("hub", "evicted")),
    _counter("sidecar_drops_total", "Clients dropped by the hub, by close code", _drops, "code"),
    _counter("sidecar_resumes_total", "Resumes with since, by result", _resumes, "result"),
    _counter("sidecar_replayed_events_total", "Events replayed", _one("hub", "replayed_events")),
    _counter(
        "sidecar_refused_broadcasts_total", "Publishes refused", _one("hub", "refused_broadcasts")
    ),
    _counter(
        "sidecar_refused_handshakes_total",
        "WebSocket handshakes refused, by reason",
        _table("sessions", "rejectedHandshakes"),
        "reason",
    ),
    _counter(
        "sidecar_sessions_ended_total",
        "WebSocket sessions ended, by who ended them and how",
        _table("sessions", "ended"),
        "reason",
    ),
    _counter("sidecar_broker_reconnects_total", "Relay recoveries", _one("relay", "reconnects")),
    _counter("sidecar_broker_outages_total", "Relay outages begun", _one("relay", "outages")),
    _counter("sidecar_broker_resets_total", "Relay resets (4001)", _one("relay", "resets")),
    _counter(
        "sidecar_broker_malformed_total",
        "Stream entries the relay skipped as malformed, by kind",
        _malformed,
        "kind",
    ),
    _gauge(
        "sidecar_broker_connected", "Relay reaches Redis", _one("relay", "connected"), "livemin"
    ),
    _gauge("sidecar_relay_lag", "Seq published minus seq fanned out", _relay_lag, "liveall"),
)


def sample(state: SidecarState) -> dict[str, Any]:
    """Every value the metrics are read from, in one dict (``hub``, ``sessions``, ``relay``)."""
    broker = state.broker
    relay: dict[str, Any] = {}
    if broker is not None:
        stats = broker.relay_stats()
        relay = {name: getattr(stats, name) for name in stats.__dataclass_fields__}
    return {"hub": state.hub.snapshot(), "sessions": state.sessions.snapshot(), "relay": relay}


def multiprocess() -> bool:
    """Whether prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def clear_multiprocess_dir() -> int:
    """Remove the ``*.db`` files a previous run left in the multiprocess directory (the
    master, at start); how many. Creates the directory if it does not exist."""
    directory = Path(os.environ[MULTIPROC_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


class SnapshotCollector:
    """A prometheus_client collector that reads ``state``'s snapshots at scrape time."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        """One metric family per :data:`METRICS` entry."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = sample(self.state)
        for metric in METRICS:
            name = metric.name.removesuffix("_total")
            family_class = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = family_class(name, metric.help, labels=list(metric.labels))
            for labels, value in metric.read(values):
                family.add_metric(list(labels), value)
            yield family


class _Sampler:
    """Copies one process's snapshots into multiprocess-mode metrics (files)."""

    def __init__(self, state: SidecarState) -> None:
        from prometheus_client import Counter, Gauge

        self.state = state
        self._lock = threading.Lock()
        self._last: dict[tuple[str, Labels], float] = {}
        self._metrics: dict[str, Any] = {}
        for metric in METRICS:
            labels = list(metric.labels)
            if metric.kind == "counter":
                name = metric.name.removesuffix("_total")
                made: Any = Counter(name, metric.help, labels, registry=None)
            else:
                made = Gauge(
                    metric.name,
                    metric.help,
                    labels,
                    registry=None,
                    multiprocess_mode=metric.mode,  # type: ignore[arg-type]
                )
            self._metrics[metric.name] = made
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidecar-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            try:
                self.write()
            except Exception:  # never let monitoring end the worker
                log.exception("metrics sample failed")

    def write(self) -> None:
        """Write the current values: gauges set, counters raised by what they grew."""
        values = sample(self.state)
        with self._lock:
            for metric in METRICS:
                target = self._metrics[metric.name]
                for labels, value in metric.read(values):
                    child = target.labels(*labels) if labels else target
                    if metric.kind == "gauge":
                        child.set(value)
                        continue
                    key = (metric.name, labels)
                    grown = value - self._last.get(key, 0.0)
                    self._last[key] = value
                    if grown > 0:
                        child.inc(grown)


_samplers: dict[tuple[int, int], _Sampler] = {}
_samplers_lock = threading.Lock()


def start_sampler(state: SidecarState) -> bool:
    """Start this process's sampler for ``state`` (once); whether one runs.

    ``False``, with one warning, when prometheus_client is not installed.
    """
    key = (id(state), os.getpid())
    with _samplers_lock:
        if key in _samplers:
            return True
        try:
            sampler = _Sampler(state)
        except ImportError:
            log.warning("%s is set but prometheus_client is not installed", MULTIPROC_ENV)
            return False
        _samplers[key] = sampler
        sampler.start()
    return True


def render(state: SidecarState) -> tuple[bytes, str]:
    """The Prometheus text exposition for ``state`` (all workers in multiprocess mode) and
    its content type. Raises ``ImportError`` without prometheus_client."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        if start_sampler(state):
            _samplers[(id(state), os.getpid())].write()  # this worker's values: current
        MultiProcessCollector(registry)
    else:
        registry.register(SnapshotCollector(state))
    return generate_latest(registry), CONTENT_TYPE_LATEST
