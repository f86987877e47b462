"""Issue 11, class 5: the token is accepted under its exact name only and never reaches a log.

* ``?%74oken=<token>`` (and ``TOKEN``, ``tok%65n``, ``token`` twice with a wrong first value …)
  is not the token: 401. Whatever the spelling, and wherever the token is put in a request
  (a query parameter of any name, the path), no log line shows it: not the sidecar's refusal
  lines, not Werkzeug's access log (``--log-level debug``), not the lines of a head the
  server's own parser refuses.
* The same in ``app.run()`` mode, where Werkzeug's own handler writes the access log:
  :class:`~sidecar.EventHub` puts a filter on the ``werkzeug`` logger.
* A ``SIDECAR_TOKEN`` that cannot travel in every documented way (a space, a comma, a quote,
  non-ASCII) is refused at start with one JSON error line that does not repeat it.

Black box: child processes (``SIDECAR_TREE`` picks the code, see :mod:`tests.hardening`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.launcher import SidecarProcess
from tests.conftest import TOKEN, wait_for
from tests.hardening import (
    TREE,
    child_environment,
    exchange,
    request_head,
    running,
    start_failure,
    upgrade_head,
)

#: Query strings that carry the token under a name the server must not accept.
SPELLINGS = [
    f"%74oken={TOKEN}",
    f"TOKEN={TOKEN}",
    f"Token={TOKEN}",
    f"tok%65n={TOKEN}",
    f"%2574oken={TOKEN}",
    f"token%3D{TOKEN}",
    f"token=wrong&token={TOKEN}",
    f"since=x:1&%54OKEN={TOKEN}",
    f"access_token={TOKEN}",
    f"x;token={TOKEN}",
]
#: Requests carrying the token somewhere other than an accepted place, each refused.
PLACES = {
    "ws": lambda port, query: upgrade_head(port, f"/ws?{query}", token=None),
    "api": lambda port, query: request_head(port, "GET", f"/api/v1/hub?{query}", token=None),
    "page": lambda port, query: request_head(port, "GET", f"/?{query}", token=None),
    "unknown": lambda port, query: request_head(port, "GET", f"/nope?{query}", token=None),
    "bad-head": lambda port, query: upgrade_head(port, f"/ws?{query}", token=None).replace(
        b"Upgrade: websocket\r\n", b"Upgrade: websocket\n"
    ),
}


class LogWindow:
    """The lines a child logs between :meth:`open` and :meth:`read` (markers around them)."""

    def __init__(self, child: SidecarProcess) -> None:
        self.child = child
        self.marker = uuid.uuid4().hex
        self._mark("begin")

    def _mark(self, where: str) -> None:
        path = f"/ws?mark={self.marker}-{where}"
        exchange(self.child.port, request_head(self.child.port, "GET", path, token=None))
        wait_for(lambda: f"{self.marker}-{where}" in self.child.log_text(), timeout=5.0)

    def read(self) -> str:
        """What was logged since the window opened (every line has arrived: the log is FIFO)."""
        self._mark("end")
        text = self.child.log_text()
        return text[text.index(f"{self.marker}-begin") : text.index(f"{self.marker}-end")]


@pytest.fixture(scope="module")
def child() -> Iterator[SidecarProcess]:
    """A sidecar logging at debug level (Werkzeug's access log included)."""
    with running(log_level="debug") as sidecar:
        yield sidecar


@pytest.mark.parametrize("query", SPELLINGS)
def test_the_token_under_another_name_is_refused_and_never_logged(child, query):
    window = LogWindow(child)
    for place, head in PLACES.items():
        reply = exchange(child.port, head(child.port, query))
        assert reply.status in (400, 401, 404), (place, reply)
        if place in ("ws", "api", "page"):
            assert reply.status == 401, (place, reply)
    log = window.read()
    assert TOKEN not in log, [line for line in log.splitlines() if TOKEN in line]
    assert log.count("GET /ws?") >= 2  # the access log shows the requests, only redacted


def test_the_token_in_the_path_is_never_logged(child):
    window = LogWindow(child)
    for path in (f"/ws/{TOKEN}", f"/api/v1/{TOKEN}", f"/{TOKEN}?x=1"):
        exchange(child.port, request_head(child.port, "GET", path, token=None))
    assert TOKEN not in window.read()


def test_the_exact_name_is_still_accepted(child):
    reply = exchange(child.port, upgrade_head(child.port, f"/ws?token={TOKEN}", token=None))
    assert reply.status == 101, reply


# -- app.run() mode: Werkzeug's own handler -----------------------------------------------------

APP = """
import sys
from flask import Flask
from sidecar import EventHub
app = Flask("demo")
EventHub(app, token=sys.argv[1])
app.run(host="127.0.0.1", port=0)
"""


@pytest.fixture
def app_run(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``app.run()`` of an app with an EventHub; its port and the file its stderr goes to."""
    log = tmp_path / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", APP, TOKEN],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=child_environment(),
            cwd=TREE,
        )
    try:
        found = wait_for(
            lambda: re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text()), 20.0
        )
        yield int(found[1]), log
    finally:
        proc.terminate()
        proc.wait(10)


def test_werkzeugs_own_access_log_never_shows_the_token(app_run):
    port, log = app_run
    for query in SPELLINGS:
        assert exchange(port, upgrade_head(port, f"/ws?{query}", token=None)).status == 401
        assert exchange(port, request_head(port, "GET", f"/api/v1/hub?{query}")).status == 200
    exchange(port, request_head(port, "GET", "/mark-end", token=None))
    wait_for(lambda: "/mark-end" in log.read_text(), timeout=5.0)
    text = log.read_text()
    assert "GET /ws?" in text, text  # the access log is there, redacted
    assert TOKEN not in text, [line for line in text.splitlines() if TOKEN in line]


# -- tokens that cannot travel -------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["has space-0123456789", "has,comma-0123456789", 'quote"0123456789', "caf\u00e9-0123456789"],
    ids=["space", "comma", "quote", "non-ascii"],
)
def test_a_token_that_cannot_travel_is_refused_at_start_with_one_line(token):
    code, line, result = start_failure("--port", "0", env=child_environment(SIDECAR_TOKEN=token))
    assert (code, line["error"]) == (2, "bad-option"), line
    assert "SIDECAR_TOKEN" in line["message"], line
    assert token not in result.stdout + result.stderr  # the refusal does not repeat it
