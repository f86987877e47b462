"""Build the ``sidecar-hub`` wheel from this checkout (``scripts/build-wheel``).

The sources are copied to a temporary directory first (the files git tracks, plus untracked
ones that are not ignored), so that a stale ``build/`` or ``*.egg-info`` of the checkout can
never end up in the wheel, and two builds never share a directory. pip builds it (PEP 517,
in an isolated environment with the ``[build-system]`` requirements of ``pyproject.toml``).

Prints the wheel's path as its last line; pip's output goes to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Used when the checkout is not a git repository: what never belongs in a build.
EXCLUDE = ("--exclude-standard",)
SKIP = {".git", ".venv", "node_modules", "build", "dist", ".tools", "artifacts", "__pycache__"}


def source_files(root: Path) -> list[Path]:
    """The checkout's files, relative to ``root``: git's view, or a walk without :data:`SKIP`."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", *EXCLUDE],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [
            path.relative_to(root)
            for path in root.rglob("*")
            if path.is_file() and not SKIP & set(path.relative_to(root).parts)
        ]
    return [Path(name) for name in listed.decode().split("\0") if name and (root / name).is_file()]


def build(out: Path) -> Path:
    """Build the wheel into ``out``; its path."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sidecar-wheel-") as tmp:
        src = Path(tmp) / "src"
        for name in source_files(ROOT):
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        before = set(out.glob("sidecar_hub-*.whl"))
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"),
                *("--disable-pip-version-check", "--wheel-dir", str(out), str(src)),
            ],
            check=True,
            stdout=sys.stderr,
        )
    built = sorted(set(out.glob("sidecar_hub-*.whl")) - before) or sorted(
        out.glob("sidecar_hub-*.whl"), key=lambda p: p.stat().st_mtime
    )
    return built[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="directory (dist/)")
    args = parser.parse_args()
    wheel = build(args.out.resolve())
    print(f"built {wheel.name} ({wheel.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
