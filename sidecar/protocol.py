"""The sidecar's wire protocol, as constants: close codes, subprotocols, limits, resume points.

Pure values; no thread owns anything here, nothing here imports Flask, the hub or the event
catalog. Every other layer takes these names from here instead of writing the numbers again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from .envelope import Event, is_event_name

#: The subprotocol the server selects. Browsers send the token as a second one.
SUBPROTOCOL = "sidecar.v1"
#: Prefix of the subprotocol that carries the token: ``auth.<token>`` (never echoed).
AUTH_PREFIX = "auth."
#: The only query parameter name under which a token is accepted (exact, not decoded).
TOKEN_PARAM = "token"
#: The query parameter of a resume point.
SINCE_PARAM = "since"

#: The query parameter that subscribes at connect: ``channels=project:p1,chat:c9``.
CHANNELS_PARAM = "channels"

#: The type of the first frame of every connection.
CONNECTION_STATUS = "connection:status"
#: Client -> hub: join a channel (``{channel, since?}``) or leave one (``{channel}``).
CHANNEL_SUBSCRIBE = "channel:subscribe"
CHANNEL_UNSUBSCRIBE = "channel:unsubscribe"
#: Hub -> client: the answers (``{channel, epoch, seq, recovered}``, ``{channel, reason}``)
#: and a refusal (``{channel, code, message}``; the connection stays open).
CHANNEL_SUBSCRIBED = "channel:subscribed"
CHANNEL_UNSUBSCRIBED = "channel:unsubscribed"
CHANNEL_ERROR = "channel:error"
#: Namespaces only the hub itself may use (publishers are refused; clients' messages in them
#: are the hub's to handle, never the app's).
RESERVED_NAMESPACES = frozenset({"connection", "channel"})
#: Types only clients send (client -> server): never broadcast. The catalog's directions say
#: the same (``tests/test_hardening_names.py`` checks that they agree).
CLIENT_EVENT_TYPES = frozenset({"chat:send", "chat:cancel"})


class PublishRefused(Exception):
    """Events not accepted for broadcast: the hub is stopped or overloaded, or the broker is
    unreachable. Nothing of the refused events was broadcast (except with the subclass
    :class:`PublishOutcomeUnknown`, which says that nobody knows).

    Defined here, below the hub and the broker (``sidecar.core.hub.PublishRefused`` is this
    class), so that the broker's :class:`~sidecar.broker.BrokerUnavailable` can be one
    without importing the hub core.
    """


#: The default channel (today's stream, events published without a channel) has no name.
DEFAULT_CHANNEL = ""
#: Longest channel name, in bytes (ASCII: characters).
MAX_CHANNEL_BYTES = 128
#: A channel name: a namespace, then 0-3 segments; ``,`` and ``@`` never occur (they separate
#: list items and positions), nor does anything JSON would escape.
CHANNEL_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}(?::[A-Za-z0-9._~-]{1,64}){0,3}")


#: The namespace of personal channels: ``user:<id>`` is joined only by that user.
USER_NAMESPACE = "user"
#: A user id: one channel segment.
USER_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")


def check_user(user: object) -> str:
    """``user`` if it is a valid user id (1-64 of ``A-Za-z0-9._~-``); ``ValueError`` if not."""
    if not isinstance(user, str) or USER_RE.fullmatch(user) is None:
        raise ValueError(f"a user id is 1-64 of A-Za-z0-9._~- (got {user!r:.40})")
    return user


def is_user(user: object) -> bool:
    """Whether ``user`` is a valid user id."""
    return isinstance(user, str) and USER_RE.fullmatch(user) is not None


def personal_channel(user: str) -> str:
    """The channel of one user's own events: ``user:<id>``."""
    return f"{USER_NAMESPACE}:{check_user(user)}"


class ChannelErrorCode:
    """The ``code`` of a ``channel:error`` frame (the connection stays open)."""

    INVALID = "invalid"
    LIMIT = "limit"
    ALREADY_SUBSCRIBED = "already_subscribed"
    NOT_SUBSCRIBED = "not_subscribed"
    FORBIDDEN = "forbidden"
    BAD_TOKEN = "bad_token"
    TOKEN_EXPIRED = "token_expired"


