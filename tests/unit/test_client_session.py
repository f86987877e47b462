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


def test_the_rate_limit_allows_limit_messages_in_any_window() -> None:
    rate = RateLimit(limit=3, window=1.0)
    for t in (0.0, 0.1, 0.2):
        assert rate.next_allowed(t) == t
        rate.record(t)
    assert rate.next_allowed(0.3) == 1.0  # the 4th waits for the 1st to leave the window
    rate.record(1.0)
    assert rate.next_allowed(1.05) == 1.1  # then for the 2nd: any window holds 3 at most
    rate.clear()
    assert rate.next_allowed(1.05) == 1.05
    assert (RateLimit().limit, RateLimit().window) == (20, 1.25)


def test_backoff_takes_the_given_timing_and_clamps_the_exponent() -> None:
    assert backoff_delay(2, Backoff(base=1.0, cap=100.0), lambda: 0.5) == 2.0
    assert backoff_delay(40, Backoff(base=1.0, cap=1e12), lambda: 1.0) == 2.0**30


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


def _tick(seq: int | bool | None, channel: str | None = None, **extra: Any) -> str:
    frame: dict[str, Any] = {"type": "test:tick", "payload": {}, "timestamp": TIMESTAMP, **extra}
    if seq is not None:
        frame["seq"] = seq
    if channel:
        frame["channel"] = channel
    return json.dumps(frame)


def _open(session: Session, text: str | None = None, now: float = 0.0) -> list[Any]:
    session.connect_target("/ws")
    return session.receive(text or _status(), now)


def _sent(session: Session, now: float = 0.0) -> list[tuple[str, str]]:
    messages, _ = session.take_messages(now)
    return [(m["type"].partition(":")[2], m["payload"]["channel"]) for m in messages]


def _resyncs(out: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (r.channel, r.reason, r.epoch, r.seq, r.previous_epoch, r.previous_seq)
        for r in out
        if isinstance(r, Resync)
    ]


def test_names_since_and_positions() -> None:
    with pytest.raises(ValueError):
        Session(["Not:A:Channel:Name:At:All"])
    with pytest.raises(ValueError, match="not in channels"):
        Session(["a:1"], {"b:2": Since("E", 1)})
    session = Session(["a:1"], {"": Since("E", 4), "a:1": Since("A", 2)})
    assert session.positions() == {None: Position("E", 4), "a:1": Position("A", 2)}
    assert session.position() == Position("E", 4) and session.position("a:9") is None
    assert session.subscribe("a:1") is False and session.subscribe("b:1") is True
    assert session.channels == ["a:1", "b:1"] and session.status is None
    assert session.unsubscribe("c:2") is False
    assert Position("E", 3).since() == "E:3"
    assert Position(None, 3).since() is None and Position("E", None).since() is None


def test_events_keep_their_envelope() -> None:
    session = Session(["a:1"])
    _open(session, _status(a_1=("A", 0, False)))
    [event] = session.receive(_tick(1, "a:1", extra="kept"), 0.0)
    assert isinstance(event, Event)
    assert (event.type, event.timestamp, event.seq, event.channel) == (
        "test:tick",
        TIMESTAMP,
        1,
        "a:1",
    )
    assert event.to_dict() == json.loads(_tick(1, "a:1", extra="kept"))
    odd = session.receive(json.dumps({"type": "test:tick", "timestamp": 5, "seq": True}), 0.0)
    assert isinstance(odd[0], Event) and (odd[0].timestamp, odd[0].seq) == (None, None)
    assert session.position() == Position("E1", 0)  # a boolean is not a seq
    for channel in (7, ""):  # not a channel name: the default channel's
        raw = json.loads(_tick(None))
        [event] = session.receive(json.dumps({**raw, "channel": channel}), 0.0)
        assert isinstance(event, Event) and event.channel is None


