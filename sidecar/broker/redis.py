"""RedisBroker: one global order in a Redis stream (publish, gap reads, and the relay thread).

Redis owns the epoch and ``seq``: every publish runs one Lua script (``publish.lua``, EVALSHA
with a NOSCRIPT fallback) that creates the epoch if absent, takes the next seqs from a
counter, splices ``,"seq":N}`` into each envelope and ``XADD``\\ s it with the stream ID
``<seq>-0``, then trims the stream (``MAXLEN ~ history_size``). Keys, under ``prefix``:

* ``{prefix}:meta``: a hash with ``epoch``, ``seq`` (the last seq assigned) and ``size``
  (the history size last configured by a broker, which outside publishers trim to). One
  hash, so that Redis loses the epoch and the counter together, never one without the other.
* ``{prefix}:stream``: the events, field ``d`` = the envelope JSON with its ``seq``.

Threads and state
    * **any thread** calls :meth:`RedisBroker.publish`, :meth:`~RedisBroker.head` and
      :meth:`~RedisBroker.read_range`. They share ``_client``, whose redis-py connection pool
      is thread-safe (each call takes a connection of its own). redis-py's ``Script`` object
      may rewrite its sha after NOSCRIPT (a benign race: every thread writes the same value).
    * **the relay thread** (``sidecar-broker-relay``, at most one per broker, see
      :mod:`sidecar.broker.relay`) has a client and connection of its own.
    * ``_lock`` guards ``_relay`` (starting and stopping it from any thread).

redis-py's automatic retries are turned off: a retried script whose first reply was lost
would publish twice. A stale pooled connection (after a Redis restart) is still replaced
before use by redis-py's pool, so the first publish after a restart succeeds.

Create brokers (and start relays) after a fork, never before: threads do not survive it.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the Redis broker needs the redis client library: pip install 'sidecar-hub[redis]'"
    ) from exc

from ..core.stream import Numbered, Position, on_default
from ..protocol import PublishRefused
from . import BrokerUnavailable, Sink
from .relay import Relay, RelayStats, parse_entries

__all__ = ["MAX_BATCH", "RedisBroker", "RelayStats", "redact"]

#: Most events one publish may carry (the HTTP API's batch limit): one script call each.
MAX_BATCH = 10_000
#: The history size outside publishers trim to when no broker has recorded one.
DEFAULT_HISTORY_SIZE = 1024

_SCRIPT = resources.files(__package__).joinpath("publish.lua").read_text(encoding="utf-8")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class RedisBroker:
    """Publish to, read from and relay one Redis stream shared by every hub process.

    ``url`` is a redis-py URL: ``redis://[:password@]host:port/db``, ``rediss://…`` (TLS)
    or ``unix:///path/to/socket?db=N``. ``prefix`` names this deployment's keys, so that
    several share one Redis. ``history_size`` is how many events the stream keeps at least
    (``MAXLEN ~``: Redis trims whole nodes, so it may keep somewhat more); ``None`` uses the
    size a broker recorded in Redis (what :class:`~sidecar.broker.publisher.Publisher` does).
    ``connect_timeout`` and ``timeout`` bound each connection attempt and each call; the
    relay's knobs are described in :meth:`start_relay`.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sidecar",
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        block: float = 0.5,
        read_count: int = 256,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        if history_size is not None and history_size < 1:
            raise ValueError(f"history_size must be at least 1, not {history_size}")
        if block <= 0 or read_count < 1 or not 0 < backoff[0] <= backoff[1]:
            raise ValueError("block, read_count and backoff (low <= high) must be positive")
        self.url = url
        self.safe_url = redact(url)
        self.prefix = prefix
        self.history_size = history_size
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.block = block
        self.read_count = read_count
        self.backoff = backoff
        self.meta_key = f"{prefix}:meta"
        self.stream_key = f"{prefix}:stream"
        self._client = self.connect(timeout, "sidecar")
        self._script = self._client.register_script(_SCRIPT)
        self._lock = threading.Lock()
        self._relay: Relay | None = None  # guarded by _lock

    def connect(self, socket_timeout: float, name: str) -> redis.Redis:
        """A new client for ``url`` (no automatic retries); the relay makes its own with it."""
        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
        )

    def describe(self, exc: BaseException) -> str:
        """A one-line message for a failed Redis call (never with the password)."""
        detail = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        if isinstance(exc, redis.AuthenticationError):
            return f"redis broker {self.safe_url} rejected the credentials: {detail}"
        if isinstance(exc, redis.TimeoutError):  # the detail is redis-py's (and varies)
            return f"redis broker {self.safe_url} unreachable (no answer in time): {detail}"
        if isinstance(exc, redis.ConnectionError):
            return f"redis broker {self.safe_url} unreachable: {detail}"
        return f"redis broker {self.safe_url} refused the request: {detail}"

    # -- publishing and reading (any thread) -------------------------------------------
    def publish(self, encoded: Sequence[bytes]) -> list[int]:
        """Publish encoded envelopes (compact JSON objects without ``seq``) as one batch.

        Returns their seqs (contiguous, in order). All are published or none. Raises
        :class:`BrokerUnavailable` when Redis cannot be reached or refuses the write, and
        ``ValueError`` for a batch over :data:`MAX_BATCH` or data that is not a JSON object.
        """
        if not encoded:
            return []
        if len(encoded) > MAX_BATCH:
            raise ValueError(f"batch of {len(encoded)} events; at most {MAX_BATCH}")
        for data in encoded:
            if data[:1] != b"{" or data[-1:] != b"}":
                raise ValueError("each event must be an encoded JSON object (without seq)")
        _epoch, last = self.run_script(encoded)
        return list(range(last - len(encoded) + 1, last + 1))

    def publish_items(
        self, items: Sequence[tuple[str, bytes]], idempotency_key: str | None = None
    ) -> list[int]:
        """:meth:`publish` as the hub's :class:`~sidecar.core.stream.Sequencer`."""
        if any(channel for channel, _data in items):
            raise PublishRefused("named channels need a newer broker")
        return self.publish([data for _channel, data in items])

    def heads(self, channels: Sequence[str]) -> list[Position]:
        """Each channel's position (:class:`~sidecar.core.resume.BrokerPort`)."""
        if any(channels):
            raise PublishRefused("named channels need a newer broker")
        return [Position(*self.head()) for _channel in channels]

    def read_channel(
        self, channel: str, epoch: str, after_seq: int, limit: int, max_bytes: int
    ) -> list[Numbered] | None:
        """:meth:`read_range` as :class:`~sidecar.core.resume.BrokerPort` reads it."""
        if channel:
            raise PublishRefused("named channels need a newer broker")
        items = self.read_range(epoch, after_seq, limit)
        return None if items is None else on_default(epoch, items)

    def head(self) -> tuple[str, int]:
        """``(epoch, seq)``: the current epoch (created if Redis has none) and last seq.

        Raises :class:`BrokerUnavailable`.
        """
        return self.run_script(())

    def run_script(
        self, encoded: Sequence[bytes], client: redis.Redis | None = None
    ) -> tuple[str, int]:
        """Run ``publish.lua`` (with ``client``, default the shared one): ``(epoch, last seq)``."""
        size = "" if self.history_size is None else str(self.history_size)
        args: list[bytes | str | int] = [secrets.token_hex(8), size, DEFAULT_HISTORY_SIZE]
        args.extend(encoded)
        try:
            epoch, last = self._script(
                keys=[self.meta_key, self.stream_key], args=args, client=client
            )
        except redis.RedisError as exc:
            raise BrokerUnavailable(self.describe(exc)) from exc
        return epoch.decode(), int(last)

    def read_range(self, epoch: str, after_seq: int, limit: int) -> list[tuple[int, bytes]] | None:
        """The events after ``after_seq`` of ``epoch``, at most ``limit``, as ``(seq, data)``.

        ``data`` is the envelope with its ``seq``, byte for byte what the relay delivered.
        Returns ``[]`` when ``after_seq`` is the last seq, and ``None`` (resume impossible:
        answer ``recovered: false``) when ``epoch`` is not the current one, ``after_seq`` is
        ahead of the last seq, or the stream no longer reaches back to ``after_seq + 1``.
        Raises :class:`BrokerUnavailable`, and ``ValueError`` for a negative argument.
        """
        if after_seq < 0 or limit < 0:
            raise ValueError("after_seq and limit must not be negative")
        pipe = self._client.pipeline(transaction=True)
        pipe.hmget(self.meta_key, ["epoch", "seq"])
        pipe.xrange(self.stream_key, min=f"{after_seq + 1}-0", count=max(limit, 1))
        try:
            (current, last), entries = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable(self.describe(exc)) from exc
        if current is None or current.decode() != epoch or after_seq > int(last):
            return None
        if after_seq == int(last):
            return []
        items = parse_entries(entries)
        if any(seq != after_seq + 1 + i for i, (seq, _data) in enumerate(items)) or not items:
            return None  # trimmed past after_seq + 1 (or a hole someone made with XDEL)
        return items[:limit]

    # -- the relay ---------------------------------------------------------------------
    def start_relay(self, sink: Sink, start: tuple[str, int] | None = None) -> tuple[str, int]:
        """Start the relay thread, which feeds ``sink`` every event after ``start``.

        ``start`` is ``(epoch, seq)``; by default the current :meth:`head` (read here, so
        this raises :class:`BrokerUnavailable` when Redis cannot be reached). Returns the
        start point; the first event delivered is its ``seq + 1`` (or a
        :meth:`Sink.reset` comes first if ``start`` is not in the current epoch any more).
        The relay reads with ``XREAD BLOCK`` (``block`` seconds, which bounds :meth:`stop`)
        up to ``read_count`` events at a time and reconnects with exponential backoff
        between ``backoff[0]`` and ``backoff[1]`` seconds. Raises ``RuntimeError`` if a
        relay is already running.
        """
        with self._lock:
            if self._relay is not None and self._relay.alive():
                raise RuntimeError("the relay is already running")
            epoch, seq = self.head() if start is None else start
            self._relay = Relay(self, sink, epoch, seq)
            self._relay.start()
        return epoch, seq

    def relay_stats(self) -> RelayStats:
        """A snapshot of the (last) relay's counters; all zero before :meth:`start_relay`."""
        relay = self._relay
        return RelayStats() if relay is None else relay.stats

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the relay (if any) and wait up to ``timeout``; whether it ended in time."""
        with self._lock:
            relay = self._relay
        return True if relay is None else relay.stop(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the relay and close every connection; whether the relay ended in time."""
        ended = self.stop(timeout)
        self._client.close()
        self._client.connection_pool.disconnect()
        return ended

    def __enter__(self) -> RedisBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
