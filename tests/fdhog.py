"""A sidecar in this process plus a file-descriptor hog driven through stdin (a test program).

Usage: ``python tests/fdhog.py [sidecar options]``. It lowers its own soft ``RLIMIT_NOFILE``
to :data:`SOFT_LIMIT` (so that the hog is quick), starts the hog thread, then runs
``sidecar.cli.main`` with the options (the ready line on stdout, the log on stderr).

Commands, one per line on stdin; each is acknowledged with a line on stderr:

* ``hog``: open ``/dev/null`` until ``EMFILE`` and keep every descriptor
  (``fdhog: holding N``);
* ``free``: close them all (``fdhog: freed``).

Threads: the hog thread (``fdhog``) owns the held descriptors; the main thread runs the
sidecar. Real descriptors, a real limit, the real accept loop: nothing is simulated.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

#: The soft descriptor limit the program runs with.
SOFT_LIMIT = 512


def _hog() -> None:
    held: list[int] = []
    for line in sys.stdin:
        command = line.strip()
        if command == "hog":
            try:
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            print(f"fdhog: holding {len(held)}", file=sys.stderr, flush=True)
        elif command == "free":
            while held:
                os.close(held.pop())
            print("fdhog: freed", file=sys.stderr, flush=True)


def main() -> int:
    """Lower the limit, start the hog, run the sidecar; its exit code."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_LIMIT, hard))
    threading.Thread(target=_hog, name="fdhog", daemon=True).start()
    from sidecar.cli import main as sidecar_main

    return sidecar_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
