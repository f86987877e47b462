"""sidecar: a synchronous, threaded WebSocket event hub for desktop apps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker.publisher import Publisher

__version__ = "0.1.0"

__all__ = ["Publisher", "__version__"]


def __getattr__(name: str) -> Any:
    """``Publisher`` is loaded on first use: it imports the ``redis`` client library."""
    if name == "Publisher":
        from .broker.publisher import Publisher

        return Publisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
