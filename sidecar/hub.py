"""``sidecar.hub.Hub``: the hub's public import path (it lives in :mod:`sidecar.core.hub`)."""

from .core.hub import Hub, HubStats, PublishRefused
from .protocol import PublishOutcomeUnknown, Since

__all__ = ["Hub", "HubStats", "PublishOutcomeUnknown", "PublishRefused", "Since"]
