"""sidecar-client.js with channels, in Chromium, against real sidecars: audiences, the channel
on each event, subscribe and unsubscribe, resume of every channel after an eviction, a resync
per channel after a restart, refusals reported, and channels beyond a URL subscribed by
message under the hub's rate limit. The page is ``pages/harness.html`` on another origin."""

from __future__ import annotations

from typing import Any

from sidecar.envelope import new_event
from sidecar.protocol import CloseCode
from tests.browser.conftest import PageServer
from tests.browser.helpers import open_harness, record, start_client, wait_js, wait_open
from tests.conftest import TOKEN, RunningSidecar, wait_for

P1, C9 = "project:p1", "chat:c9"
FAST = {"base": 50, "cap": 250, "stableAfter": 5000}


def tick(i: int) -> Any:
    return new_event("test:tick", {"i": i})


def _setup(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any, **options: Any
) -> tuple[PageServer, RunningSidecar]:
    pages: PageServer = page_server_factory()
    running = web_sidecar_factory(extra_origins=(pages.origin,), **options)
    open_harness(browser, pages.harness_url(f"{running.url}/client/sidecar-client.js"))
    return pages, running


def _ticks(rec: dict[str, Any]) -> list[tuple[str | None, int, int]]:
    return [
        (e.get("channel"), e["seq"], e["payload"]["i"])
        for e in rec["events"]
        if e["type"] == "test:tick"
    ]


def _wait_ticks(browser: Any, n: int, timeout: float = 10.0) -> None:
    wait_js(
        browser,
        f"window.rec.events.filter(e => e.type === 'test:tick').length >= {n}",
        timeout,
        what=f"{n} ticks",
    )