def test_joined_is_reported_for_each_channel_the_hub_grants() -> None:
    session = Session(["a:1", "b:1", "c:1"])
    assert session.connect_target("/ws") == "/ws?channels=a:1,b:1,c:1"
    session.unsubscribe("a:1")  # while connecting: its unsubscribe is queued
    answer = _status(a_1=("A", 0, False), b_1=("B", 0, False), c_1=("C", 0, False))
    out = session.receive(answer, 0.0)
    joined = [o for o in out if isinstance(o, Joined)]
    assert joined == [Joined("b:1", Position("B", 0)), Joined("c:1", Position("C", 0))]
    assert session.joined("b:1") and session.joined("c:1") and not session.joined("a:1")
    assert session.status == json.loads(answer)["payload"]
    again = json.loads(_status("E9", 7))
    again["seq"] = 1  # a status with a seq is an event, not a new connection's status
    session.receive(json.dumps(again), 0.0)
    assert session.status == json.loads(answer)["payload"]
    assert _sent(session) == [("unsubscribe", "a:1")]
    session.subscribe("d:1")
    assert _sent(session) == [("subscribe", "d:1")]
    out = session.receive(
        _answer("subscribed", channel="d:1", epoch="D", seq=4, recovered=False), 0
    )
    assert out[1:] == [Joined("d:1", Position("D", 4))]
    session.lost()
    assert not session.joined("b:1") and session.position("b:1") == Position("B", 0)


def test_a_state_needs_an_epoch_and_a_seq() -> None:
    session = Session(["a:1", "b:1"])
    session.connect_target("/ws")
    status = json.loads(_status(a_1=("A", 0, False)))
    status["payload"]["channels"]["b:1"] = {"epoch": "B"}  # no seq: not granted
    out = session.receive(json.dumps(status), 0.0)
    assert [o for o in out if isinstance(o, Joined)] == [Joined("a:1", Position("A", 0))]
    assert session.channels == ["a:1", "b:1"]  # its channel:error follows


def test_a_resync_from_a_subscribe_answer_follows_it() -> None:
    session = Session()
    _open(session)
    session.subscribe("a:1", Since("A", 2))
    assert _sent(session) == [("subscribe", "a:1")]
    out = session.receive(
        _answer("subscribed", channel="a:1", epoch="B", seq=0, recovered=False), 0
    )
    assert [type(o) for o in out] == [Event, Joined, Resync]
    assert _resyncs(out) == [("a:1", "new-epoch", "B", 0, "A", 2)]


def test_an_untracked_hub_and_the_positions_it_leaves() -> None:
    session = Session(resync_on_first_connect=True)
    bare = json.dumps({"type": "connection:status", "payload": {"status": "connected"}})
    assert _resyncs(_open(session, bare)) == [(None, "initial", None, None, None, None)]
    session.receive(_tick(5), 0.0)
    assert session.position() == Position(None, 5)
    assert session.connect_target("/ws") == "/ws"  # no epoch: nothing to resume from
    out = session.receive(bare, 0.0)
    assert _resyncs(out) == [(None, "not-recovered", None, None, None, 5)]
    session.receive(_tick(5), 0.0)
    session.connect_target("/ws")
    out = session.receive(_status("E1", 9, False), 0.0)  # tracked now: still not a resume
    assert _resyncs(out) == [(None, "not-recovered", "E1", 9, None, 5)]


def test_counters() -> None:
    session = Session()
    _open(session, _status("E1", 2))
    for text in ("not json", "[1]", '{"type": 5}'):
        session.receive(text, 0.0)
    for seq in (1, 2, 5, 5, 4, 9):
        session.receive(_tick(seq), 0.0)
    session.receive(_tick(1, "z:1"), 0.0)
    session.receive(_tick(2, "z:1"), 0.0)
    assert (session.ignored, session.duplicates, session.gaps, session.unwanted) == (3, 4, 2, 2)
    assert session.frames == 12


