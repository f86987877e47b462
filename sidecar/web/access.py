"""Who a connection is and what it may join: the app's identity hooks, applied.

One :class:`Access` per app state. The app sets its hooks once, at setup
(``@hub.authenticate``, ``@hub.authorize``); request threads then only read them. The hooks
run on the request thread of the connection (before the ``101``, and at each
``channel:subscribe``), never on the hub thread. A hook that raises refuses (a 401 before the
upgrade, ``forbidden`` after it) and is logged in one line, rate-limited.

The shared token keeps its role: a request that presents it is the superuser (the desktop
app's windows, publishers and tools); every other request is the ``authenticate`` hook's to
identify, when the app has one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import current_app, request

from ..core.identity import SUPERUSER, Authorize, Identity, SubscriptionTokens, decide
from ..logs import LogLimiter
from ..protocol import USER_NAMESPACE, ChannelErrorCode
from .guards import UNAUTHORIZED, Rejection, check_token

log = logging.getLogger("sidecar.session")

#: ``fn(request) -> Identity | None``: the app's ``authenticate`` hook.
Authenticate = Callable[[Any], Identity | None]


class Access:
    """The identity hooks of one app and the rules that use them."""

    def __init__(self, token: str | None, log_limit: LogLimiter) -> None:
        self.token = token
        self.authenticate: Authenticate | None = None
        self.authorize: Authorize | None = None
        #: Whether connections that are not the superuser get the default channel.
        self.default_channel = True
        self._log_limit = log_limit
        self._tokens: SubscriptionTokens | None = None
        self._secret: bytes | None = None

    # -- before the upgrade ----------------------------------------------------------------
    def identify(self, environ: Mapping[str, Any]) -> Identity | Rejection:
        """The connection's identity, or a 401: the shared token makes the superuser, else
        the ``authenticate`` hook decides (no hook: the token is required)."""
        refused = check_token(environ, self.token)
        if refused is None:
            return SUPERUSER
        if self.authenticate is None:
            return refused
        try:
            identity = self.authenticate(request)
        except Exception as exc:  # the app's hook: its failure refuses, one line
            self._complain("authenticate", f"the authenticate hook raised {exc!r:.200}")
            return UNAUTHORIZED
        if identity is None:
            return UNAUTHORIZED
        if not isinstance(identity, Identity):
            self._complain("authenticate", f"authenticate returned {type(identity).__name__}")
            return UNAUTHORIZED
        if identity.expires_at is not None and identity.expires_at <= time.time():
            return UNAUTHORIZED
        return identity

    def joins_default(self, identity: Identity) -> bool:
        """Whether ``identity`` gets the default channel."""
        return self.default_channel or identity.superuser

    # -- each channel ------------------------------------------------------------------------
    def check(self, identity: Identity, channel: str) -> str | None:
        """``None`` if ``identity`` may join ``channel`` now, else the ``channel:error`` code."""
        try:
            return decide(identity, channel, self.authorize)
        except Exception as exc:  # the app's hook: its failure refuses, one line
            self._complain("authorize", f"the authorize hook raised {exc!r:.200}")
            return ChannelErrorCode.FORBIDDEN

    def check_token(
        self,
        identity: Identity,
        channel: str,
        token: object,
        revoked_at: Callable[[str, str], float | None],
    ) -> str | None:
        """A ``channel:subscribe`` that presents a subscription token: ``None`` to admit it,
        else the code. The superuser needs none; a ``user:`` channel is its user's only."""
        if identity.superuser:
            return None
        if channel.partition(":")[0] == USER_NAMESPACE:
            return self.check(identity, channel)
        tokens = self.tokens()
        if tokens is None:
            return ChannelErrorCode.BAD_TOKEN
        code = tokens.check(token, identity.user, channel)
        if code is None:
            grant = tokens.read(token)
            revoked = revoked_at(identity.user or "", channel)
            if grant is not None and revoked is not None and grant.issued <= revoked:
                return ChannelErrorCode.FORBIDDEN
        return code

    # -- subscription tokens ------------------------------------------------------------------
    def tokens(self) -> SubscriptionTokens | None:
        """The app's token issuer/checker (keyed by its ``SECRET_KEY``, else the shared
        token), or ``None`` when the app has neither."""
        if self._tokens is None:
            secret = self._secret or _app_secret() or (self.token or "").encode()
            if not secret:
                return None
            self._tokens = SubscriptionTokens(secret)
        return self._tokens

    def bind_secret(self, secret: bytes | str | None) -> None:
        """Use ``secret`` (the app's ``SECRET_KEY``) for subscription tokens."""
        if secret:
            self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
            self._tokens = None

    def _complain(self, key: str, message: str) -> None:
        suppressed = self._log_limit.check(("hook", key))
        if suppressed is not None:
            more = f" ({suppressed} more not logged)" if suppressed else ""
            log.warning("%s: refused%s", message, more)


def _app_secret() -> bytes | None:
    try:
        secret = current_app.secret_key
    except RuntimeError:  # outside an app context
        return None
    if not secret:
        return None
    return secret.encode() if isinstance(secret, str) else bytes(secret)
