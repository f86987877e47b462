"""The debug page ``GET /`` in Chromium: it connects, drops the token from the address bar,
shows events and counters; a screenshot goes to ``artifacts/browser/debug-page.png``."""

from __future__ import annotations

from typing import Any

from sidecar import events
from sidecar.envelope import new_event
from sidecar.protocol import CloseCode
from tests.browser.conftest import artifacts_dir
from tests.browser.helpers import wait_js
from tests.conftest import TOKEN, wait_for


def _publish_sample(hub: Any) -> int:
    sample = [
        events.new_stream_created_event("proj-1", "stream-42", "Checkout redesign"),
        events.new_stream_phase_changed_event(
            "proj-1", "stream-42", "planning", ["prd.md", "ux-spec.md"]
        ),
        events.new_artifact_created_event(
            "art-7", "PRD", "prd", "docs/prd.md", "draft", "2", "Planning", False
        ),
        events.new_workflow_status_changed_event("proj-1", "stream-42", "wf-create-prd", "running"),
        events.new_chat_text_delta_event("conv-1", "msg-9", "Here is the first draft of the PRD"),
        events.new_stream_updated_event("proj-1", "stream-42", {"name": "Checkout v2"}),
        new_event("app:build-finished", {"ok": True, "durationMs": 5123}),
    ]
    for event in sample:
        assert hub.broadcast_event(event)
    return len(sample)


def test_debug_page_renders_live_events(browser: Any, web_sidecar_factory: Any) -> None:
    running = web_sidecar_factory()
    history_before = browser.execute_script("return history.length")
    browser.get(f"{running.url}/?token={TOKEN}")
    wait_js(browser, "document.body.dataset.state === 'open'", what="the page to connect")
    assert browser.current_url == f"{running.url}/"  # the token is gone from the address bar
    # ... and from the history: the entry was replaced, not pushed
    assert browser.execute_script("return history.length") == history_before + 1

    count = _publish_sample(running.hub)
    wait_js(
        browser,
        f"document.querySelectorAll('#events tr[data-seq]').length >= {count}",
        what="the sample events in the table",
    )
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#events tr')]"
        ".map(r => [r.dataset.type, r.dataset.seq ?? null, r.cells[4].textContent])"
    )
    assert [r[0] for r in rows[:count]] == [
        "app:build-finished",
        "stream:updated",
        "chat:text-delta",
        "workflow:status-changed",
        "artifact:created",
        "stream:phase-changed",
        "stream:created",
    ]  # newest first
    assert [r[1] for r in rows[:count]] == [str(n) for n in range(count, 0, -1)]
    assert '"streamId": "stream-42"' in rows[count - 1][2]
    assert rows[-1][0] == "connection:status"
    assert browser.execute_script("return document.getElementById('seq').textContent") == str(count)

    # Counters: /api/v1/hub when the sidecar has it, else the page says it is unavailable.
    note = wait_js(
        browser,
        "(t => !t.startsWith('loading') && t)"
        "(document.getElementById('counters-note').textContent)",
        what="the counters to load or fail",
    )
    if "unavailable" not in note:
        wait_js(
            browser,
            "document.getElementById('stat-clients').textContent === '1'",
            what="one connected client in the counters",
        )
    wait_for(lambda: running.hub.client_count() == 1)

    browser.execute_script("document.getElementById('filter').value = 'stream:'")
    browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#events tr')].filter(r => !r.hidden).length"
    )
    assert shown == 3
    browser.execute_script("document.getElementById('filter').value = ''")
    browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")

    # The page's own publish button goes through POST /api/v1/events (with the bearer token).
    browser.execute_script("document.getElementById('ping').click()")
    ping = wait_js(
        browser,
        "document.querySelector('#events tr[data-type=\"debug:ping\"]')?.dataset.seq",
        what="the debug:ping published by the page's button",
    )
    assert ping == str(count + 1)

    path = artifacts_dir() / "debug-page.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in errors if "/api/v1/hub" not in e["message"]], errors


