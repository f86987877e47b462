"""Drive the Autobahn|Testsuite fuzzing client against the conformance app, and judge the report.

Used by ``scripts/autobahn`` (which builds the Python 2.7 tool environment first)::

    autobahn_summary.py run --wstest PATH [--fast] [--cases LIST] [--compression] [--verbose]
    autobahn_summary.py summarise REPORT_DIR [--verbose]

``run`` starts the conformance echo app (``python -m sidecar.conformance``) on port 0 through
:mod:`sidecar.launcher`, writes a fuzzing-client spec
whose server entry carries the sidecar's own Origin and the ``sidecar.v1`` / ``auth.<token>``
subprotocol pair (so every case passes the real handshake checks), runs ``wstest -m
fuzzingclient`` with a time limit, stops the server with SIGTERM and checks its log for
errors. ``summarise`` reads ``index.json`` and prints counts per section and behaviour, and
one line for every case that is not plain OK (``--verbose``: every case).

Verdict (exit 1 otherwise): every case OK or INFORMATIONAL, NON-STRICT only on the list the
``websockets`` project documents, every close behaviour OK, no error in the server's log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sidecar.launcher import LaunchError, SidecarProcess, launch, python_module

#: Cases 1.x-7.x and 10.x: everything but the slow performance cases (9.x) and the
#: permessage-deflate cases (12.x, 13.x).
FAST_CASES = [f"{n}.*" for n in (1, 2, 3, 4, 5, 6, 7, 10)]
#: Every case; 12.x and 13.x need permessage-deflate (``--compression``, on by default here).
FULL_CASES = ["*"]
COMPRESSION_CASES = ["12.*", "13.*"]

#: NON-STRICT results accepted (the list the ``websockets`` project documents): fail-fast on
#: invalid UTF-8 (6.4.x), and replying to pings / echoing before a later frame is judged.
NON_STRICT_OK = re.compile(
    r"^(3\.[234]|4\.1\.[345]|4\.2\.[345]|5\.15|6\.4\.[1234])$",
)

#: Inbound limit for the full run: case 9.1.6 / 9.2.6 send 16 MiB messages.
FULL_MAX_MESSAGE = 20 << 20
FAST_TIMEOUT = 300.0
FULL_TIMEOUT = 2700.0


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key for ``"6.4.12"``-style ids."""
    return tuple(int(p) for p in case_id.split(".") if p.isdigit())


def judge(case_id: str, result: dict[str, Any]) -> str | None:
    """Why ``result`` fails the verdict, or ``None`` if it passes."""
    behavior = result.get("behavior")
    close = result.get("behaviorClose")
    problems = []
    if behavior == "NON-STRICT":
        if not NON_STRICT_OK.match(case_id):
            problems.append("NON-STRICT outside the accepted list")
    elif behavior not in ("OK", "INFORMATIONAL"):
        problems.append(f"behavior {behavior}")
    if close not in ("OK", "INFORMATIONAL") or (close == "INFORMATIONAL" and behavior == "OK"):
        problems.append(f"close {close}")
    return "; ".join(problems) or None


def summarise(report_dir: Path, *, verbose: bool = False, out: Any = None) -> int:
    """Print the verdict for ``report_dir/index.json``; return the number of failing cases."""
    out = out or sys.stdout
    index = json.loads((report_dir / "index.json").read_text())
    if not index:
        print("autobahn: the report is empty", file=out)
        return 1
    failures = 0
    for agent, cases in sorted(index.items()):
        behaviours: Counter[str] = Counter()
        closes: Counter[str] = Counter()
        sections: dict[str, Counter[str]] = defaultdict(Counter)
        lines = []
        for case_id in sorted(cases, key=case_key):
            result = cases[case_id]
            behavior = result.get("behavior", "?")
            close = result.get("behaviorClose", "?")
            behaviours[behavior] += 1
            closes[close] += 1
            sections[case_id.split(".")[0]][behavior] += 1
            problem = judge(case_id, result)
            failures += problem is not None
            if verbose or problem or behavior != "OK" or close != "OK":
                lines.append(
                    f"  {case_id:<9} {behavior:<13} close {close:<13} "
                    f"code {result.get('remoteCloseCode')!s:<5} "
                    f"{result.get('duration', 0):>6} ms" + (f"   <-- {problem}" if problem else "")
                )
        print(f"Autobahn|Testsuite fuzzingclient, agent {agent}: {len(cases)} cases", file=out)
        for section in sorted(sections, key=int):
            counts = ", ".join(f"{n} {b}" for b, n in sorted(sections[section].items()))
            print(f"  {section + '.x':<6} {counts}", file=out)
        if lines:
            print("cases not plain OK" + (" (all cases)" if verbose else "") + ":", file=out)
            for line in lines:
                print(line, file=out)
        print(
            "behavior: "
            + ", ".join(f"{b} {n}" for b, n in sorted(behaviours.items()))
            + " | close: "
            + ", ".join(f"{b} {n}" for b, n in sorted(closes.items())),
            file=out,
        )
    print(f"autobahn: {'PASS' if failures == 0 else 'FAIL'} ({failures} failing case(s))", file=out)
    return failures


