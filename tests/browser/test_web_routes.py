"""The web routes over plain HTTP (no browser needed): ``/client/*`` and the debug page."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from sidecar.web.pages import CLIENT_FILES, STATIC_DIR
from tests.conftest import TOKEN


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


@pytest.mark.parametrize("name", sorted(CLIENT_FILES))
def test_client_files_need_no_token_and_allow_cross_origin_import(
    name: str, web_sidecar_factory: Any
) -> None:
    running = web_sidecar_factory()
    response = _get(running.port, f"/client/{name}", {"Origin": "http://localhost:5173"})
    assert response.status == 200
    assert response.getheader("Content-Type") == CLIENT_FILES[name]
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.body == (STATIC_DIR / name).read_bytes()  # type: ignore[attr-defined]
    etag = response.getheader("ETag")
    assert etag
    again = _get(running.port, f"/client/{name}", {"If-None-Match": etag})
    assert again.status == 304


def test_client_module_is_javascript(web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory()
    response = _get(running.port, "/client/sidecar-client.js")
    assert response.getheader("Content-Type", "").startswith("text/javascript")
    assert b"export class SidecarClient" in response.body  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/client/nope.js", "/client/..%2fweb.py", "/client/index.html"])
def test_unknown_client_files_are_404(path: str, web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory()
    assert _get(running.port, path).status == 404


@pytest.mark.parametrize(
    "headers_or_query",
    [{}, {"Authorization": "Bearer wrong"}, "?token=wrong", "?token="],
    ids=["missing", "wrong-bearer", "wrong-query", "empty-query"],
)
def test_debug_page_requires_the_token(headers_or_query: Any, web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory()
    if isinstance(headers_or_query, str):
        response = _get(running.port, "/" + headers_or_query)
    else:
        response = _get(running.port, "/", headers_or_query)
    assert response.status == 401
    assert response.getheader("Content-Type", "").startswith("text/plain")
    body = response.body.decode()  # type: ignore[attr-defined]
    assert body.startswith("Unauthorized: a valid token is required")
    assert TOKEN not in body


@pytest.mark.parametrize("how", ["query", "bearer"])
def test_debug_page_with_token(how: str, web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory()
    if how == "query":
        response = _get(running.port, f"/?token={TOKEN}")
    else:
        response = _get(running.port, "/", {"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert response.getheader("Cache-Control") == "no-store"
    assert response.getheader("Referrer-Policy") == "no-referrer"
    csp = response.getheader("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert f"connect-src 'self' ws://127.0.0.1:{running.port};" in csp
    body = response.body.decode()  # type: ignore[attr-defined]
    assert '<script type="module" src="/client/debug.js">' in body
    assert TOKEN not in body


def test_debug_page_without_auth(web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory(auth=False)
    assert _get(running.port, "/").status == 200


def test_host_guard_applies_to_web_routes(web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory()
    for path in (f"/?token={TOKEN}", "/client/sidecar-client.js"):
        assert _get(running.port, path, {"Host": "evil.example"}).status == 403
