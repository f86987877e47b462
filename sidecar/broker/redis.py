r"""RedisBroker: channels numbered in one global order in Redis (publish, resume reads, relay).

Redis owns every epoch, ``seq`` and the order: each publish runs one Lua script
(``publish.lua``, EVALSHA with a NOSCRIPT fallback) that gives each event its channel's next
``seq`` (creating the channel's epoch when it has none) and the next global position, splices
``,"seq":N}`` (and ``,"channel":"…"``) into each envelope, ``XADD``\ s it to the one stream as
``<pos>-0``, pushes it onto its channel's history and trims. It checks before it writes (a
script is not rolled back), so a refused publish uses up no seq; keys it cannot continue (a
foreign entry above the last position, a key of another type) start a new epoch. Keys, under
``prefix`` and a version (``{prefix}:v2:…``: never shared with workers without channels):

* ``meta``: a hash: ``epoch`` (the stream's and the default channel's), ``pos`` (the last
  position), ``seq`` (the default channel's last), and the ``size`` and ``ttl`` a hub's broker
  configured (outside publishers keep them). One hash: lost together, never one without another.
* ``stream``: every event, ID ``<pos>-0``, fields ``d`` (the envelope), ``s`` (its channel's
  seq) and on a named channel ``c``, ``e`` (the channel, its epoch); revocations (``k=revoke``,
  ``u``, ``c``) in order among them. Every relay reads it all (one ``XREAD`` over one key).
* ``hist:`` and ``hist:{channel}``: each channel's last ``size`` events, newest first, as
  ``"<pos> <envelope>"`` (resumes on any worker read them in pages: ``read.lua``);
  ``ch:{channel}``: a named channel's ``epoch`` and ``seq``. A named channel's history expires
  ``channel_ttl`` seconds after its last event, its position after :data:`POSITION_TTL`.
* ``idem:{key}``: the script's answer to a publish with that idempotency key, for
  ``idempotency_window`` seconds: a publish with the same key gets it and publishes nothing.

A publish is answered in one of three ways: the seqs (stored), :class:`BrokerUnavailable`
(nothing reached Redis, or Redis refused it: nothing was published), or
:class:`BrokerOutcomeUnknown` (the script was sent and no answer came: it may have run). The
script is sent by hand on one pooled connection, to tell a failure before the request left
(connecting, sending) from one after it (reading the answer). redis-py's retries are off: a
retried script whose reply was lost would publish twice (a stale pooled connection is still
replaced before use, so the first publish after a Redis restart succeeds).

Threads and state
    * **any thread** calls the publishing and reading methods. They share ``_client``, whose
      redis-py connection pool is thread-safe (each call takes a connection of its own).
    * **the relay thread** (``sidecar-broker-relay``, at most one per broker, see
      :mod:`sidecar.broker.relay`) has a client and connection of its own.
    * ``_lock`` guards ``_relay`` (starting and stopping it from any thread). Create brokers
      (and start relays) after a fork, never before: threads do not survive it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

from ..core.stream import Numbered, Position
from ..protocol import (
    IDEMPOTENCY_WINDOW,
    IdempotencyKeyReused,
    PublishedSeqs,
    check_channel,
    check_idempotency_key,
    check_user,
)
from . import BrokerOutcomeUnknown, BrokerUnavailable, Sink
from .entries import Entry, Head, parse_history
from .relay import Relay, RelayStats

#: hiredis's command packer (C), when hiredis is installed (the redis extra); else redis-py's.
_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _c_pack_command
except ImportError:
    _pack_command = None
else:
    _pack_command = _c_pack_command

__all__ = ["MAX_BATCH", "RedisBroker", "RelayStats", "redact"]

log = logging.getLogger("sidecar.broker")

#: Most events one publish may carry (the HTTP API's batch limit): one script call each.
MAX_BATCH = 10_000
#: The history size outside publishers trim to when no broker has recorded one.
DEFAULT_HISTORY_SIZE = 1024
#: Seconds a named channel's history is kept when no broker has recorded a ``channel_ttl``
#: (the option's default; ``publish.lua`` falls back to the same number).
DEFAULT_CHANNEL_TTL = 3600.0

#: The version of the key layout (channels: a global position, per-channel keys).
KEY_VERSION = "v2"
#: Seconds a named channel's position (epoch, seq) outlives its last event in Redis.
POSITION_TTL = 30 * 24 * 3600


class _Script:
    """A Lua script of this package: its text and SHA1 (for EVALSHA)."""

    def __init__(self, name: str) -> None:
        self.text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


_PUBLISH = _Script("publish.lua")
_READ = _Script("read.lua")
_POSITIONS = _Script("positions.lua")
#: ``maxmemory-policy`` values that never evict the broker's keys (they have no TTL).
SAFE_POLICIES = frozenset({"noeviction"})
#: Policies that evict only keys with a TTL: named channels' positions and histories.
VOLATILE_POLICIES = frozenset({"volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"})
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


@dataclass(frozen=True, slots=True)
class _Answer:
    """What ``publish.lua`` answered."""

    epoch: str
    pos: int
    duplicate: bool
    default: Position
    positions: dict[str, Position]
    seqs: list[int]

    @classmethod
    def parse(cls, reply: Any, named: list[str]) -> _Answer:
        """``reply`` to a run with the ``named`` channels. A duplicate is the first publish's
        answer, whose channels may be others: only its seqs (the last ``count`` values)."""
        epoch, pos, count, duplicate, default_seq, *rest = reply
        stream_epoch = epoch.decode()
        split = len(rest) - int(count)
        seqs = [int(seq) for seq in rest[split:]]
        positions = (
            {}
            if duplicate
            else {
                name: Position(rest[2 * i].decode(), int(rest[2 * i + 1]))
                for i, name in enumerate(named)
            }
        )
        default = Position(stream_epoch, int(default_seq))
        return cls(stream_epoch, int(pos), bool(duplicate), default, positions, seqs)


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
    ``idempotency_window`` is how many seconds Redis remembers an idempotency key;
    ``channel_ttl`` how long a named channel's history outlives its last event (recorded in
    Redis like the history size; ``None`` uses the recorded one, as outside publishers do).
    """

    #: The relay's script reading the positions of the named channels it has just read.
    positions_script = _POSITIONS

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
        channel_ttl: float | None = DEFAULT_CHANNEL_TTL,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        if history_size is not None and history_size < 1:
            raise ValueError(f"history_size must be at least 1, not {history_size}")
        if block <= 0 or read_count < 1 or not 0 < backoff[0] <= backoff[1]:
            raise ValueError("block, read_count and backoff (low <= high) must be positive")
        if max_event_bytes < 1 or idempotency_window < 1:
            raise ValueError("max_event_bytes and idempotency_window must be positive")
        if channel_ttl is not None and not channel_ttl > 0:
            raise ValueError(f"channel_ttl must be positive, not {channel_ttl}")
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
        self.channel_ttl = channel_ttl
        self.keys = f"{prefix}:{KEY_VERSION}:"
        self.meta_key = f"{self.keys}meta"
        self.stream_key = f"{self.keys}stream"
        #: A named channel's position key is this and its name.
        self.position_prefix = f"{self.keys}ch:"
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
    def history_key(self, channel: str) -> str:
        """The key of ``channel``'s history list (``""``: the default channel's)."""
        return f"{self.keys}hist:{channel}"

    def position_key(self, channel: str) -> str:
        """The key of ``channel``'s position (the stream's meta for the default channel)."""
        return f"{self.position_prefix}{channel}" if channel else self.meta_key

    def publish(
        self, encoded: Sequence[bytes], idempotency_key: str | None = None
    ) -> PublishedSeqs:
        """Publish encoded envelopes on the default channel (see :meth:`publish_items`)."""
        return self.publish_items([("", data) for data in encoded], idempotency_key)

    def publish_items(
        self, items: Sequence[tuple[str, bytes]], idempotency_key: str | None = None
    ) -> PublishedSeqs:
        """Publish encoded envelopes (compact JSON objects without ``seq``), each on its
        channel (``""``: the default), as one batch; each one's seq in its channel.

        All are published or none. With an ``idempotency_key``, a publish that used the same
        key within ``idempotency_window`` seconds is not repeated: its seqs are returned
        (``duplicate`` set), and :class:`~sidecar.protocol.IdempotencyKeyReused` is raised if
        it had another number of events. Raises :class:`BrokerUnavailable` when Redis cannot
        be reached or refuses the write (nothing was published), :class:`BrokerOutcomeUnknown`
        when the request was sent and no answer came (it may have been published: retry with
        the same key), and ``ValueError`` for a batch over :data:`MAX_BATCH`, data that is not
        a JSON object, a bad channel name or a malformed key.
        """
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        if not items:
            return PublishedSeqs()
        if len(items) > MAX_BATCH:
            raise ValueError(f"batch of {len(items)} events; at most {MAX_BATCH}")
        for channel, data in items:
            if channel:
                check_channel(channel)
            if data[:1] != b"{" or data[-1:] != b"}":
                raise ValueError("each event must be an encoded JSON object (without seq)")
        answer = self._run([("e", channel, data) for channel, data in items], key, [])
        seqs = answer.seqs
        if answer.duplicate and len(seqs) != len(items):
            raise IdempotencyKeyReused(
                f"idempotency key {key} was used for a batch of {len(seqs)} events, "
                f"not {len(items)}"
            )
        published = PublishedSeqs(seqs)
        published.duplicate = answer.duplicate
        return published

    def revoke(self, user: str, channel: str) -> None:
        """Put a revocation of ``user`` from ``channel`` in the stream: every worker's hub
        applies it in order. Raises like :meth:`publish_items`."""
        self._run([("r", check_channel(channel), check_user(user).encode())], None, [])

    def heads(self, channels: Sequence[str]) -> list[Position]:
        """Each channel's position (a named channel without one is given one, at seq 0);
        one round trip. Raises :class:`BrokerUnavailable`."""
        named = list(dict.fromkeys(c for c in channels if c))
        answer = self._run([], None, named)
        return [answer.positions[c] if c else answer.default for c in channels]

    def head(self) -> tuple[str, int]:
        """``(epoch, seq)`` of the default channel (the epoch is the stream's), created if
        Redis has none. Raises :class:`BrokerUnavailable`."""
        return tuple(self.heads([""])[0])  # type: ignore[return-value]

    def stream_head(self, client: redis.Redis | None = None) -> Head:
        """The stream's head: ``(epoch, last position, the default channel's last seq)``,
        created if Redis has none. Raises :class:`BrokerUnavailable`."""
        answer = self._run([], None, [], client)
        return Head(answer.epoch, answer.pos, answer.default.seq)

    def _run(
        self,
        items: Sequence[tuple[str, str, bytes]],
        key: str | None,
        extra: Sequence[str],
        client: redis.Redis | None = None,
    ) -> _Answer:
        """Run ``publish.lua`` for ``items`` (``(kind, channel, data)``) and the positions of
        the ``extra`` named channels."""
        named = list(dict.fromkeys([*(c for _k, c, _d in items if c), *extra]))
        index = {name: i + 1 for i, name in enumerate(named)}
        keys = [self.meta_key, self.stream_key, self.history_key("")]
        keys.append("" if key is None else f"{self.keys}idem:{key}")
        for name in named:
            keys += [self.position_key(name), self.history_key(name)]
        size = "" if self.history_size is None else str(self.history_size)
        args: list[bytes | str | int] = [secrets.token_hex(8), size, DEFAULT_HISTORY_SIZE]
        args += ["" if key is None else self.idempotency_window]
        ttl = "" if self.channel_ttl is None else max(1, math.ceil(self.channel_ttl))
        args += [ttl, POSITION_TTL, len(named), *named]
        args += [secrets.token_urlsafe(8) for _name in named]
        for kind, channel, data in items:
            args += [kind, index.get(channel, 0), data]
        reply = self._evalsha(client or self._client, _PUBLISH, keys, args, bool(items))
        return _Answer.parse(reply, named)

    def run_script(
        self, encoded: Sequence[bytes], client: redis.Redis | None = None
    ) -> tuple[str, int]:
        """Publish ``encoded`` on the default channel with ``client`` (default: the shared
        one); ``(epoch, the default channel's last seq)``."""
        answer = self._run([("e", "", data) for data in encoded], None, [], client)
        return answer.epoch, answer.default.seq

    def _evalsha(
        self,
        client: redis.Redis,
        script: _Script,
        keys: list[str],
        args: list[Any],
        may_publish: bool,
    ) -> Any:
        """``EVALSHA`` ``script`` on one of ``client``'s pooled connections (loading the
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
                self._send(conn, "EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    return conn.read_response()
                except redis.exceptions.NoScriptError:
                    self._send(conn, "SCRIPT", "LOAD", script.text)
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
            if _pack_command is None:
                conn.send_command(*command)
            else:  # (a publish's many arguments: redis-py's packer encodes each in Python)
                conn.send_packed_command([_pack_command(command)])
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

    def read_channel(
        self, channel: str, epoch: str, after_seq: int, limit: int, max_bytes: int
    ) -> list[Numbered] | None:
        """Up to ``limit`` events of ``channel`` after ``after_seq`` in ``epoch``, oldest
        first, stopping once ``max_bytes`` of envelopes are exceeded (the last one included):
        one page of a resume (:class:`~sidecar.core.resume.BrokerPort`).

        Each one's ``data`` is byte for byte what the relay delivered. ``[]`` when
        ``after_seq`` is the last seq; ``None`` (resume impossible: ``recovered: false``)
        when ``epoch`` is not the channel's, ``after_seq`` is ahead of its last seq, or the
        history no longer reaches back to ``after_seq + 1``. Raises
        :class:`BrokerUnavailable`, and ``ValueError`` for a negative argument.
        """
        if after_seq < 0 or limit < 0:
            raise ValueError("after_seq and limit must not be negative")
        keys = [self.position_key(channel), self.history_key(channel)]
        args = [epoch, after_seq, limit, max(0, max_bytes)]
        reply = self._evalsha(self._client, _READ, keys, args, False)
        status, _epoch, last, *values = reply
        if status != b"ok":
            return None
        items: list[Numbered] = []
        for value in values:
            entry = parse_history(value, channel, epoch, self.max_event_bytes)
            if not isinstance(entry, Entry) or entry.seq != after_seq + 1 + len(items):
                return None  # trimmed past after_seq + 1, or a hole someone made
            items.append(Numbered(entry.pos, channel, epoch, entry.seq, entry.data))
        if not items and after_seq < int(last) and limit > 0:
            return None  # the history does not reach back
        return items

    def read_range(self, epoch: str, after_seq: int, limit: int) -> list[tuple[int, bytes]] | None:
        """The default channel's events after ``after_seq`` of ``epoch``, at most ``limit``,
        as ``(seq, data)`` (see :meth:`read_channel`)."""
        items = self.read_channel("", epoch, after_seq, limit, 1 << 62)
        return None if items is None else [(item.seq, item.data) for item in items]

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
        ``noeviction`` never; the ``volatile-*`` policies only keys with a TTL (named
        channels' positions and histories: their subscribers resync, ``recovered: false``);
        the ``allkeys-*`` ones anything (an evicted meta hash starts a new epoch and an evicted
        stream loses the history: every client is closed with 4001 and resumes
        ``recovered: false``). That is never a silent loss, so the hub starts anyway (a managed
        Redis may not let the policy be changed): the warning says what to fix.
        """
        found = self.memory_policy()
        if found is None:
            log.debug("redis broker %s: maxmemory-policy unknown", self.safe_url)
            return None
        policy, limit = found
        if limit == 0 or policy in SAFE_POLICIES:
            return None
        if policy in VOLATILE_POLICIES:
            message = (
                f"redis broker {self.safe_url} has maxmemory-policy {policy} with maxmemory"
                f" {limit} bytes: Redis may evict named channels' positions and histories"
                " (their subscribers then resync with recovered: false); set maxmemory-policy"
                " noeviction to keep them (docs: Redis sizing)"
            )
            log.warning("%s", message)
            return message
        message = (
            f"redis broker {self.safe_url} has maxmemory-policy {policy} with maxmemory"
            f" {limit} bytes: Redis may evict {self.meta_key} or {self.stream_key}, and each"
            " eviction closes every client with 4001 and loses the resume history; set"
            " maxmemory-policy noeviction or give the broker a Redis of its own"
            " (docs: Redis sizing)"
        )
        log.warning("%s", message)
        return message

    # -- the relay ---------------------------------------------------------------------
    def start_relay(self, sink: Sink, start: tuple[str, int] | None = None) -> tuple[str, int]:
        """Start the relay thread, which feeds ``sink`` every event after ``start``.

        ``start`` is ``(epoch, position)``; by default the current :meth:`stream_head` (read
        here, so this raises :class:`BrokerUnavailable` when Redis cannot be reached). Returns
        the start point; the first event delivered is at its position + 1 (or a
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
            epoch, seq = self.stream_head()[:2] if start is None else start
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
