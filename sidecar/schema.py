"""The generated files of the event catalog under their first import path: a re-export of
:mod:`sidecar.catalog.codegen` (``sidecar schema [--check]`` runs :func:`main`)."""

import sys

from sidecar.catalog import codegen
from sidecar.catalog.codegen import *  # noqa: F403  (the whole codegen API, by design)
from sidecar.catalog.codegen import main

__all__ = list(codegen.__all__)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
