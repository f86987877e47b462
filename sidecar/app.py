"""``sidecar.app.create_app``: the sidecar's app (it lives in :mod:`sidecar.web.extension`)."""

from .web.extension import EventHub, create_app

__all__ = ["EventHub", "create_app"]