def test_each_event_carries_its_channel_and_only_subscribed_channels_arrive(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    _, running = _setup(browser, page_server_factory, web_sidecar_factory)
    hub = running.hub
    start_client(browser, running.ws_url, token=TOKEN, channels=[P1])
    wait_open(browser)
    hub.publish([tick(1)], P1)
    hub.publish([tick(2)], C9)  # not subscribed: never sent
    hub.publish([tick(3)])
    _wait_ticks(browser, 2)
    browser.execute_script(f"window.client.subscribe('{C9}')")
    wait_js(browser, f"window.client.position('{C9}') !== null", what="chat:c9 subscribed")
    hub.publish([tick(4)], C9)
    _wait_ticks(browser, 3)
    browser.execute_script(f"window.client.unsubscribe('{P1}')")
    wait_js(
        browser,
        "window.rec.events.some(e => e.type === 'channel:unsubscribed')",
        what="the hub's channel:unsubscribed",
    )
    hub.publish([tick(5)], P1)
    hub.publish([tick(6)])
    _wait_ticks(browser, 4)
    rec = record(browser)
    assert _ticks(rec) == [(P1, 1, 1), (None, 1, 3), (C9, 2, 4), (None, 2, 6)]
    status = rec["events"][0]
    assert status["type"] == "connection:status" and set(status["payload"]["channels"]) == {P1}
    subscribed = next(e for e in rec["events"] if e["type"] == "channel:subscribed")
    assert subscribed["payload"]["channel"] == C9 and subscribed["payload"]["seq"] == 1
    assert browser.execute_script("return window.client.channels") == [C9]


def test_an_evicted_page_resumes_every_channel_and_misses_nothing(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    _, running = _setup(browser, page_server_factory, web_sidecar_factory)
    hub = running.hub
    start_client(browser, running.ws_url, token=TOKEN, channels=[P1, C9], backoff=FAST)
    wait_open(browser)
    hub.publish([tick(0)], P1)
    _wait_ticks(browser, 1)
    assert hub.drop_all(CloseCode.SLOW_CONSUMER, "slow consumer")
    for i in range(1, 31):
        hub.publish([tick(i)], (P1, C9, None)[i % 3])
    _wait_ticks(browser, 31)
    wait_for(lambda: hub.client_count() == 1)
    rec = record(browser)
    got = _ticks(rec)
    assert sorted(i for _, _, i in got) == list(range(31))  # each once
    for channel in (P1, C9, None):
        seqs = [seq for ch, seq, _ in got if ch == channel]
        assert seqs == list(range(1, len(seqs) + 1)), (channel, seqs)
    statuses = [e["payload"] for e in rec["events"] if e["type"] == "connection:status"]
    assert len(statuses) == 2 and statuses[1]["recovered"] is True
    assert all(s["recovered"] for s in statuses[1]["channels"].values()), statuses[1]
    assert rec["resyncs"] == []


def test_a_restart_resyncs_each_channel_and_get_token_runs_before_every_attempt(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    pages, first = _setup(browser, page_server_factory, web_sidecar_factory)
    start_client(browser, first.ws_url, asyncToken=TOKEN, channels=[P1], backoff=FAST)
    wait_open(browser)
    first.hub.publish([tick(1)], P1)
    _wait_ticks(browser, 1)
    old = (first.hub.epoch, first.hub.position(P1).epoch)
    port = first.port
    first.close()
    second = web_sidecar_factory(port=port, extra_origins=(pages.origin,))
    wait_js(browser, "window.rec.resyncs.length >= 2", what="a resync per channel")
    second.hub.publish([tick(2)], P1)
    _wait_ticks(browser, 2)
    rec = record(browser)
    assert [(r["channel"], r["reason"], r["previousEpoch"]) for r in rec["resyncs"]] == [
        (None, "new-epoch", old[0]),
        (P1, "new-epoch", old[1]),
    ]
    assert rec["resyncs"][1]["previousSeq"] == 1 and rec["resyncs"][1]["seq"] == 0
    assert _ticks(rec) == [(P1, 1, 1), (P1, 1, 2)]
    attempts = len([s for s in rec["states"] if s["state"] in ("connecting", "reconnecting")])
    assert rec["tokenCalls"] == attempts >= 2


def test_a_refused_channel_is_reported_and_dropped(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    _, running = _setup(browser, page_server_factory, web_sidecar_factory, max_channels=1)
    start_client(browser, running.ws_url, token=TOKEN, channels=[P1, C9])
    wait_open(browser)
    wait_js(browser, "window.rec.errors.length >= 1", what="the refusal")
    rec = record(browser)
    assert [(e["channel"], e["code"], e["retrying"]) for e in rec["errors"]] == [
        (C9, "limit", False)
    ]
    assert browser.execute_script("return window.client.channels") == [P1]
    raised = browser.execute_script(
        "try { window.client.send('channel:subscribe', {}); return null; }"
        " catch (err) { return err.name; }"
    )
    assert raised == "TypeError"


def test_channels_beyond_one_url_are_subscribed_by_message_under_the_rate_limit(
    browser: Any, page_server_factory: Any, web_sidecar_factory: Any
) -> None:
    """70 channels of 97-byte names: ~36 fit in a 4 KB URL, the rest are subscribed by message
    at most 20 per 1.25 s (the hub would close with 1008 beyond 20 a second)."""
    _, running = _setup(browser, page_server_factory, web_sidecar_factory, max_channels=100)
    names = [f"doc:{i:02d}{'x' * 60}:{'y' * 30}" for i in range(70)]
    start_client(browser, running.ws_url, token=TOKEN, channels=names)
    wait_open(browser)
    wait_js(
        browser,
        f"window.client.position('{names[-1]}') !== null",
        timeout=15,
        what="the last channel subscribed",
    )
    running.hub.publish([tick(1)], names[-1])
    _wait_ticks(browser, 1)
    rec = record(browser)
    status = rec["events"][0]["payload"]
    by_message = [e for e in rec["events"] if e["type"] == "channel:subscribed"]
    assert len(status["channels"]) + len(by_message) == 70 and len(by_message) > 20
    assert [s["state"] for s in rec["states"]] == ["connecting", "open"]  # never closed
    assert _ticks(rec) == [(names[-1], 1, 1)]
