"""Issue 12, section 4: the origins of real desktop shells, and refusals a developer can act on.

* ``Origin: null`` (Electron ``loadFile`` today, and any sandboxed iframe) is refused unless
  ``--allowed-origins`` lists ``null``, and then only with the token.
* The defaults admit Electron's older ``file://``, Tauri on every OS (``tauri://localhost``,
  ``http(s)://tauri.localhost``) and Vite's dev server; ``app://…`` works when listed (the
  list replaces the defaults). Near misses of each are refused.
* A refused Origin or Host is logged with the value, sanitised and truncated, with the way to
  allow it; a bad ``--allowed-origins`` value is one JSON error line naming the value and the
  expected form.

Black box: child processes (``SIDECAR_TREE`` picks the code, see :mod:`tests.hardening`).
Refusal log lines are rate-limited per peer, so each logged refusal comes from its own
loopback address (``127.0.0.N``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sidecar.launcher import SidecarProcess
from tests.conftest import TOKEN, wait_for
from tests.hardening import exchange, running, start_failure, upgrade_head

DEFAULT_SHELLS = [
    "file://",
    "tauri://localhost",
    "http://tauri.localhost",
    "https://tauri.localhost",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
]
NEAR_MISSES = [
    "null",
    "NULL",
    "http://localhost:5174",
    "tauri://localhost.evil.example",
    "tauri://evil",
    "http://tauri.localhost.evil.example",
    "https://tauri.localhost:444",
    "file://evil.example",
    "app://main",
    "null, null",
]


def _status(child: SidecarProcess, origin: str | None, *, token: bool = True) -> int:
    headers = [f"Origin: {origin}"] if origin is not None else []
    head = upgrade_head(child.port, headers=headers, token=TOKEN if token else None)
    return exchange(child.port, head).status


@pytest.fixture(scope="module")
def defaults() -> Iterator[SidecarProcess]:
    """A sidecar with the default origin list."""
    with running() as child:
        yield child


@pytest.mark.parametrize("origin", DEFAULT_SHELLS)
def test_the_defaults_admit_the_desktop_shells(defaults, origin):
    assert _status(defaults, origin) == 101


@pytest.mark.parametrize("origin", NEAR_MISSES)
def test_near_misses_of_the_defaults_are_refused(defaults, origin):
    assert _status(defaults, origin) == 403


def test_null_is_accepted_only_when_listed_and_only_with_the_token():
    with running(allowed_origins="null,app://main") as child:
        assert _status(child, "null") == 101
        assert _status(child, "null", token=False) == 401
        assert _status(child, "app://main") == 101
        assert _status(child, "app://main/") == 101
        assert _status(child, "app://other") == 403
        assert _status(child, "http://localhost:5173") == 403  # the list replaced the defaults


def _logged(child: SidecarProcess, source: str, head: bytes) -> str:
    """Send ``head`` from ``source``; the log line the refusal wrote (it names the peer)."""
    marker = uuid.uuid4().hex
    exchange(child.port, head, source=source)
    # then a refusal of another kind (401): the log shows it after the first one
    exchange(child.port, upgrade_head(child.port, f"/ws?m={marker}", token=None), source=source)
    wait_for(lambda: marker in child.log_text(), timeout=5.0)
    lines = [line for line in child.log_text().splitlines() if f"from {source}" in line]
    return lines[0]


def test_a_refused_origin_is_logged_with_its_value_and_the_way_to_allow_it(defaults):
    line = _logged(
        defaults,
        "127.0.0.2",
        upgrade_head(defaults.port, headers=["Origin: http://localhost:5174"]),
    )
    assert "origin 'http://localhost:5174' not allowed (add it with --allowed-origins)" in line


def test_a_refused_origin_is_sanitised_and_truncated_in_the_log(defaults):
    # C1 controls (a terminal's CSI, NEL) are legal obs-text in a header value
    origin = "http://evil.example/\x9b31m\x85" + "x" * 5000
    head = upgrade_head(defaults.port, headers=[f"Origin: {origin}"])
    line = _logged(defaults, "127.0.0.3", head)
    assert "\x9b" not in line and "\x85" not in line, line  # escaped, not written raw
    assert "\\x9b31m\\x85" in line, line
    assert "x" * 200 not in line and "…" in line, line  # truncated
    assert len(line) < 400, line


def test_a_refused_host_is_logged_with_its_value(defaults):
    head = upgrade_head(defaults.port).replace(
        f"Host: 127.0.0.1:{defaults.port}".encode(), b"Host: rebind.evil.example"
    )
    line = _logged(defaults, "127.0.0.4", head)
    assert "host 'rebind.evil.example' not allowed" in line, line


@pytest.mark.parametrize(
    "value",
    ["localhost:5173", "http://a.example/path", "http://user@a.example", "http://a:99999", "*"],
)
def test_a_bad_allowed_origins_value_is_one_line_naming_it_and_the_form(value):
    code, line, _ = start_failure("--port", "0", "--allowed-origins", f"file://,{value}")
    assert (code, line["error"]) == (2, "bad-option"), line
    assert repr(value) in line["message"] and "scheme://host[:port]" in line["message"], line
