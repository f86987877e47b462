"""Checks made before the WebSocket upgrade: Host, Origin, token, handshake headers; redaction.

Pure functions over a WSGI environ plus immutable policies; no thread owns anything here. One
side effect: :func:`check_token` hands the token to :func:`sidecar.logs.hide`, so that no log
line written after the first check can show it.
Each check returns ``None`` (pass) or a :class:`Rejection` (an HTTP status, a short body,
extra headers and a reason tag for the counters); the web layer turns it into a plain HTTP
response, so a rejected handshake never sees a ``101``. Header values are compared the way
RFC 7230 says: tokens case-insensitively, optional whitespace around values ignored.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from ..logs import hide, scrub
from ..protocol import AUTH_PREFIX, TOKEN_PARAM

_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
#: An RFC 7230 token, as Werkzeug spells header names in the environ (``HTTP_X_Y``).
_HEADER_NAME = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~]+")
#: Control characters other than HTAB are not allowed in a header value.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Rejection:
    """A request answered with an HTTP status instead of being served (``101`` or a view)."""

    status: int
    message: str
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
    #: What to log besides the request line (the refused value, sanitised).
    detail: str = ""


Origin = tuple[str, str, "int | None"]


def printable(value: str, limit: int = 100) -> str:
    """``value`` quoted for a log line: control characters escaped, cut to ``limit`` chars."""
    text = value if len(value) <= limit else value[:limit] + "…"
    return repr(text)


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
    """An exact allowlist of origins (parsed, never prefix-matched); ``null`` only if listed."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._allowed: set[Origin] = set()
        self.allows_null = False
        for origin in origins:
            self.add(origin)

    def add(self, origin: str) -> None:
        """Allow ``origin``; raise ``ValueError`` naming it if it is not a valid origin."""
        if origin.strip() == "null":
            self.allows_null = True
            return
        parsed = parse_origin(origin)
        if parsed is None:
            raise ValueError(
                f"{printable(origin)} is not an origin (expected scheme://host[:port], "
                "file:// or null)"
            )
        self._allowed.add(parsed)

    def allows(self, origin: str) -> bool:
        """Whether the ``Origin`` header value ``origin`` is on the list."""
        if origin.strip() == "null":
            return self.allows_null
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
    value = environ.get("HTTP_HOST", "")
    name = host_name(value)
    if name is None or name not in hosts:
        return Rejection(
            403,
            "Forbidden: unexpected Host header",
            "host",
            detail=f"host {printable(value)} not allowed (only loopback names and --host)",
        )
    return None


def check_headers(environ: Mapping[str, Any]) -> Rejection | None:
    """400 for a header name that is not a token or a value with a control character."""
    for key, value in environ.items():
        if not key.startswith("HTTP_"):
            continue
        if not _HEADER_NAME.fullmatch(key[5:]):
            return Rejection(400, "Bad Request: malformed header name", "header")
        if isinstance(value, str) and _BAD_VALUE.search(value):
            name = key[5:].replace("_", "-").title()
            return Rejection(400, f"Bad Request: control character in {name}", "header")
    return None


def _tokens(value: str) -> set[str]:
    return {part.strip(" \t").lower() for part in value.split(",")}


def check_upgrade(environ: Mapping[str, Any]) -> Rejection | None:
    """RFC 6455 section 4.2.1: method, Upgrade, Connection, version and key."""
    if environ.get("REQUEST_METHOD") != "GET":
        return Rejection(405, "Method Not Allowed: use GET", "method", {"Allow": "GET"})
    if "websocket" not in _tokens(environ.get("HTTP_UPGRADE", "")):
        return Rejection(
            400, "Bad Request: this is a WebSocket endpoint (Upgrade: websocket)", "upgrade"
        )
    if "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        return Rejection(400, "Bad Request: Connection header must include Upgrade", "upgrade")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip(" \t") != "13":
        return Rejection(
            426,
            "Upgrade Required: Sec-WebSocket-Version 13",
            "version",
            {"Sec-WebSocket-Version": "13"},
        )
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip(" \t")
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
    return [p.strip(" \t") for p in value.split(",") if p.strip(" \t")]


