"""The checks made before the upgrade, as pure functions over a WSGI environ.

Each refusal is pinned by what a client sees: the HTTP status, the message, the headers, and
the reason tag the counters (``/api/v1/hub``) use. The same checks run over real sockets in
``tests/test_security.py``.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from sidecar import logs
from sidecar.web import guards
from sidecar.web.guards import OriginPolicy, Rejection

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key: 16 bytes


def upgrade(**headers: str) -> dict[str, Any]:
    """A valid upgrade request's environ, with header overrides (``HTTP_`` names)."""
    head = (
        "HOST=127.0.0.1:3008 UPGRADE=websocket CONNECTION=Upgrade "
        f"SEC_WEBSOCKET_KEY={KEY} SEC_WEBSOCKET_VERSION=13"
    )
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    for pair in head.split():
        name, value = pair.split("=", 1)
        environ["HTTP_" + name] = value
    environ.update(headers)
    return environ


def refusal(rejection: Rejection | None) -> tuple[int, str] | None:
    return None if rejection is None else (rejection.status, rejection.reason)


# -- origins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("http://localhost:5173", ("http", "localhost", 5173)),
        ("HTTP://LocalHost:5173/", ("http", "localhost", 5173)),
        (" http://localhost ", ("http", "localhost", 80)),
        ("https://tauri.localhost", ("https", "tauri.localhost", 443)),
        ("ws://a", ("ws", "a", 80)),
        ("wss://a", ("wss", "a", 443)),
        ("tauri://localhost", ("tauri", "localhost", None)),
        ("file://", ("file", "", None)),
        ("http://[::1]:8080", ("http", "::1", 8080)),
    ],
)
def test_parse_origin_accepts_serialised_origins(text: str, parsed: tuple[str, str, int]) -> None:
    assert guards.parse_origin(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "null",
        "localhost:5173",
        "http://",
        "http://a/path",
        "http://a?q=1",
        "http://a#frag",
        "http://user@a",
        "http://user:pw@a",
        "http://a:99999",
        "http://a:port",
        "tauri://",
    ],
)
def test_parse_origin_refuses_what_is_not_an_origin(text: str) -> None:
    assert guards.parse_origin(text) is None


def test_an_origin_policy_is_an_exact_list() -> None:
    policy = OriginPolicy(["http://localhost:5173", "file://"])
    assert policy.allows("http://localhost:5173") and policy.allows("http://LOCALHOST:5173/")
    assert policy.allows("file://")
    for other in ("http://localhost:5174", "https://localhost:5173", "null", "garbage"):
        assert not policy.allows(other)
    assert not policy.allows_null
    policy.add(" null ")
    assert policy.allows_null and policy.allows("null")


def test_an_origin_policy_names_an_entry_that_is_not_an_origin() -> None:
    with pytest.raises(ValueError) as info:
        OriginPolicy(["http://ok", "http://bad/path"])
    assert str(info.value) == (
        "'http://bad/path' is not an origin (expected scheme://host[:port], file:// or null)"
    )


def described(rejection: Rejection | None) -> tuple[int, str, str, str]:
    """A refusal's status, message, reason and log detail (it must be one)."""
    assert rejection is not None
    return rejection.status, rejection.message, rejection.reason, rejection.detail


def test_check_origin() -> None:
    policy = OriginPolicy(["http://localhost:5173"])
    assert guards.check_origin(upgrade(), policy) is None  # no Origin: the token decides
    assert guards.check_origin(upgrade(HTTP_ORIGIN="http://localhost:5173"), policy) is None
    own = upgrade(HTTP_ORIGIN="http://127.0.0.1:3008", HTTP_HOST="127.0.0.1:3008")
    assert guards.check_origin(own, policy) is None  # the server's own pages
    assert described(guards.check_origin(upgrade(HTTP_ORIGIN="http://evil.example"), policy)) == (
        403,
        "Forbidden: origin not allowed",
        "origin",
        "origin 'http://evil.example' not allowed (add it with --allowed-origins)",
    )
    for origin, host in [("https://127.0.0.1:3008", "127.0.0.1:3008"), ("null", "x"), ("x", "")]:
        environ = upgrade(HTTP_ORIGIN=origin, HTTP_HOST=host)
        assert refusal(guards.check_origin(environ, policy)) == (403, "origin")


def test_same_origin_is_http_and_exactly_the_host_header() -> None:
    assert guards.same_origin(("http", "localhost", 3008), "localhost:3008")
    assert guards.same_origin(("http", "localhost", 80), " localhost ")
    assert not guards.same_origin(("http", "localhost", 3008), "localhost:3009")
    assert not guards.same_origin(("http", "localhost", 80), "")
    assert not guards.same_origin(("http", "localhost", 80), "   ")


