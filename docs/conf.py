"""Sphinx configuration of the docs site: MyST Markdown pages, the Furo theme.

Built by ``./scripts/docs`` (and so by ``./scripts/test``) with warnings as errors; the
internal links of the built pages are then checked offline (``scripts/docs_links.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar import __version__

project = "sidecar"
author = "the sidecar authors"
copyright = "the sidecar authors"
release = version = __version__
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
#: ``page.md#a-heading`` links: anchors for headings down to ####.
myst_heading_anchors = 4
html_theme = "furo"
html_title = f"sidecar {release}"
html_static_path: list[str] = []
#: No request goes out while building: everything the site shows is in this repository.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