def test_direct_messages_and_answers_with_a_seq_are_events() -> None:
    session = Session(["a:1"])
    _open(session, _status(a_1=("A", 0, False)))
    note = json.dumps({"type": "app:note", "payload": {"channel": "a:1", "code": "limit"}})
    out = session.receive(note, 0.0)  # a message to this connection, not an answer
    assert len(out) == 1 and isinstance(out[0], Event) and session.channels == ["a:1"]
    odd = json.loads(_answer("error", channel="a:1", code="limit", message=""))
    odd["seq"] = 1
    out = session.receive(json.dumps(odd), 0.0)
    assert len(out) == 1 and session.channels == ["a:1"] and session.position() == Position("E1", 1)
    for text in (
        json.dumps({"type": "channel:subscribed", "payload": "x", "timestamp": TIMESTAMP}),
        json.dumps({"type": "channel:error", "payload": {"channel": 5}, "timestamp": TIMESTAMP}),
    ):
        out = session.receive(text, 0.0)
        assert (
            len(out) == 1 and isinstance(out[0], Event) and out[0].payload in ({}, {"channel": 5})
        )


def test_answers_that_do_not_change_anything() -> None:
    session = Session(["a:1"])
    _open(session, _status(a_1=("A", 0, False)))
    out = session.receive(_answer("subscribed", channel="a:1", epoch="A", seq=3, recovered=True), 0)
    assert len(out) == 1 and session.position("a:1") == Position("A", 0)  # not awaited
    out = session.receive(_answer("error", channel="a:1", code="already_subscribed", message=""), 0)
    assert out[-1] == ChannelError("a:1", "already_subscribed", "", retrying=False)
    assert session.channels == ["a:1"]  # still subscribed
    out = session.receive(_answer("unsubscribed", channel="b:1", reason="revoked"), 0)
    assert len(out) == 1  # not ours: nothing to drop
    session.unsubscribe("a:1")
    session.subscribe("a:1")  # again, before the hub answered the unsubscribe
    out = session.receive(_answer("unsubscribed", channel="a:1", reason="client"), 0)
    assert len(out) == 1 and session.channels == ["a:1"]  # its own unsubscribe: kept
    assert session.receive(_tick(1, "a:1"), 0.0) == []  # not joined again until answered


def test_answers_for_what_was_not_asked_are_not_taken() -> None:
    session = Session(resync_on_first_connect=True)
    _open(session)
    session.subscribe("a:1")
    assert _sent(session) == [("subscribe", "a:1")]
    session.receive(_answer("error", channel="a:1", code="unavailable", message=""), 0.0)
    stale = _answer("subscribed", channel="a:1", epoch="A", seq=0, recovered=False)
    assert len(session.receive(stale, 0.0)) == 1 and not session.joined("a:1")  # no retry yet
    session.receive(_answer("error", channel="a:1", code="limit", message=""), 0.0)
    session.subscribe("a:1")  # again: queued, not sent yet
    assert len(session.receive(stale, 0.0)) == 1 and not session.joined("a:1")
    session.subscribe("b:1")
    assert _sent(session) == [("subscribe", "a:1"), ("subscribe", "b:1")]
    session.receive(_answer("subscribed", channel="b:1", epoch="B", seq=0, recovered=False), 0.0)
    session.receive(_answer("error", channel="b:1", code="forbidden", message=""), 0.0)
    session.subscribe("b:1")  # dropped while joined (a hub that changed its mind): not joined
    assert session.receive(_tick(1, "b:1"), 0.0) == []


def test_a_channel_a_hub_without_channels_ignored_is_not_awaited_any_more() -> None:
    session = Session(["a:1"])
    _open(session, _status())  # no channels in the status: unsupported, dropped
    session.subscribe("a:1")  # again (queued: it goes out with the next take_messages)
    stale = _answer("subscribed", channel="a:1", epoch="A", seq=0, recovered=False)
    assert len(session.receive(stale, 0.0)) == 1 and not session.joined("a:1")


def test_unsubscribing_forgets_the_first_position() -> None:
    session = Session(["a:1"], resync_on_first_connect=True)
    out = _open(session, _status(a_1=("A", 3, False)))
    assert ("a:1", "initial", "A", 3, None, None) in _resyncs(out)
    session.unsubscribe("a:1")
    session.subscribe("a:1")
    assert _sent(session) == [("unsubscribe", "a:1"), ("subscribe", "a:1")]
    out = session.receive(
        _answer("subscribed", channel="a:1", epoch="A", seq=5, recovered=False), 0
    )
    assert _resyncs(out) == [("a:1", "initial", "A", 5, None, None)]


