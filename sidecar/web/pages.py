"""The sidecar's own pages: the browser client's files and the debug page.

* ``GET /client/<file>``: ``sidecar-client.js`` (the ES module), its declarations, the event
  JSON Schema, and the debug page's script and style. No token: they hold no secret. They
  carry ``Access-Control-Allow-Origin: *`` because browsers fetch module scripts in CORS mode,
  so an app served from another origin (a Vite dev server, Tauri) can only ``import`` the
  client from the sidecar with that header.
* ``GET /`` (or the prefix given): the debug page (live events, counters), token required
  (``?token=`` from the ready line; the page then removes it from the address bar). Sent with
  ``no-store``, ``Referrer-Policy: no-referrer`` (the token is in its URL) and a CSP that
  allows scripts only from the sidecar itself.

Request threads only; no state of its own. Files are read on each request (they are small).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Response, request

from .guards import check_token
from .state import SidecarState

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: The files served under ``/client/`` and their content types.
CLIENT_FILES: dict[str, str] = {
    "sidecar-client.js": "text/javascript; charset=utf-8",
    "sidecar-client.d.ts": "text/plain; charset=utf-8",
    "sidecar-events.d.ts": "text/plain; charset=utf-8",
    "sidecar-events.schema.json": "application/schema+json",
    "debug.js": "text/javascript; charset=utf-8",
    "debug.css": "text/css; charset=utf-8",
}

_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' {ws}; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def pages_blueprint(
    state: SidecarState,
    *,
    debug_page: str | None,
    guard: Callable[[], Response | None] | None = None,
) -> Blueprint:
    """``/client/<file>``, and the debug page at ``debug_page`` (``None``: no page)."""
    pages = Blueprint("sidecar_pages", __name__)
    if guard is not None:
        pages.before_request(guard)

    @pages.get("/client/<name>")
    def client_file(name: str) -> Response:
        content_type = CLIENT_FILES.get(name)
        if content_type is None:
            return Response("Not Found\n", status=404, mimetype="text/plain")
        response = Response(_read(name), content_type=content_type)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.add_etag()
        response.make_conditional(request)
        return response

    if debug_page is None:
        return pages

    @pages.get(debug_page)
    def page() -> Response:
        rejection = check_token(request.environ, state.token)
        if rejection is not None:
            body = (
                rejection.message
                + "\nOpen the URL with ?token=<token> (the sidecar's ready line prints it).\n"
            )
            return Response(body, status=rejection.status, mimetype="text/plain")
        response = Response(_read("index.html"), content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        # The Host guard has already limited Host to loopback names (and a port), so it is
        # safe to name the page's own WebSocket origin (older engines do not count ws: as
        # 'self').
        response.headers["Content-Security-Policy"] = _PAGE_CSP.format(ws=f"ws://{request.host}")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return pages
