"""Command line: ``sidecar [serve] [options]`` (the default) and developer subcommands.

Runs in the main thread; see :mod:`sidecar.server` for the threads ``serve`` starts. Options
override ``SIDECAR_*`` environment variables, which override the defaults (one table:
:mod:`sidecar.config`). The token is never taken from argv (it would show in ``ps``): only
from ``SIDECAR_TOKEN``, or generated per launch and printed in the ready line.

Every start-up failure of ``serve`` prints one JSON line on stdout for the parent process,
``{"event":"error","error":CODE,"message":…}``, one line on stderr, and exits with the code
in :data:`EXIT_CODES`; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, logs, platform
from .config import ConfigError, add_arguments, load, resolve_token
from .core.hub import PublishRefused
from .server import StartupError, Watcher, check_descriptors, run

log = logging.getLogger("sidecar")

SUBCOMMANDS = ("serve", "publish", "tail", "schema")
#: The arguments :func:`main` was given (read by :func:`fail`; the main thread's alone).
_ARGV: list[str] = []

#: Exit status of ``sidecar serve`` for each start-up failure (the JSON line's ``error``).
EXIT_CODES: dict[str, int] = {
    "start-failed": 1,
    "bad-option": 2,
    "port-in-use": 3,
    "bind-failed": 3,
    "bad-host": 3,
    "parent-gone": 4,
    "parent-unwatchable": 4,
    "broker-unreachable": 5,
    "log-file": 6,
    "fd-limit": 7,
}


def fail(code: str, message: str) -> int:
    """Report a start-up failure: a JSON line on stdout, a line on stderr; the exit status.

    The stderr line is a JSON log object when JSON logs were asked for (see
    :func:`_json_stderr`), so that a log collector reading stderr sees only JSON.
    """
    line = {"event": "error", "error": code, "message": message}
    print(json.dumps(line, separators=(",", ":")), flush=True)
    if _json_stderr():
        record = logging.makeLogRecord(
            {"name": "sidecar", "levelno": logging.ERROR, "levelname": "ERROR", "msg": message}
        )
        record.error = code
        print(logs.JsonFormatter().format(record), file=sys.stderr, flush=True)
    else:
        print(f"sidecar: {message}", file=sys.stderr, flush=True)
    return EXIT_CODES[code]


def _json_stderr() -> bool:
    """Whether ``--log-format`` or ``SIDECAR_LOG_FORMAT`` asks for JSON on stderr (read from
    the raw arguments: a failure may come before they are parsed, or be about them)."""
    chosen = os.environ.get("SIDECAR_LOG_FORMAT", "text")
    argv = _ARGV
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith("--log-format="):
            chosen = arg.partition("=")[2]
    chosen = chosen.strip().lower()
    return chosen in ("json", "auto") and logs.json_wanted(chosen, sys.stderr)


class _ServeParser(argparse.ArgumentParser):
    """Argument errors of ``serve`` are start-up failures too: a JSON line, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.exit(fail("bad-option", message))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="A WebSocket event hub for desktop apps. Prints one JSON ready line on "
        "stdout once listening (or one JSON error line); logs go to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command")
    add_arguments(sub.add_parser("serve", help="run the sidecar (the default)"))
    publish = sub.add_parser(
        "publish", help="broadcast one event through a running sidecar's HTTP API or a broker"
    )
    publish.add_argument("type", help="event type, e.g. stream:created")
    publish.add_argument(
        "--channel", help="publish on this channel, e.g. project:p1 (default: every client)"
    )
    publish.add_argument("payload", help='payload as JSON, e.g. \'{"projectId": "p1"}\'')
    publish.add_argument(
        "--broker", help="publish through this Redis broker (SIDECAR_BROKER) instead of HTTP"
    )
    publish.add_argument(
        "--broker-prefix", help="the broker's key prefix (SIDECAR_BROKER_PREFIX; sidecar)"
    )
    _client_options(publish)
    tail = sub.add_parser(
        "tail", help="print events as they arrive (reconnects and resumes; needs [client])"
    )
    tail.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help="also join this named channel (repeatable)",
    )
    tail.add_argument(
        "--since",
        help="resume from <epoch>:<seq> (the default channel), with <channel>@<epoch>:<seq> "
        "items for named ones, comma-separated",
    )
    tail.add_argument("--json", action="store_true", help="print each raw JSON envelope")
    tail.add_argument("--count", type=int, help="exit after this many events")
    _client_options(tail)
    schema = sub.add_parser("schema", help="write the JSON Schema and TypeScript declarations")
    schema.add_argument("--check", action="store_true", help="exit 1 if the copies are stale")
    return parser


def build_serve_parser() -> argparse.ArgumentParser:
    """The parser of ``sidecar serve``, whose errors are JSON start-up failures."""
    parser = _ServeParser(prog="sidecar serve", description="Run the sidecar.")
    add_arguments(parser)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the sidecar's base URL (SIDECAR_URL; default http://127.0.0.1:3008)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")


def _watchers(pid: int | None, stdin_eof: bool) -> list[Watcher]:
    watchers: list[Watcher] = []
    if pid is not None:

        def parent(stop: threading.Event) -> None:
            def gone() -> None:
                log.info("parent process %d ended, shutting down", pid)
                stop.set()

            platform.watch_parent(pid, gone)

        watchers.append(parent)
    if stdin_eof:

        def stdin(stop: threading.Event) -> None:
            if not platform.stdin_is_pipe():
                log.info("--exit-on-stdin-eof: stdin is not a pipe, not watching it")
                return

            def closed() -> None:
                log.info("stdin closed, shutting down")
                stop.set()

            platform.watch_stdin(closed)

        watchers.append(stdin)
    return watchers


def serve(args: argparse.Namespace) -> int:
    """``sidecar serve``: run until a signal or a watcher stops it; start-up failures as JSON."""
    try:
        options = {k: v for k, v in vars(args).items() if k != "command"}
        config = resolve_token(load(options), generate=True)
        generated = config.auth and not os.environ.get("SIDECAR_TOKEN")
        if config.parent_pid is not None:
            platform.check_parent(config.parent_pid)
        try:
            logs.setup(config.log_level, log_file=config.log_file, log_format=config.log_format)
        except OSError as exc:
            return fail("log-file", f"cannot write --log-file {config.log_file}: {exc.strerror}")
        platform.tune_malloc()
        check_descriptors(config)
        watchers = _watchers(config.parent_pid, config.exit_on_stdin_eof)
        return run(config, show_token=generated, watchers=watchers)
    except ConfigError as exc:
        return fail("bad-option", str(exc))
    except platform.ParentError as exc:
        return fail(exc.error if exc.error in EXIT_CODES else "parent-gone", str(exc))
    except StartupError as exc:
        return fail(exc.code, exc.message)
    except PublishRefused as exc:
        return fail("broker-unreachable", str(exc))
    finally:
        logs.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sidecar`` and ``python -m sidecar``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = argv
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    if argv[0] == "serve":
        return serve(build_serve_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from .schema import main as schema_main

        return schema_main(["--check"] if args.check else [])
    from . import tools

    return tools.publish(args) if args.command == "publish" else tools.tail(args)
