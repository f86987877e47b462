"""WSGI entry point for gunicorn and other threaded WSGI servers.

``gunicorn -c python:sidecar.gunicorn_conf 'sidecar.wsgi:create_app()'``

``create_app()`` builds the app from ``SIDECAR_*`` variables (``SIDECAR_TOKEN`` is required
unless ``SIDECAR_AUTH=0``). The hub thread (and a broker's relay) start in the worker process
on first use, never in gunicorn's master, so ``--preload`` works. Without ``SIDECAR_BROKER``
exactly one worker process may run it (the hub lives in process memory); with a broker, any
number (see docs/redis.md).
"""

from __future__ import annotations

from flask import Flask

from .config import ConfigError, load, resolve_token
from .web.extension import create_app as _create_app


def create_app() -> Flask:
    """The sidecar app configured from the environment; ``SystemExit`` with one line if not."""
    try:
        return _create_app(resolve_token(load(), generate=False))
    except ConfigError as exc:
        raise SystemExit(f"sidecar: {exc}") from None