def query_token(query_string: str) -> str | None:
    """The value of the ``token`` parameter, under exactly that (undecoded) name."""
    for part in query_string.split("&"):
        name, sep, value = part.partition("=")
        if sep and name == TOKEN_PARAM:
            return unquote(value)
    return None


def presented_token(environ: Mapping[str, Any]) -> str | None:
    """The token from the subprotocol pair, ``Authorization: Bearer`` or ``?token=``."""
    for proto in offered_subprotocols(environ):
        if proto.startswith(AUTH_PREFIX):
            return proto[len(AUTH_PREFIX) :]
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query_token(environ.get("QUERY_STRING", ""))


UNAUTHORIZED = Rejection(401, "Unauthorized: a valid token is required", "token")


def check_token(environ: Mapping[str, Any], token: str | None) -> Rejection | None:
    """401 (same body for missing and wrong) unless the request carries ``token``.

    ``token`` ``None`` means authentication is off (``--no-auth``).
    """
    if token is None:
        return None
    hide(token)  # from the first check on, no log line can show it (sidecar.logs.scrub)
    given = presented_token(environ)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        return UNAUTHORIZED
    return None


def same_origin(origin: Origin, host_header: str) -> bool:
    """Whether ``origin`` is the server's own: ``http://`` plus exactly the ``Host`` header."""
    own = parse_origin("http://" + host_header.strip()) if host_header.strip() else None
    return own is not None and own == origin


def check_origin(environ: Mapping[str, Any], policy: OriginPolicy) -> Rejection | None:
    """403 for an Origin that is neither on the allowlist nor the server's own.

    The server's own origin is ``http://`` + the ``Host`` header, which the Host check has
    already restricted to loopback names. An absent Origin (a non-browser client) passes; the
    token check that follows is what admits it (and a listed ``null``).
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin is None or policy.allows(origin):
        return None
    parsed = parse_origin(origin)
    if parsed is not None and same_origin(parsed, environ.get("HTTP_HOST", "")):
        return None
    return Rejection(
        403,
        "Forbidden: origin not allowed",
        "origin",
        detail=f"origin {printable(origin)} not allowed (add it with --allowed-origins)",
    )


#: One query parameter (``name=value``, or a bare name) after ``?``, ``&`` or ``;``.
_QUERY_PART = re.compile(r"(?<=[?&;])[^&;\s\"'#]+")
#: Decoding rounds tried on a parameter name (``%2574oken`` is ``%74oken`` is ``token``).
_DECODE_ROUNDS = 4


def _decoded(text: str) -> str:
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def names_a_token(name: str) -> bool:
    """Whether a query parameter name, decoded and normalised, mentions ``token``."""
    letters = re.sub(r"[^a-z]", "", unicodedata.normalize("NFKC", _decoded(name)).casefold())
    return TOKEN_PARAM in letters


def _redact_part(match: re.Match[str]) -> str:
    part = match[0]
    name, equals, _value = part.partition("=")
    if not names_a_token(_decoded(part).partition("=")[0]):
        return part
    return f"{name}=[redacted]" if equals else "[redacted]"  # ``token%3D…``: all of it


def redact(text: str) -> str:
    """``text`` with the value of every query parameter whose name mentions ``token`` removed.

    Every spelling counts, decoded as often as it takes (``%74oken``, ``TOKEN``, ``tok%65n``,
    ``%2574oken``, ``token%3D…``, ``access_token``), so that no log line can show a token even
    when the request used a spelling the server does not accept (it accepts only ``token``).
    The token's own value is removed wherever it is (:func:`sidecar.logs.scrub`).
    """
    text = scrub(text)
    if "?" not in text and "&" not in text and ";" not in text:
        return text
    return _QUERY_PART.sub(_redact_part, text)
