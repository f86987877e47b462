"""RedisBroker: one global order in a Redis stream (publish, gap reads, and the relay thread).

Redis owns the epoch and ``seq``: every publish runs one Lua script (``publish.lua``, EVALSHA
with a NOSCRIPT fallback) that creates the epoch if absent, takes the next seqs from a
counter, splices ``,"seq":N}`` into each envelope and ``XADD``\\ s it with the stream ID
``<seq>-0``, then trims the stream (``MAXLEN ~ history_size``). The script checks everything
before it writes anything (a script is not rolled back), so a refused publish uses up no seq;
keys it cannot continue (a foreign entry above the last seq, a key of another type) start a
new epoch. Keys, under ``prefix``:

* ``{prefix}:meta``: a hash with ``epoch``, ``seq`` (the last seq assigned) and ``size``
  (the history size last configured by a broker, which outside publishers trim to). One
  hash, so that Redis loses the epoch and the counter together, never one without the other.
* ``{prefix}:stream``: the events, field ``d`` = the envelope JSON with its ``seq``.
* ``{prefix}:idem:{key}``: one string per idempotency key published within the window
  (``"<epoch> <last seq> <count>"``, expiring after ``idempotency_window`` seconds): a publish
  with the same key returns those seqs and publishes nothing.

A publish is answered in one of three ways: the seqs (stored), :class:`BrokerUnavailable`
(nothing reached Redis, or Redis refused it: nothing was published), or
:class:`BrokerOutcomeUnknown` (the script was sent and no answer came: it may have run). The
script is therefore sent by hand on one pooled connection, so that a failure before the
request left (connecting, sending) is told apart from one after it (reading the answer).

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

import hashlib
import inspect
import logging
import secrets
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any
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
from ..protocol import (
    IDEMPOTENCY_WINDOW,
    IdempotencyKeyReused,
    PublishedSeqs,
    PublishRefused,
    check_idempotency_key,
)
from . import BrokerOutcomeUnknown, BrokerUnavailable, Sink
from .entries import Entry, parse_entry, parse_head
from .relay import Relay, RelayStats

__all__ = ["MAX_BATCH", "RedisBroker", "RelayStats", "redact"]

log = logging.getLogger("sidecar.broker")

#: Most events one publish may carry (the HTTP API's batch limit): one script call each.
MAX_BATCH = 10_000
#: The history size outside publishers trim to when no broker has recorded one.
DEFAULT_HISTORY_SIZE = 1024

_SCRIPT = resources.files(__package__).joinpath("publish.lua").read_text(encoding="utf-8")
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
#: ``maxmemory-policy`` values that never evict the broker's keys (they have no TTL).
SAFE_POLICIES = frozenset({"noeviction", "volatile-lru", "volatile-lfu", "volatile-random"})
# redis-py before 5.3 requires the command name (ignored since) when taking a connection
_POOL_WANTS_NAME = (
    inspect.signature(redis.ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
)


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
    relay's knobs are described in :meth:`start_relay`. ``max_event_bytes`` is the largest
    envelope (with its ``seq``) the relay hands on: larger entries are skipped as malformed.
    ``idempotency_window`` is how many seconds Redis remembers an idempotency key.
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
        max_event_bytes: int = 1 << 20,
        idempotency_window: int = IDEMPOTENCY_WINDOW,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        if history_size is not None and history_size < 1:
            raise ValueError(f"history_size must be at least 1, not {history_size}")
        if block <= 0 or read_count < 1 or not 0 < backoff[0] <= backoff[1]:
            raise ValueError("block, read_count and backoff (low <= high) must be positive")
        if max_event_bytes < 1 or idempotency_window < 1:
            raise ValueError("max_event_bytes and idempotency_window must be positive")
        self.url = url
        self.safe_url = redact(url)
        self.prefix = prefix
        self.history_size = history_size
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.block = block
        self.read_count = read_count
        self.backoff = backoff
        self.max_event_bytes = max_event_bytes
        self.idempotency_window = idempotency_window
        self.meta_key = f"{prefix}:meta"
        self.stream_key = f"{prefix}:stream"
        self._client = self.connect(timeout, "sidecar")
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

    def describe(self, exc: BaseException, *, sent: bool = False) -> str:
        """A one-line message for a failed Redis call (never with the password); ``sent``:
        the call was a publish that went out, and its answer is what failed."""
        detail = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        if sent:
            return (
                f"redis broker {self.safe_url} did not answer a publish it was sent ({detail}):"
                " the events may or may not have been published"
            )
        if isinstance(exc, redis.AuthenticationError):
            return f"redis broker {self.safe_url} rejected the credentials: {detail}"
        if isinstance(exc, redis.TimeoutError):  # the detail is redis-py's (and varies)
            return f"redis broker {self.safe_url} unreachable (no answer in time): {detail}"
        if isinstance(exc, redis.ConnectionError):
            return f"redis broker {self.safe_url} unreachable: {detail}"
        return f"redis broker {self.safe_url} refused the request: {detail}"

    # -- publishing and reading (any thread) -------------------------------------------
    def publish(
        self, encoded: Sequence[bytes], idempotency_key: str | None = None
    ) -> PublishedSeqs:
        """Publish encoded envelopes (compact JSON objects without ``seq``) as one batch.

        Returns their seqs (contiguous, in order). All are published or none. With an
        ``idempotency_key``, a publish that used the same key within ``idempotency_window``
        seconds is not repeated: its seqs are returned (``duplicate`` set), and
        :class:`~sidecar.protocol.IdempotencyKeyReused` is raised if it had another number of
        events. Raises :class:`BrokerUnavailable` when Redis cannot be reached or refuses the
        write (nothing was published), :class:`BrokerOutcomeUnknown` when the request was
        sent and no answer came (it may have been published: retry with the same key), and
        ``ValueError`` for a batch over :data:`MAX_BATCH`, data that is not a JSON object,
        or a malformed key.
        """
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        if not encoded:
            return PublishedSeqs()
        if len(encoded) > MAX_BATCH:
            raise ValueError(f"batch of {len(encoded)} events; at most {MAX_BATCH}")
        for data in encoded:
            if data[:1] != b"{" or data[-1:] != b"}":
                raise ValueError("each event must be an encoded JSON object (without seq)")
        _epoch, last, count, duplicate = self._run(encoded, key, self._client)
        if duplicate and count != len(encoded):
            raise IdempotencyKeyReused(
                f"idempotency key {key} was used for a batch of {count} events, not {len(encoded)}"
            )
        return PublishedSeqs.of(last - count + 1, count, duplicate=duplicate)

    def publish_items(
        self, items: Sequence[tuple[str, bytes]], idempotency_key: str | None = None
    ) -> PublishedSeqs:
        """:meth:`publish` as the hub's :class:`~sidecar.core.stream.Sequencer`."""
        if any(channel for channel, _data in items):
            raise PublishRefused("named channels need a newer broker")
        return self.publish([data for _channel, data in items], idempotency_key)

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
        """Run ``publish.lua`` (with ``client``, default the shared one): ``(epoch, last seq)``.

        Raises :class:`BrokerUnavailable`, or :class:`BrokerOutcomeUnknown` when ``encoded``
        holds events and the answer did not come.
        """
        epoch, last, _count, _duplicate = self._run(encoded, None, client or self._client)
        return epoch, last

    def _run(
        self, encoded: Sequence[bytes], key: str | None, client: redis.Redis
    ) -> tuple[str, int, int, bool]:
        keys = [self.meta_key, self.stream_key]
        size = "" if self.history_size is None else str(self.history_size)
        args: list[bytes | str | int] = [secrets.token_hex(8), size, DEFAULT_HISTORY_SIZE]
        if key is None:
            args.append("")
        else:
            keys.append(f"{self.prefix}:idem:{key}")
            args.append(self.idempotency_window)
        args.extend(encoded)
        reply = self._evalsha(client, keys, args, may_publish=bool(encoded))
        epoch, last, count, duplicate = reply
        return epoch.decode(), int(last), int(count), bool(duplicate)

    def _evalsha(
        self, client: redis.Redis, keys: list[str], args: list[Any], *, may_publish: bool
    ) -> Any:
        """``EVALSHA publish.lua`` on one of ``client``'s pooled connections (loading the
        script after NOSCRIPT). A failure before the request left raises
        :class:`BrokerUnavailable`; after it, :class:`BrokerOutcomeUnknown` if the script
        ``may_publish``. An error answer from Redis means the script did not publish (it
        writes nothing before its checks pass): :class:`BrokerUnavailable`.
        """
        pool = client.connection_pool
        try:
            conn = pool.get_connection("EVALSHA") if _POOL_WANTS_NAME else pool.get_connection()
        except redis.RedisError as exc:
            raise BrokerUnavailable(self.describe(exc)) from exc
        try:
            for _attempt in range(2):
                self._send(conn, "EVALSHA", _SHA, len(keys), *keys, *args)
                try:
                    return conn.read_response()
                except redis.exceptions.NoScriptError:
                    self._send(conn, "SCRIPT", "LOAD", _SCRIPT)
                    self._loaded(conn)
                except redis.ResponseError as exc:  # Redis answered: nothing was published
                    raise BrokerUnavailable(self.describe(exc)) from exc
                except redis.RedisError as exc:
                    conn.disconnect()
                    if may_publish:
                        raise BrokerOutcomeUnknown(self.describe(exc, sent=True)) from exc
                    raise BrokerUnavailable(self.describe(exc)) from exc
            raise BrokerUnavailable(f"redis broker {self.safe_url} lost the script twice")
        finally:
            pool.release(conn)

    def _send(self, conn: Any, *command: Any) -> None:
        try:
            conn.send_command(*command)
        except redis.RedisError as exc:  # a command sent in part is never run
            conn.disconnect()
            raise BrokerUnavailable(self.describe(exc)) from exc

    def _loaded(self, conn: Any) -> None:
        """Read the answer to ``SCRIPT LOAD`` (which publishes nothing)."""
        try:
            conn.read_response()
        except redis.RedisError as exc:
            if not isinstance(exc, redis.ResponseError):
                conn.disconnect()
            raise BrokerUnavailable(self.describe(exc)) from exc

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
        head = parse_head(current, last)
        if head is None or head[0] != epoch or after_seq > head[1]:
            return None
        if after_seq == head[1]:
            return []
        parsed = (
            parse_entry(entry_id, fields, self.max_event_bytes) for entry_id, fields in entries
        )
        items = [(e.seq, e.data) for e in parsed if isinstance(e, Entry) and e.seq <= head[1]]
        if any(seq != after_seq + 1 + i for i, (seq, _data) in enumerate(items)) or not items:
            return None  # trimmed past after_seq + 1, a hole (XDEL), or a malformed entry
        return items[:limit]

    # -- the server's memory policy --------------------------------------------------------
    def memory_policy(self) -> tuple[str, int] | None:
        """``(maxmemory-policy, maxmemory)`` of the server, from ``CONFIG GET`` or else
        ``INFO memory`` (managed services often refuse CONFIG); ``None`` if neither answers."""
        try:
            config: Any = self._client.config_get("maxmemory*")
            return str(config["maxmemory-policy"]), int(config["maxmemory"])
        except (redis.RedisError, KeyError, TypeError, ValueError):
            pass
        try:
            info: Any = self._client.info("memory")
            return str(info["maxmemory_policy"]), int(info["maxmemory"])
        except (redis.RedisError, KeyError, TypeError, ValueError):
            return None

    def check_memory_policy(self) -> str | None:
        """Warn (one line, returned too) if the server may evict the broker's keys.

        Redis evicts only with a ``maxmemory`` set, and then only what its policy allows:
        ``noeviction`` and the ``volatile-*`` policies never touch the meta hash and the stream
        (they have no TTL); the ``allkeys-*`` ones do. An evicted meta hash starts a new epoch
        and an evicted stream loses the history: every client is closed with 4001 and
        resumes ``recovered: false``. That is never a silent loss, so the hub starts anyway
        (a managed Redis may not let the policy be changed): the warning says what to fix.
        """
        found = self.memory_policy()
        if found is None:
            log.debug("redis broker %s: maxmemory-policy unknown", self.safe_url)
            return None
        policy, limit = found
        if limit == 0 or policy in SAFE_POLICIES:
            return None
        message = (
            f"redis broker {self.safe_url} has maxmemory-policy {policy} with maxmemory"
            f" {limit} bytes: Redis may evict {self.meta_key} or {self.stream_key}, and each"
            " eviction closes every client with 4001 and loses the resume history; set"
            " maxmemory-policy noeviction (or volatile-lru) or give the broker a Redis of its"
            " own (README: Redis sizing)"
        )
        log.warning("%s", message)
        return message

    # -- the relay ---------------------------------------------------------------------
    def start_relay(self, sink: Sink, start: tuple[str, int] | None = None) -> tuple[str, int]:
        """Start the relay thread, which feeds ``sink`` every event after ``start``.

        ``start`` is ``(epoch, seq)``; by default the current :meth:`head` (read here, so
        this raises :class:`BrokerUnavailable` when Redis cannot be reached). Returns the
        start point; the first event delivered is its ``seq + 1`` (or a
        :meth:`Sink.reset` comes first if ``start`` is not in the current epoch any more).
        A ``maxmemory-policy`` that may evict the broker's keys is warned about
        (:meth:`check_memory_policy`).
        The relay reads with ``XREAD BLOCK`` (``block`` seconds, which bounds :meth:`stop`)
        up to ``read_count`` events at a time and reconnects with exponential backoff
        between ``backoff[0]`` and ``backoff[1]`` seconds. Raises ``RuntimeError`` if a
        relay is already running.
        """
        with self._lock:
            if self._relay is not None and self._relay.alive():
                raise RuntimeError("the relay is already running")
            epoch, seq = self.head() if start is None else start
            self.check_memory_policy()
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
