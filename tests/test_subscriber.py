"""``sidecar.client.Subscriber`` against real sidecars: the faults it must survive, and its API.

The faults (issue 22): a restarted sidecar (a new epoch: resync), a slow-consumer eviction
(4008: resume), a broker reset (4001), a cut connection, a sidecar that stops answering pings
(a frozen process), the "do not reconnect" codes (closed for good, the reason kept) and a
wrong token (a clear error, no retry loop). Every wait has a deadline.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.client import (
    Backoff,
    ChannelError,
    ChannelRefused,
    Event,
    Resync,
    StateChange,
    Subscriber,
    SubscriberClosed,
)
from sidecar.envelope import new_event
from sidecar.events import StreamCreatedPayload, new_stream_created_event
from sidecar.launcher import SidecarProcess
from sidecar.protocol import CloseCode
from tests.conftest import TOKEN, RunningSidecar, wait_for
from tests.needs import needs_module

needs_module("websocket", "pip install 'sidecar-hub[client]'")

P1, C9 = "project:p1", "chat:c9"
FAST = Backoff(base=0.02, cap=0.1, stable_after=60)


def tick(i: int, **extra: Any) -> Any:
    return new_event("test:tick", {"i": i, **extra})


@pytest.fixture
def subscribe() -> Iterator[Callable[..., Subscriber]]:
    """Make subscribers (fast backoff, the test token); all are closed at teardown."""
    made: list[Subscriber] = []

    def make(url: str, **options: Any) -> Subscriber:
        options.setdefault("token", TOKEN)
        options.setdefault("backoff", FAST)
        sub = Subscriber(url, **options)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def take(sub: Subscriber, n: int, timeout: float = 10.0, *, states: bool = False) -> list[Any]:
    """The next ``n`` items that are not connection:status (nor a state change, unless
    ``states``: then those come too, uncounted)."""
    got: list[Any] = []
    counted = 0
    deadline = time.monotonic() + timeout
    for item in sub.events(timeout=timeout):
        if isinstance(item, Event) and item.type == "connection:status":
            continue
        if isinstance(item, StateChange) and not states:
            continue
        got.append(item)
        counted += not isinstance(item, StateChange)
        if counted == n or time.monotonic() > deadline:
            break
    assert counted == n, got
    return got


def ticks(items: list[Any]) -> list[tuple[str | None, int | None, int]]:
    return [
        (e.channel, e.seq, e.payload["i"])
        for e in items
        if isinstance(e, Event) and e.type == "test:tick"
    ]


# -- the faults ------------------------------------------------------------------------------


def test_a_restarted_sidecar_is_a_new_epoch_resync_per_channel(
    sidecar_factory: Callable[..., RunningSidecar], subscribe: Callable[..., Subscriber]
) -> None:
    first = sidecar_factory()
    sub = subscribe(first.ws_url, channels=[P1])
    sub.wait_open()
    first.hub.publish([tick(1)])
    first.hub.publish([tick(2)], P1)
    assert ticks(take(sub, 2)) == [(None, 1, 1), (P1, 1, 2)]
    old = sub.positions()
    port = first.port
    first.close()  # clients get 1001; the port is closed for a moment
    second = sidecar_factory(port=port)
    resyncs = take(sub, 2)
    assert [(r.channel, r.reason) for r in resyncs] == [(None, "new-epoch"), (P1, "new-epoch")]
    assert resyncs[0].previous_epoch == old[None].epoch and resyncs[0].previous_seq == 1
    assert resyncs[0].epoch == second.hub.epoch and resyncs[0].seq == 0
    assert resyncs[1].previous_epoch == old[P1].epoch and resyncs[1].previous_seq == 1
    second.hub.publish([tick(3)], P1)
    assert ticks(take(sub, 1)) == [(P1, 1, 3)]
    assert sub.stats["connections"] == 2


def test_a_slow_application_is_evicted_and_resumes_without_loss(
    sidecar_factory: Callable[..., RunningSidecar], subscribe: Callable[..., Subscriber]
) -> None:
    """The application stops taking events: the subscriber's bounded queue fills, it stops
    reading, the hub drops it as a slow consumer (4008, for real), and once the application
    reads again every event arrives once, in order, resumed from the window."""
    sc = sidecar_factory(queue_size=4, max_pending_bytes=64 * 1024)
    sub = subscribe(sc.ws_url, channels=[P1], max_queue=4, states=True)
    sub.wait_open()
    pad = "x" * 16 * 1024
    published = 0
    deadline = time.monotonic() + 20
    while sc.hub.snapshot()["evicted"] == 0:
        assert time.monotonic() < deadline, "never evicted"
        sc.hub.publish([tick(published + i, pad=pad) for i in range(8)], P1)
        published += 8
        wait_for(lambda: sc.hub.snapshot()["pending"] == 0)
    sc.hub.publish([tick(published)], P1)
    published += 1
    items = take(sub, published, timeout=20)
    assert [r for r in items if not isinstance(r, Event)] == []
    assert ticks(items) == [(P1, n + 1, n) for n in range(published)]
    assert sub.stats["connections"] == 2 and sub.stats["duplicates"] >= 0


def test_a_broker_reset_closes_with_4001_and_the_subscriber_resyncs(
    sidecar_factory: Callable[..., RunningSidecar],
    subscribe: Callable[..., Subscriber],
    redis_server: Any,
) -> None:
    sc = sidecar_factory(broker=redis_server.url)
    sub = subscribe(sc.ws_url, states=True)
    sub.wait_open()
    old_epoch = sc.hub.epoch
    sc.hub.publish([tick(1), tick(2)])
    assert ticks(take(sub, 2)) == [(None, 1, 1), (None, 2, 2)]
    redis_server.restart()  # its data is gone: the relay starts a new epoch
    seen: list[Any] = []
    for item in sub.events(timeout=20):
        seen.append(item)
        if isinstance(item, Resync):
            break
    closes = [s.code for s in seen if isinstance(s, StateChange) and s.state == "reconnecting"]
    assert CloseCode.RESUME in closes, seen
    resync = seen[-1]
    assert isinstance(resync, Resync) and resync.channel is None
    assert resync.reason == "new-epoch" and resync.previous_epoch == old_epoch
    assert resync.previous_seq == 2
    wait_for(lambda: sc.hub.publish([tick(3)]), timeout=10)
    assert ticks(take(sub, 1)) == [(None, (resync.seq or 0) + 1, 3)]


def test_a_cut_connection_resumes_every_channel(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(sidecar.ws_url, channels=[P1, C9], states=True)
    sub.wait_open()
    sidecar.hub.publish([tick(1)], P1)
    assert ticks(take(sub, 1)) == [(P1, 1, 1)]
    assert sidecar.hub.drop_all(CloseCode.SLOW_CONSUMER, "cut", abrupt=True)  # no close frame
    sidecar.hub.publish([tick(2)], P1)
    sidecar.hub.publish([tick(3)], C9)
    sidecar.hub.publish([tick(4)])
    items = take(sub, 3, states=True)
    states = [(s.state, s.code) for s in items if isinstance(s, StateChange)]
    assert ("reconnecting", CloseCode.ABNORMAL) in states
    assert ticks(items) == [(P1, 2, 2), (C9, 1, 3), (None, 1, 4)]
    assert not [i for i in items if isinstance(i, Resync)]
    status = sub.status
    assert status is not None and status["recovered"] is True
    assert all(state["recovered"] for state in status["channels"].values())


def test_a_frozen_sidecar_is_noticed_by_pings_and_left(
    subscribe: Callable[..., Subscriber],
) -> None:
    """The sidecar process is stopped (SIGSTOP): its socket stays open but nothing answers.
    The subscriber's ping goes unanswered, it drops the connection and keeps trying (each
    handshake times out); once the process runs again it resumes, missing nothing."""
    if sys.platform == "win32":
        pytest.skip("SIGSTOP is POSIX")
    argv = [sys.executable, "-m", "sidecar", "--port", "0", "--ping-interval", "0"]
    with SidecarProcess(argv, env={**_env(), "SIDECAR_TOKEN": TOKEN}) as child:
        sub = subscribe(
            child.ws, ping_interval=0.3, ping_timeout=0.3, connect_timeout=0.5, states=True
        )
        sub.wait_open()
        child.send_signal(signal.SIGSTOP)
        try:
            seen: list[Any] = []
            for item in sub.events(timeout=10):
                seen.append(item)
                if isinstance(item, StateChange) and item.attempt >= 2:
                    break
            reasons = [s.reason for s in seen if isinstance(s, StateChange) and s.reason]
            assert any("no answer to a ping" in r for r in reasons), reasons
            assert any("timed out" in r for r in reasons), reasons
        finally:
            child.send_signal(signal.SIGCONT)
        wait_for(lambda: sub.state == "open", timeout=10)
        assert sub.status is not None and sub.status["recovered"] is True


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}


@pytest.mark.parametrize(
    ("code", "reason"), [(1008, "policy"), (4500, "go away"), (4999, "not welcome")]
)
def test_do_not_reconnect_codes_close_for_good_and_keep_the_reason(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber], code: int, reason: str
) -> None:
    sub = subscribe(sidecar.ws_url)
    sub.wait_open()
    assert sidecar.hub.drop_all(code, reason)
    wait_for(lambda: sub.state == "closed")
    assert sub.error is not None and (sub.error.code, sub.error.status) == (code, None)
    assert reason in sub.error.reason and str(code) in str(sub.error)
    assert sub.next(timeout=1).type == "connection:status"  # what came before stays
    with pytest.raises(SubscriberClosed) as info:
        sub.next(timeout=1)
    assert info.value is sub.error
    with pytest.raises(AssertionError):  # FAST would retry within 0.1 s: wait 10 times that
        wait_for(lambda: sidecar.hub.stats.registered > 1, timeout=1.0)


@pytest.mark.parametrize("token", ["wrong-token-0123456789", None])
def test_a_wrong_token_stops_with_a_clear_error_and_no_retry(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber], token: str | None
) -> None:
    sub = subscribe(sidecar.ws_url, token=token)
    with pytest.raises(SubscriberClosed) as info:
        sub.wait_open(timeout=10)
    assert info.value.status == 401 and "401" in info.value.reason
    assert sub.state == "closed" and sub.error is info.value
    with pytest.raises(AssertionError):  # no second attempt
        wait_for(lambda: sidecar.sidecar.sessions.snapshot()["rejectedHandshakes"]["token"] > 1, 1)
    assert token is None or token not in info.value.reason


def test_a_busy_hub_is_retried_after_its_retry_after(
    sidecar_factory: Callable[..., RunningSidecar], subscribe: Callable[..., Subscriber]
) -> None:
    sc = sidecar_factory(max_clients=1)
    hog = sc.connect()  # the one slot
    sub = subscribe(sc.ws_url, states=True, backoff=Backoff(base=0.01, cap=0.01))
    change = next(i for i in sub.events(timeout=10) if isinstance(i, StateChange) and i.delay)
    assert "503" in change.reason and change.delay is not None and change.delay >= 1.0
    hog.close()
    assert sub.wait_open(timeout=10)["status"] == "connected"


# -- the API ---------------------------------------------------------------------------------


def test_handlers_run_on_one_thread_in_wire_order(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(sidecar.ws_url, channels=[P1], start=False, resync_on_first_connect=True)
    seen: list[tuple[str, Any]] = []
    threads: set[str] = set()
    done = threading.Event()

    def record(kind: str) -> Callable[[Any], None]:
        def handler(item: Any) -> None:
            threads.add(threading.current_thread().name)
            seen.append((kind, item.reason if isinstance(item, Resync) else item.seq))
            if kind == "tick" and item.payload["i"] == 3:
                done.set()

        return handler

    sub.on("test:tick", record("tick"))
    sub.on("resync", record("resync"))
    sub.on("state", lambda change: seen.append(("state", change.state)))
    sub.on("*", lambda event: threads.add(threading.current_thread().name))
    sub.start()
    sub.wait_open()
    for i in (1, 2, 3):
        sidecar.hub.publish([tick(i)], P1 if i % 2 else None)
    assert done.wait(10)
    assert threads == {"sidecar-subscriber-callbacks"}
    assert seen == [
        ("state", "connecting"),
        ("state", "open"),
        ("resync", "initial"),
        ("resync", "initial"),
        ("tick", 1),
        ("tick", 1),
        ("tick", 2),
    ]
    with pytest.raises(RuntimeError):
        sub.next(timeout=0)  # pushed to: not pulled from


def test_a_raising_handler_is_logged_and_delivery_goes_on(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber], caplog: pytest.LogCaptureFixture
) -> None:
    sub = subscribe(sidecar.ws_url)
    got: list[int] = []
    done = threading.Event()

    def bad(event: Event) -> None:
        raise RuntimeError("a handler bug (expected by the test)")

    def good(event: Event) -> None:
        got.append(event.payload["i"])
        if len(got) == 2:
            done.set()

    sub.on("test:tick", bad)
    sub.on("test:tick", good)
    sub.wait_open()
    sidecar.hub.publish([tick(1), tick(2)])
    assert done.wait(10) and got == [1, 2]
    assert (
        sum("a subscriber handler for test:tick raised" in r.getMessage() for r in caplog.records)
        == 2
    )


def test_catalog_payload_types_apply_to_events(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    """``Event`` is generic in its payload: annotated with a catalog type, mypy checks the
    keys (this file is type-checked by ``mypy tests``)."""
    sub = subscribe(sidecar.ws_url)
    sub.wait_open()
    sidecar.hub.broadcast_event(new_stream_created_event("p1", "s1", "Refactor"))
    created: Event[StreamCreatedPayload] = sub.next("stream:created")
    stream_id: str = created.payload["streamId"]
    assert (stream_id, created.seq, created.channel) == ("s1", 1, None)


def test_next_keeps_other_events_and_names_the_type_on_timeout(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(sidecar.ws_url)
    sub.wait_open()
    sidecar.hub.publish([tick(1), new_event("app:other", {"n": 2}), tick(3)])
    assert sub.next("app:other").payload == {"n": 2}
    assert [sub.next("test:tick").payload["i"] for _ in range(2)] == [1, 3]
    with pytest.raises(TimeoutError, match="'app:missing'"):
        sub.next("app:missing", timeout=0.2)
    assert sub.next(timeout=1).type == "connection:status"  # still there, in order


def test_subscribe_waits_for_the_answer_or_raises_the_refusal(
    sidecar_factory: Callable[..., RunningSidecar], subscribe: Callable[..., Subscriber]
) -> None:
    sc = sidecar_factory(max_channels=1)
    sc.hub.publish([tick(1), tick(2)], C9)
    epoch = sc.hub.position(C9).epoch
    sub = subscribe(sc.ws_url)
    sub.wait_open()
    position = sub.subscribe(C9, since=f"{epoch}:1", wait=5)
    assert position is not None and (position.epoch, position.seq) == (epoch, 1)
    assert ticks(take(sub, 2)[1:]) == [(C9, 2, 2)]  # the answer, then the replay
    with pytest.raises(ChannelRefused) as refused:
        sub.subscribe(P1, wait=5)
    assert (refused.value.error.channel, refused.value.error.code) == (P1, "limit")
    assert sub.channels == [C9]
    with pytest.raises(ValueError):
        sub.subscribe("Not A Channel")


def test_after_unsubscribe_nothing_of_the_channel_is_delivered(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    sub = subscribe(sidecar.ws_url, channels=[P1])
    sub.wait_open()
    sidecar.hub.publish([tick(i) for i in range(5)], P1)  # queued, not yet taken
    wait_for(lambda: sub.stats["frames"] >= 6)
    assert sub.unsubscribe(P1) and not sub.unsubscribe(P1)
    assert P1 not in sub.positions() and sub.channels == []
    sidecar.hub.publish([tick(9)], P1)  # (the hub may still send it: it is not delivered)
    sidecar.hub.publish([tick(10)])
    items = take(sub, 2)
    assert sorted(e.type for e in items) == ["channel:unsubscribed", "test:tick"]
    assert ticks(items) == [(None, 1, 10)]


def test_a_token_function_is_called_before_every_connection(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    calls: list[float] = []

    def token() -> str:
        calls.append(time.monotonic())
        return TOKEN

    sub = subscribe(sidecar.ws_url, token=token)
    sub.wait_open()
    sidecar.hub.drop_all(CloseCode.SLOW_CONSUMER, "again")
    wait_for(lambda: sub.stats["connections"] == 2)
    assert len(calls) == 2


def test_send_reaches_the_apps_handler_and_reserved_types_are_refused(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    got: list[dict[str, Any]] = []
    sidecar.set_message_handler(lambda _client, event: got.append(event))
    sub = subscribe(sidecar.ws_url, start=False)
    assert sub.send("chat:cancel", {"conversationId": "c"}) is False  # not open
    sub.start()
    sub.wait_open()
    assert sub.send("chat:cancel", {"conversationId": "c"}) is True
    wait_for(lambda: got)
    assert (got[0]["type"], got[0]["payload"]) == ("chat:cancel", {"conversationId": "c"})
    with pytest.raises(ValueError):
        sub.send("channel:subscribe", {"channel": P1})


def test_channels_beyond_the_url_limit_are_paced_under_the_rate_limit(
    sidecar_factory: Callable[..., RunningSidecar], subscribe: Callable[..., Subscriber]
) -> None:
    """45 channels of 100-byte names: about 35 fit in a 4 KB URL, the rest are subscribed by
    message; 45 more by ``subscribe()`` at once: the hub's 20-a-second limit is never hit."""
    sc = sidecar_factory(max_channels=100)
    names = [f"doc:{i:02d}{'x' * 60}:{'y' * 30}" for i in range(90)]  # 97 bytes each
    sub = subscribe(sc.ws_url, channels=names[:45])
    sub.wait_open()
    for name in names[45:]:
        sub.subscribe(name)
    wait_for(lambda: all(sub.position(name) is not None for name in names), timeout=15)
    sc.hub.publish([tick(1)], names[-1])
    assert ticks([sub.next("test:tick", timeout=10)]) == [(names[-1], 1, 1)]
    assert sub.state == "open" and sub.stats["connections"] == 1


