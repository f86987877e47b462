"""``python -m sidecar``: the same entry point as the ``sidecar`` console script."""

import sys

from .cli import main

sys.exit(main())
