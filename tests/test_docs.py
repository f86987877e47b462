"""The docs say what is true: every code block runs (or is a fragment on purpose), the options
reference is the one the code generates, and the built site has no broken internal link.

The options table of ``docs/options.md`` is checked by ``tests/test_codebase.py``. The
blocks and their markers are described in ``tests/docs_blocks.py``. Each page's blocks run
in order in a directory of their own, with a real sidecar at ``$SIDECAR_URL`` (token
``$SIDECAR_TOKEN``), a free port in ``$PORT`` for blocks that serve, ``$WORK`` (the page's
directory) and the project's ``.venv/bin`` first on ``PATH``. The site itself is built by
``./scripts/docs`` (warnings are errors), which ``./scripts/test`` runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.launcher import launch
from tests.conftest import wait_for
from tests.docs_blocks import DOCS, ROOT, Block, Page, pages, parse
from tests.needs import unavailable

TOKEN = "docs-token-0123456789"
BLOCK_TIMEOUT = 120.0
ALL = pages()
RUNNABLE = [page for page in ALL if page.runs]


def test_every_block_is_run_or_a_fragment_on_purpose():
    problems = [f"{b.where}: {b.problem()}" for page in ALL for b in page.blocks if b.problem()]
    assert problems == []


def test_the_block_rules_catch_what_they_should(tmp_path):
    page = tmp_path / "x.md"
    page.write_text(
        "```yaml\na: 1\n```\n\n<!-- docs: fragment -->\n```sh\nx\n```\n\n"
        "<!-- docs: run sideways -->\n```sh\nx\n```\n\n<!-- docs: fragment — why -->\n"
        "```rust\nfn main() {}\n```\n\n```json\n{}\n```\n\n```{toctree}\nx\n```\n",
        encoding="utf-8",
    )
    found = [(b.lang, b.problem()) for b in parse(page).blocks]
    assert found == [
        ("yaml", "a yaml block without a docs: marker"),
        ("sh", "a fragment needs a reason"),
        ("sh", "unknown run words ['sideways']"),
        ("rust", None),
        ("json", None),
    ]


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, f"docs/kubernetes.md has no {pattern!r}"
    return int(found.group(1))


def test_the_kubernetes_grace_period_covers_the_prestop_delay_and_the_drain():
    text = (DOCS / "kubernetes.md").read_text(encoding="utf-8")
    grace = _number(r"terminationGracePeriodSeconds: (\d+)", text)
    drain = _number(r'SIDECAR_DRAIN, value: "(\d+)"', text)
    pre_stop = _number(r"sleep: \{seconds: (\d+)\}", text)
    assert grace > pre_stop + drain + 5


def test_the_readme_stays_short_and_links_the_docs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


# -- running the pages ---------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PageRun:
    """The environment one page's blocks run in, and the processes they left running."""

    def __init__(self, page: Page, work: Path, sidecar_url: str, broker: str | None) -> None:
        self.page, self.work = page, work
        self.background: list[tuple[Block, subprocess.Popen[bytes]]] = []
        self.background_index: dict[int, int] = {}
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.pop("PYTHONPATH", None)
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            SIDECAR_TOKEN=TOKEN,
            SIDECAR_URL=sidecar_url,
            SIDECAR_PATH=str(Path(bin_dir) / "sidecar"),
            PORT=str(_free_port()),
            WORK=str(work),
            NODE_PATH=str(ROOT / "examples" / "electron" / "node_modules"),
        )
        if broker:
            env["SIDECAR_BROKER"] = broker
        self.env = env

    def run(self, block: Block, index: int) -> None:
        kind = block.kind
        if kind in ("fragment", "text"):
            return
        if kind == "file":
            (self.work / block.words[0]).write_text(block.code, encoding="utf-8")
            return
        if kind == "parse":
            try:
                json.loads(block.code)
            except ValueError as exc:
                raise AssertionError(f"{block.where}: not JSON: {exc}") from None
            return
        lang = {"python": "py", "sh": "sh", "js": "mjs"}[_lang(block)]
        script = self.work / f"block-{index}.{lang}"
        script.write_text(block.code, encoding="utf-8")
        runner = {"py": [sys.executable], "sh": ["bash", "-euo", "pipefail"], "mjs": ["node"]}
        if lang == "mjs" and not shutil.which("node"):
            unavailable("node is not installed (apt-get install nodejs)")
        argv = [*runner[lang], str(script)]
        cwd = ROOT if "repo" in block.words else self.work
        if "background" in block.words or "ready-line" in block.words:
            self._start(block, argv, cwd, index)
            return
        done = subprocess.run(
            argv, cwd=cwd, env=self.env, capture_output=True, timeout=BLOCK_TIMEOUT
        )
        output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{output}"

    def _start(self, block: Block, argv: list[str], cwd: Path, index: int) -> None:
        out = self.work / f"block-{index}.out"
        with open(out, "wb") as sink:
            process = subprocess.Popen(
                argv, cwd=cwd, env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.background.append((block, process))
        self.background_index[block.line] = index

        def started() -> bool:
            if process.poll() is not None:
                text = out.read_text(errors="replace")[-4000:]
                raise AssertionError(f"{block.where} exited {process.returncode}:\n{text}")
            if "ready-line" in block.words:
                return '"event":"ready"' in out.read_text(errors="replace")
            return _answers(f"http://127.0.0.1:{self.env['PORT']}/")

        wait_for(started, timeout=60, interval=0.05)

    def stop(self) -> None:
        """SIGTERM every background block's process group; each must exit 0 in time."""
        failures = []
        for block, process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait(5)
            # the block's shell gets the SIGTERM too (-15); what it ran must not fail loudly
            output = (self.work / f"block-{self.background_index[block.line]}.out").read_text(
                errors="replace"
            )
            if code not in (0, -signal.SIGTERM) or "Traceback" in output:
                failures.append(f"{block.where} exited {code} on SIGTERM:\n{output[-4000:]}")
        assert failures == []


def _lang(block: Block) -> str:
    return {"python": "python", "sh": "sh", "bash": "sh", "js": "js", "javascript": "js"}[
        block.lang
    ]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: it serves
    except OSError:
        return False


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    page: Page = request.node.callspec.params["page"]
    if not page.needs_redis:
        yield None
        return
    from tests.redis_server import running

    for server in running():
        yield server.url


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.path.name)
def test_the_page_runs(page: Page, tmp_path: Path, broker_url: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_TOKEN=TOKEN)
    if broker_url:
        env["SIDECAR_BROKER"] = broker_url
    argv = [sys.executable, "-m", "sidecar", "--port", "0"]
    with launch(argv, env=env) as sidecar:
        run = PageRun(page, tmp_path, sidecar.url, broker_url)
        for used in page.uses:
            for block in parse(DOCS / used).blocks:
                if block.kind == "file":
                    run.run(block, 0)
        try:
            for index, block in enumerate(page.blocks, 1):
                run.run(block, index)
        finally:
            run.stop()


def test_the_link_check_finds_missing_pages_and_anchors_and_skips_external_links(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from docs_links import broken_links
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#here">ok</a><a href="sub/page.html#gone">bad anchor</a>'
        '<a href="missing.html">bad file</a><a href="https://example.invalid/x">external</a>'
        '<img src="_images/a.png"><a href="#top">self</a><h1 id="top">t</h1>',
        encoding="utf-8",
    )
    (tmp_path / "sub" / "page.html").write_text(
        '<h2 id="here">h</h2><a href="../index.html">up</a>', encoding="utf-8"
    )
    assert broken_links(tmp_path) == [
        "index.html: sub/page.html#gone (no #gone there)",
        "index.html: missing.html (no such file)",
        "index.html: _images/a.png (no such file)",
    ]
