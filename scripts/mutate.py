"""Mutation testing of the core and the policy modules with mutmut 3 (``scripts/mutate``).

Each group of modules is mutated by one ``mutmut run`` in a scratch copy of the tree
(``artifacts/mutate/<group>/``), whose test selection is the group's fast tests only: mutmut
then runs, for each mutant, the tests among those that reach the mutated function. Results
are summed up per module (killed, survived, timed out, not covered by any test), the
survivors are written with their diffs to ``artifacts/mutate/survivors.txt``, and the score
counts a mutant listed in ``scripts/mutate-equivalent.txt`` (with the reason why no test can
tell it from the original) as neither killed nor survived.

    scripts/mutate                     every group (about 15 minutes on 2 cores)
    scripts/mutate --group core        one group (repeatable)
    scripts/mutate --sample 10         a fixed sample of 10 mutants of the hub, the client and
                                       the history (what CI runs: under 60 s)
    scripts/mutate --retest            run again only what survived last time (after new tests)
    scripts/mutate --check             exit 1 if a mutant survived that is not listed as
                                       equivalent (with --sample: in the sample)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "artifacts" / "mutate"
EQUIVALENT = ROOT / "scripts" / "mutate-equivalent.txt"

#: The groups: modules mutated together, and the fast tests that cover them.
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "core": (
        [
            "sidecar/core/hub.py",
            "sidecar/core/client.py",
            "sidecar/core/connection.py",
            "sidecar/core/history.py",
            "sidecar/core/channels.py",
            "sidecar/core/stream.py",
            "sidecar/core/resume.py",
            "sidecar/core/gcpolicy.py",
        ],
        ["tests/unit"],
    ),
    "identity": (
        ["sidecar/core/identity.py", "sidecar/web/access.py"],
        ["tests/unit/test_identity.py", "tests/unit/test_access.py", "tests/test_identity.py"],
    ),
    "wire": (
        ["sidecar/frames.py", "sidecar/envelope.py"],
        ["tests/unit", "tests/test_frames.py"],
    ),
    "guards": (["sidecar/web/guards.py"], ["tests/unit/test_guards.py"]),
    "catalog": (
        ["sidecar/catalog/publish.py", "sidecar/catalog/validate.py"],
        ["tests/unit/test_catalog.py", "tests/test_publish.py", "tests/test_events.py"],
    ),
    "relay": (
        ["sidecar/broker/relay.py", "sidecar/broker/entries.py"],
        ["tests/test_relay.py", "tests/unit/test_backoff.py", "tests/unit/test_entries.py"],
    ),
    "client": (
        ["sidecar/client/session.py", "sidecar/client/policy.py"],
        ["tests/unit/test_client_session.py"],
    ),
}

#: Groups whose tests mostly wait (on Redis): more mutants at once than cores. The relay's 4x
#: (8 on 2 cores) keeps about one core busy: 1.2 min instead of 2.1 at 2x, and its equivalent
#: mutants still survive (no test fails from the load alone).
WAITING = {"relay": 4}

#: mutmut's exit codes, as it reports them (``mutmut.stats.status_by_exit_code``).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})
STATUS.update({37: "caught by type check", -11: "segfault", -9: "segfault"})
#: What counts as not detected.
SURVIVING = ("survived", "no tests", "suspicious", "not checked")


@dataclass
class Tally:
    """What happened to the mutants of one module."""

    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)

    def score(self) -> float:
        """Killed (and timed out) out of every mutant not listed as equivalent."""
        detected = self.counts["killed"] + self.counts["timeout"]
        total = sum(self.counts.values()) - self.counts["equivalent"]
        return 100.0 * detected / total if total else 100.0


def mutmut_config(modules: list[str], tests: list[str]) -> str:
    """The ``[tool.mutmut]`` table of one group."""
    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["sidecar"]',
            f"only_mutate = {json.dumps(modules)}",
            'also_copy = ["examples"]',  # beside tests/ in mutmut's copy of the tree
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
            # a hang is cut by pytest-timeout (a failure: killed); CPU loops by mutmut's limit
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-o", "timeout=10"]',
            'process_isolation = "forkserver"',
            "use_setproctitle = false",
            "",
        ]
    )


def prepare(group: str, work: Path, fresh: bool) -> Path:
    """A scratch copy of the tree for ``group`` in ``work``, with its mutmut configuration."""
    modules, tests = GROUPS[group]
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "browser", "node_modules")
    for tree in ("sidecar", "tests", "examples"):  # (tests/test_identity.py serves an example)
        if (work / tree).exists():
            shutil.rmtree(work / tree)
        shutil.copytree(ROOT / tree, work / tree, ignore=ignore)
    shutil.copy2(ROOT / "setup.cfg", work / "setup.cfg")
    pyproject = (ROOT / "pyproject.toml").read_text() + mutmut_config(modules, tests)
    (work / "pyproject.toml").write_text(pyproject)
    return work


def mutmut(work: Path, *args: str) -> int:
    """Run ``mutmut ARGS`` in ``work`` (its output goes to ``work/mutmut.log``); its exit code."""
    # the unit tests wait 1 s (not 5) for what takes milliseconds unless the code is broken
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "SIDECAR_TEST_PATIENCE": "1"}
    command = [sys.executable, "-m", "mutmut", *args]
    with open(work / "mutmut.log", "a") as log:
        return subprocess.run(command, cwd=work, env=env, stdout=log, stderr=log).returncode


def results(work: Path, modules: list[str]) -> dict[str, dict[str, int | None]]:
    """``{module: {mutant: exit code}}`` from mutmut's result files."""
    out = {}
    for module in modules:
        meta = work / "mutants" / (module + ".meta")
        data = json.loads(meta.read_text()) if meta.exists() else {}
        out[module] = data.get("exit_code_by_key", {})
    return out


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names = json.load(sys.stdin)
json.dump({n: get_diff_for_mutant(n, path=p) for n, p in names.items()}, sys.stdout)
"""


def diffs_of(work: Path, names: dict[str, str]) -> dict[str, str]:
    """The diff of each mutant (``{name: module path}``), as ``mutmut show`` prints it."""
    if not names:
        return {}
    done = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=work,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
    )
    found: dict[str, str] = json.loads(done.stdout)
    return found


def fingerprint(diff: str) -> str:
    """A short hash of the changed lines of a diff (stable while the mutant is the same)."""
    changed = [line.strip() for line in diff.splitlines() if line[:1] in "+-"]
    changed = [line for line in changed if not line.startswith(("+++", "---"))]
    return hashlib.sha1("\n".join(changed).encode()).hexdigest()[:8]


def load_equivalent() -> dict[str, tuple[str, str]]:
    """``{mutant name: (fingerprint, reason)}`` from the equivalent-mutant list."""
    table = {}
    for line in EQUIVALENT.read_text().splitlines() if EQUIVALENT.exists() else []:
        if not line.strip() or line.startswith("#"):
            continue
        name, mark, reason = line.split(maxsplit=2)
        table[name] = (mark, reason)
    return table


#: The modules the CI sample draws from: those whose every non-equivalent mutant is killed.
SAMPLED = ("sidecar/core/hub.py", "sidecar/core/client.py", "sidecar/core/history.py")


def sample_names(work: Path, modules: list[str], count: int) -> list[str]:
    """``count`` mutants chosen by a stable hash of their names (the same ones every time),
    from :data:`SAMPLED` (so that ``--check`` fails only on a regression)."""
    found = results(work, [m for m in modules if m in SAMPLED])
    names = [name for codes in found.values() for name in codes]
    return sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:count]


def run_group(group: str, work: Path, args: argparse.Namespace) -> dict[str, dict[str, int | None]]:
    """Mutate one group in ``work``; its results."""
    modules, _tests = GROUPS[group]
    children = ["--max-children", str(args.max_children * WAITING.get(group, 1))]
    if args.report_only:
        return results(work, modules)
    prepare(group, work, fresh=not (args.resume or args.retest))
    if args.retest:  # only what was not killed last time, against the tests as they are now
        last = results(work, modules)
        alive = [
            n for codes in last.values() for n, c in codes.items() if status_of(c) in SURVIVING
        ]
        if alive:
            check(work, mutmut(work, "run", *children, *alive))
        return results(work, modules)
    if args.sample:  # generate every mutant (and run one), then run the sample
        check(
            work, mutmut(work, "run", *children, "sidecar.core.history.xǁHistoryǁafter__mutmut_1")
        )
        names = sample_names(work, modules, args.sample)
        check(work, mutmut(work, "run", *children, *names))
        found = results(work, modules)
        return {m: {n: c for n, c in codes.items() if n in names} for m, codes in found.items()}
    check(work, mutmut(work, "run", *children))
    return results(work, modules)


def status_of(code: int | None) -> str:
    """mutmut's verdict for an exit code."""
    return STATUS.get(code, "suspicious") if code is not None else "not checked"


