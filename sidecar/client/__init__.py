"""``sidecar.client``: a Python client of the hub that reconnects and resumes.

``Subscriber`` (see :mod:`.subscriber`) is synchronous and threaded, like the rest of the
project (there is no asyncio twin). It needs websocket-client: ``pip install
'sidecar-hub[client]'`` (imported only when a subscriber connects).

The modules: :mod:`.policy` (backoff, which closes and refusals are retried, message pace),
:mod:`.session` (positions, resync, dedupe, the connect plan: pure), :mod:`.transport` (one
connection on websocket-client), :mod:`.subscriber` (the threads).
"""

from __future__ import annotations

from .policy import Backoff, backoff_delay, should_reconnect
from .session import ChannelError, Event, Position, Resync
from .subscriber import (
    ANY_CHANNEL,
    ChannelRefused,
    State,
    StateChange,
    Subscriber,
    SubscriberClosed,
)

__all__ = [
    "ANY_CHANNEL",
    "Backoff",
    "ChannelError",
    "ChannelRefused",
    "Event",
    "Position",
    "Resync",
    "State",
    "StateChange",
    "Subscriber",
    "SubscriberClosed",
    "backoff_delay",
    "should_reconnect",
]
