"""The sidecar as a desktop app runs it: a child process with a ready line and a lifecycle.

The children are started with :mod:`sidecar.launcher` (the tests' one launcher); its own
behaviour is tested without a server in ``tests/test_launcher.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from sidecar.core.gcpolicy import BURST
from sidecar.launcher import DEFAULT_ARGV, SidecarProcess, child_env, launch
from tests.conftest import TOKEN, recv_close, recv_json, wait_for


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(extra)
    return child_env(env)


class Child:
    """A sidecar subprocess and its parsed ready line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, stdin: Any = None) -> None:
        self.process = launch(
            [sys.executable, "-m", "sidecar", "--port", "0", "--ping-interval", "0", *args],
            env=env or _env(SIDECAR_TOKEN=TOKEN),
            same_package=False,  # _env did it
            stdin=subprocess.DEVNULL if stdin is None else stdin,
        )
        self.ready = self.process.ready

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.proc is not None
        return self.process.proc

    def connect(self, token: str = TOKEN) -> websocket.WebSocket:
        ws = websocket.create_connection(
            self.ready["ws"],
            header=[f"Authorization: Bearer {token}"],
            timeout=5,
            suppress_origin=True,
        )
        assert recv_json(ws)["type"] == "connection:status"
        return ws

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        self.process.stop(None, timeout=0)  # killed at once