def check(work: Path, code: int) -> None:
    if code != 0:
        raise SystemExit(f"mutmut failed (exit {code}); see {work / 'mutmut.log'}")


def tally(
    work: Path, found: dict[str, dict[str, int | None]], equivalent: dict[str, tuple[str, str]]
) -> tuple[dict[str, Tally], list[str], list[str]]:
    """Per-module counts, the survivors' report blocks, and stale equivalent entries."""
    statuses = {name: status_of(code) for codes in found.values() for name, code in codes.items()}
    alive = {n: m for m, codes in found.items() for n in codes if statuses[n] in SURVIVING}
    diffs = diffs_of(work, alive)
    tallies: dict[str, Tally] = {}
    blocks, stale = [], []
    for module, codes in found.items():
        result = tallies.setdefault(module, Tally())
        for name in sorted(codes):
            status = statuses[name]
            if name in alive:
                mark = fingerprint(diffs[name])
                listed = equivalent.get(name)
                if listed and listed[0] == mark:
                    status = "equivalent"
                else:
                    if listed:
                        stale.append(f"{name} {listed[0]} (now {mark}): re-check it")
                    result.survivors.append(name)
                    blocks.append(f"## {name} {mark} ({status})\n{diffs[name]}\n")
            result.counts[status] += 1
    return tallies, blocks, stale


