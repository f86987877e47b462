"""The Python client's rules without a socket: :class:`sidecar.client.session.Session` and
:mod:`sidecar.client.policy`, with a clock of the test's own.

Every scenario of the shared vectors (``tests/data/client-vectors.json``) runs against the
Session here (the same file drives a real Subscriber over sockets and ``sidecar-client.js``);
the other tests pin the edges the vectors do not reach. Fast: the mutation run's ``client``
group runs this file.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import ChannelError, Event, Position, Resync
from sidecar.client.policy import (
    MAX_RETRY_AFTER,
    Backoff,
    RateLimit,
    backoff_delay,
    retry_after_refusal,
    should_reconnect,
)
from sidecar.client.session import Joined, Session
from sidecar.protocol import Since, parse_since

VECTORS_FILE = Path(__file__).resolve().parents[1] / "data" / "client-vectors.json"
VECTORS = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
SCENARIOS = VECTORS["scenarios"]
TIMESTAMP = "2026-01-01T00:00:00Z"


def frame_text(step: dict[str, Any]) -> str:
    """The text of a vector's ``receive``/``receiveText`` step (defaults filled in)."""
    if "receiveText" in step:
        return str(step["receiveText"])
    return json.dumps(
        {"type": "test:tick", "payload": {}, "timestamp": TIMESTAMP, **step["receive"]}
    )


def _logged(item: object) -> list[Any] | None:
    """An item as the vectors' ``expect`` writes it (``None``: not part of the record)."""
    if isinstance(item, Event):
        if item.type.partition(":")[0] in ("connection", "channel"):
            return None
        return ["event", item.channel, item.seq]
    if isinstance(item, Resync):
        fields = (item.epoch, item.seq, item.previous_epoch, item.previous_seq)
        return ["resync", item.channel, item.reason, *fields]
    if isinstance(item, ChannelError):
        return ["error", item.channel, item.code, item.retrying]
    return None


def log_of(items: list[Any]) -> list[list[Any]]:
    """What a client delivered, as the vectors' ``expect`` lists it."""
    return [entry for entry in map(_logged, items) if entry is not None]


def test_close_codes_match_the_vectors() -> None:
    codes = VECTORS["closeCodes"]
    assert [[code, should_reconnect(code)] for code, _ in codes] == codes


def test_backoff_ceilings_match_the_vectors() -> None:
    table = VECTORS["backoff"]
    backoff = Backoff(base=table["base"] / 1000, cap=table["cap"] / 1000)
    for attempt, ceiling in table["ceilings"]:
        assert backoff_delay(attempt, backoff, lambda: 1.0) == pytest.approx(ceiling / 1000)
        assert backoff_delay(attempt, backoff, lambda: 0.0) == 0.0
    assert backoff_delay(0, random=lambda: 0.5) == 0.25  # the defaults: 500 ms, 20 s


def _session(options: dict[str, Any]) -> Session:
    return Session(
        options.get("channels", ()),
        parse_since(options["since"]) if "since" in options else None,
        resync_on_first_connect=options.get("resyncOnFirstConnect", False),
        max_target=options.get("maxUrlLength", 4000),
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"][:60] for s in SCENARIOS])
def test_the_session_follows_the_vector(scenario: dict[str, Any]) -> None:
    session = _session(scenario["options"])
    path = scenario["options"].get("path", "/ws")
    outputs: list[Any] = []
    sent: deque[dict[str, Any]] = deque()
    now, closed = 0.0, False
    for step in scenario["steps"]:
        if "connect" in step:
            assert not closed, "a client closed for good does not connect"
            assert session.connect_target(path) == step["connect"]
        elif "receive" in step or "receiveText" in step:
            outputs += session.receive(frame_text(step), now)
        elif "send" in step:
            now += 1000.0 if step.get("afterBackoff") else 0.0
            messages, errors = session.take_messages(now)
            outputs += errors
            sent.extend(messages)
            assert sent and sent.popleft() == step["send"], (step, list(sent))
        elif "close" in step:
            session.lost()
            closed = not should_reconnect(step["close"])
        elif "subscribe" in step:
            since = Since.parse(step["since"]) if "since" in step else None
            session.subscribe(step["subscribe"], since, step.get("token"))
        elif "unsubscribe" in step:
            session.unsubscribe(step["unsubscribe"])
        elif "state" in step:
            assert step["state"] == ("closed" if closed else "open")
    assert log_of(outputs) == scenario["expect"]
    assert not sent, f"messages the vector does not expect: {list(sent)}"


# -- policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"),
    [
        (401, None, None),
        (403, "5", None),
        (400, None, None),
        (404, None, None),
        (426, None, None),
        (503, "3", 3.0),
        (503, None, 0.0),
        (503, "soon", 0.0),
        (503, "-4", 0.0),
        (503, "nan", 0.0),
        (503, "inf", 0.0),
        (503, "3600", MAX_RETRY_AFTER),
        (408, None, 0.0),
        (429, "2", 2.0),
        (500, None, 0.0),
        (502, None, 0.0),
        (504, "1.5", 1.5),
    ],
)
def test_which_refusals_are_retried_and_when(
    status: int, retry_after: str | None, wait: float | None
) -> None:
    assert retry_after_refusal(status, retry_after) == wait