def test_debug_page_survives_a_sidecar_eviction(browser: Any, web_sidecar_factory: Any) -> None:
    """The page is a SidecarClient too: dropped, it resumes and misses nothing."""
    running = web_sidecar_factory()
    hub = running.hub
    browser.get(f"{running.url}/?token={TOKEN}")
    wait_js(browser, "document.body.dataset.state === 'open'", what="the page to connect")

    # dropped as a slow consumer (4008), then 20 events while the page is away
    assert hub.drop_all(CloseCode.SLOW_CONSUMER, "slow consumer")
    for i in range(20):
        assert hub.broadcast_event(new_event("app:tick", {"i": i}))
    wait_js(
        browser,
        "document.querySelectorAll('#events tr[data-type=\"app:tick\"]').length === 20",
        what="the 20 events published while the page was away",
    )
    seqs = browser.execute_script(
        "return [...document.querySelectorAll('#events tr[data-type=\"app:tick\"]')]"
        ".map(r => Number(r.dataset.seq))"
    )
    assert seqs == list(range(20, 0, -1))
    notes = browser.execute_script("return document.getElementById('notes').textContent")
    assert "recovered true" in notes and "resync" not in notes


def test_debug_page_shows_each_events_channel_and_filters_by_it(
    browser: Any, web_sidecar_factory: Any
) -> None:
    """Channels from ``?channels=`` and from the join box; a channel column; the channel
    filter; leaving a channel stops its rows."""
    running = web_sidecar_factory()
    hub = running.hub
    browser.get(f"{running.url}/?token={TOKEN}&channels=project:p1")
    wait_js(browser, "document.body.dataset.state === 'open'", what="the page to connect")
    assert "token" not in browser.current_url and "channels=project" in browser.current_url
    browser.execute_script(
        "document.getElementById('join-name').value = 'chat:c9';"
        "document.getElementById('join').requestSubmit();"
    )
    wait_js(
        browser,
        "document.querySelector('#events tr[data-type=\"channel:subscribed\"]')",
        what="chat:c9 joined",
    )
    hub.publish([new_event("app:tick", {"i": 1})], "project:p1")
    hub.publish([new_event("app:tick", {"i": 2})], "chat:c9")
    hub.publish([new_event("app:tick", {"i": 3})], "doc:1")  # not joined
    hub.publish([new_event("app:tick", {"i": 4})])
    wait_js(
        browser,
        "document.querySelectorAll('#events tr[data-type=\"app:tick\"]').length === 3",
        what="three ticks",
    )
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#events tr[data-type=\"app:tick\"]')]"
        ".map(r => [r.cells[1].textContent, r.dataset.seq, r.cells[4].textContent])"
    )
    assert rows == [
        ["\N{EN DASH}", "1", '{ "i": 4 }'],
        ["chat:c9", "1", '{ "i": 2 }'],
        ["project:p1", "1", '{ "i": 1 }'],
    ]

    def shown(channel: str) -> list[str]:
        browser.execute_script(
            "const s = document.getElementById('channel-filter');"
            "s.value = arguments[0]; s.dispatchEvent(new Event('change'));",
            channel,
        )
        return browser.execute_script(
            "return [...document.querySelectorAll('#events tr[data-type=\"app:tick\"]')]"
            ".filter(r => !r.hidden).map(r => r.cells[4].textContent)"
        )

    assert shown("chat:c9") == ['{ "i": 2 }']
    assert shown("") == ['{ "i": 4 }']  # the default channel
    assert shown("*") == ['{ "i": 4 }', '{ "i": 2 }', '{ "i": 1 }']
    options = browser.execute_script(
        "return [...document.getElementById('channel-filter').options].map(o => o.value)"
    )
    assert options == ["*", "", "project:p1", "chat:c9"]

    browser.execute_script(
        "[...document.querySelectorAll('#channels li')]"
        ".find(li => li.textContent.startsWith('project:p1')).querySelector('button').click()"
    )
    wait_js(
        browser,
        "document.querySelector('#events tr[data-type=\"channel:unsubscribed\"]')",
        what="project:p1 left",
    )
    hub.publish([new_event("app:tick", {"i": 5})], "project:p1")
    hub.publish([new_event("app:tick", {"i": 6})])
    wait_js(
        browser,
        "document.querySelectorAll('#events tr[data-type=\"app:tick\"]').length === 4",
        what="the default channel's tick",
    )
    newest = "return document.querySelector('#events tr[data-type=\"app:tick\"]')"
    assert browser.execute_script(newest + ".cells[4].textContent") == '{ "i": 6 }'
    listed = browser.execute_script("return document.getElementById('channels').textContent")
    assert "chat:c9" in listed and "project:p1" not in listed