def is_channel_name(name: object) -> bool:
    """Whether ``name`` is a valid (named) channel: see :data:`CHANNEL_RE`, at most 128 bytes."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_CHANNEL_BYTES
        and CHANNEL_RE.fullmatch(name) is not None
    )


def check_channel(name: object) -> str:
    """``name`` if it is a channel name; ``ValueError`` with a one-line reason otherwise."""
    if is_channel_name(name):
        assert isinstance(name, str)
        return name
    if not isinstance(name, str):
        raise ValueError(f"a channel name is a string, not {type(name).__name__}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_CHANNEL_BYTES:
        raise ValueError(f"channel name longer than {MAX_CHANNEL_BYTES} bytes")
    raise ValueError(
        f"channel {name[:40]!r} is not namespace[:segment]... (a namespace of a-z0-9_-, "
        "then up to 3 segments of A-Za-z0-9._~-)"
    )


class PublishOutcomeUnknown(PublishRefused):
    """The publish reached the broker and no answer came back (Redis froze, the connection
    broke, the reply timed out): the events may have been broadcast, or may not.

    A :class:`PublishRefused`, so that code written for refusals still stops there
    (``broadcast*`` return ``False``); the HTTP API answers 504 (``"outcome": "unknown"``)
    instead of 503. Retrying is safe with the same idempotency key (see
    :func:`check_idempotency_key`): the broker then answers with the original seqs if the
    first attempt was published, and publishes once if it was not. Without a key, a retry may
    broadcast the events twice.
    """


class IdempotencyKeyReused(ValueError):
    """An idempotency key that an earlier publish used for a different number of events."""


class PublishedSeqs(list[int]):
    """The seqs a publish got, in order: a ``list[int]`` with one more attribute.

    ``duplicate`` is ``True`` when an earlier publish with the same idempotency key within
    the window had already published the events: nothing was published again, and these are
    the seqs the earlier publish got.
    """

    duplicate: bool = False

    @classmethod
    def of(cls, first: int, count: int, *, duplicate: bool = False) -> PublishedSeqs:
        """``first``, ``first + 1`` … ``count`` seqs."""
        seqs = cls(range(first, first + count))
        seqs.duplicate = duplicate
        return seqs


#: An idempotency key: 1-128 letters, digits and ``-._~:+/=`` (a UUID, a ULID, base64, a
#: name such as ``order-42:shipped``). Nothing else: the key becomes part of a Redis key name
#: and of log lines.
IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9._~:+/=-]{1,128}")
#: Seconds an idempotency key is remembered after the publish that used it (Centrifugo keeps
#: its idempotent publish results for the same five minutes).
IDEMPOTENCY_WINDOW = 300
#: Most keys a hub without a broker remembers at once; older ones are forgotten first.
IDEMPOTENCY_MAX_KEYS = 10_000


def check_idempotency_key(key: object) -> str:
    """``key`` if it is a valid idempotency key, else ``ValueError`` saying what one is."""
    if isinstance(key, str) and IDEMPOTENCY_KEY_RE.fullmatch(key):
        return key
    raise ValueError(
        f"idempotency key {key!r:.60} is not 1-128 letters, digits or -._~:+/= characters"
    )


def check_broadcast_type(name: object) -> None:
    """``ValueError`` unless ``name`` is a type anyone but the hub may broadcast.

    It must be ``namespace:kebab-case`` as a whole string (no trailing newline), outside the
    hub's own namespaces (``connection:*``, ``channel:*``) and not a client-to-server type
    (``chat:send``): a client library would take a broadcast ``connection:status`` for its own.
    Defined here, below the hub and the broker, so that both check types by one rule.
    """
    if not is_event_name(name):
        raise ValueError(f"event type {name!r:.80} is not namespace:kebab-case")
    assert isinstance(name, str)
    if name.partition(":")[0] in RESERVED_NAMESPACES:
        raise ValueError(f"{name} is sent by the hub itself, never broadcast")
    if name in CLIENT_EVENT_TYPES:
        raise ValueError(f"{name} is a client-to-server event, never broadcast")


#: Largest header of an unmasked server frame: 2 bytes plus a 64-bit length.
MAX_FRAME_HEADER = 10
#: Most bytes the hub adds to an encoded event: ``,"seq":`` and up to 19 digits.
SEQ_SPLICE_MAX = len(b',"seq":') + 19
#: Most bytes the hub adds to an event of a named channel: the ``seq`` and
#: ``,"channel":"…"`` with a name of at most :data:`MAX_CHANNEL_BYTES`.
CHANNEL_SPLICE_MAX = SEQ_SPLICE_MAX + len(b',"channel":""') + MAX_CHANNEL_BYTES


def splice_max(channel: str | None) -> int:
    """Most bytes the hub adds to an event published on ``channel`` (``None``: the default)."""
    return SEQ_SPLICE_MAX if not channel else SEQ_SPLICE_MAX + len(b',"channel":""') + len(channel)


#: A close reason must fit in a control frame: 125 bytes minus the 2-byte code.
MAX_CLOSE_REASON = 123


class CloseCode(IntEnum):
    """Close codes the sidecar sends, and the ones it reports (RFC 6455 section 7.4).

    4000-4499 mean "reconnect (and resume)", 4500-4999 "do not reconnect" (Centrifugo's
    convention); see :func:`should_reconnect`.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    #: Events may have been missed (the broker's stream was interrupted): resume with ``since``.
    RESUME = 4001
    #: The client fell too far behind and was dropped: resume with ``since``.
    SLOW_CONSUMER = 4008
    #: The connection's identity expired: authenticate again, then reconnect.
    IDENTITY_EXPIRED = 4401


