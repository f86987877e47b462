"""The code blocks of the docs (``docs/*.md`` and ``README.md``) and what a test does with each.

A block's marker is an HTML comment on the line just before its fence (invisible on the
rendered page)::

    <!-- docs: fragment — why it is not run -->   never run (the reason is required)
    <!-- docs: file NAME -->                       written to NAME in the page's directory
    <!-- docs: run [background|ready-line] [repo] [redis] -->

``run`` is the default for ``python``, ``sh`` and ``js`` blocks: each runs in order in one
directory per page, against a real sidecar, and must exit 0 (``background``: it keeps running
until the page ends and must answer HTTP on ``$PORT`` first; ``ready-line``: until it prints a
ready line; ``repo``: in the checkout instead of the page's directory; ``redis``: the page gets
a redis-server and ``SIDECAR_BROKER``). ``json`` blocks must parse. ``text`` blocks (diagrams,
output) are not code. A page can name another whose ``file`` blocks it builds on:
``<!-- docs: uses flask.md -->``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Languages run as programs, and the ones only parsed.
RUN = {"python": "python", "sh": "sh", "bash": "sh", "js": "js", "javascript": "js"}
PARSED = {"json"}
NOT_CODE = {"text"}
MODES = {"background", "ready-line"}
FLAGS = {"repo", "redis"}
_MARKER = re.compile(r"^<!--\s*docs:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of a page."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # the text after "docs:", or None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        """``fragment``, ``file``, ``run``, ``parse``, ``text`` or ``unmarked``."""
        if self.marker is not None:
            return self.marker.split()[0] if self.marker.split() else "unmarked"
        if self.lang in NOT_CODE:
            return "text"
        if self.lang in PARSED:
            return "parse"
        if self.lang in RUN:
            return "run"
        return "unmarked"

    @property
    def words(self) -> list[str]:
        return (self.marker or "").split()[1:]

    def problem(self) -> str | None:
        """Why this block is neither run nor a fragment (``None``: it is one of them)."""
        kind = self.kind
        if kind == "fragment":
            reason = (self.marker or "").partition("fragment")[2].strip(" —-:")
            return None if reason else "a fragment needs a reason"
        if kind == "file":
            return None if len(self.words) == 1 else "file needs one NAME"
        if kind == "run":
            if self.lang not in RUN:
                return f"cannot run a {self.lang or 'plain'} block"
            unknown = set(self.words) - MODES - FLAGS
            return f"unknown run words {sorted(unknown)}" if unknown else None
        if kind in ("parse", "text"):
            return None
        return f"a {self.lang or 'plain'} block without a docs: marker"


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    uses: list[str] = field(default_factory=list)

    @property
    def runs(self) -> bool:
        return any(b.kind in ("run", "parse") for b in self.blocks)

    @property
    def needs_redis(self) -> bool:
        return any("redis" in b.words for b in self.blocks if b.kind == "run")


def parse(path: Path) -> Page:
    """The blocks of one Markdown page (directive fences such as ``{toctree}`` excluded)."""
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        uses = _MARKER.match(line)
        if uses and uses.group(1).startswith("uses "):
            page.uses += uses.group(1).split()[1:]
        fence = re.match(r"^(`{3,})(.*)$", line)
        if not fence:
            i += 1
            continue
        ticks, info = fence.group(1), fence.group(2).strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(ticks)), len(lines))
        if not info.startswith("{"):
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = _MARKER.match(previous)
            text = marker.group(1) if marker and not marker.group(1).startswith("uses ") else None
            code = "\n".join(lines[i + 1 : end]) + "\n"
            page.blocks.append(Block(path, i + 1, info.split()[0] if info else "", code, text))
        i = end + 1
    return page


def pages() -> list[Page]:
    """Every docs page, then the README."""
    return [parse(p) for p in sorted(DOCS.glob("*.md"))] + [parse(ROOT / "README.md")]