def report(tallies: dict[str, Tally], elapsed: float) -> str:
    """The score table."""
    lines = [
        f"{'module':34} {'killed':>6} {'surv.':>6} {'timeout':>7} {'equiv.':>6} "
        f"{'no test':>7} {'score':>7}"
    ]
    for module, t in sorted(tallies.items()):
        c = t.counts
        if not c:
            continue  # (a sample may hold no mutant of it)
        survived = c["survived"] + c["suspicious"] + c["not checked"]
        lines.append(
            f"{module:34} {c['killed']:>6} {survived:>6} {c['timeout']:>7} "
            f"{c['equivalent']:>6} {c['no tests']:>7} {t.score():>6.1f}%"
        )
    lines.append(f"({elapsed / 60:.1f} min; score = (killed + timeout) / (all - equivalent))")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", choices=sorted(GROUPS), help="repeatable")
    parser.add_argument("--sample", type=int, default=0, help="a fixed sample of N core mutants")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--resume", action="store_true", help="keep earlier results")
    parser.add_argument(
        "--retest", action="store_true", help="run again only the last run's survivors"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 on an unlisted survivor")
    parser.add_argument(
        "--report-only", action="store_true", help="tally the last run's results again"
    )
    args = parser.parse_args(argv)
    groups = ["core"] if args.sample else args.group or list(GROUPS)
    equivalent = load_equivalent()
    started = time.monotonic()
    tallies: dict[str, Tally] = {}
    blocks: list[str] = []
    stale: list[str] = []
    for group in groups:
        print(f"== mutmut: {group}", file=sys.stderr, flush=True)
        work = OUT / (f"{group}-sample" if args.sample else group)
        found = run_group(group, work, args)
        group_tallies, group_blocks, group_stale = tally(work, found, equivalent)
        tallies.update(group_tallies)
        blocks += group_blocks
        stale += group_stale
    table = report(tallies, time.monotonic() - started)
    OUT.mkdir(parents=True, exist_ok=True)
    prefix = "sample-" if args.sample else ""
    (OUT / f"{prefix}survivors.txt").write_text("\n".join(blocks) or "no survivors\n")
    (OUT / f"{prefix}report.txt").write_text(table + "\n")
    print(table)
    count = sum(len(t.survivors) for t in tallies.values())
    print(f"survivors: {OUT / f'{prefix}survivors.txt'} ({count})")
    for line in stale:
        print(f"stale equivalent entry: {line}")
    if args.check and any(t.survivors for t in tallies.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
