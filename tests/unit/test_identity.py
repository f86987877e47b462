"""The access rules and subscription tokens, without a server: every rule in its order.

A mutant that lets one ``forbidden`` through, or one token it should not, fails here; the
same rules are exercised over real sockets in ``tests/test_identity.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidecar.core.identity import (
    MAX_TOKEN_LENGTH,
    MAX_TOKEN_TTL,
    SUPERUSER,
    Grant,
    Identity,
    SubscriptionTokens,
    decide,
)
from sidecar.protocol import ChannelErrorCode

FORBIDDEN = ChannelErrorCode.FORBIDDEN
ALICE = Identity("alice", channels=("team:red",))


def yes(_identity: Identity, _channel: str) -> bool:
    return True


def no(_identity: Identity, _channel: str) -> bool:
    return False


# -- decide, rule by rule ---------------------------------------------------------------------


@pytest.mark.parametrize("hook", [None, no, yes])
@pytest.mark.parametrize("channel", ["user:bob", "team:blue", "x", "user"])
def test_a_superuser_joins_anything(hook: Any, channel: str) -> None:
    assert decide(SUPERUSER, channel, hook) is None


@pytest.mark.parametrize(
    ("channel", "allowed"),
    [
        ("user:alice", True),
        ("user:alice:notes", True),  # segments below one's own
        ("user:bob", False),
        ("user:Alice", False),
        ("user:alice2", False),
        ("user", False),
        ("user:bob:alice", False),
    ],
)
@pytest.mark.parametrize("hook", [None, no, yes])
def test_a_user_channel_is_its_users_only_whatever_the_hook_says(
    channel: str, allowed: bool, hook: Any
) -> None:
    assert decide(ALICE, channel, hook) == (None if allowed else FORBIDDEN)


def test_an_identity_without_a_user_joins_no_user_channel() -> None:
    assert decide(Identity(None), "user:alice", yes) == FORBIDDEN


@pytest.mark.parametrize("hook", [None, no])
def test_the_identitys_own_channels_are_granted(hook: Any) -> None:
    assert decide(ALICE, "team:red", hook) is None
    assert decide(ALICE, "team:blue", hook) == FORBIDDEN


def test_the_hook_decides_the_rest_and_only_true_admits() -> None:
    seen: list[tuple[str | None, str]] = []

    def hook(identity: Identity, channel: str) -> Any:
        seen.append((identity.user, channel))
        return {"team:a": True, "team:b": 1, "team:c": "yes", "team:d": False}.get(channel)

    assert decide(ALICE, "team:a", hook) is None
    for channel in ("team:b", "team:c", "team:d", "team:e"):
        assert decide(ALICE, channel, hook) == FORBIDDEN, channel
    assert seen[0] == ("alice", "team:a")


def test_without_a_hook_nothing_else_is_granted() -> None:
    assert decide(ALICE, "project:p1", None) == FORBIDDEN


# -- the identity itself ----------------------------------------------------------------------


def test_granted_channels_put_the_personal_channel_first_once() -> None:
    identity = Identity("alice", channels=("team:red", "user:alice"))
    assert identity.granted() == ["user:alice", "team:red"]
    assert Identity(None, channels=("a:b",)).granted() == ["a:b"]


@pytest.mark.parametrize(
    "fields",
    [
        {"user": "a b"},
        {"user": ""},
        {"user": "x" * 65},
        {"user": 7},
        {"channels": "team:red"},
        {"channels": ("Bad",)},
        {"expires_at": float("inf")},
        {"expires_at": "soon"},
    ],
)
def test_a_malformed_identity_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Identity(**fields)


# -- subscription tokens --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> SubscriptionTokens:
    return SubscriptionTokens("secret-key", clock=clock)


def test_a_token_admits_its_user_to_its_channels_until_it_expires(
    tokens: SubscriptionTokens, clock: Clock
) -> None:
    token = tokens.issue("alice", ["team:red", "team:blue"], ttl=60)
    assert tokens.check(token, "alice", "team:red") is None
    assert tokens.check(token, "alice", "team:blue") is None
    assert tokens.check(token, "bob", "team:red") == FORBIDDEN
    assert tokens.check(token, None, "team:red") == FORBIDDEN
    assert tokens.check(token, "alice", "team:green") == FORBIDDEN
    clock.now += 59.9
    assert tokens.check(token, "alice", "team:red") is None
    clock.now += 0.1
    assert tokens.check(token, "alice", "team:red") == ChannelErrorCode.TOKEN_EXPIRED


def test_what_a_token_holds(tokens: SubscriptionTokens, clock: Clock) -> None:
    token = tokens.issue("alice", ["team:red", "team:red", "a:b"], ttl=30.5)
    assert tokens.read(token) == Grant("alice", ("a:b", "team:red"), 1_000_000, 1_000_031)
    body = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert body == {"u": "alice", "c": ["a:b", "team:red"], "iat": 1_000_000, "exp": 1_000_031}


@pytest.mark.parametrize(
    "token",
    [
        None,
        7,
        "",
        "v1.",
        "v2.abc.def",
        "v1.abc",
        "v1." + "A" * MAX_TOKEN_LENGTH,
        "v1.é.x",
    ],
)
def test_malformed_tokens_are_bad_tokens(tokens: SubscriptionTokens, token: Any) -> None:
    assert tokens.read(token) is None
    assert tokens.check(token, "alice", "team:red") == ChannelErrorCode.BAD_TOKEN


def test_a_forged_token_is_a_bad_token(tokens: SubscriptionTokens) -> None:
    token = tokens.issue("alice", ["team:red"], ttl=60)
    _v, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["u"] = "mallory"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for forged in (f"v1.{forged_body}.{signature}", f"v1.{body}.{signature[:-2]}AA"):
        assert tokens.check(forged, "mallory", "team:red") == ChannelErrorCode.BAD_TOKEN
    other = SubscriptionTokens("another-key")
    assert other.check(token, "alice", "team:red") == ChannelErrorCode.BAD_TOKEN


def test_a_signed_token_with_bad_claims_is_a_bad_token(tokens: SubscriptionTokens) -> None:
    sign = tokens._sign  # the tests forge what a leaked key could: claims that do not parse
    for claims in ({"u": "a b", "c": ["x"], "iat": 1, "exp": 2}, {"u": "a", "c": ["Bad"]}):
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        signature = base64.urlsafe_b64encode(sign(body)).rstrip(b"=").decode()
        assert tokens.read(f"v1.{body}.{signature}") is None


@pytest.mark.parametrize(
    ("user", "channels", "ttl"),
    [
        ("alice", ["team:red"], 0),
        ("alice", ["team:red"], -1),
        ("alice", ["team:red"], MAX_TOKEN_TTL + 1),
        ("alice", ["team:red"], float("nan")),
        ("alice", [], 60),
        ("alice", ["Bad"], 60),
        ("a b", ["team:red"], 60),
        ("alice", [f"team:{i:060d}" for i in range(100)], 60),  # too long a token
    ],
)
def test_tokens_that_cannot_be_issued(
    tokens: SubscriptionTokens, user: str, channels: list[str], ttl: float
) -> None:
    with pytest.raises(ValueError):
        tokens.issue(user, channels, ttl)


def test_the_longest_ttl_is_an_hour_and_a_key_is_needed(tokens: SubscriptionTokens) -> None:
    assert tokens.issue("alice", ["team:red"], ttl=MAX_TOKEN_TTL)
    with pytest.raises(ValueError):
        SubscriptionTokens(b"")


def test_tokens_are_unpadded_url_safe_text_and_every_one_issued_checks(
    tokens: SubscriptionTokens,
) -> None:
    # bodies of every length modulo 3 (padded or not before the padding is cut)
    issued = [tokens.issue(f"user{i}", [f"team:{'x' * (i % 7)}a"], ttl=60) for i in range(300)]
    alphabet = set("0123456789-_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert all(set(t[3:]) <= alphabet | {"."} for t in issued)
    assert {len(t.split(".")[1]) % 4 for t in issued} == {0, 2, 3}
    for i, token in enumerate(issued):
        assert tokens.check(token, f"user{i}", f"team:{'x' * (i % 7)}a") is None


def signed(tokens: SubscriptionTokens, count: int, last: int) -> str:
    """An authentic token (signed with the key, as issue() would sign it) of ``count``
    channels of 62 characters and one of ``2 + last``."""
    names = [f"c:{i:060d}" for i in range(count)] + ["c:" + "b" * last]
    claims = {"c": names, "exp": 2_000_000, "iat": 1_000_000, "u": "al"}
    body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    text = body.rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(tokens._sign(text)).rstrip(b"=").decode()
    return f"v1.{text}.{signature}"


def test_an_authentic_token_over_the_length_bound_is_refused(tokens: SubscriptionTokens) -> None:
    # (no token is exactly 4096 characters long: 3 + 4k+{0,2,3} + 1 + 43 is never 4k)
    by_length = {len(signed(tokens, n, m)): (n, m) for n in range(40, 50) for m in range(1, 65)}
    under = signed(tokens, *by_length[max(k for k in by_length if k <= MAX_TOKEN_LENGTH)])
    over = signed(tokens, *by_length[min(k for k in by_length if k > MAX_TOKEN_LENGTH)])
    assert tokens.read(under) is not None
    assert tokens.read(over) is None


def test_a_token_may_live_under_a_second_and_refusals_say_why(tokens: SubscriptionTokens) -> None:
    token = tokens.issue("alice", ["team:red"], ttl=0.5)  # rounded up to a whole second
    assert tokens.check(token, "alice", "team:red") is None
    with pytest.raises(ValueError, match=r"^a subscription token names at least one channel$"):
        tokens.issue("alice", [], 60)
    with pytest.raises(ValueError, match="ttl must be more than 0 and at most 3600 seconds"):
        tokens.issue("alice", ["team:red"], 0)


def test_a_token_issued_today_is_the_same_text_tomorrow() -> None:
    # a pinned vector: tokens handed to pages before an upgrade stay valid after it, and
    # every worker of a deployment reads the others' (the key derivation, the claims' JSON)
    tokens = SubscriptionTokens("secret-key", clock=lambda: 1_700_000_000.0)
    token = tokens.issue("alice", ["team:red", "a:b"], ttl=60)
    assert token == PINNED


#: Computed apart from the code: HMAC-SHA256 keyed by HMAC-SHA256(secret, TOKEN_PURPOSE) over
#: ``v1.`` + the unpadded base64url of the compact, key-sorted JSON claims.
PINNED = (
    "v1.eyJjIjpbImE6YiIsInRlYW06cmVkIl0sImV4cCI6MTcwMDAwMDA2MCwiaWF0IjoxNzAwMDAwMDAwLCJ1Ijoi"
    "YWxpY2UifQ.PiORy3UVOnNo7nOTMX-IsbiaW7W1ZYk-IaSaFMmvnAw"
)


def test_what_cannot_be_made_says_why(tokens: SubscriptionTokens) -> None:
    with pytest.raises(
        ValueError, match=r"^Identity\.channels is a sequence of channel names, not one string$"
    ):
        Identity("alice", channels="team:red")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_at must be a Unix time"):
        Identity("alice", expires_at=float("inf"))
    with pytest.raises(
        ValueError, match=r"^subscription tokens need a secret \(the app's SECRET_KEY\)$"
    ):
        SubscriptionTokens("")
    with pytest.raises(ValueError, match=r"^too many channels for one token$"):
        tokens.issue("alice", [f"team:{i:060d}" for i in range(100)], 60)
