"""Helpers for the real-browser tests: waiting on page state, driving the harness page."""

from __future__ import annotations

import json
from typing import Any


def wait_js(driver: Any, expression: str, timeout: float = 10.0, what: str = "") -> Any:
    """Poll the JavaScript ``expression`` until it is truthy; return its value.

    Fails with ``what`` (or the expression) and the harness record after ``timeout`` seconds.
    """
    from selenium.webdriver.support.wait import WebDriverWait  # only once a browser runs

    def check(d: Any) -> Any:
        return d.execute_script(f"return ({expression});")

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.02).until(check)
    except Exception as exc:
        record = driver.execute_script("return window.rec ? JSON.stringify(window.rec) : null")
        raise AssertionError(
            f"not within {timeout} s: {what or expression}\npage record: {_short(record)}"
        ) from exc


def _short(text: str | None, limit: int = 3000) -> str:
    if text is None:
        return "(none)"
    return text if len(text) <= limit else text[:limit] + "…"


def open_harness(driver: Any, url: str) -> None:
    """Load the harness page and wait until it imported ``sidecar-client.js``."""
    driver.get(url)
    status = wait_js(driver, "window.harnessReady", what="the harness page to load the client")
    assert status == "ok", status


def start_client(driver: Any, ws_url: str, **options: Any) -> None:
    """``new SidecarClient(ws_url, options)`` in the harness page (recording into ``rec``)."""
    driver.execute_script(
        "return window.startClient(arguments[0], JSON.parse(arguments[1]))",
        ws_url,
        json.dumps(options),
    )


def record(driver: Any) -> dict[str, Any]:
    """The harness record: ``{"events": [...], "states": [...], "resyncs": [...]}``."""
    return driver.execute_script("return JSON.parse(JSON.stringify(window.rec))")


def wait_open(driver: Any, count: int = 1, timeout: float = 10.0) -> None:
    """Wait until the client has reached ``open`` ``count`` times."""
    wait_js(
        driver,
        f"window.rec.states.filter(s => s.state === 'open').length >= {count}",
        timeout,
        what=f"the client to be open (connection {count})",
    )
