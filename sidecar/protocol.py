"""The sidecar's wire protocol, as constants: close codes, subprotocols, limits, resume points.

Pure values; no thread owns anything here, nothing here imports Flask, the hub or the event
catalog. Every other layer takes these names from here instead of writing the numbers again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from .envelope import Event

#: The subprotocol the server selects. Browsers send the token as a second one.
SUBPROTOCOL = "sidecar.v1"
#: Prefix of the subprotocol that carries the token: ``auth.<token>`` (never echoed).
AUTH_PREFIX = "auth."
#: The only query parameter name under which a token is accepted (exact, not decoded).
TOKEN_PARAM = "token"
#: The query parameter of a resume point.
SINCE_PARAM = "since"

#: The type of the first frame of every connection.
CONNECTION_STATUS = "connection:status"
#: Namespaces only the hub itself may use (publishers are refused).
RESERVED_NAMESPACES = frozenset({"connection"})
#: Types only clients send (client -> server): never broadcast. The catalog's directions say
#: the same (``tests/test_hardening_names.py`` checks that they agree).
CLIENT_EVENT_TYPES = frozenset({"chat:send", "chat:cancel"})


class PublishRefused(Exception):
    """Events not accepted for broadcast: the hub is stopped or overloaded, or the broker is
    unreachable. Nothing of the refused events was broadcast.

    Defined here, below the hub and the broker (``sidecar.core.hub.PublishRefused`` is this
    class), so that the broker's :class:`~sidecar.broker.BrokerUnavailable` can be one
    without importing the hub core.
    """


#: Largest header of an unmasked server frame: 2 bytes plus a 64-bit length.
MAX_FRAME_HEADER = 10
#: Most bytes the hub adds to an encoded event: ``,"seq":`` and up to 19 digits.
SEQ_SPLICE_MAX = len(b',"seq":') + 19
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


def connection_status(epoch: str, seq: int, recovered: bool) -> Event:
    """The ``connection:status`` event a client gets first: ``{status, epoch, seq, recovered}``.

    ``seq`` is the last broadcast ``seq`` when the client joined; ``recovered`` says whether
    the resume it asked for is replayed (see docs/delivery.md).
    """
    payload = {"status": "connected", "epoch": epoch, "seq": seq, "recovered": recovered}
    return Event(CONNECTION_STATUS, payload)
