"""Build the sidecar as a self-contained executable with PyInstaller (``scripts/build-binary``).

    scripts/build-binary              one folder (the default): a directory holding the
                                      executable and its ``_internal/`` libraries
    scripts/build-binary --onefile    one file; it unpacks itself at each start and runs as
                                      two processes (see docs/desktop.md)
    scripts/build-binary --force      rebuild even if the cache has this build
    scripts/build-binary --copy-to D  also copy the build into folder D (e.g. Tauri's
                                      src-tauri/binaries) and print the copy's path

The executable is named with the target triple, as Tauri's ``externalBin`` expects:
``sidecar-x86_64-unknown-linux-gnu``, ``sidecar-aarch64-apple-darwin``,
``sidecar-x86_64-pc-windows-msvc.exe`` … It prints the build's size and then, as its LAST
line, the executable's absolute path, so ``"$(scripts/build-binary | tail -n 1)"`` is the
binary. PyInstaller's own output goes to stderr.

Builds are cached under ``.tools/binary/<mode>-<triple>-<key>/`` (gitignored); the key hashes the
package's files (``sidecar/**``: sources and ``static/``), ``setup.cfg``, this script, the
versions of Python, PyInstaller and the runtime dependencies, and the target. A second run
with the same key prints the cached build at once; older builds of the same mode and target
are removed (a checkout also builds the Windows binary under Wine: the two stay side by side).
A build is made in a temporary folder and renamed into place, so concurrent runs never see a
half-made one. After building, it checks that the modules the sidecar imports lazily and the
``static/`` files are inside, and runs ``<binary> --version``.

Runs in one thread; PyInstaller runs as a child process.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar import __version__  # noqa: E402
from sidecar.platform import os_family, target_triple  # noqa: E402

CACHE = ROOT / ".tools" / "binary"
PACKAGE = ROOT / "sidecar"
#: Distributions whose versions enter the cache key (what the binary bundles).
BUNDLED = ("flask", "werkzeug", "simple-websocket", "wsproto", "h11", "pyinstaller")
#: Modules that must be in the build: the server stack, and the sidecar's modules that the
#: CLI imports inside functions.
REQUIRED_MODULES = (
    "flask",
    "werkzeug.serving",
    "simple_websocket.ws",
    "wsproto",
    "h11",
    "sidecar.cli",
    "sidecar.server",
    "sidecar.app",
    "sidecar.web",
    "sidecar.platform",
    "sidecar.tools",
)
#: Imported by nothing the binary runs, or unwanted in it (gunicorn is POSIX-only and
#: optional; the test helpers are not shipped).
EXCLUDED_MODULES = ("tkinter", "gunicorn", "sidecar.gunicorn_conf", "sidecar.testing")
ENTRY = "from sidecar.cli import main\n\nraise SystemExit(main())\n"


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the result)."""
    print(f"build-binary: {message}", file=sys.stderr, flush=True)


