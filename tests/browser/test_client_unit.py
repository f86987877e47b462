"""sidecar-client.js against a fake WebSocket, inside Chromium (pages/client-unit.mjs).

Covers what a correct server never shows: duplicates, seq gaps, every close-code class, the
backoff schedule and its reset, ``online``, listener errors; and every shared client vector
(``tests/data/client-vectors.json``, also run by the Python client and in Node).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.browser.conftest import PageServer
from tests.browser.helpers import open_harness

ROOT = Path(__file__).resolve().parents[2]


def test_client_unit_suite(browser: Any, page_server_factory: Any) -> None:
    pages: PageServer = page_server_factory()
    open_harness(browser, pages.harness_url(f"{pages.origin}/sidecar-client.js"))
    results = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import("/client-unit.mjs")
          .then((unit) => unit.runAll(window.sidecarModule))
          .then(done, (err) => done([{name: "import", ok: false, error: String(err)}]));
        """
    )
    failures = [f"{r['name']}: {r['error']}" for r in results if not r["ok"]]
    assert not failures, "\n\n".join(failures)
    vectors = json.loads((ROOT / "tests" / "data" / "client-vectors.json").read_text())
    names = [r["name"] for r in results]
    assert len(names) >= 14 + 2 + len(vectors["scenarios"]), names
    assert sum(name.startswith("vector: ") for name in names) == len(vectors["scenarios"])
