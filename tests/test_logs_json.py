"""JSON log lines (``--log-format json|auto``): every line a sidecar writes parses, token-free.

The scripted sessions run the sidecar as a child process (``python -m sidecar``), as a log
collector sees it: its stderr, line by line, through the bounded writer of ``sidecar.logs``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from sidecar import logs
from sidecar.logs import JsonFormatter, json_wanted
from tests import wsreader
from tests.conftest import TOKEN, wait_for
from tests.hardening import child_environment, counters, exchange, running, upgrade_head
from tests.test_process import _env

KEYS = {"ts", "level", "logger", "msg"}


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (fails, naming the line, on one that is not)."""
    objects = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(value, dict) and set(value) >= KEYS, line
        objects.append(value)
    return objects


def _record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("sidecar.session", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


# -- the formatter -----------------------------------------------------------------------------


def test_a_record_is_one_json_line_with_its_fields_and_no_secret():
    secret = "s3cret-token-0123456789"
    logs.hide(secret)
    line = JsonFormatter().format(
        _record(
            "client %s sent %s\n(ignored)",
            "c7",
            f"'{secret}' \u2028\x00",
            client="c7",
            peer=("127.0.0.1", 5000),
            code=4008,
            reason=f"token {secret}",
            ok=True,
        )
    )
    assert "\n" not in line and line.isascii() and secret not in line
    value = json.loads(line)
    assert value["level"] == "warning" and value["logger"] == "sidecar.session"
    assert value["msg"] == "client c7 sent '[redacted]' \u2028\x00\n(ignored)"
    assert value["ts"].endswith("Z") and len(value["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert (value["client"], value["code"], value["ok"]) == ("c7", 4008, True)
    assert value["peer"] == "('127.0.0.1', 5000)" and value["reason"] == "token [redacted]"


def test_a_traceback_stays_inside_the_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("sidecar", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    value = json.loads(JsonFormatter().format(record))
    assert value["msg"].startswith("failed\nTraceback") and "ValueError: boom" in value["msg"]


def test_auto_means_json_unless_the_stream_is_a_terminal():
    leader, follower = os.openpty()
    with open(follower, "w") as terminal, io.StringIO() as pipe_like:
        assert not json_wanted("auto", terminal)
        assert json_wanted("auto", pipe_like)
        assert json_wanted("json", terminal) and not json_wanted("text", pipe_like)
    os.close(leader)
    assert json_wanted("auto", None)  # --log-file: never a terminal


def test_setup_writes_json_through_the_bounded_writer():
    loggers = [logging.getLogger(name) for name in logs.LOGGERS]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    stream = io.StringIO()
    logs.setup("info", stream=stream, log_format="json")
    try:
        logging.getLogger("sidecar").info("hello %s", "there", extra={"client": "c1"})
    finally:
        logs.shutdown()
        for logger, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate  # caplog needs them back
            logger.setLevel(level)
    (value,) = parse_lines(stream.getvalue())
    assert (value["msg"], value["client"]) == ("hello there", "c1")


# -- a scripted session ----------------------------------------------------------------------


def _publish(url: str, payload: dict[str, Any]) -> int:
    body = json.dumps({"type": "app:blob", "payload": payload}).encode()
    request = urllib.request.Request(
        url + "/api/v1/events", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def _evict_a_stalled_client(url: str, port: int) -> None:
    stalled = wsreader.connect(port, token=TOKEN, rcvbuf=4096)
    assert stalled.recv_json()["type"] == "connection:status"
    blob = "x" * 200_000

    def evicted() -> bool:
        _publish(url, {"blob": blob})
        return counters(url)["hub"]["evicted"] == 1

    wait_for(evicted, timeout=20)
    stalled.close()


def _script(child: Any) -> None:
    """Connect, send bad input, get refused, be evicted; then the caller stops the child."""
    ws = wsreader.connect(child.port, token=TOKEN)
    assert ws.recv_json()["type"] == "connection:status"
    ws.send_text("{not json")
    ws.send_text('["not", "an", "envelope"]')
    # a refused handshake whose logged Origin carries the token: scrubbed
    refused = exchange(child.port, upgrade_head(child.port, headers=[f"Origin: http://{TOKEN}"]))
    assert refused.status == 403
    wrong = exchange(child.port, upgrade_head(child.port, f"/ws?token={TOKEN}x", token=None))
    assert wrong.status == 401
    _evict_a_stalled_client(child.url, child.port)
    ws.close()


def test_every_line_of_a_scripted_session_is_json_and_token_free():
    with running(log_format="json", log_level="debug", queue_size=2) as child:
        _script(child)
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 0
        text = child.log_text()
    lines = parse_lines(text)
    assert TOKEN not in text
    messages = " | ".join(line["msg"] for line in lines)
    for expected in ("listening on", "malformed JSON", "not an event envelope", "dropped"):
        assert expected in messages, messages
    assert "received SIGTERM" in messages and lines[-1]["msg"] == "stopped"
    by_field = [line for line in lines if "client" in line]
    assert any(line.get("peer") for line in by_field)  # connected from …
    assert any(line.get("code") == 4008 for line in by_field)  # the eviction
    refusals = [line for line in lines if line.get("status") in (401, 403)]
    assert {line["reason"] for line in refusals} == {"origin", "token"}


def test_auto_writes_json_to_a_pipe_and_a_startup_failure_is_json_on_stderr_too():
    with running(log_format="auto") as child:
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 0
        assert parse_lines(child.log_text())
    env = child_environment(SIDECAR_LOG_FORMAT="json")
    failed = subprocess.run(
        [sys.executable, "-m", "sidecar", "--port", "-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 2
    assert json.loads(failed.stdout)["error"] == "bad-option"
    (line,) = parse_lines(failed.stderr)
    assert line["level"] == "error" and line["error"] == "bad-option"


def test_text_stays_the_default():
    with running() as child:
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 0
        assert " INFO sidecar: listening on " in child.log_text()


# -- under gunicorn ------------------------------------------------------------------------------


def test_gunicorn_with_the_sidecars_config_logs_json_lines_when_asked(tmp_path):
    pytest.importorskip("gunicorn")  # the CI image has it (the test extra)
    port = _free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "-c", "python:sidecar.gunicorn_conf"),
            *("--bind", f"127.0.0.1:{port}", "--threads", "8", "sidecar.wsgi:create_app()"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(SIDECAR_TOKEN=TOKEN, SIDECAR_LOG_FORMAT="json"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url) or server.poll() is not None, timeout=20)
        assert server.poll() is None
        ws = wsreader.connect(port, token=TOKEN)
        assert ws.recv_json()["type"] == "connection:status"
        ws.send_text("{not json")
        assert exchange(port, upgrade_head(port, headers=[f"Origin: http://{TOKEN}"])).status
        ws.close()
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=5)
    lines = parse_lines(err)
    assert TOKEN not in err
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "sidecar.session"} <= loggers, loggers


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health/ready", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "as_json"),
    [
        (["--port", "-1", "--log-format", "json"], True),
        (["--log-format=json", "--port", "-1"], True),
        (["--port", "-1"], False),
        (["--port", "-1", "--log-format", "text"], False),
    ],
)
def test_a_startup_failure_writes_its_stderr_line_in_the_format_asked_for(
    argv, as_json, capsys, monkeypatch
):
    from sidecar import cli

    monkeypatch.delenv("SIDECAR_LOG_FORMAT", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    if as_json:
        (line,) = parse_lines(err)
        assert line["error"] == "bad-option" and "--port" in line["msg"]
    else:
        assert err.startswith("sidecar: ") and "--port" in err
