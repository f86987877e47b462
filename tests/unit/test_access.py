"""The app's identity hooks, applied (``sidecar.web.access``), without a server.

Each hook runs inside a Flask request context, as on a connection's request thread; what is
checked is what the connection gets (the superuser, the hook's identity, a 401, a
``channel:error`` code) and the one rate-limited log line a failing hook is worth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from sidecar.core.identity import SUPERUSER, Identity, SubscriptionTokens
from sidecar.logs import LogLimiter
from sidecar.protocol import ChannelErrorCode
from sidecar.web.access import Access
from sidecar.web.guards import UNAUTHORIZED
from tests.unit.fakes import FakeClock

TOKEN = "shared-token-0123456789"
ALICE = Identity("alice", channels=("team:red",))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def access(clock: FakeClock) -> Access:
    return Access(TOKEN, LogLimiter(interval=10, clock=clock))


@pytest.fixture
def app() -> Iterator[Flask]:
    yield Flask(__name__)


def identify(app: Flask, access: Access, **headers: str) -> Any:
    with app.test_request_context("/ws", headers=headers) as context:
        return access.identify(context.request.environ)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sidecar.session"]


# -- who connects --------------------------------------------------------------------------------


def test_the_shared_token_is_the_superuser_whatever_the_hook(app: Flask, access: Access) -> None:
    access.authenticate = lambda _request: ALICE
    assert identify(app, access, Authorization=f"Bearer {TOKEN}") is SUPERUSER


def test_without_a_hook_the_token_is_required(
    app: Flask, access: Access, caplog: pytest.LogCaptureFixture
) -> None:
    refused = identify(app, access)
    assert refused.status == 401
    assert identify(app, access, Authorization="Bearer wrong").status == 401
    assert lines(caplog) == []  # no hook: nothing failed


def test_the_hook_identifies_everyone_else(app: Flask, access: Access) -> None:
    seen: list[str] = []

    def authenticate(request: Any) -> Identity | None:
        seen.append(request.headers.get("Cookie", ""))
        return ALICE if "alice" in seen[-1] else None

    access.authenticate = authenticate
    assert identify(app, access, Cookie="session=alice") is ALICE
    assert identify(app, access) is UNAUTHORIZED
    assert seen == ["session=alice", ""]


def test_an_identity_that_expired_is_refused(app: Flask, access: Access) -> None:
    import time

    later = Identity("alice", expires_at=time.time() + 60)
    gone = Identity("alice", expires_at=time.time() - 1)
    for identity, expected in ((later, later), (gone, UNAUTHORIZED)):
        access.authenticate = lambda _request, identity=identity: identity
        assert identify(app, access) is expected


def test_a_hook_that_fails_refuses_with_one_line_then_a_count(
    app: Flask, access: Access, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(_request: Any) -> Identity:
        raise ValueError("database down")

    access.authenticate = authenticate
    for _ in range(3):
        assert identify(app, access) is UNAUTHORIZED
    clock.advance(10)
    assert identify(app, access) is UNAUTHORIZED
    raised = "the authenticate hook raised ValueError('database down'): refused"
    assert lines(caplog) == [raised, raised.replace(": refused", ": refused (2 more not logged)")]


def test_a_hook_returning_something_else_refuses_and_says_what(
    app: Flask, access: Access, caplog: pytest.LogCaptureFixture
) -> None:
    access.authenticate = lambda _request: {"user": "alice"}  # type: ignore[assignment]
    assert identify(app, access) is UNAUTHORIZED
    assert lines(caplog) == ["authenticate returned dict: refused"]


def test_a_failing_hooks_message_is_cut_to_a_bounded_line(
    app: Flask, access: Access, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(_request: Any) -> Identity:
        raise ValueError("x" * 1000)

    access.authenticate = authenticate
    identify(app, access)
    [line] = lines(caplog)
    assert line == f"the authenticate hook raised {repr(ValueError('x' * 1000))[:200]}: refused"


def test_the_default_channel_is_for_everyone_unless_turned_off(access: Access) -> None:
    assert access.joins_default(ALICE) and access.joins_default(SUPERUSER)
    access.default_channel = False
    assert not access.joins_default(ALICE) and access.joins_default(SUPERUSER)


# -- each channel ----------------------------------------------------------------------------------


def test_channels_follow_the_rules_and_a_failing_authorize_hook_refuses(
    access: Access, caplog: pytest.LogCaptureFixture
) -> None:
    assert access.check(ALICE, "team:red") is None
    assert access.check(ALICE, "team:blue") == ChannelErrorCode.FORBIDDEN

    def authorize(_identity: Identity, _channel: str) -> bool:
        raise KeyError("team")

    access.authorize = authorize
    assert access.check(ALICE, "team:blue") == ChannelErrorCode.FORBIDDEN
    assert lines(caplog) == ["the authorize hook raised KeyError('team'): refused"]


def never(_user: str, _channel: str) -> float | None:
    return None


def test_a_token_admits_its_user_to_its_channel(access: Access) -> None:
    access.bind_secret("app-secret")
    tokens = access.tokens()
    assert tokens is not None
    token = tokens.issue("alice", ["team:blue"], 60)
    assert access.check_token(ALICE, "team:blue", token, never) is None
    assert access.check_token(ALICE, "team:green", token, never) == ChannelErrorCode.FORBIDDEN
    bob = Identity("bob")
    assert access.check_token(bob, "team:blue", token, never) == ChannelErrorCode.FORBIDDEN
    assert access.check_token(ALICE, "team:blue", "v1.junk", never) == ChannelErrorCode.BAD_TOKEN
    assert access.check_token(SUPERUSER, "team:blue", None, never) is None


def test_a_user_channel_is_its_users_whatever_the_token(access: Access) -> None:
    access.bind_secret("app-secret")
    tokens = access.tokens()
    assert tokens is not None
    token = tokens.issue("bob", ["user:bob"], 60)
    bob = Identity("bob")
    assert access.check_token(ALICE, "user:bob", token, never) == ChannelErrorCode.FORBIDDEN
    assert access.check_token(ALICE, "user:alice", None, never) is None
    assert access.check_token(bob, "user:bob", None, never) is None


def test_a_token_issued_up_to_a_revocation_is_refused_one_issued_after_is_not(
    access: Access,
) -> None:
    access.bind_secret("app-secret")
    tokens = access.tokens()
    assert tokens is not None
    token = tokens.issue("alice", ["team:blue"], 60)
    grant = tokens.read(token)
    assert grant is not None
    asked: list[tuple[str, str]] = []

    def revoked(at: float) -> Any:
        def revoked_at(user: str, channel: str) -> float | None:
            asked.append((user, channel))
            return at

        return revoked_at

    forbidden = ChannelErrorCode.FORBIDDEN
    assert access.check_token(ALICE, "team:blue", token, revoked(grant.issued + 0.5)) == forbidden
    assert access.check_token(ALICE, "team:blue", token, revoked(grant.issued)) == forbidden
    assert access.check_token(ALICE, "team:blue", token, revoked(grant.issued - 0.5)) is None
    assert asked == [("alice", "team:blue")] * 3
    bad = access.check_token(ALICE, "team:blue", "v1.junk", revoked(grant.issued - 0.5))
    assert bad == ChannelErrorCode.BAD_TOKEN


def test_a_token_without_a_user_is_checked_against_no_user(access: Access) -> None:
    access.bind_secret("app-secret")
    tokens = access.tokens()
    assert tokens is not None
    token = tokens.issue("alice", ["team:blue"], 60)
    asked: list[str] = []

    def revoked_at(user: str, _channel: str) -> float | None:
        asked.append(user)
        return None

    nobody = Identity(channels=("team:red",))
    assert access.check_token(nobody, "team:blue", token, revoked_at) == ChannelErrorCode.FORBIDDEN
    assert asked == []


# -- the key of subscription tokens ---------------------------------------------------------------


def admits(access: Access, secret: str) -> bool:
    token = SubscriptionTokens(secret).issue("alice", ["team:blue"], 60)
    return access.check_token(ALICE, "team:blue", token, never) is None


def test_tokens_are_keyed_by_the_app_secret_then_the_shared_token(app: Flask) -> None:
    access = Access(TOKEN, LogLimiter())
    assert admits(access, TOKEN)  # no app secret: the shared token
    app.secret_key = "flask-secret"
    fresh = Access(TOKEN, LogLimiter())
    with app.app_context():
        assert admits(fresh, "flask-secret") and not admits(fresh, TOKEN)
    fresh.bind_secret(b"bound-secret")  # the bound secret first, from then on
    assert admits(fresh, "bound-secret") and not admits(fresh, "flask-secret")
    fresh.bind_secret(None)  # nothing to bind: unchanged
    fresh.bind_secret("")
    assert admits(fresh, "bound-secret")


def test_without_any_secret_there_are_no_tokens(app: Flask) -> None:
    access = Access(None, LogLimiter())
    assert access.tokens() is None
    assert access.check_token(ALICE, "team:blue", "v1.x", never) == ChannelErrorCode.BAD_TOKEN
    app.secret_key = b"bytes-secret"
    with app.app_context():
        assert admits(Access(None, LogLimiter()), "bytes-secret")
    app.secret_key = ""
    with app.app_context():
        assert Access(None, LogLimiter()).tokens() is None


def test_the_token_checker_is_made_once(access: Access) -> None:
    access.bind_secret("app-secret")
    assert access.tokens() is access.tokens()


def test_a_hook_failure_line_names_no_more_than_its_kind(
    app: Flask, access: Access, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sidecar.session")

    def authorize(_identity: Identity, _channel: str) -> bool:
        raise RuntimeError("boom")

    def authenticate(_request: Any) -> Identity:
        raise RuntimeError("boom")

    access.authorize, access.authenticate = authorize, authenticate
    identify(app, access)
    access.check(ALICE, "team:blue")  # another hook: its own line, not suppressed
    assert len(lines(caplog)) == 2


def test_a_sub_channel_of_a_users_channel_is_that_users_whatever_the_token(
    access: Access,
) -> None:
    access.bind_secret("app-secret")
    tokens = access.tokens()
    assert tokens is not None
    token = tokens.issue("bob", ["user:alice:inbox"], 60)
    bob = Identity("bob")
    forbidden = ChannelErrorCode.FORBIDDEN
    assert access.check_token(bob, "user:alice:inbox", token, never) == forbidden
    assert access.check_token(ALICE, "user:alice:inbox", None, never) is None


def test_one_line_per_interval_for_the_authenticate_hook_whatever_its_failure(
    app: Flask, access: Access, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[Any] = [ValueError("down"), {"user": "alice"}]

    def authenticate(_request: Any) -> Any:
        failure = failures.pop(0)
        if isinstance(failure, Exception):
            raise failure
        return failure

    access.authenticate = authenticate
    assert identify(app, access) is UNAUTHORIZED
    assert identify(app, access) is UNAUTHORIZED
    assert lines(caplog) == ["the authenticate hook raised ValueError('down'): refused"]
    failures[:] = [{"user": "bob"}, ValueError("again")]
    assert identify(app, access) is UNAUTHORIZED
    assert identify(app, access) is UNAUTHORIZED
    assert len(lines(caplog)) == 1


def test_an_identity_expiring_this_very_second_is_refused(
    app: Flask, access: Access, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from sidecar.web import access as access_module

    monkeypatch.setattr(access_module, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    now = Identity("alice", expires_at=1_700_000_000.0)
    later = Identity("alice", expires_at=1_700_000_000.5)
    access.authenticate = lambda _request: now
    assert identify(app, access) is UNAUTHORIZED
    access.authenticate = lambda _request: later
    assert identify(app, access) is later
