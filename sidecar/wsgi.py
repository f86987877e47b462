"""WSGI entry point for gunicorn and other threaded WSGI servers.

``gunicorn -c python:sidecar.gunicorn_conf 'sidecar.wsgi:create_app()'``

``create_app()`` builds the app from ``SIDECAR_*`` variables (``SIDECAR_TOKEN`` is required
unless ``SIDECAR_AUTH=0``) and starts the hub in the worker process. Exactly one worker
process may run it: the hub lives in process memory, and two workers would split the clients.
"""

from __future__ import annotations

import logging

from flask import Flask

from .app import create_app as _create_app
from .config import from_env

log = logging.getLogger("sidecar")


def create_app() -> Flask:
    """The sidecar app configured from the environment (for gunicorn and other WSGI servers)."""
    try:
        config = from_env()
    except ValueError as exc:
        raise SystemExit(f"sidecar: {exc}") from None
    if config.auth and not config.token:
        raise SystemExit(
            "sidecar: SIDECAR_TOKEN is not set. Set it (or SIDECAR_AUTH=0 for local "
            "development) before starting the WSGI server."
        )
    return _create_app(config)