def test_the_rate_limit_allows_limit_messages_per_window() -> None:
    rate = RateLimit(limit=3, window=1.0)
    for t in (0.0, 0.1, 0.2):
        assert rate.next_allowed(t) == t
        rate.record(t)
    assert rate.next_allowed(0.3) == 1.0  # the 4th waits for the 1st to leave the window
    assert rate.next_allowed(1.5) == 1.5
    rate.record(1.5)
    assert rate.next_allowed(1.6) == 1.1 + 0.0 or rate.next_allowed(1.6) == 1.6
    rate.clear()
    assert rate.next_allowed(1.6) == 1.6
    assert RateLimit().limit == 20 and RateLimit().window == 1.25


# -- the session's edges ---------------------------------------------------------------------


def _status(epoch: str = "E1", seq: int = 0, recovered: bool = False, **channels: Any) -> str:
    payload: dict[str, Any] = {"status": "connected", "epoch": epoch, "seq": seq}
    payload["recovered"] = recovered
    if channels:
        payload["channels"] = {
            name.replace("_", ":"): {"epoch": e, "seq": s, "recovered": r}
            for name, (e, s, r) in channels.items()
        }
    return json.dumps({"type": "connection:status", "payload": payload, "timestamp": TIMESTAMP})


def _answer(kind: str, **payload: Any) -> str:
    return json.dumps({"type": f"channel:{kind}", "payload": payload, "timestamp": TIMESTAMP})


def _tick(seq: int, channel: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "test:tick", "payload": {}, "timestamp": TIMESTAMP}
    frame["seq"] = seq
    if channel:
        frame["channel"] = channel
    return json.dumps(frame)


def test_names_since_and_tokens_are_checked() -> None:
    with pytest.raises(ValueError):
        Session(["Not:A:Channel:Name:At:All"])
    with pytest.raises(ValueError, match="not in channels"):
        Session(["a:1"], {"b:2": Since("E", 1)})
    session = Session(["a:1"], {"": Since("E", 4), "a:1": Since("A", 2)})
    assert session.positions() == {None: Position("E", 4), "a:1": Position("A", 2)}
    assert session.position() == Position("E", 4) and session.position("a:9") is None
    assert not session.subscribe("a:1") and session.channels == ["a:1"]
    assert not session.unsubscribe("b:2")


def test_position_text_needs_both_parts() -> None:
    assert Position("E", 3).since() == "E:3"
    assert Position(None, 3).since() is None and Position("E", None).since() is None


def test_joined_and_the_answers_of_a_connection() -> None:
    session = Session(["a:1"])
    assert session.connect_target("/ws") == "/ws?channels=a:1"
    out = session.receive(_status(a_1=("A", 5, False)))
    assert [type(o) for o in out] == [Event, Joined] and session.joined("a:1")
    assert session.status is not None and session.status["epoch"] == "E1"
    session.lost()
    assert not session.joined("a:1") and session.position("a:1") == Position("A", 5)


def test_a_subscribe_token_hook_that_fails_drops_the_channel() -> None:
    def broken() -> str:
        raise RuntimeError("no token")

    session = Session()
    session.connect_target("/ws")
    session.receive(_status())
    session.subscribe("user:1", token=broken)
    session.subscribe("user:2", token=lambda: 42)  # type: ignore[arg-type,return-value]
    session.subscribe("user:3", token=lambda: "ok")
    messages, errors = session.take_messages(0.0)
    assert messages == [
        {"type": "channel:subscribe", "payload": {"channel": "user:3", "token": "ok"}}
    ]
    assert [(e.channel, e.code, e.retrying) for e in errors] == [
        ("user:1", "token", False),
        ("user:2", "token", False),
    ]
    assert "no token" in errors[0].message and session.channels == ["user:3"]


def test_messages_wait_for_the_rate_limit_and_retries_for_their_time() -> None:
    session = Session(rate=RateLimit(limit=2, window=1.0), random=lambda: 0.5)
    session.connect_target("/ws")
    assert session.next_message_due(0.0) is None
    for name in ("a:1", "a:2", "a:3"):
        session.subscribe(name)
    session.receive(_status())
    assert session.next_message_due(0.0) == 0.0
    messages, _ = session.take_messages(0.0)
    assert [m["payload"]["channel"] for m in messages] == ["a:1", "a:2"]
    assert session.next_message_due(0.5) == 1.0 and session.take_messages(0.5) == ([], [])
    assert [m["payload"]["channel"] for m in session.take_messages(1.0)[0]] == ["a:3"]
    out = session.receive(_answer("error", channel="a:1", code="unavailable", message="later"), 2.0)
    assert out[-1] == ChannelError("a:1", "unavailable", "later", retrying=True)
    assert session.next_message_due(2.0) == 2.25  # 2.0 + 0.5 * 0.5 s
    assert session.take_messages(2.1) == ([], [])
    assert [m["payload"]["channel"] for m in session.take_messages(2.25)[0]] == ["a:1"]
    session.receive(_answer("subscribed", channel="a:1", epoch="A", seq=0, recovered=False))
    session.receive(_answer("error", channel="a:1", code="unavailable", message="x"), 3.0)
    assert session.next_message_due(3.0) == 3.25  # attempts start over once joined


