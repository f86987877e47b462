"""The cross-OS workflow (``.github/workflows/cross-os.yml``): the legs it declares are right.

It runs on GitHub's runners only; what can be checked here is that each leg builds the triple
its runner's OS and processor give (:func:`sidecar.platform.target_triple`), that every
target a desktop app ships to has a leg, and that the legs run the tests the Windows leg runs
under Wine. ``scripts/test`` lints the file (actionlint, zizmor, check-jsonschema).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.platform import target_triple
from tests.wine import tools

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "cross-os.yml"

#: GitHub-hosted runner labels: the OS (a ``sys.platform``) and the processor
#: (a ``platform.machine()`` as that OS reports it) of each.
RUNNERS = {
    "ubuntu-22.04": ("linux", "x86_64"),
    "ubuntu-24.04": ("linux", "x86_64"),
    "ubuntu-22.04-arm": ("linux", "aarch64"),
    "ubuntu-24.04-arm": ("linux", "aarch64"),
    "windows-2022": ("win32", "AMD64"),
    "windows-2025": ("win32", "AMD64"),
    "windows-11-arm": ("win32", "ARM64"),
    "macos-14": ("darwin", "arm64"),
    "macos-15": ("darwin", "arm64"),
    "macos-15-intel": ("darwin", "x86_64"),
}
#: Every target the desktop apps ship to (Tauri's externalBin names).
TRIPLES = {
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "x86_64-pc-windows-msvc",
    "aarch64-apple-darwin",
    "x86_64-apple-darwin",
}


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def _legs(workflow: dict[str, Any]) -> list[dict[str, str]]:
    legs: list[dict[str, str]] = workflow["jobs"]["build"]["strategy"]["matrix"]["include"]
    return legs


def test_each_leg_builds_the_triple_of_its_runners_os_and_processor(workflow):
    for leg in _legs(workflow):
        system, machine = RUNNERS[leg["runner"]]
        assert target_triple(system, machine, libc="gnu") == leg["triple"], leg


def test_every_target_has_one_leg(workflow):
    triples = [leg["triple"] for leg in _legs(workflow)]
    assert sorted(triples) == sorted(TRIPLES)


def test_linux_is_built_on_the_oldest_supported_ubuntu(workflow):
    """A glibc binary runs on that glibc and newer ones: build on the oldest runner."""
    linux = [leg["runner"] for leg in _legs(workflow) if leg["triple"].endswith("-linux-gnu")]
    assert linux == ["ubuntu-22.04", "ubuntu-22.04-arm"]


def test_the_legs_run_the_tests_of_the_windows_leg(workflow):
    assert workflow["env"]["PORTABLE_TESTS"].split() == list(tools().LEG_TESTS)


def test_every_action_is_pinned_by_commit(workflow):
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                _action, _, ref = step["uses"].partition("@")
                assert len(ref) == 40 and int(ref, 16) >= 0, step["uses"]


def test_only_the_release_may_write(workflow):
    assert workflow["permissions"] == {}
    writers = {
        name
        for name, job in workflow["jobs"].items()
        if "write" in (job.get("permissions") or {}).values()
    }
    assert writers == {"release"}
    assert workflow["jobs"]["release"]["if"] == "startsWith(github.ref, 'refs/tags/v')"
