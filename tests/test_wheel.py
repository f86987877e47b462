"""The install line is true: a wheel built from this checkout installs into a fresh venv and serves.

``scripts/build-wheel`` (``scripts/build_wheel.py``) builds ``sidecar-hub``; the wheel goes
into a new virtual environment with nothing else, and everything below runs from a directory
outside the checkout, so the installed copy is what is imported. The package index must be
reachable for the dependencies (as for any ``pip install``); under ``CI=true`` it is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.launcher import launch

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 300


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """``(wheel, venv)``: the wheel built by the script, installed into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_wheel.py"), "--out", str(tmp / "dist")],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    wheel = Path(out.stdout.splitlines()[-1])
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv, "install", str(wheel))
    yield wheel, venv


def pip(venv: Path, *args: str) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        cwd=venv,
    )
    assert done.returncode == 0, done.stderr


def clean_env() -> dict[str, str]:
    """This environment without anything that would point Python at the checkout."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SIDECAR_")}


def run_python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=venv,
        env=clean_env(),
    )


def test_the_wheel_is_named_sidecar_hub_and_holds_the_package_data(installed):
    wheel, _venv = installed
    assert wheel.name.startswith("sidecar_hub-") and wheel.name.endswith("-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "sidecar/py.typed",
        "sidecar/broker/publish.lua",
        "sidecar/static/sidecar-client.js",
        "sidecar/static/index.html",
    ):
        assert needed in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "examples/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "sidecar = sidecar.cli:main" in text and "sidecar = sidecar.pytest_plugin" in text


def test_the_installed_command_serves_from_the_venv(installed):
    _wheel, venv = installed
    env = clean_env()
    env["SIDECAR_TOKEN"] = "wheel-test-token-0123456789"
    child = launch([str(venv / "bin" / "sidecar"), "--port", "0"], env=env, same_package=False)
    try:
        with urllib.request.urlopen(child.url + "/health/ready", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ready"}
        with urllib.request.urlopen(child.url + "/client/sidecar-client.js", timeout=5) as js:
            assert b"SidecarClient" in js.read()
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 0
    finally:
        child.stop(timeout=3.0)


def test_the_installed_package_imports_from_the_venv_and_names_the_redis_extra(installed):
    _wheel, venv = installed
    where = run_python(venv, "import sidecar; print(sidecar.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv)
    bare = run_python(venv, "from sidecar import EventHub, Publisher")
    assert bare.returncode == 1 and "pip install 'sidecar-hub[redis]'" in bare.stderr


def test_with_the_redis_extra_eventhub_and_publisher_import(installed):
    wheel, venv = installed
    pip(venv, "install", f"{wheel}[redis]")
    both = run_python(venv, "from sidecar import EventHub, Publisher")
    assert both.returncode == 0, both.stderr
