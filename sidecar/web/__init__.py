"""The web layer: the Flask extension, the ``/ws`` session lifecycle, the API, pages, guards.

It sits on the hub core (:mod:`sidecar.core`) and the event catalog (:mod:`sidecar.catalog`).
"""

from .extension import EventHub, add_websocket_route, create_app

__all__ = ["EventHub", "add_websocket_route", "create_app"]