@pytest.fixture
def child() -> Iterator[type[Child]]:
    started: list[Child] = []

    class Tracked(Child):
        def __init__(self, *args: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    yield Tracked
    for c in started:
        c.stop()


def test_ready_line_is_one_json_object_with_the_bound_port(child):
    c = child()
    ready = c.ready
    assert ready["event"] == "ready"
    assert ready["port"] > 0
    assert ready["url"] == f"http://127.0.0.1:{ready['port']}"
    assert ready["ws"] == f"ws://127.0.0.1:{ready['port']}/ws"
    assert ready["pid"] == c.proc.pid
    assert ready["version"]
    assert ready["epoch"]
    assert "token" not in ready  # it came from SIDECAR_TOKEN, the parent knows it


def test_generated_token_is_in_the_ready_line_and_works(child):
    c = child(env=_env())
    token = c.ready["token"]
    assert len(token) >= 32
    c.connect(token)
    with pytest.raises(websocket.WebSocketBadStatusException):
        c.connect("not-the-token")


@pytest.mark.posix_only("SIGTERM; on Windows a parent's signal is TerminateProcess")
def test_sigterm_closes_every_client_with_1001_and_exits_0(child):
    c = child()
    clients = [c.connect() for _ in range(3)]
    c.proc.send_signal(signal.SIGTERM)
    for ws in clients:
        assert recv_close(ws) == 1001
        ws.send_close()  # the closing handshake, then TCP close, as a browser does
        ws.shutdown()
    assert c.wait(3) == 0


def _hub(c: Child) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{c.ready['url']}/api/v1/hub", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.loads(response.read())["hub"])


def test_the_cli_freezes_start_up_and_each_burst_of_connections(child):
    c = child()
    assert wait_for(lambda: _hub(c)["gcFreezes"] == 1)  # start-up, out of full collections
    clients = [c.connect() for _ in range(BURST)]
    assert wait_for(lambda: _hub(c)["gcFreezes"] == 2)  # the burst, once the hub was idle
    for ws in clients:
        ws.close()


def test_the_collector_is_left_alone_when_asked(child):
    c = child("--no-gc-freeze")
    clients = [c.connect() for _ in range(BURST)]
    assert wait_for(lambda: _hub(c)["clients"] == BURST)
    assert _hub(c)["gcFreezes"] == 0
    for ws in clients:
        ws.close()


@pytest.mark.posix_only("Popen.send_signal takes only CTRL_C_EVENT/CTRL_BREAK_EVENT on Windows")
def test_sigint_exits_0(child):
    c = child()
    c.proc.send_signal(signal.SIGINT)
    assert c.wait(3) == 0


@pytest.mark.posix_only(
    "SIGKILL and /proc; the Windows parent watch is driven in tests/test_wine.py and test_binary"
)
def test_parent_death_stops_the_sidecar_gracefully(tmp_path):
    """A parent process starts the sidecar with --parent-pid and dies; the sidecar follows."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'sidecar', '--port', '0',\n"
        "    '--parent-pid', str(os.getpid())], stdout=subprocess.PIPE, text=True)\n"
        "print(p.stdout.readline(), end='', flush=True)\n"
        "sys.stdin.read()\n"  # wait until told to die
    )
    parent = SidecarProcess(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        env=_env(SIDECAR_TOKEN=TOKEN),
        same_package=False,
    )
    with parent:  # its ready line is the sidecar's, relayed
        ready = parent.ready
        ws = websocket.create_connection(
            ready["ws"], header=[f"Authorization: Bearer {TOKEN}"], timeout=5, suppress_origin=True
        )
        assert recv_json(ws)["type"] == "connection:status"
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        assert recv_close(ws, timeout=4) == 1001
        wait_for(lambda: not _alive(ready["pid"]), timeout=4)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by its dead parent's reaper) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stdin_eof_stops_the_sidecar_when_asked(child):
    c = child("--exit-on-stdin-eof", stdin=subprocess.PIPE)
    ws = c.connect()
    c.proc.stdin.close()
    assert recv_close(ws) == 1001
    assert c.wait(3) == 0


@pytest.mark.parametrize("graceful", ["signal", "stdin"])
def test_the_launchers_stop_closes_every_client_with_1001_and_exits_0(graceful):
    """``SidecarProcess.stop()``, what the pytest plugin's users and the scripts rely on: SIGTERM
    on POSIX; on Windows (where SIGTERM is TerminateProcess: exit 1, clients see 1006) and
    with ``graceful="stdin"`` anywhere, closing the child's stdin."""
    if graceful == "signal" and sys.platform == "win32":
        pytest.skip("POSIX only: SIGTERM (the Windows default is the stdin stop)")
    argv = [*DEFAULT_ARGV, "--ping-interval", "0"]
    if graceful == "stdin" and "--exit-on-stdin-eof" not in argv:
        argv.append("--exit-on-stdin-eof")
    process = SidecarProcess(argv, env=_env(SIDECAR_TOKEN=TOKEN), graceful=graceful)
    with process:
        clients = [_connect(process.ready["ws"]) for _ in range(2)]
    for ws in clients:
        assert recv_close(ws) == 1001
    assert (process.returncode, process.killed) == (0, False)
    assert process.tracebacks() == []


def test_the_conformance_app_honours_the_stdin_stop():
    """``python -m sidecar.conformance`` (scripts/autobahn's server) takes the serve options:
    ``--exit-on-stdin-eof`` must stop it, or the launcher has to kill it on Windows."""
    argv = [sys.executable, "-m", "sidecar.conformance", "--port", "0", "--exit-on-stdin-eof"]
    with SidecarProcess(argv, env=_env(SIDECAR_TOKEN=TOKEN), graceful="stdin") as process:
        ws = _connect(process.ready["ws"])
    assert recv_close(ws) == 1001
    assert (process.returncode, process.killed) == (0, False)


def test_the_default_stop_is_the_oss_graceful_one():
    process = SidecarProcess(env=_env(SIDECAR_TOKEN=TOKEN))
    if sys.platform == "win32":
        assert process.graceful == "stdin" and "--exit-on-stdin-eof" in process.argv
        assert process.popen_options["stdin"] == subprocess.PIPE
    else:
        assert process.graceful == "signal" and "--exit-on-stdin-eof" not in process.argv
        assert process.popen_options["stdin"] == subprocess.DEVNULL


def _connect(url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(
        url, header=[f"Authorization: Bearer {TOKEN}"], timeout=5, suppress_origin=True
    )
    assert recv_json(ws)["type"] == "connection:status"
    return ws


def test_stdin_from_dev_null_does_not_stop_the_sidecar(child):
    c = child("--exit-on-stdin-eof", stdin=subprocess.DEVNULL)
    c.connect()
    with pytest.raises(subprocess.TimeoutExpired):
        c.wait(0.5)


def _gone_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def _start_failure(
    args: list[str], env: dict[str, str], preexec: Any = None
) -> tuple[int, dict[str, Any], str]:
    """Start a sidecar that must fail; its exit status, its JSON line and its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=20,
        preexec_fn=preexec,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # one JSON line for the parent, nothing else
    line = json.loads(lines[0])
    assert set(line) == {"event", "error", "message"} and line["event"] == "error", line
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    assert result.stderr == f"sidecar: {line['message']}\n"
    return result.returncode, line, result.stderr


def _low_fd_limit() -> None:
    import resource  # POSIX only

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@pytest.mark.parametrize(
    ("args", "env", "error", "status", "message"),
    [
        ([], {"SIDECAR_QUEUE_SIZE": "lots"}, "bad-option", 2, "SIDECAR_QUEUE_SIZE='lots' is not"),
        (["--queue-size", "0"], {}, "bad-option", 2, "--queue-size must be at least 1, got 0"),
        ([], {"SIDECAR_PING_TIMEOUT": "-1"}, "bad-option", 2, "SIDECAR_PING_TIMEOUT must be at"),
        (["--queue-size", "x"], {}, "bad-option", 2, "argument --queue-size"),
        (["--no-such-flag"], {}, "bad-option", 2, "unrecognized arguments: --no-such-flag"),
        (["--allowed-origins", "null,nope"], {}, "bad-option", 2, "'nope' is not an origin"),
        (["--no-auth", "--allowed-origins", "null"], {}, "bad-option", 2, "needs the token"),
        ([], {"SIDECAR_TOKEN": "has space"}, "bad-option", 2, "SIDECAR_TOKEN must be 1-256"),
        (["--parent-pid", "0"], {}, "bad-option", 2, "--parent-pid must be"),
        (["--parent-pid", "-4"], {}, "bad-option", 2, "--parent-pid must be"),
        (["--log-file", "/nonexistent/dir/log"], {}, "log-file", 6, "cannot write --log-file"),
        # issue 19 item 2: an empty value is refused, never read as "off"
        ([], {"SIDECAR_AUTH": ""}, "bad-option", 2, "SIDECAR_AUTH is empty"),
        ([], {"SIDECAR_AUTH": " "}, "bad-option", 2, "SIDECAR_AUTH is empty"),
        ([], {"SIDECAR_TOKEN": ""}, "bad-option", 2, "SIDECAR_TOKEN is empty"),
        ([], {"SIDECAR_HOST": ""}, "bad-option", 2, "SIDECAR_HOST is empty"),
        ([], {"SIDECAR_ALLOWED_ORIGINS": ""}, "bad-option", 2, "SIDECAR_ALLOWED_ORIGINS is empty"),
        (["--allowed-origins", ""], {}, "bad-option", 2, "is empty"),
        # issue 19 item 13: a broker URL without a scheme
        (["--broker", "localhost:6379"], {}, "bad-option", 2, "--broker must be a Redis URL"),
        ([], {"SIDECAR_BROKER": "localhost:6379"}, "bad-option", 2, "SIDECAR_BROKER must be"),
        (["--broker", "redis://h:1/0?db=x"], {}, "bad-option", 2, "--broker cannot be used"),
    ],
)
def test_every_start_up_failure_is_one_json_line(args, env, error, status, message):
    code, line, _ = _start_failure(args, env)
    assert (code, line["error"]) == (status, error), line
    assert message in line["message"], line


def test_a_parent_that_is_already_gone_is_refused():
    pid = _gone_pid()
    code, line, _ = _start_failure(["--parent-pid", str(pid)], {})
    assert (code, line["error"]) == (4, "parent-gone")
    assert str(pid) in line["message"]


def test_port_in_use_is_a_clear_error(child):
    c = child()
    port = c.ready["port"]
    code, line, _ = _start_failure(["--port", str(port)], {"SIDECAR_TOKEN": TOKEN})
    assert (code, line) == (
        3,
        {"event": "error", "error": "port-in-use", "message": f"127.0.0.1:{port} is in use"},
    )


@pytest.mark.posix_only("RLIMIT_NOFILE: Windows has no descriptor limit for sockets")
def test_a_connection_cap_above_the_descriptor_limit_is_refused():
    code, line, _ = _start_failure(["--max-clients", "1000"], {}, preexec=_low_fd_limit)
    assert (code, line["error"]) == (7, "fd-limit"), line
    assert "--max-clients 1000" in line["message"] and "the limit is 64" in line["message"]


def test_cli_publish_and_tail_against_a_live_sidecar(child):
    c = child()
    env = _env(SIDECAR_TOKEN=TOKEN, SIDECAR_URL=c.ready["url"])
    tail = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "tail", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert "connection:status" in tail.stdout.readline()
        for name in ("one", "two"):
            published = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sidecar",
                    "publish",
                    "stream:created",
                    json.dumps({"projectId": "p", "streamId": "s", "name": name}),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=20,
            )
            assert published.returncode == 0, published.stderr
            assert json.loads(published.stdout)["payload"]["name"] == name
        out, _ = tail.communicate(timeout=10)
    finally:
        tail.kill()
    lines = out.strip().splitlines()
    assert "#1  stream:created" in lines[0] and '"name":"one"' in lines[0]
    assert "#2  stream:created" in lines[1]
    assert tail.returncode == 0


def _publish(url: str, channel: str | None, *names: str) -> None:
    for name in names:
        body = {
            "type": "stream:created",
            "payload": {"projectId": "p", "streamId": "s", "name": name},
        }
        if channel:
            body["channel"] = channel
        request = urllib.request.Request(
            f"{url}/api/v1/events",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 202


def _lines(stream: Any, until: Callable[[str], bool], limit: int = 50) -> list[str]:
    lines: list[str] = []
    for _ in range(limit):
        line = stream.readline()
        assert line, f"tail ended early after {lines}"
        lines.append(line.rstrip("\n"))
        if until(lines[-1]):
            return lines
    raise AssertionError(f"not seen: {lines}")


def test_cli_tail_since_resumes_across_a_restart_with_a_resync_line(child):
    """``sidecar tail --since`` keeps going when the sidecar restarts: it reconnects, prints a
    resync line for each channel (a new epoch: events may have been missed) and goes on."""
    first = child()
    _publish(first.ready["url"], None, "one", "two")
    _publish(first.ready["url"], "project:p1", "three")
    port = first.ready["port"]
    env = _env(SIDECAR_TOKEN=TOKEN, SIDECAR_URL=first.ready["url"])
    since = f"{first.ready['epoch']}:1"
    tail = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "tail", "--since", since, "--channel", "project:p1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert tail.stdout is not None and tail.stderr is not None
        lines = _lines(tail.stdout, lambda line: '"name":"two"' in line)
        assert "connection:status" in lines[0] and "#2  stream:created" in lines[-1]
        first.stop()  # killed: the connection is cut
        second = child("--port", str(port))
        lines = _lines(tail.stdout, lambda line: "project:p1" in line and "resync" in line)
        resyncs = [line for line in lines if line.startswith("-- resync")]
        assert resyncs[0].startswith("-- resync (new-epoch) on the default channel: now")
        assert f"was {first.ready['epoch']}:2" in resyncs[0]
        assert resyncs[1].startswith("-- resync (new-epoch) on project:p1")
        _publish(second.ready["url"], "project:p1", "four")
        lines = _lines(tail.stdout, lambda line: '"name":"four"' in line)
        assert "project:p1#1  stream:created" in lines[-1]
        assert tail.poll() is None  # still running
    finally:
        tail.terminate()
        _, err = tail.communicate(timeout=10)
    assert "reconnecting in" in err


def test_cli_publish_reports_validation_errors(child):
    c = child()
    env = _env(SIDECAR_TOKEN=TOKEN, SIDECAR_URL=c.ready["url"])
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "publish", "stream:created", '{"projectId": "p"}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == 1
    assert "422" in result.stderr and "streamId" in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--broker", "localhost:6379"], {}),
        ([], {"SIDECAR_BROKER": "localhost:6379"}),
        (["--broker", "redis://h:1/0?db=x"], {}),
    ],
    ids=["flag", "variable", "driver-refuses"],
)
def test_cli_publish_to_a_bad_broker_url_is_one_line(args: list[str], env: dict[str, str]):
    """Issue 19 item 13: ``sidecar publish --broker localhost:6379`` was a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "publish", *args, "app:x", "{}"],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=20,
    )
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.count("\n") == 1 and "broker" in result.stderr.lower(), result.stderr
    assert result.stderr.startswith("sidecar: ") and "Traceback" not in result.stderr


