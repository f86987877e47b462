"""The conformance app (``sidecar.conformance``) and the Autobahn report judge.

The echo endpoint must run on the production machinery and exist only in the conformance
app; ``scripts/autobahn_summary.py`` must judge reports exactly as issue 6 says.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sidecar.envelope import new_event
from tests.conftest import TOKEN, RunningSidecar
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    HandshakeFailed,
    RawWS,
    start_conformance,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def echo_server() -> Iterator[RunningSidecar]:
    running = start_conformance()
    yield running
    running.close()


def test_echo_returns_text_as_text_and_binary_as_binary(echo_server: RunningSidecar) -> None:
    with RawWS.connect(echo_server.port, "/echo", token=TOKEN) as ws:
        for opcode, payload in [
            (OP_TEXT, "héllo".encode()),
            (OP_BINARY, b"\x00\xff"),
            (OP_TEXT, b""),
            (OP_BINARY, bytes(65_536)),  # the limit, in the 64-bit length form
        ]:
            ws.send_frame(opcode, payload)
            frame = ws.read_message(timeout=2.0)
            assert frame is not None
            assert (frame.opcode, frame.payload) == (opcode, payload)
        ws.send_close(1000)
        assert ws.read_close(reply=False) == 1000
        assert ws.read_eof() == b""


def test_echo_keeps_order_under_a_burst(echo_server: RunningSidecar) -> None:
    """Many messages sent without reading come back complete and in order (backpressure)."""
    count = 2000
    with RawWS.connect(echo_server.port, "/echo", token=TOKEN, timeout=10.0) as ws:
        sender = threading.Thread(
            target=lambda: [ws.send_frame(OP_TEXT, b"%05d" % i + b"." * 2000) for i in range(count)]
        )
        sender.start()
        for i in range(count):
            frame = ws.read_message(timeout=10.0)
            assert frame is not None and frame.payload[:5] == b"%05d" % i
        sender.join(10)
        ws.send_close(1000)
        assert ws.read_close(reply=False) == 1000


def test_echo_clients_get_no_greeting_but_ws_clients_do(echo_server: RunningSidecar) -> None:
    with RawWS.connect(echo_server.port, "/echo", token=TOKEN) as echo:
        echo.send_frame(OP_TEXT, b"first")
        frame = echo.read_message(timeout=2.0)
        assert frame is not None and frame.payload == b"first"
        echo.send_close(1000)
        echo.read_close(reply=False)
    ws, status = echo_server.connect_ready()
    assert status["payload"]["status"] == "connected"
    ws.close()


def test_echo_runs_the_real_handshake_checks(echo_server: RunningSidecar) -> None:
    with pytest.raises(HandshakeFailed) as no_token:
        RawWS.connect(echo_server.port, "/echo")
    assert no_token.value.status == 401
    with pytest.raises(HandshakeFailed) as foreign:
        RawWS.connect(echo_server.port, "/echo", token=TOKEN, origin="http://evil.example")
    assert foreign.value.status == 403
    own = f"http://127.0.0.1:{echo_server.port}"
    with RawWS.connect(
        echo_server.port,
        "/echo",
        origin=own,
        headers={"Sec-WebSocket-Protocol": f"sidecar.v1, auth.{TOKEN}"},
    ) as ws:
        assert ws.headers.get("sec-websocket-protocol") == "sidecar.v1"
        ws.send_frame(OP_CLOSE, b"\x03\xe8")
        assert ws.read_close(reply=False) == 1000


def test_echo_inbound_limit_is_the_configured_one() -> None:
    server = start_conformance(max_message_size=100)
    try:
        with RawWS.connect(server.port, "/echo", token=TOKEN) as ws:
            ws.send_frame(OP_BINARY, bytes(100))
            frame = ws.read_message(timeout=2.0)
            assert frame is not None and len(frame.payload) == 100
            ws.send_frame(OP_BINARY, bytes(101))
            assert ws.read_close(timeout=2.0) == 1009
    finally:
        server.close()


def test_production_app_has_no_echo(sidecar: RunningSidecar) -> None:
    with pytest.raises(HandshakeFailed) as info:
        RawWS.connect(sidecar.port, "/echo", token=TOKEN)
    assert info.value.status == 404


def test_module_entry_prints_ready_line_and_exits_0_on_sigterm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.conformance", "--port", "0", "--max-message-size", "4096"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        box: dict[str, bytes] = {}
        reader = threading.Thread(target=lambda: box.update(line=proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(20)
        ready = json.loads(box["line"])
        assert ready["event"] == "ready" and ready["echo"].endswith(f":{ready['port']}/echo")
        with RawWS.connect(ready["port"], "/echo", token=ready["token"]) as ws:
            ws.send_frame(OP_TEXT, b"x" * 4096)
            frame = ws.read_message(timeout=5.0)
            assert frame is not None and len(frame.payload) == 4096
            ws.send_frame(OP_TEXT, b"x" * 4097)
            assert ws.read_close(timeout=5.0) == 1009
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# -- the report judge ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def summary() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "autobahn_summary", ROOT / "scripts" / "autobahn_summary.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("case", "behavior", "close", "ok"),
    [
        ("1.1.1", "OK", "OK", True),
        ("7.1.6", "INFORMATIONAL", "INFORMATIONAL", True),
        ("6.4.3", "NON-STRICT", "OK", True),
        ("4.1.5", "NON-STRICT", "OK", True),
        ("3.2", "NON-STRICT", "OK", True),
        ("5.15", "NON-STRICT", "OK", True),
        ("5.16", "NON-STRICT", "OK", False),
        ("6.4.5", "NON-STRICT", "OK", False),
        ("4.1.2", "NON-STRICT", "OK", False),
        ("2.1", "FAILED", "OK", False),
        ("12.1.1", "UNIMPLEMENTED", "OK", False),
        ("1.1.2", "OK", "FAILED", False),
        ("1.1.3", "OK", "WRONG CODE", False),
        ("1.1.4", "OK", "INFORMATIONAL", False),
    ],
)
def test_judge(summary: ModuleType, case: str, behavior: str, close: str, ok: bool) -> None:
    verdict = summary.judge(case, {"behavior": behavior, "behaviorClose": close})
    assert (verdict is None) == ok, verdict


def test_summarise_counts_failures(
    summary: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = {
        "sidecar": {
            "1.1.1": {"behavior": "OK", "behaviorClose": "OK", "duration": 2},
            "3.2": {"behavior": "NON-STRICT", "behaviorClose": "OK", "duration": 1},
            "2.3": {"behavior": "FAILED", "behaviorClose": "OK", "duration": 1},
        }
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert summary.summarise(tmp_path) == 1
    out = capsys.readouterr().out
    assert "2.3" in out and "FAIL (1 failing case(s))" in out
    assert summary.main(["summarise", str(tmp_path)]) == 1


def test_reply_to_a_first_message_sent_before_the_greeting_is_read(
    sidecar_factory: Callable[..., RunningSidecar],
) -> None:
    """A client may speak first: the handler's reply must not be refused as "gone".

    The message can reach the handler before the hub thread has processed the registration;
    ``send_to_client`` must still accept the reply (it queues behind the registration).
    """
    server = sidecar_factory()
    refused: list[int] = []

    def handler(client: Any, event: dict[str, Any]) -> None:
        reply = new_event("test:reply", {"n": event["payload"]["n"]})
        if not server.hub.send_to_client(client, reply):
            refused.append(event["payload"]["n"])

    server.set_message_handler(handler)
    for n in range(30):
        with RawWS.connect(server.port, "/ws", token=TOKEN) as ws:
            ws.send_frame(OP_TEXT, json.dumps({"type": "test:ask", "payload": {"n": n}}).encode())
            greeting = ws.read_message(timeout=2.0)
            assert greeting is not None and b"connection:status" in greeting.payload
            if n not in refused:
                reply = ws.read_message(timeout=2.0)
                assert reply is not None and json.loads(reply.payload)["payload"] == {"n": n}
            ws.send_close(1000)
            assert ws.read_close(timeout=2.0, reply=False) == 1000
    assert refused == [], f"{len(refused)} of 30 replies refused"