def should_reconnect(code: int) -> bool:
    """Whether a client should reconnect after close ``code`` (the sidecar-client.js rule).

    Everything reconnects except 1008 (policy) and 4500-4999 ("do not reconnect").
    """
    return code != CloseCode.POLICY_VIOLATION and not 4500 <= code <= 4999


#: A token must be sendable as a subprotocol (an RFC 7230 token), a bearer token (token68)
#: and a query value: letters, digits and ``-._~``, at most 256 characters.
TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{1,256}")

_SINCE_RE = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Since:
    """A resume point: the last ``seq`` a client processed in hub run ``epoch``."""

    epoch: str
    seq: int

    @classmethod
    def parse(cls, text: str) -> Since:
        """Parse ``<epoch>:<seq>`` (1-64 of ``A-Za-z0-9_-``, then 1-18 decimal digits).

        Raises ``ValueError`` with a one-line reason.
        """
        match = _SINCE_RE.fullmatch(text)
        if match is None:
            raise ValueError("since must look like <epoch>:<seq>, e.g. 3f2a9c1d:42")
        return cls(match[1], int(match[2]))

    def __str__(self) -> str:
        return f"{self.epoch}:{self.seq}"


#: Most items in a ``channels`` or ``since`` list (beyond any ``--max-channels``; the request
#: head's own limit bounds it too).
MAX_LIST_ITEMS = 1024


def parse_channels(text: str) -> list[str]:
    """The channels of a ``channels=`` value (comma-separated names, each once).

    Raises ``ValueError`` with a one-line reason (a bad name, an empty item, a repeat).
    """
    names = text.split(",")
    if len(names) > MAX_LIST_ITEMS:
        raise ValueError(f"more than {MAX_LIST_ITEMS} names")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ValueError("an empty item")
        check_channel(name)
        if name in seen:
            raise ValueError(f"{name!r} twice")
        seen.add(name)
    return names


def parse_since(text: str) -> dict[str, Since]:
    """The resume points of a ``since=`` value, by channel (``""``: the default channel).

    Comma-separated items: ``<epoch>:<seq>`` for the default channel,
    ``<channel>@<epoch>:<seq>`` for a named one; each channel at most once. Raises
    ``ValueError`` with a one-line reason.
    """
    items = text.split(",")
    if len(items) > MAX_LIST_ITEMS:
        raise ValueError(f"since lists more than {MAX_LIST_ITEMS} items")
    points: dict[str, Since] = {}
    for item in items:
        channel, at, position = item.rpartition("@")
        if at:
            try:
                check_channel(channel)
            except ValueError as exc:
                raise ValueError(f"since: {exc}") from None
        point = Since.parse(position)
        if channel in points:
            raise ValueError(f"since names {channel or 'the default channel'!r} twice")
        points[channel] = point
    return points


def connection_status(
    epoch: str,
    seq: int,
    recovered: bool,
    channels: dict[str, dict[str, object]] | None = None,
) -> Event:
    """The ``connection:status`` event a client gets first: ``{status, epoch, seq, recovered}``.

    ``epoch``, ``seq`` and ``recovered`` describe the default channel: ``seq`` is its last
    ``seq`` when the client joined; ``recovered`` says whether the resume it asked for is
    replayed (see docs/delivery.md). ``channels`` (only when the client
    has named channels) maps each granted one to ``{epoch, seq, recovered}``.
    """
    payload: dict[str, object] = {
        "status": "connected",
        "epoch": epoch,
        "seq": seq,
        "recovered": recovered,
    }
    if channels:
        payload["channels"] = channels
    return Event(CONNECTION_STATUS, payload)


def channel_subscribed(channel: str, epoch: str, seq: int, recovered: bool) -> Event:
    """``channel:subscribed {channel, epoch, seq, recovered}``: the answer to a subscribe."""
    payload = {"channel": channel, "epoch": epoch, "seq": seq, "recovered": recovered}
    return Event(CHANNEL_SUBSCRIBED, payload)


def channel_unsubscribed(channel: str, reason: str) -> Event:
    """``channel:unsubscribed {channel, reason}``: nothing of ``channel`` follows it."""
    return Event(CHANNEL_UNSUBSCRIBED, {"channel": channel, "reason": reason})


def channel_error(channel: str, code: str, message: str) -> Event:
    """``channel:error {channel, code, message}``: a refused channel request."""
    return Event(CHANNEL_ERROR, {"channel": channel, "code": code, "message": message})