def test_a_channel_the_hub_drops_is_forgotten() -> None:
    session = Session(["a:1"], resync_on_first_connect=True)
    _open(session, _status(a_1=("A", 0, False)))
    out = session.receive(_answer("unsubscribed", channel="a:1", reason=7), 0)
    assert out[-1] == ChannelError(
        "a:1", "unsubscribed", "unsubscribed by the hub (unsubscribed)", False
    )
    assert session.position("a:1") is None and not session.joined("a:1")
    assert session.receive(_tick(1, "a:1"), 0.0) == [] and session.unwanted == 1
    session.subscribe("a:1")
    assert session.receive(_tick(2, "a:1"), 0.0) == []  # not joined until the answer
    assert _sent(session) == [("subscribe", "a:1")]
    out = session.receive(
        _answer("subscribed", channel="a:1", epoch="A", seq=5, recovered=False), 0
    )
    assert _resyncs(out) == [("a:1", "initial", "A", 5, None, None)]  # a first position again
    out = session.receive(_answer("error", channel="a:1", code=7), 0)
    assert out[-1] == ChannelError("a:1", "unknown", "", retrying=False) and session.channels == []


def test_unsupported_and_token_errors_say_what_happened() -> None:
    session = Session(["a:1"])
    out = _open(session, _status())
    [error] = [o for o in out if isinstance(o, ChannelError)]
    assert (error.channel, error.code, error.retrying) == ("a:1", "unsupported", False)
    assert "channels" in error.message

    def broken() -> str:
        raise RuntimeError("no token")

    session.subscribe("user:1", token=broken)
    session.subscribe("user:2", token=lambda: 42)  # type: ignore[arg-type,return-value]
    session.subscribe("user:3", token=lambda: "ok")
    messages, errors = session.take_messages(0.0)
    assert [m["payload"] for m in messages] == [{"channel": "user:3", "token": "ok"}]
    assert [(e.channel, e.code, e.retrying) for e in errors] == [
        ("user:1", "token", False),
        ("user:2", "token", False),
    ]
    assert "no token" in errors[0].message and "int" in errors[1].message
    assert session.channels == ["user:3"]


def test_messages_wait_for_the_rate_limit_and_retries_for_their_time() -> None:
    session = Session(
        rate=RateLimit(limit=2, window=1.0), backoff=Backoff(base=2.0, cap=60), random=lambda: 0.5
    )
    session.connect_target("/ws")
    for name in ("a:1", "a:2", "a:3"):
        session.subscribe(name)  # while connecting: by message, once the status is in
    assert session.take_messages(0.0) == ([], []) and session.next_message_due(0.0) is None
    session.receive(_status(), 0.0)
    assert session.next_message_due(0.0) == 0.0
    assert _sent(session) == [("subscribe", "a:1"), ("subscribe", "a:2")]
    assert session.next_message_due(0.5) == 1.0 and session.take_messages(0.5) == ([], [])
    assert _sent(session, 1.0) == [("subscribe", "a:3")]
    assert session.next_message_due(1.0) is None  # nothing left
    for name in ("a:1", "a:2"):
        session.receive(_answer("error", channel=name, code="unavailable", message="later"), 5.0)
    assert session.next_message_due(5.0) == 6.0  # 5.0 + 0.5 * 2 s
    session.subscribe("b:1")  # not held up by the retries before it
    assert _sent(session, 5.5) == [("subscribe", "b:1")]
    assert _sent(session, 6.0) == [("subscribe", "a:1")]  # 5.5 and 6.0: the window is full
    assert _sent(session, 6.5) == [("subscribe", "a:2")]
    out = session.receive(_answer("error", channel="a:1", code="unavailable", message="x"), 7.0)
    assert out[-1] == ChannelError("a:1", "unavailable", "x", retrying=True)
    assert session.next_message_due(7.0) == 9.0  # the second attempt: 0.5 * 4 s
    assert _sent(session, 9.0) == [("subscribe", "a:1")]
    session.receive(_answer("error", channel="a:1", code="unavailable", message="x"), 10.0)
    assert session.next_message_due(10.0) == 14.0  # the third: 0.5 * 8 s
    session.receive(_answer("subscribed", channel="a:2", epoch="A", seq=0, recovered=False), 7.0)
    session.unsubscribe("a:1")  # its queued retry is withdrawn
    session.receive(_answer("error", channel="a:2", code="unavailable", message="x"), 20.0)
    assert session.next_message_due(20.0) == 21.0  # once joined, its attempts started over


