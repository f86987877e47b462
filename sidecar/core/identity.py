"""Who a connection is, which channels it may join, and subscription tokens.

Pure values and functions; no thread owns anything here (the keys of
:class:`SubscriptionTokens` are immutable once built).

* :class:`Identity`: what an app's ``authenticate`` hook returns for a connection: its user
  (or none), channels the server subscribes it to, whether it may join anything, and when it
  expires.
* :func:`decide`: the access rules, in order (see :func:`decide`), given the app's
  ``authorize`` hook.
* :class:`SubscriptionTokens`: short-lived signed grants (HMAC-SHA256 over user, channels,
  issue and expiry times) that a backend hands to a page, which presents one in
  ``channel:subscribe {channel, token}`` instead of a lookup per subscribe.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..protocol import (
    USER_NAMESPACE,
    ChannelErrorCode,
    check_channel,
    check_user,
    personal_channel,
)

#: Longest lifetime of a subscription token, in seconds.
MAX_TOKEN_TTL = 3600.0
#: Longest subscription token accepted, in characters.
MAX_TOKEN_LENGTH = 4096
#: The purpose label the token key is derived under (never used for anything else).
TOKEN_PURPOSE = b"sidecar subscription token v1"
_PREFIX = "v1."

#: ``fn(identity, channel) -> bool``: the app's ``authorize`` hook.
Authorize = Callable[["Identity", str], bool]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is (``from sidecar import Identity``).

    ``user``: the app's id of the user (or ``None``); a connection with a user is subscribed
    to ``user:<id>`` by itself. ``channels``: channels the server subscribes it to (and that
    it may join). ``superuser``: it may join anything (the shared token's identity).
    ``expires_at``: a Unix time after which the connection is closed with 4401.
    """

    user: str | None = None
    channels: tuple[str, ...] = ()
    superuser: bool = False
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if self.user is not None:
            check_user(self.user)
        if isinstance(self.channels, str):
            raise ValueError("Identity.channels is a sequence of channel names, not one string")
        object.__setattr__(self, "channels", tuple(check_channel(c) for c in self.channels))
        if self.expires_at is not None and not (
            isinstance(self.expires_at, int | float) and math.isfinite(self.expires_at)
        ):
            raise ValueError(f"expires_at must be a Unix time, not {self.expires_at!r:.40}")

    def granted(self) -> list[str]:
        """The channels the server subscribes it to: its own, then ``channels``."""
        own = [personal_channel(self.user)] if self.user is not None else []
        return own + [c for c in self.channels if c not in own]


#: The identity of the shared token (and of a hub with authentication off).
SUPERUSER = Identity(superuser=True)


def decide(identity: Identity, channel: str, authorize: Authorize | None) -> str | None:
    """``None`` if ``identity`` may join ``channel`` now, else the ``channel:error`` code.

    The rules, in order: a superuser may join anything; a ``user:`` channel only by the
    user it names, whatever the hook says; the identity's own ``channels``; then the app's
    ``authorize`` hook decides; without one, nothing else. A hook that raises refuses.
    """
    if identity.superuser:
        return None
    namespace, _, rest = channel.partition(":")
    if namespace == USER_NAMESPACE:
        owner = rest.partition(":")[0]
        ok = identity.user is not None and owner == identity.user
        return None if ok else ChannelErrorCode.FORBIDDEN
    if channel in identity.channels:
        return None
    if authorize is None:
        return ChannelErrorCode.FORBIDDEN
    return None if authorize(identity, channel) is True else ChannelErrorCode.FORBIDDEN


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token says: its user, channels, and when it was issued and expires."""

    user: str
    channels: tuple[str, ...]
    issued: int
    expires: int


class SubscriptionTokens:
    """Issue and check subscription tokens with a key derived from the app's ``secret``."""

    def __init__(self, secret: bytes | str, clock: Callable[[], float] = time.time) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise ValueError("subscription tokens need a secret (the app's SECRET_KEY)")
        self._key = hmac.new(raw, TOKEN_PURPOSE, hashlib.sha256).digest()
        self._clock = clock

    def issue(self, user: str, channels: Iterable[str], ttl: float) -> str:
        """A token granting ``user`` the ``channels`` for ``ttl`` seconds (at most an hour)."""
        check_user(user)
        names = sorted({check_channel(c) for c in channels})
        if not names:
            raise ValueError("a subscription token names at least one channel")
        if not (isinstance(ttl, int | float) and 0 < ttl <= MAX_TOKEN_TTL):
            raise ValueError(f"ttl must be more than 0 and at most {MAX_TOKEN_TTL:g} seconds")
        now = int(self._clock())
        payload = {"u": user, "c": names, "iat": now, "exp": now + math.ceil(ttl)}
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        token = f"{_PREFIX}{body}.{_b64(self._sign(body))}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("too many channels for one token")
        return token

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, (_PREFIX + body).encode(), hashlib.sha256).digest()

    def read(self, token: object) -> Grant | None:
        """The grant of a well-formed, authentic token (expired or not), else ``None``."""
        if not isinstance(token, str) or not token.startswith(_PREFIX):
            return None
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        body, dot, signature = token[len(_PREFIX) :].partition(".")
        try:
            given = _unb64(signature)
            if not dot or not hmac.compare_digest(given, self._sign(body)):
                return None
            data = json.loads(_unb64(body))
            grant = Grant(
                check_user(data["u"]),
                tuple(check_channel(c) for c in data["c"]),
                int(data["iat"]),
                int(data["exp"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return grant

    def check(self, token: object, user: str | None, channel: str) -> str | None:
        """``None`` if ``token`` admits ``user`` to ``channel`` now, else the error code."""
        grant = self.read(token)
        if grant is None:
            return ChannelErrorCode.BAD_TOKEN
        if grant.expires <= self._clock():
            return ChannelErrorCode.TOKEN_EXPIRED
        if grant.user != user or channel not in grant.channels:
            return ChannelErrorCode.FORBIDDEN
        return None