def _start_server(root: Path, args: argparse.Namespace, log_path: Path) -> SidecarProcess:
    argv = python_module(args.app_module, "--port", "0")
    if args.max_message_size:
        argv += ["--max-message-size", str(args.max_message_size)]
    if args.compression:
        argv.append("--compression")
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_TOKEN"}  # it makes one
    log_path.unlink(missing_ok=True)
    return launch(argv, env=env, cwd=root, log_path=log_path, timeout=30)


def _plan(args: argparse.Namespace) -> tuple[list[str], list[str], float]:
    """The cases to run, the cases to exclude and wstest's time limit; settles the defaults."""
    if args.compression is None:  # the full run needs permessage-deflate for 12.x and 13.x
        args.compression = not args.fast and not args.cases
    if args.cases:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    elif args.fast:
        cases = list(FAST_CASES) + (COMPRESSION_CASES if args.compression else [])
    else:
        cases = list(FULL_CASES)
    if args.max_message_size is None and not args.fast:
        args.max_message_size = FULL_MAX_MESSAGE
    exclude = [] if args.compression or args.cases else COMPRESSION_CASES
    return cases, exclude, args.timeout or (FAST_TIMEOUT if args.fast else FULL_TIMEOUT)


def _fuzzing_spec(
    ready: dict[str, Any], report_dir: Path, cases: list[str], exclude: list[str]
) -> dict[str, Any]:
    """The fuzzing client's spec: one server, with the sidecar's Origin and subprotocols."""
    protocols = ["sidecar.v1"] + ([f"auth.{ready['token']}"] if ready.get("token") else [])
    server = {
        "agent": "sidecar",
        "url": ready["echo"],
        "origin": f"http://127.0.0.1:{ready['port']}",
        "protocols": protocols,
    }
    return {
        "outdir": str(report_dir),
        "servers": [server],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }


def _wstest(wstest: str, work: Path, timeout: float) -> int | None:
    """Run the fuzzing client in ``work``; its exit code, ``None`` if it overstayed."""
    with (work / "wstest.log").open("wb") as wslog:
        try:
            return subprocess.run(
                [wstest, "-m", "fuzzingclient", "-s", "fuzzingclient.json"],
                cwd=work,
                stdout=wslog,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            return None


def run(args: argparse.Namespace) -> int:
    """Start the app, run the fuzzing client, stop the app, judge; return the exit code."""
    root = Path(args.root).resolve()
    cases, exclude, timeout = _plan(args)
    work = Path(args.out or root / "artifacts" / "autobahn").resolve()
    report_dir = work / "reports" / "servers"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "index.json").unlink(missing_ok=True)
    server_log = work / "server.log"
    try:
        server = _start_server(root, args, server_log)
    except LaunchError as exc:
        print(f"autobahn: FAIL: the conformance app did not start (log: {server_log}): {exc}")
        return 1
    started = time.monotonic()
    try:
        spec = _fuzzing_spec(server.ready, report_dir, cases, exclude)
        (work / "fuzzingclient.json").write_text(json.dumps(spec, indent=2))
        print(
            f"autobahn: cases {','.join(cases)} against {server.ready['echo']} "
            f"(limit {timeout:.0f} s; reports in {report_dir})",
            flush=True,
        )
        code = _wstest(args.wstest, work, timeout)
    finally:
        exit_code = server.stop(timeout=10)
        if server.killed:
            exit_code = None
    if code is None:
        print(f"autobahn: FAIL: wstest did not finish within {timeout:.0f} s")
        return 1
    elapsed = time.monotonic() - started
    print(f"autobahn: wstest exited {code} after {elapsed:.1f} s; server exited {exit_code}")
    if not (report_dir / "index.json").exists():
        print(f"autobahn: FAIL: no report (see {work / 'wstest.log'})")
        return 1
    failures = summarise(report_dir, verbose=args.verbose)
    errors = server.error_lines()
    if errors:
        count = server.log.error_count
        print(f"autobahn: FAIL: {count} error line(s) in the server log ({server_log}):")
        for line in errors[:20]:
            print("  " + line)
    if exit_code != 0:
        print(f"autobahn: FAIL: the server did not exit 0 on SIGTERM ({exit_code})")
    return 1 if failures or errors or exit_code != 0 or code != 0 else 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="start the conformance app and run the fuzzing client")
    p_run.add_argument("--wstest", required=True, help="path of the wstest executable")
    p_run.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    p_run.add_argument("--fast", action="store_true", help="cases 1.x-7.x and 10.x only")
    p_run.add_argument("--cases", help="comma-separated case patterns, e.g. 5.*,7.1.1")
    p_run.add_argument(
        "--compression",
        action=argparse.BooleanOptionalAction,
        help="accept permessage-deflate and run 12.x/13.x (default: on for the full run only)",
    )
    p_run.add_argument("--max-message-size", type=int, help="inbound limit (full run: 20 MiB)")
    p_run.add_argument("--timeout", type=float, help="seconds allowed for wstest")
    p_run.add_argument("--out", help="working directory (default artifacts/autobahn)")
    p_run.add_argument("--verbose", action="store_true", help="print every case")
    p_run.add_argument("--app-module", default="sidecar.conformance", help="the echo app to run")
    p_sum = sub.add_parser("summarise", help="judge an existing report directory")
    p_sum.add_argument("report_dir", type=Path)
    p_sum.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return 1 if summarise(args.report_dir, verbose=args.verbose) else 0


if __name__ == "__main__":
    sys.exit(main())