# -- hosts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:3008", "localhost"),
        (" 127.0.0.1:1 ", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::1]:3008", "[::1]"),
        ("", None),
        ("   ", None),
        (":3008", None),
        ("host:port", None),
        ("[::1", None),
        ("[::1]x", None),
        ("[::1]:123456", None),
        ("[::1]:", None),
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert guards.host_name(header) == name


def test_allowed_hosts_are_loopback_plus_the_bound_host() -> None:
    loopback = {"127.0.0.1", "localhost", "[::1]", "::1"}
    assert guards.allowed_hosts("0.0.0.0") == loopback
    assert guards.allowed_hosts("::") == loopback
    assert guards.allowed_hosts("") == loopback
    assert guards.allowed_hosts("My.Host") == {*loopback, "my.host"}
    assert guards.allowed_hosts("fe80::1") == {*loopback, "[fe80::1]"}
    assert guards.allowed_hosts("[fe80::1]") == {*loopback, "[fe80::1]"}


def test_check_host() -> None:
    hosts = guards.allowed_hosts("127.0.0.1")
    assert guards.check_host(upgrade(HTTP_HOST="localhost:1"), hosts) is None
    assert described(guards.check_host(upgrade(HTTP_HOST="evil.example:3008"), hosts)) == (
        403,
        "Forbidden: unexpected Host header",
        "host",
        "host 'evil.example:3008' not allowed (only loopback names and --host)",
    )
    no_host = upgrade()
    del no_host["HTTP_HOST"]
    assert refusal(guards.check_host(no_host, hosts)) == (403, "host")


# -- the upgrade headers ------------------------------------------------------------------------


def test_a_valid_upgrade_passes_every_check() -> None:
    environ = upgrade(
        HTTP_UPGRADE="WebSocket", HTTP_CONNECTION="keep-alive,\tUpgrade", HTTP_X_OK="a\tb"
    )
    assert guards.check_upgrade(environ) is None
    assert guards.check_headers(environ) is None
    assert guards.check_upgrade(upgrade(HTTP_SEC_WEBSOCKET_VERSION=" 13\t")) is None
    assert guards.check_upgrade(upgrade(HTTP_SEC_WEBSOCKET_KEY=f"\t{KEY} ")) is None


@pytest.mark.parametrize(
    ("headers", "status", "message", "reason"),
    [
        ({"REQUEST_METHOD": "POST"}, 405, "Method Not Allowed: use GET", "method"),
        (
            {"HTTP_UPGRADE": "h2c"},
            400,
            "Bad Request: this is a WebSocket endpoint (Upgrade: websocket)",
            "upgrade",
        ),
        (
            {"HTTP_CONNECTION": "keep-alive"},
            400,
            "Bad Request: Connection header must include Upgrade",
            "upgrade",
        ),
        (
            {"HTTP_SEC_WEBSOCKET_VERSION": "8"},
            426,
            "Upgrade Required: Sec-WebSocket-Version 13",
            "version",
        ),
        (
            {"HTTP_SEC_WEBSOCKET_KEY": "c2hvcnQ="},
            400,
            "Bad Request: missing or malformed Sec-WebSocket-Key",
            "key",
        ),
        (
            {"HTTP_SEC_WEBSOCKET_KEY": "not base64!!"},
            400,
            "Bad Request: missing or malformed Sec-WebSocket-Key",
            "key",
        ),
    ],
)
def test_check_upgrade_refuses_with_the_rfc_status(
    headers: dict[str, str], status: int, message: str, reason: str
) -> None:
    rejection = guards.check_upgrade(upgrade(**headers))
    assert rejection is not None
    assert (rejection.status, rejection.message, rejection.reason) == (status, message, reason)
    if status == 405:
        assert rejection.headers == {"Allow": "GET"}
    if status == 426:
        assert rejection.headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize("missing", ["HTTP_UPGRADE", "HTTP_CONNECTION", "HTTP_SEC_WEBSOCKET_KEY"])
def test_a_missing_upgrade_header_is_400(missing: str) -> None:
    environ = upgrade()
    del environ[missing]
    assert refusal(guards.check_upgrade(environ))[0] == 400  # type: ignore[index]


