"""The entry point of ``scripts/bench`` (the fan-out benchmark): see :mod:`benchkit`."""

from __future__ import annotations

import sys

from benchkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
