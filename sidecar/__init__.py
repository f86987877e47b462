"""sidecar: a synchronous, threaded WebSocket event hub for desktop apps.

``from sidecar import EventHub`` (the Flask extension), ``Identity`` (who a connection is, for
its ``authenticate`` hook) and ``Publisher`` (publishing from other processes through a
broker). Both are imported on first use, so that ``import sidecar`` stays
light and nothing optional (Flask apps aside, Redis) is imported unless used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["EventHub", "Hub", "Identity", "Publisher", "__version__"]

if TYPE_CHECKING:
    from .broker.publisher import Publisher
    from .core.hub import Hub
    from .core.identity import Identity
    from .web.extension import EventHub


def __getattr__(name: str) -> Any:
    if name == "EventHub":
        from .web.extension import EventHub

        return EventHub
    if name == "Hub":
        from .core.hub import Hub

        return Hub
    if name == "Identity":
        from .core.identity import Identity

        return Identity
    if name == "Publisher":
        from .broker.publisher import Publisher

        return Publisher
    raise AttributeError(f"module 'sidecar' has no attribute {name!r}")