def test_a_missing_version_is_426_and_no_method_is_405() -> None:
    environ = upgrade()
    del environ["HTTP_SEC_WEBSOCKET_VERSION"]
    assert refusal(guards.check_upgrade(environ)) == (426, "version")
    del environ["REQUEST_METHOD"]
    assert refusal(guards.check_upgrade(environ)) == (405, "method")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"HTTP_BAD NAME": "x"}, "Bad Request: malformed header name"),
        ({"HTTP_": "x"}, "Bad Request: malformed header name"),
        ({"HTTP_X_CUSTOM": "a\x00b"}, "Bad Request: control character in X-Custom"),
        ({"HTTP_X_CUSTOM": "a\nb"}, "Bad Request: control character in X-Custom"),
        ({"HTTP_X_CUSTOM": "a\x1fb"}, "Bad Request: control character in X-Custom"),
        ({"HTTP_X_CUSTOM": "a\x7fb"}, "Bad Request: control character in X-Custom"),
    ],
)
def test_check_headers_refuses_malformed_headers(headers: dict[str, str], message: str) -> None:
    rejection = guards.check_headers(upgrade(**headers))
    assert rejection is not None
    assert (rejection.status, rejection.message, rejection.reason) == (400, message, "header")


def test_check_headers_looks_only_at_http_headers() -> None:
    environ = upgrade(**{"wsgi.input": "a\x00b", "SERVER NAME": "x", "HTTP_X_NUM": 3})  # type: ignore[arg-type]
    assert guards.check_headers(environ) is None


# -- tokens -------------------------------------------------------------------------------------


def test_offered_subprotocols_in_order() -> None:
    assert guards.offered_subprotocols(upgrade()) == []
    environ = upgrade(HTTP_SEC_WEBSOCKET_PROTOCOL=" sidecar.v1 ,\tauth.x, ,")
    assert guards.offered_subprotocols(environ) == ["sidecar.v1", "auth.x"]


#: A query string, and the token it carries under exactly the name ``token`` (or none).
QUERY_TOKENS: dict[str, str | None] = {
    "token=abc": "abc",
    "a=1&token=a%2Db&token=second": "a-b",
    "token=": "",
    "TOKEN=abc": None,
    "%74oken=abc": None,
    "tokens=abc": None,
    "token": None,
    "": None,
}


@pytest.mark.parametrize(("query", "token"), QUERY_TOKENS.items())
def test_query_token_takes_exactly_the_token_name(query: str, token: str | None) -> None:
    assert guards.query_token(query) == token


def test_presented_token_prefers_the_subprotocol_then_bearer_then_query() -> None:
    every = upgrade(
        HTTP_SEC_WEBSOCKET_PROTOCOL="sidecar.v1, auth.proto",
        HTTP_AUTHORIZATION="Bearer header",
        QUERY_STRING="token=query",
    )
    assert guards.presented_token(every) == "proto"
    del every["HTTP_SEC_WEBSOCKET_PROTOCOL"]
    assert guards.presented_token(every) == "header"
    every["HTTP_AUTHORIZATION"] = " bEaReR   spaced  "
    assert guards.presented_token(every) == "spaced"
    every["HTTP_AUTHORIZATION"] = "Bearer   "
    assert guards.presented_token(every) == "query"
    every["HTTP_AUTHORIZATION"] = "Basic header"
    assert guards.presented_token(every) == "query"
    del every["QUERY_STRING"]
    assert guards.presented_token(every) is None


def test_check_token() -> None:
    assert guards.check_token(upgrade(), None) is None  # --no-auth
    right = upgrade(HTTP_AUTHORIZATION="Bearer s3cret")
    assert guards.check_token(right, "s3cret") is None
    for environ in (upgrade(), upgrade(HTTP_AUTHORIZATION="Bearer wrong")):
        assert guards.check_token(environ, "s3cret") is guards.UNAUTHORIZED
    assert (guards.UNAUTHORIZED.status, guards.UNAUTHORIZED.reason) == (401, "token")
    assert guards.UNAUTHORIZED.message == "Unauthorized: a valid token is required"
    assert guards.check_token(upgrade(QUERY_STRING="token=s3cre"), "s3cret") is not None


def test_a_checked_token_is_scrubbed_from_every_later_log_line() -> None:
    token = "tok-" + secrets.token_hex(8)  # a value no other test has hidden
    assert logs.scrub(f"peer sent {token}") == f"peer sent {token}"
    guards.check_token(upgrade(), token)
    assert logs.scrub(f"peer sent {token}") == "peer sent [redacted]"


# -- logging ------------------------------------------------------------------------------------