def test_cli_publish_takes_the_ready_lines_ws_url_too(child):
    """Issue 19: ``sidecar publish --url ws://…`` said "unknown url type"."""
    c = child()
    env = _env(SIDECAR_TOKEN=TOKEN)
    ws = c.connect()
    for url in (c.ready["ws"], c.ready["ws"].removesuffix("/ws"), c.ready["url"] + "/"):
        published = subprocess.run(
            [sys.executable, "-m", "sidecar", "publish", "--url", url, "app:hello", "{}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
        assert published.returncode == 0, (url, published.stderr)
        assert recv_json(ws)["type"] == "app:hello"
    ws.close()


@pytest.mark.parametrize("command", ["publish", "tail"])
@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:3008", "http://", "http://h:x"])
def test_cli_tools_refuse_a_url_that_is_not_the_sidecars_with_one_line(command, url):
    args = ["app:x", "{}"] if command == "publish" else []
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", command, "--url", url, *args],
        capture_output=True,
        text=True,
        env=_env(SIDECAR_TOKEN=TOKEN),
        timeout=20,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("sidecar: --url must be the sidecar's URL"), result.stderr
    assert result.stderr.count("\n") == 1 and repr(url) in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--broker", ""], {}, "--broker is empty"),
        ([], {"SIDECAR_BROKER": ""}, "SIDECAR_BROKER is empty"),
        (["--broker", "redis://127.0.0.1:1/0", "--broker-prefix", " "], {}, "--broker-prefix"),
        ([], {"SIDECAR_BROKER": "redis://127.0.0.1:1/0", "SIDECAR_BROKER_PREFIX": ""}, "PREFIX"),
        (["--url", ""], {}, "--url is empty"),
        ([], {"SIDECAR_URL": ""}, "SIDECAR_URL is empty"),
        ([], {"SIDECAR_TOKEN": ""}, "SIDECAR_TOKEN is empty"),
    ],
)
def test_cli_publish_refuses_an_empty_setting_as_serve_does(args, env, named):
    """Issue 19 item 2, in the tools: ``SIDECAR_BROKER=`` quietly published over HTTP, and an
    empty prefix published to the default stream."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "publish", *args, "app:x", "{}"],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=20,
    )
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith("sidecar: ") and named in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
