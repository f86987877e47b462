"""Checks made before the WebSocket upgrade: Host, Origin, token, handshake headers.

Pure functions over a WSGI environ plus immutable policies; no thread owns anything here.
Each check returns ``None`` (pass) or a :class:`Rejection` (an HTTP status, a short body,
extra headers and a reason tag for the counters); the app turns it into a plain HTTP
response, so a rejected handshake never sees a ``101``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: The subprotocol the server selects; the token rides in a second one: ``auth.<token>``.
SUBPROTOCOL = "sidecar.v1"
AUTH_PREFIX = "auth."

_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True)
class Rejection:
    """A handshake answered with an HTTP status instead of ``101``."""

    status: int
    message: str
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)


Origin = tuple[str, str, "int | None"]


def parse_origin(text: str) -> Origin | None:
    """``(scheme, host, port)`` of a serialised origin, or ``None`` if it is not one.

    ``null``, paths, credentials, queries and bad ports are not origins. Hosts compare
    lower-case; a default port is made explicit, so ``http://localhost`` equals
    ``http://localhost:80``.
    """
    text = text.strip()
    if not text or text == "null":
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return None
    host = (parts.hostname or "").lower()
    if scheme != "file" and not host:
        return None
    return (scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme))


class OriginPolicy:
    """An exact allowlist of origins (parsed, never prefix-matched)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._allowed: set[Origin] = set()
        for origin in origins:
            self.add(origin)

    def add(self, origin: str) -> None:
        """Allow ``origin``; raise ``ValueError`` if it is not a valid origin."""
        parsed = parse_origin(origin)
        if parsed is None:
            raise ValueError(f"not an origin: {origin!r}")
        self._allowed.add(parsed)

    def allows(self, origin: str) -> bool:
        """Whether the ``Origin`` header value ``origin`` is on the list (``null`` never is)."""
        parsed = parse_origin(origin)
        return parsed is not None and parsed in self._allowed


def host_name(host_header: str) -> str | None:
    """The host part of a ``Host`` header (brackets kept for IPv6), lower-case; None if bad."""
    host_header = host_header.strip().lower()
    if not host_header:
        return None
    if host_header.startswith("["):
        end = host_header.find("]")
        if end < 0 or (
            host_header[end + 1 :] and not re.fullmatch(r":\d{1,5}", host_header[end + 1 :])
        ):
            return None
        return host_header[: end + 1]
    name, _, port = host_header.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def allowed_hosts(bind_host: str) -> frozenset[str]:
    """Host names accepted in ``Host``: the loopback names plus the one the server binds."""
    names = set(_LOOPBACK_NAMES)
    bind = bind_host.lower()
    if bind not in ("0.0.0.0", "::", ""):
        names.add(f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind)
    return frozenset(names)


def check_host(environ: Mapping[str, Any], hosts: frozenset[str]) -> Rejection | None:
    """403 unless ``Host`` names this machine's loopback or the configured host (DNS rebinding)."""
    name = host_name(environ.get("HTTP_HOST", ""))
    if name is None or name not in hosts:
        return Rejection(403, "Forbidden: unexpected Host header", "host")
    return None


def check_upgrade(environ: Mapping[str, Any]) -> Rejection | None:
    """RFC 6455 section 4.2.1: method, Upgrade, Connection, version and key."""
    if environ.get("REQUEST_METHOD") != "GET":
        return Rejection(405, "Method Not Allowed: use GET", "method", {"Allow": "GET"})
    if environ.get("HTTP_UPGRADE", "").strip().lower() != "websocket":
        return Rejection(
            400, "Bad Request: this is a WebSocket endpoint (Upgrade: websocket)", "upgrade"
        )
    tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    if "upgrade" not in tokens:
        return Rejection(400, "Bad Request: Connection header must include Upgrade", "upgrade")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        return Rejection(
            426,
            "Upgrade Required: Sec-WebSocket-Version 13",
            "version",
            {"Sec-WebSocket-Version": "13"},
        )
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return Rejection(400, "Bad Request: missing or malformed Sec-WebSocket-Key", "key")
    return None


def offered_subprotocols(environ: Mapping[str, Any]) -> list[str]:
    """The client's ``Sec-WebSocket-Protocol`` offers, in order."""
    value = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
    return [p.strip() for p in value.split(",") if p.strip()]


def presented_token(environ: Mapping[str, Any]) -> str | None:
    """The token from the subprotocol pair, ``Authorization: Bearer`` or ``?token=``."""
    for proto in offered_subprotocols(environ):
        if proto.startswith(AUTH_PREFIX):
            return proto[len(AUTH_PREFIX) :]
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    tokens = query.get("token")
    return tokens[0] if tokens else None


UNAUTHORIZED = Rejection(401, "Unauthorized: a valid token is required", "token")


def check_token(environ: Mapping[str, Any], token: str | None) -> Rejection | None:
    """401 (same body for missing and wrong) unless the request carries ``token``.

    ``token`` ``None`` means authentication is off (``--no-auth``).
    """
    if token is None:
        return None
    given = presented_token(environ)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        return UNAUTHORIZED
    return None


def same_origin(origin: Origin, host_header: str) -> bool:
    """Whether ``origin`` is the server's own: ``http://`` plus exactly the ``Host`` header."""
    own = parse_origin("http://" + host_header.strip()) if host_header.strip() else None
    return own is not None and own == origin


def check_origin(environ: Mapping[str, Any], policy: OriginPolicy) -> Rejection | None:
    """403 for an Origin that is neither on the allowlist nor the server's own (``null`` never).

    The server's own origin is ``http://`` + the ``Host`` header, which the Host check has
    already restricted to loopback names. An absent Origin (a non-browser client) passes;
    with authentication on, the token check that follows is what admits it.
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return None
    parsed = parse_origin(origin)
    if parsed is None or not (
        policy.allows(origin) or same_origin(parsed, environ.get("HTTP_HOST", ""))
    ):
        return Rejection(403, "Forbidden: origin not allowed", "origin")
    return None


_TOKEN_QUERY = re.compile(r"(?i)(token=)[^&\s\"]*")


def redact(text: str) -> str:
    """``text`` with any ``token=...`` query value replaced by ``[redacted]``."""
    return _TOKEN_QUERY.sub(r"\1[redacted]", text)
