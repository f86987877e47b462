"""What an idle WebSocket session costs the server: Python memory and collector-tracked objects.

Issue 24: 1,000 idle connections took 116 MB. Thread stacks are the OS's (two threads per
session, ~12 KiB each touched); what Python allocates per session is counted here exactly, with
``tracemalloc``, on an in-process sidecar whose clients are bare sockets (nothing on the
client side but the socket itself): the request's objects, the library's parser, our client,
connection and guarded socket. It was ~56 KB per session (a 16 KiB receive buffer held by every
blocked read, an 8 KiB request buffer, a send queue with four locks and four deques made for
every client, ...) and ~177 tracked objects; a full garbage collection walks every one of them.
"""

from __future__ import annotations

import gc
import socket
import tracemalloc
from collections.abc import Iterator

import pytest

from sidecar import frames
from tests.conftest import TOKEN, RunningSidecar, wait_for

SESSIONS = 40
#: Python bytes an idle session may hold on the server (it was ~56 KB; ~26 KB now).
MAX_BYTES = 36_000
#: Objects the garbage collector tracks per idle session (it was ~177; ~147 now).
MAX_TRACKED = 162


def _idle_sessions(server: RunningSidecar, count: int) -> list[socket.socket]:
    """``count`` bare clients, each past its ``connection:status`` frame."""
    clients = []
    already = server.hub.client_count()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.server.server_port), timeout=5)
        head = frames.upgrade_request("/ws", "127.0.0.1", token=TOKEN)
        sock.sendall(head)
        data = b""
        while b'"connection:status"' not in data:  # the 101, then the first frame
            chunk = sock.recv(65536)
            assert chunk, "closed during the handshake"
            data += chunk
        clients.append(sock)
    wait_for(lambda: server.hub.client_count() == already + count)
    return clients


@pytest.fixture
def warm(sidecar: RunningSidecar) -> Iterator[RunningSidecar]:
    """A sidecar that has served one session already (imports, caches, the hub thread)."""
    first = _idle_sessions(sidecar, 1)
    yield sidecar
    for sock in first:
        sock.close()


def test_an_idle_session_holds_little_python_memory(warm: RunningSidecar) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        clients = _idle_sessions(warm, SESSIONS)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "filename")
    per_session = sum(stat.size_diff for stat in stats) / SESSIONS
    # the request stream's buffer (socket.makefile) outlives the upgrade: 8 KiB by default
    buffers = sum(s.size_diff for s in stats if s.traceback[0].filename == socket.__file__)
    for sock in clients:
        sock.close()
    assert per_session < MAX_BYTES, f"{per_session:.0f} bytes per idle session"
    assert buffers / SESSIONS < 3000, f"{buffers / SESSIONS:.0f} bytes of request buffers"


def test_an_idle_session_gives_the_collector_few_objects_to_walk(warm: RunningSidecar) -> None:
    gc.collect()
    before = len(gc.get_objects())
    clients = _idle_sessions(warm, SESSIONS)
    gc.collect()
    per_session = (len(gc.get_objects()) - before) / SESSIONS
    for sock in clients:
        sock.close()
    assert per_session < MAX_TRACKED, f"{per_session:.0f} tracked objects per idle session"
