"""The drain of ``scripts/bench --stages``: a child process that reads and discards.

``python -m benchkit.drain PORT COUNT SECONDS`` opens ``COUNT`` TCP connections to
``127.0.0.1:PORT`` (``TCP_NODELAY``, like the bench's subscribers), writes ``ready`` on stdout
once all are open, then reads everything that arrives on them (one ``recv_into`` of up to
256 KiB per readable socket, nothing parsed) so that the sending ends' buffers never fill. It
ends when its stdin reaches EOF (the parent closed it, or died), or after ``SECONDS`` at most.

It imports nothing of the sidecar (a light process, pinned by the parent to the core the
measured process does not use). Threads: the main thread only.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import sys
import time

HOST = "127.0.0.1"


def main(argv: list[str]) -> int:
    """Connect, say ``ready``, drain until stdin ends or the time is up."""
    port, count, seconds = int(argv[0]), int(argv[1]), float(argv[2])
    deadline = time.monotonic() + seconds
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    socks = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks.append(sock)
    by_fd = {s.fileno(): s for s in socks}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    os.write(sys.stdout.fileno(), b"ready\n")
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    while time.monotonic() < deadline:
        for fd, _events in ep.poll(1.0):
            if fd == stdin:
                if not os.read(stdin, 4096):
                    return 0
                continue
            try:
                if not by_fd[fd].recv_into(view):
                    ep.unregister(fd)  # the parent closed this one
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                ep.unregister(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
