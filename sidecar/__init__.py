"""sidecar: a synchronous, threaded WebSocket event hub for desktop apps."""

__version__ = "0.1.0"