def test_a_queued_subscribe_of_a_channel_dropped_meanwhile_is_skipped() -> None:
    session = Session(["a:1", "b:1"], max_target=5)  # nothing fits: both by message
    _open(session)
    session.receive(_answer("error", channel="a:1", code="forbidden", message="no"), 0.0)
    assert _sent(session) == [("subscribe", "b:1")]


def test_unsubscribe_sends_only_what_the_hub_knows_of() -> None:
    session = Session()
    session.subscribe("a:1")  # not connected: nothing to undo
    assert session.unsubscribe("a:1") and session.position("a:1") is None
    _open(session)
    session.subscribe("b:1")
    assert session.unsubscribe("b:1")  # withdrawn before it was sent
    assert session.next_message_due(0.0) is None and _sent(session) == []
    session.subscribe("c:1", Since("C", 3))
    assert _sent(session) == [("subscribe", "c:1")]
    assert session.unsubscribe("c:1") and session.position("c:1") is None
    assert session.next_message_due(3.0) == 3.0  # an unsubscribe is due at once
    assert _sent(session) == [("unsubscribe", "c:1")]


def test_the_url_budget_counts_bytes_and_keeps_the_order() -> None:
    session = Session(["a:1", "b:22", "c:3"], max_target=len("/ws?channels=a:1,b:22"))
    assert session.connect_target("/ws") == "/ws?channels=a:1,b:22"
    session.receive(_status(a_1=("A", 0, False), b_22=("B", 0, False)), 0.0)
    assert _sent(session) == [("subscribe", "c:3")]
    exact = Session(["a:1"], max_target=len("/ws?channels=a:1"))
    assert exact.connect_target("/ws") == "/ws?channels=a:1"
    under = Session(["a:1"], max_target=len("/ws?channels=a:1") - 1)
    assert under.connect_target("/ws") == "/ws"


def test_channels_the_hub_grants_by_itself() -> None:
    session = Session(["a:1"], max_target=len("/ws?channels=a:1"))
    session.subscribe("t:1", token="tok")  # by message (a token): the hub grants it first
    session.connect_target("/ws")
    status = json.loads(_status(a_1=("A", 0, False), user_42=("U", 3, False), t_1=("T", 1, False)))
    status["payload"]["channels"]["x:1"] = {"epoch": "X"}  # no seq: not a grant
    out = session.receive(json.dumps(status), 0.0)
    joined = [o for o in out if isinstance(o, Joined)]
    assert joined == [
        Joined("a:1", Position("A", 0)),
        Joined("user:42", Position("U", 3)),
        Joined("t:1", Position("T", 1)),
    ]
    assert session.channels == ["a:1", "t:1", "user:42"] and "x:1" not in session.channels
    assert _sent(session) == []  # t:1's subscribe is withdrawn: granted already
    [event] = session.receive(_tick(4, "user:42"), 0.0)
    assert isinstance(event, Event) and (event.channel, event.seq) == ("user:42", 4)
    session.unsubscribe("user:42")
    session.unsubscribe("t:1")
    session.subscribe("t:1")  # back: no longer declined
    assert _sent(session) == [
        ("unsubscribe", "user:42"),
        ("unsubscribe", "t:1"),
        ("subscribe", "t:1"),
    ]
    session.connect_target("/ws")
    again = _status(a_1=("A", 0, True), user_42=("U", 9, False), t_1=("T", 1, False))
    out = session.receive(again, 0.0)
    assert [o.channel for o in out if isinstance(o, Joined)] == ["a:1", "t:1"]
    assert _sent(session) == [("unsubscribe", "user:42")]  # left again
    assert session.receive(_tick(10, "user:42"), 0.0) == []
