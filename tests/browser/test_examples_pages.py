"""The example apps' pages in Chromium, under their own Content-Security-Policy
``script-src 'self'``: the client is the npm package ``sidecar-hub-client`` installed with the
app, not a script fetched from the sidecar, and the page still receives events.

* ``examples/electron``: ``index.html`` (its CSP is a meta tag) and ``renderer.js``, which
  imports the package from ``node_modules`` (the example's own ``npm ci``); the preload's
  ``window.sidecar`` bridge is injected before the page's scripts.
* ``examples/tauri``: the page built by Vite from the packed tarball (``npm_consumer``),
  served with the CSP of ``src-tauri/tauri.conf.json`` as a header (as Tauri does);
  ``window.__TAURI__.core.invoke`` is injected.

Either page is served from its own origin, which the sidecar allows (as it allows ``null`` or
``tauri://localhost`` in the real shells). A script from the sidecar's origin is refused.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.envelope import new_event
from sidecar.events import new_stream_created_event
from tests.browser.conftest import PageServer
from tests.browser.helpers import wait_js
from tests.conftest import TOKEN, RunningSidecar
from tests.nodetools import ELECTRON, ROOT, electron_example

TAURI_CONF = ROOT / "examples" / "tauri" / "src-tauri" / "tauri.conf.json"

#: Try to load the client from the sidecar itself, as the examples used to: the CSP must refuse.
_FOREIGN_SCRIPT = """
const done = arguments[arguments.length - 1];
const refused = (e) => done(e.violatedDirective);
document.addEventListener("securitypolicyviolation", refused, { once: true });
const script = document.createElement("script");
script.type = "module";
script.src = arguments[0];
script.onload = () => done("loaded");
document.head.append(script);
"""


def _refuses_foreign_scripts(browser: Any, running: RunningSidecar) -> None:
    verdict = browser.execute_async_script(
        _FOREIGN_SCRIPT, f"{running.url}/client/sidecar-client.js"
    )
    assert verdict.startswith("script-src"), verdict


def _csp_violations(browser: Any) -> list[str]:
    messages = [e["message"] for e in browser.get_log("browser")]
    return [m for m in messages if "Content Security Policy" in m]


def test_the_electron_page_receives_events_under_script_src_self(
    browser: Any,
    directory_server_factory: Any,
    web_sidecar_factory: Any,
    before_page_scripts: Any,
) -> None:
    electron_example()  # node_modules/sidecar-hub-client, as `npm ci` installs it
    meta = (ELECTRON / "index.html").read_text()
    assert "script-src 'self';" in meta and "http://127.0.0.1:*" not in meta.split("connect-src")[0]
    pages: PageServer = directory_server_factory(ELECTRON)
    running = web_sidecar_factory(extra_origins=(pages.origin,))
    connection = {"url": running.url, "ws": running.ws_url, "token": TOKEN}
    before_page_scripts(
        "window.sidecar = {"
        f" connection: async () => ({json.dumps(connection)}),"
        " publishDemo: async () => 202 };"
    )
    browser.get(f"{pages.origin}/index.html")
    wait_js(browser, "document.getElementById('state').textContent === 'open'", what="open")
    running.hub.broadcast_event(new_stream_created_event("p1", "s1", "from the test"))
    running.hub.publish([new_event("app:tick", {"i": 1})], "project:p1")  # not subscribed
    running.hub.broadcast_event(new_event("app:tick", {"i": 2}))
    item = wait_js(
        browser,
        "[...document.querySelectorAll('#events li')].map(li => li.textContent).join('\\n')"
        ".includes('app:tick') && document.getElementById('events').textContent",
        what="the events in the list",
    )
    assert '- #1 stream:created {"projectId":"p1","streamId":"s1","name":"from the test"}' in item
    assert '"i":2' in item and '"i":1' not in item
    assert _csp_violations(browser) == []  # before the foreign script below, none
    _refuses_foreign_scripts(browser, running)


def test_the_tauri_page_built_by_vite_receives_events_under_its_csp(
    browser: Any,
    npm_consumer: Any,
    directory_server_factory: Any,
    web_sidecar_factory: Any,
    before_page_scripts: Any,
) -> None:
    csp = json.loads(TAURI_CONF.read_text())["app"]["security"]["csp"]
    assert "script-src 'self';" in csp and "http://127.0.0.1:*" not in csp
    pages: PageServer = directory_server_factory(
        npm_consumer.dist, {"Content-Security-Policy": csp}
    )
    running = web_sidecar_factory(extra_origins=(pages.origin,))
    connection = {"url": running.url, "ws": running.ws_url, "port": running.port, "token": TOKEN}
    answer = json.dumps(connection)
    before_page_scripts(
        "window.__TAURI__ = { core: { invoke: async (command) =>"
        f" command === 'sidecar_connection' ? {answer} : null }} }};"
    )
    browser.get(f"{pages.origin}/index.html")
    wait_js(browser, "document.getElementById('state').value === 'open'", what="open")
    running.hub.broadcast_event(new_stream_created_event("p1", "s1", "from the test"))
    log = wait_js(
        browser,
        "(t => t.includes('stream:created') && t)(document.getElementById('log').textContent)",
        what="the event in the log",
    )
    assert '- #1 stream:created {"projectId":"p1","streamId":"s1","name":"from the test"}' in log
    assert "(resync: initial)" in log  # resyncOnFirstConnect
    assert _csp_violations(browser) == []  # before the foreign script below, none
    _refuses_foreign_scripts(browser, running)