def test_close_is_idempotent_and_leaves_no_thread(
    sidecar: RunningSidecar, subscribe: Callable[..., Subscriber]
) -> None:
    before = set(threading.enumerate())
    sub = subscribe(sidecar.ws_url)
    sub.on("*", lambda event: None)
    sub.wait_open()
    sub.close()
    sub.close()
    assert sub.state == "closed" and sub.error is None
    wait_for(lambda: not (set(threading.enumerate()) - before))
    with sub:  # a closed subscriber stays closed
        assert sub.state == "closed"


def test_channel_errors_are_items_and_refused_channels_are_dropped(
    sidecar_factory: Callable[..., RunningSidecar], subscribe: Callable[..., Subscriber]
) -> None:
    sc = sidecar_factory(max_channels=1)
    sub = subscribe(sc.ws_url, channels=[P1, C9])
    sub.wait_open()
    errors = [i for i in take(sub, 2) if isinstance(i, ChannelError)]
    assert errors == [ChannelError(C9, "limit", errors[0].message, retrying=False)]
    assert sub.channels == [P1]


def test_an_identitys_own_channel_is_delivered_and_resumed(
    sidecar_server: Callable[..., Any], subscribe: Callable[..., Subscriber]
) -> None:
    """The hub subscribes a user's connection to ``user:<id>`` by itself: the subscriber takes
    it on (its events, its position), resumes it after a drop, and, once left, leaves it again
    when the hub grants it on the next connection."""
    from flask import Flask

    from sidecar import EventHub, Identity

    app = Flask("users")
    hub = EventHub(app, token="identity-token-0123456789")

    @hub.authenticate
    def who(request: Any) -> Identity | None:
        user = request.headers.get("X-User")
        return Identity(user) if user else None

    server = sidecar_server(app)
    sub = subscribe(server.ws_url, token=None, headers=["X-User: 42"])
    status = sub.wait_open()
    assert set(status["channels"]) == {"user:42"}
    with app.app_context():
        hub.send_to_user("42", tick(1))
        assert ticks([sub.next("test:tick")]) == [("user:42", 1, 1)]
        assert server.hub.drop_all(CloseCode.SLOW_CONSUMER, "slow consumer")
        hub.send_to_user("42", tick(2))  # while away: replayed from the window
        assert ticks([sub.next("test:tick")]) == [("user:42", 2, 2)]
    assert sub.status is not None and sub.status["channels"]["user:42"]["recovered"] is True
    assert sub.channels == ["user:42"]
    sub.unsubscribe("user:42")
    sub.next("channel:unsubscribed")
    assert server.hub.drop_all(CloseCode.SLOW_CONSUMER, "slow consumer")  # granted again
    sub.next("channel:unsubscribed", timeout=10)  # and left again
    with app.app_context():
        hub.send_to_user("42", tick(3))
        hub.broadcast_event(tick(4))
    assert ticks([sub.next("test:tick")]) == [(None, 1, 4)]
