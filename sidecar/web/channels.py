"""The ``channel:`` messages of a session: subscribe and unsubscribe after connect.

Request threads only: each session's reader (the request thread running
:meth:`~sidecar.core.client.Client.read_loop`) hands the client's ``channel:*`` messages to its
:class:`ChannelMessages`, which checks them (name, resume point, rate), plans the resume
(:mod:`sidecar.core.resume`: with a broker, a round trip to Redis) and hands the request to
the hub thread, which owns the client's channels and answers ``channel:subscribed``,
``channel:unsubscribed`` or ``channel:error``. Errors found here are answered here, through
the hub (so that they keep their place among the client's frames). The app's message
handler never sees a message of the ``channel:`` (or ``connection:``) namespace.

State: one :class:`ChannelMessages` per session, used by that session's request thread only
(the timestamps of its recent messages, for the rate limit).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ..broker import BrokerUnavailable
from ..core import resume
from ..core.client import Client, Close
from ..core.resume import ChannelRequest
from ..protocol import (
    CHANNEL_SUBSCRIBE,
    CHANNEL_UNSUBSCRIBE,
    ChannelErrorCode,
    CloseCode,
    Since,
    channel_error,
    is_channel_name,
)
from .state import SidecarState

log = logging.getLogger("sidecar.session")

#: Most subscribe/unsubscribe messages a client may send in :data:`RATE_WINDOW` seconds;
#: one more closes the connection with 1008.
RATE_LIMIT = 20
RATE_WINDOW = 1.0
#: The ``channel:error`` code of a subscribe that cannot be planned while the broker is down.
UNAVAILABLE = "unavailable"
#: What a refusal says (never what a token held).
_REFUSALS = {
    ChannelErrorCode.FORBIDDEN: "not allowed to join this channel",
    ChannelErrorCode.BAD_TOKEN: "the subscription token is malformed or forged",
    ChannelErrorCode.TOKEN_EXPIRED: "the subscription token has expired",
}


class ChannelMessages:
    """One session's ``channel:subscribe`` / ``channel:unsubscribe`` handling."""

    def __init__(self, state: SidecarState, clock: Callable[[], float]) -> None:
        self.state = state
        self._clock = clock
        #: When its last channel messages came (made with the first: most sessions send none).
        self._recent: deque[float] | None = None

    def handle(self, client: Client, event: dict[str, Any]) -> None:
        """Act on one ``channel:*`` message (``Close`` for a client over the rate limit)."""
        kind = event["type"]
        payload = event.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        channel = payload.get("channel")
        named = channel if isinstance(channel, str) else ""
        if kind not in (CHANNEL_SUBSCRIBE, CHANNEL_UNSUBSCRIBE):
            self._error(client, named[:128], ChannelErrorCode.INVALID, f"unknown type {kind[:64]}")
            return
        self._count(client)
        if not is_channel_name(channel):
            message = "channel must be a channel name (namespace[:segment]...)"
            self._error(client, named[:128], ChannelErrorCode.INVALID, message)
            return
        assert isinstance(channel, str)
        if kind == CHANNEL_UNSUBSCRIBE:
            self.state.hub.unsubscribe(client, channel)
            return
        since = payload.get("since")
        try:
            point = None if since is None else Since.parse(since if isinstance(since, str) else "")
        except ValueError as exc:
            self._error(client, channel, ChannelErrorCode.INVALID, str(exc))
            return
        code = self._allowed(client, channel, payload)
        if code is not None:
            self._error(client, channel, code, _REFUSALS.get(code, "not allowed"))
            return
        self._subscribe(client, ChannelRequest(channel, point))

    def _allowed(self, client: Client, channel: str, payload: dict[str, Any]) -> str | None:
        """``None`` if the client may join ``channel`` now, else the ``channel:error`` code:
        by a subscription token when it presents one, else by the access rules."""
        access, identity = self.state.access, client.identity
        if "token" in payload:
            token = payload["token"]
            return access.check_token(identity, channel, token, self.state.hub.revoked_at)
        return access.check(identity, channel)

    def _count(self, client: Client) -> None:
        now = self._clock()
        recent = self._recent
        if recent is None:
            recent = self._recent = deque(maxlen=RATE_LIMIT)
        if len(recent) == RATE_LIMIT and now - recent[0] < RATE_WINDOW:
            reason = f"more than {RATE_LIMIT} channel messages a second"
            log.info("client %s: closing with 1008 (%s)", client.id, reason)
            raise Close(CloseCode.POLICY_VIOLATION, "too many channel messages")
        recent.append(now)

    def _subscribe(self, client: Client, request: ChannelRequest) -> None:
        state = self.state
        hub, broker, config = state.hub, state.broker, state.config
        try:
            [request] = resume.locate(hub, broker, [request])
            if request.since is not None:
                cost = resume.replay_cost(hub, request, config.history_size)
                peer = client.remote.rpartition(":")[0] or client.remote
                if state.replays.retry_after(peer, cost) > 0:
                    request = ChannelRequest(request.channel, None, request.origin)
                limits = resume.Limits(config.history_size, config.max_pending_bytes)
                [request] = resume.fill(hub, broker, [request], limits)
        except BrokerUnavailable:
            message = "the broker is unreachable; subscribe again later"
            self._error(client, request.channel, UNAVAILABLE, message)
            return
        hub.subscribe(client, request)

    def _error(self, client: Client, channel: str, code: str, message: str) -> None:
        self.state.hub.send_to_client(client, channel_error(channel, code, message))
