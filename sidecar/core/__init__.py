"""The hub core: connections, clients, the hub thread and its replay window.

It imports neither Flask nor the event catalog; only the wire layer (:mod:`sidecar.protocol`,
:mod:`sidecar.envelope`, :mod:`sidecar.frames`), :mod:`sidecar.config`, :mod:`sidecar.platform`
and simple-websocket's public API.
"""

from ..protocol import PublishOutcomeUnknown
from .client import Client, Close
from .connection import Connection, SendResult
from .hub import Hub, HubStats, PublishRefused

__all__ = [
    "Client",
    "Close",
    "Connection",
    "Hub",
    "HubStats",
    "PublishOutcomeUnknown",
    "PublishRefused",
    "SendResult",
]