def test_nothing_is_sent_while_disconnected_and_a_pending_subscribe_is_withdrawn() -> None:
    session = Session()
    session.subscribe("a:1")
    assert session.take_messages(0.0) == ([], [])
    session.connect_target("/ws?channels=a:1")
    session.receive(_status(a_1=("A", 0, False)))
    session.subscribe("b:1")
    assert session.unsubscribe("b:1")  # withdrawn before it was sent: nothing goes out
    assert session.unsubscribe("a:1")
    messages, _ = session.take_messages(0.0)
    assert messages == [{"type": "channel:unsubscribe", "payload": {"channel": "a:1"}}]


def test_frames_that_are_not_what_they_claim() -> None:
    session = Session(["a:1"])
    session.connect_target("/ws")
    session.receive(_status(a_1=("A", 0, False)))
    odd = [
        json.dumps({"type": "channel:subscribed", "payload": "x", "timestamp": TIMESTAMP}),
        json.dumps({"type": "channel:error", "payload": {"channel": 5}, "timestamp": TIMESTAMP}),
        json.dumps({"type": "connection:status", "payload": {}, "seq": 1}),
    ]
    for text in odd:  # not an answer: delivered as an event of the default channel
        out = session.receive(text)
        assert len(out) == 1 and isinstance(out[0], Event) and out[0].channel is None
    out = session.receive(json.dumps({"type": "test:tick", "payload": [], "seq": 2, "channel": 7}))
    assert isinstance(out[0], Event) and out[0].payload == {} and out[0].timestamp is None
    assert (session.ignored, session.frames) == (0, 5)
    out = session.receive(_answer("subscribed", channel="a:1", epoch="A", seq=3, recovered=True))
    assert len(out) == 1  # not awaited: no position taken from it
    assert session.position("a:1") == Position("A", 0)
    out = session.receive(_answer("error", channel="a:1", code="already_subscribed", message=""))
    assert out[-1] == ChannelError("a:1", "already_subscribed", "", retrying=False)
    assert session.channels == ["a:1"]  # still subscribed
    out = session.receive(_answer("error", channel="a:1", code=7))
    assert out[-1] == ChannelError("a:1", "unknown", "", retrying=False) and session.channels == []
    out = session.receive(_answer("unsubscribed", channel="b:1", reason="revoked"))
    assert len(out) == 1  # not ours: nothing to drop


def test_an_unsubscribe_without_a_reason_is_still_reported() -> None:
    session = Session(["a:1"])
    session.connect_target("/ws")
    session.receive(_status(a_1=("A", 0, False)))
    out = session.receive(_answer("unsubscribed", channel="a:1"))
    assert out[-1] == ChannelError(
        "a:1", "unsubscribed", "unsubscribed by the hub (unsubscribed)", retrying=False
    )
    assert session.receive(_tick(1, "a:1")) == [] and session.unwanted == 1


def test_an_untracked_event_seq_starts_a_position_and_counts_go_up() -> None:
    session = Session()
    session.connect_target("/ws")
    session.receive(json.dumps({"type": "connection:status", "payload": {"status": "connected"}}))
    assert session.position() == Position(None, None)
    session.receive(_tick(5))
    assert session.position() == Position(None, 5)
    session.receive(_tick(5))
    session.receive(_tick(8))
    assert (session.duplicates, session.gaps) == (1, 1)
    assert session.connect_target("/ws") == "/ws"  # no epoch: nothing to resume from


def test_a_recovered_answer_without_a_position_sets_it() -> None:
    session = Session(["a:1"], resync_on_first_connect=True)
    session.connect_target("/ws")
    out = session.receive(_status("E1", 4, True, a_1=("A", 2, True)))
    assert [(r.channel, r.reason, r.seq) for r in out if isinstance(r, Resync)] == [
        (None, "initial", 4),
        ("a:1", "initial", 2),
    ]
    assert session.position("a:1") == Position("A", 2)


def test_the_url_budget_counts_bytes_and_keeps_the_order() -> None:
    session = Session(["a:1", "b:22", "c:3"], max_target=len("/ws?channels=a:1,b:22"))
    assert session.connect_target("/ws") == "/ws?channels=a:1,b:22"
    session.receive(_status(a_1=("A", 0, False), b_22=("B", 0, False)))
    messages, _ = session.take_messages(0.0)
    assert messages == [{"type": "channel:subscribe", "payload": {"channel": "c:3"}}]
    exact = Session(["a:1"], max_target=len("/ws?channels=a:1"))
    assert exact.connect_target("/ws") == "/ws?channels=a:1"
    under = Session(["a:1"], max_target=len("/ws?channels=a:1") - 1)
    assert under.connect_target("/ws") == "/ws"