def package_files() -> list[Path]:
    """Every file of the package that can end up in the binary (no caches)."""
    return sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def cache_key(mode: str, triple: str) -> str:
    """A hash of everything that determines the build."""
    digest = hashlib.sha256()
    for path in [*package_files(), ROOT / "setup.cfg", Path(__file__).resolve()]:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    versions = {name: _version(name) for name in BUNDLED}
    digest.update(json.dumps([mode, triple, sys.version, versions], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def pyinstaller_args(mode: str, name: str, work: Path) -> list[str]:
    """The PyInstaller command line for a build in ``work``."""
    entry = work / "sidecar_entry.py"
    entry.write_text(ENTRY)
    args = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--log-level=WARN",
        f"--{mode}",
        f"--name={name}",
        f"--distpath={work / 'dist'}",
        f"--workpath={work / 'build'}",
        f"--specpath={work}",
        # the package is installed in editable mode, which PyInstaller's import finder does
        # not follow: point it at the checkout
        f"--paths={ROOT}",
        # sidecar/web.py finds static/ next to its own __file__, which is
        # <bundle>/sidecar/web.pyc when frozen: put the files at sidecar/static
        f"--add-data={PACKAGE / 'static'}{os.pathsep}sidecar/static",
        # UPX-packed executables are what antivirus heuristics flag (pyinstaller#6754)
        "--noupx",
        # a console program: the ready line is on stdout (a windowed build has no stdout)
        "--console",
    ]
    for module in REQUIRED_MODULES:
        args.append(f"--hidden-import={module}")
    for module in EXCLUDED_MODULES:
        args.append(f"--exclude-module={module}")
    if os_family() == "linux":
        args.append("--strip")  # pyenv's libpython carries ~18 MB of symbols (not on macOS:
        # stripping there invalidates the code signature PyInstaller applies)
    args.append(str(entry))
    return args


def _toc_names(path: Path) -> set[str]:
    """The destination names in one of PyInstaller's ``.toc`` files (a Python literal whose
    first list holds ``(name, source, kind)`` entries)."""
    toc = ast.literal_eval(path.read_text(encoding="utf-8"))
    entries = next(part for part in toc if isinstance(part, list))
    return {str(entry[0]).replace("\\", "/") for entry in entries}


def check_contents(work: Path, name: str, mode: str) -> None:
    """Fail unless the required modules and every ``static/`` file made it into the build."""
    build = work / "build" / name
    modules = _toc_names(build / "PYZ-00.toc")
    missing = [m for m in REQUIRED_MODULES if m not in modules]
    names = _toc_names(build / ("PKG-00.toc" if mode == "onefile" else "COLLECT-00.toc"))
    for path in sorted((PACKAGE / "static").iterdir()):
        if f"sidecar/static/{path.name}" not in names:
            missing.append(f"sidecar/static/{path.name}")
    if missing:
        raise SystemExit(f"build-binary: the build lacks {', '.join(missing)}")


def executable_path(folder: Path, mode: str, name: str) -> Path:
    """Where PyInstaller put the executable inside a build folder."""
    suffix = ".exe" if os_family() == "windows" else ""
    if mode == "onefile":
        return folder / "dist" / f"{name}{suffix}"
    return folder / "dist" / name / f"{name}{suffix}"


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build(mode: str, name: str, final: Path) -> dict[str, Any]:
    """Build into a temporary folder, check it, run it once, move it to ``final``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    started = time.monotonic()
    try:
        args = pyinstaller_args(mode, name, work)
        result = subprocess.run(args, stdout=sys.stderr, cwd=work, check=False)
        if result.returncode != 0:
            raise SystemExit(f"build-binary: PyInstaller failed (exit {result.returncode})")
        check_contents(work, name, mode)
        seconds = time.monotonic() - started
        check_runs(executable_path(work, mode, name))
        shutil.rmtree(work / "build")  # PyInstaller's intermediate files
        manifest = {"mode": mode, "name": name, "version": __version__, "seconds": seconds}
        (work / "build.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def check_runs(executable: Path) -> None:
    """Run ``<binary> --version`` once: a broken bundle fails here, not in the app."""
    out = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0 or out.stdout.strip() != f"sidecar {__version__}":
        raise SystemExit(
            f"build-binary: {executable} --version gave exit {out.returncode}: "
            f"{(out.stdout + out.stderr).strip()[-2000:]}"
        )


def remove_older(mode: str, triple: str, keep: Path) -> None:
    """Remove the cached builds of ``mode`` for ``triple`` other than ``keep``."""
    for old in CACHE.glob(f"{mode}-{triple}-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the binary; print its size, then its path as the last line."""
    parser = argparse.ArgumentParser(prog="build-binary", description=__doc__.split("\n")[0])
    parser.add_argument("--onefile", action="store_true", help="one file instead of a folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument(
        "--copy-to", type=Path, metavar="DIR", help="copy the build into DIR (replacing it)"
    )
    args = parser.parse_args(argv)
    mode = "onefile" if args.onefile else "onedir"
    triple = target_triple()
    name = f"sidecar-{triple}"
    final = CACHE / f"{mode}-{triple}-{cache_key(mode, triple)}"
    manifest_path = final / "build.json"
    if manifest_path.is_file() and not args.force:
        manifest = json.loads(manifest_path.read_text())
        how = "cached build"
    else:
        log(f"building {name} ({mode}) with PyInstaller {_version('pyinstaller')}")
        manifest = build(mode, name, final)
        how = f"built in {manifest['seconds']:.1f} s"
    remove_older(mode, triple, final)
    executable = executable_path(final, mode, name)
    shipped = executable if mode == "onefile" else executable.parent
    layout = "one file" if mode == "onefile" else "one folder"
    size = size_of(shipped)
    print(f"{how}: {layout}, {size / 2**20:.1f} MiB ({size} bytes): {shipped}")
    if args.copy_to is not None:
        executable = copy_build(shipped, args.copy_to) / executable.relative_to(shipped.parent)
    print(executable)
    return 0


def copy_build(shipped: Path, folder: Path) -> Path:
    """Copy the executable (one file) or its folder into ``folder``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / shipped.name
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    if shipped.is_dir():
        shutil.copytree(shipped, target, symlinks=True)
    else:
        shutil.copy2(shipped, target)
    return folder.resolve()


if __name__ == "__main__":
    sys.exit(main())