def test_printable_escapes_and_cuts() -> None:
    assert guards.printable("a\nb") == "'a\\nb'"
    assert guards.printable("x" * 100) == repr("x" * 100)
    assert guards.printable("x" * 101) == repr("x" * 100 + "…")
    assert guards.printable("abcdef", limit=3) == repr("abc…")


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("/ws?token=abc", "/ws?token=[redacted]"),
        ("/ws?a=1&TOKEN=abc&b=2", "/ws?a=1&TOKEN=[redacted]&b=2"),
        ("/ws?%74oken=abc", "/ws?%74oken=[redacted]"),
        ("/ws?x=1&tok%65n=abc", "/ws?x=1&tok%65n=[redacted]"),
        ("/ws;token=abc", "/ws;token=[redacted]"),
        ("/ws?+token+=abc", "/ws?+token+=[redacted]"),
        ("/ws?tokens=abc", "/ws?tokens=[redacted]"),  # any name that mentions token
        ("/ws?x=1;token=abc", "/ws?x=1;token=[redacted]"),
        ("/ws?a=token", "/ws?a=token"),
        ("/ws?mode=token=x", "/ws?mode=token=x"),  # the name is what counts, up to the first =
        ("/ws?token=a=b&c=d", "/ws?token=[redacted]&c=d"),  # the whole value, = and all
        ("/ws?token%3Dabc", "/ws?[redacted]"),  # the = is encoded: the whole part goes
        ("/ws?x=1&token%253Dabc", "/ws?x=1&[redacted]"),
        ("/ws?to_ken=abc", "/ws?to_ken=[redacted]"),  # letters only: separators do not hide it
        ("/ws?t.o-k%20en=abc", "/ws?t.o-k%20en=[redacted]"),
        ("a&token=abc", "a&token=[redacted]"),  # no ? or ;: an & alone starts a parameter
        ("no query", "no query"),
        ("token=abc", "token=abc"),  # not a query parameter
    ],
)
def test_redact(text: str, redacted: str) -> None:
    assert guards.redact(text) == redacted


# -- the exact characters each check strips, splits and compares --------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"HTTP_UPGRADE": "websocket\x0b"}, 400),  # only spaces and tabs are whitespace here
        ({"HTTP_UPGRADE": "Xwebsocket"}, 400),
        ({"HTTP_CONNECTION": "keep-alive,Upgrade"}, None),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "13\x0b"}, 426),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "X13"}, 426),
        ({"HTTP_SEC_WEBSOCKET_KEY": KEY + "\x0b"}, 400),
        ({"HTTP_SEC_WEBSOCKET_KEY": "X" + KEY}, 400),
    ],
)
def test_check_upgrade_strips_only_optional_whitespace(
    headers: dict[str, str], status: int | None
) -> None:
    rejection = guards.check_upgrade(upgrade(**headers))
    assert (rejection.status if rejection else None) == status


def test_a_header_name_is_checked_from_its_first_character() -> None:
    rejection = guards.check_headers(upgrade(**{"HTTP_(X": "1"}))
    assert rejection is not None and rejection.reason == "header"


def test_check_host_names_a_missing_host_as_empty() -> None:
    environ = upgrade()
    del environ["HTTP_HOST"]
    rejection = guards.check_host(environ, guards.allowed_hosts("127.0.0.1"))
    assert rejection is not None
    assert rejection.detail == "host '' not allowed (only loopback names and --host)"


def test_an_origin_without_a_host_header_is_not_the_servers_own() -> None:
    environ = upgrade(HTTP_ORIGIN="http://xxxx")
    del environ["HTTP_HOST"]
    assert refusal(guards.check_origin(environ, OriginPolicy([]))) == (403, "origin")


def test_a_bracketed_host_ends_at_its_first_bracket() -> None:
    assert guards.host_name("[::1]]") is None


def test_subprotocols_keep_all_but_spaces_and_tabs() -> None:
    environ = upgrade(HTTP_SEC_WEBSOCKET_PROTOCOL="\x0bsidecar.v1, auth.abcX ,X,\x0b")
    assert guards.offered_subprotocols(environ) == ["\x0bsidecar.v1", "auth.abcX", "X", "\x0b"]
    assert guards.presented_token(environ) == "abcX"


def test_a_token_value_may_hold_an_equals_sign() -> None:
    assert guards.query_token("token=a=b") == "a=b"


def test_allows_answers_a_boolean() -> None:
    policy = OriginPolicy(["http://localhost:5173"])
    assert policy.allows("null") is False and policy.allows_null is False
    assert policy.allows("http://localhost:5173") is True
