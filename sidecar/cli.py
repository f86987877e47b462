"""Command line: ``sidecar [serve] [options]`` (the default) and developer subcommands.

Runs in the main thread; see :mod:`sidecar.server` for the threads ``serve`` starts.
Options override ``SIDECAR_*`` environment variables, which override the defaults. The token
is never taken from argv (it would show in ``ps``): only from ``SIDECAR_TOKEN``.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import secrets
import select
import stat
import sys
import threading
from collections.abc import Callable, Sequence

from . import __version__
from .config import LOG_LEVELS, Config, from_env

log = logging.getLogger("sidecar")

SUBCOMMANDS = ("serve", "publish", "tail", "schema")


def _serve_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", help="interface to bind (default 127.0.0.1; SIDECAR_HOST)")
    add("--port", type=int, help="TCP port, 0 picks a free one (default 3008; SIDECAR_PORT)")
    add(
        "--allowed-origins",
        metavar="LIST",
        help="comma-separated origins allowed to connect, replacing the defaults",
    )
    add("--queue-size", type=int, help="frames queued per client before it is dropped (256)")
    add("--max-message-size", type=int, help="largest client message in bytes (65536)")
    add("--ping-interval", type=float, help="seconds between keepalive pings, 0 = off (25)")
    add(
        "--ping-timeout",
        type=float,
        help="seconds a ping may go unanswered before the peer is dropped (the interval)",
    )
    add("--write-deadline", type=float, help="seconds a stalled write may take (10)")
    add("--history-size", type=int, help="broadcasts kept for resume, 0 = off (1024)")
    add("--history-bytes", type=int, help="bytes of broadcasts kept for resume (8 MiB)")
    add("--max-clients", type=int, help="concurrent WebSocket connections (1024)")
    add("--handshake-timeout", type=float, help="seconds to send a request head (10)")
    add(
        "--compression",
        action="store_true",
        default=None,
        help="accept permessage-deflate (costs ~150 KiB per connection)",
    )
    add(
        "--no-auth",
        action="store_true",
        help="accept connections without a token (local development only)",
    )
    add(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="exit gracefully within 2 s of process PID ending",
    )
    add(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit gracefully when stdin (a pipe) closes",
    )
    add(
        "--log-level",
        choices=LOG_LEVELS,
        help="stderr log level (info; SIDECAR_LOG_LEVEL)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="A WebSocket event hub for desktop apps. Prints one JSON ready line on "
        "stdout once listening; logs go to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub.add_parser("serve", help="run the sidecar (the default)"))
    publish = sub.add_parser(
        "publish", help="broadcast one event through a running sidecar's HTTP API"
    )
    publish.add_argument("type", help="event type, e.g. stream:created")
    publish.add_argument("payload", help='payload as JSON, e.g. \'{"projectId": "p1"}\'')
    _client_options(publish)
    tail = sub.add_parser("tail", help="connect and print events as they arrive")
    tail.add_argument("--since", help="resume point <epoch>:<seq>")
    tail.add_argument("--json", action="store_true", help="print each raw JSON envelope")
    tail.add_argument("--count", type=int, help="exit after this many events")
    _client_options(tail)
    schema = sub.add_parser("schema", help="write the JSON Schema and TypeScript declarations")
    schema.add_argument("--check", action="store_true", help="exit 1 if the copies are stale")
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the sidecar's base URL (SIDECAR_URL; default http://127.0.0.1:3008)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Defaults, then ``SIDECAR_*``, then options."""
    config = from_env(os.environ if environ is None else environ)
    origins = None
    if args.allowed_origins is not None:
        origins = tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip())
    return config.with_options(
        host=args.host,
        port=args.port,
        allowed_origins=origins,
        queue_size=args.queue_size,
        max_message_size=args.max_message_size,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        write_deadline=args.write_deadline,
        history_size=args.history_size,
        history_bytes=args.history_bytes,
        max_clients=args.max_clients,
        handshake_timeout=args.handshake_timeout,
        compression=args.compression,
        log_level=args.log_level,
        auth=False if args.no_auth else None,
    )


def setup_logging(level: str) -> None:
    """Log lines to stderr at ``level``; Werkzeug's request lines only at debug."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING if level != "debug" else logging.INFO)


def watch_parent(pid: int) -> Callable[[threading.Event], None]:
    """A watcher that sets ``stop`` when process ``pid`` ends (pidfd, or a 0.5 s poll)."""

    def start(stop: threading.Event) -> None:
        def wait_pidfd(fd: int) -> None:
            while not stop.is_set():
                if select.select([fd], [], [], 1.0)[0]:
                    log.info("parent process %d ended, shutting down", pid)
                    stop.set()
            os.close(fd)

        def poll() -> None:
            while not stop.wait(0.5):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    log.info("parent process %d ended, shutting down", pid)
                    stop.set()
                except PermissionError:
                    pass

        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            log.info("parent process %d is gone, shutting down", pid)
            stop.set()
            return
        except (AttributeError, OSError):
            target: Callable[[], None] = poll
        else:
            target = lambda: wait_pidfd(fd)  # noqa: E731
        threading.Thread(target=target, name="sidecar-parent-watch", daemon=True).start()

    return start


def watch_stdin(stop: threading.Event) -> None:
    """Set ``stop`` when stdin reaches EOF, if stdin is a pipe (``</dev/null`` is ignored)."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return
    if not stat.S_ISFIFO(mode) and not stat.S_ISSOCK(mode):
        log.info("--exit-on-stdin-eof: stdin is not a pipe, not watching it")
        return

    def read_to_eof() -> None:
        while os.read(0, 65536):
            pass
        log.info("stdin closed, shutting down")
        stop.set()

    threading.Thread(target=read_to_eof, name="sidecar-stdin-watch", daemon=True).start()


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (unless ``MALLOC_ARENA_MAX`` is set); call before threads start.

    glibc gives threads up to 8 arenas per core; with a thread per connection the sidecar's
    frames and buffers end up spread over many arenas whose fragmentation is never returned:
    a 40-client soak levelled off at ~130 MiB RSS, ~60 MiB with two arenas, at the same
    throughput. A no-op elsewhere (musl, macOS); returns whether the cap was applied.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def serve(args: argparse.Namespace) -> int:
    """``sidecar serve``: run until a signal or a watcher stops it."""
    from .server import run

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    limit_malloc_arenas()
    setup_logging(config.log_level)
    generated = False
    if config.auth and not config.token:
        config = config.with_options(token=secrets.token_urlsafe(32))
        generated = True
    if not config.auth:
        log.warning("--no-auth: any local process or web page on an allowed origin can connect")
    watchers: list[Callable[[threading.Event], None]] = []
    if args.parent_pid:
        watchers.append(watch_parent(args.parent_pid))
    if args.exit_on_stdin_eof:
        watchers.append(watch_stdin)
    try:
        return run(config, show_token=generated, watchers=watchers)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sidecar`` and ``python -m sidecar``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "schema":
        from .schema import main as schema_main

        return schema_main(["--check"] if args.check else [])
    from . import tools

    return tools.publish(args) if args.command == "publish" else tools.tail(args)
