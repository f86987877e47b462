"""Spawn-to-ready-line time of the sidecar: the built binaries and ``python -m sidecar``.

    scripts/startup-time             10 runs of each, interleaved, in one sitting
    scripts/startup-time --runs 20

Each run starts the program with ``--port 0``, times from just before the spawn until its
ready line has been read from stdout, then stops it (SIGTERM, or terminate on Windows) and
waits for it. The variants take turns run by run, so that a change in the machine's load
touches them alike. Prints the median, minimum and maximum of each, and the size of each
binary. The binaries come from ``scripts/build-binary`` (one folder and ``--onefile``; built
if the cache lacks them).

Runs in one thread; each measured program is a child process.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def built(*options: str) -> Path:
    """The executable that ``scripts/build-binary`` reports (building it if needed)."""
    command = [sys.executable, str(ROOT / "scripts" / "build_binary.py"), *options]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


def time_to_ready(command: list[str]) -> float:
    """Seconds from spawn to the first stdout line; the program is stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - started
        if not line.startswith(b'{"event":"ready"'):
            raise SystemExit(f"startup-time: {command[0]} printed {line!r}")
    finally:
        if sys.platform == "win32":
            proc.terminate()
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
    return elapsed


def size_of(path: Path) -> int:
    """Bytes of a file, or of the folder a one-folder build ships."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    """Measure, then print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each variant (10)")
    runs = parser.parse_args().runs
    onedir, onefile = built(), built("--onefile")
    variants = {
        "binary, one folder": ([str(onedir)], size_of(onedir.parent)),
        "binary, one file": ([str(onefile)], onefile.stat().st_size),
        "python -m sidecar": ([sys.executable, "-m", "sidecar"], None),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for command, _size in variants.values():
        time_to_ready(command)  # warm the page cache once, untimed
    for _ in range(runs):
        for name, (command, _size) in variants.items():
            times[name].append(time_to_ready(command))
    print(f"spawn to ready line, {runs} runs each, interleaved ({os.cpu_count()} cores):")
    for name, (_command, size) in variants.items():
        ms = [t * 1000 for t in times[name]]
        sized = f", {size / 2**20:.1f} MiB" if size is not None else ""
        print(
            f"  {name:20} median {statistics.median(ms):6.0f} ms"
            f"  (min {min(ms):.0f}, max {max(ms):.0f}){sized}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
