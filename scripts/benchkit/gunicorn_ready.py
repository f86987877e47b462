"""gunicorn settings for the bench's broker mode: the shipped ones, plus a ready line.

``gunicorn -c scripts/benchkit/gunicorn_ready.py …`` behaves as with
``-c python:sidecar.gunicorn_conf`` and prints, once the master listens, the one JSON line on
stdout that :class:`sidecar.launcher.SidecarProcess` waits for (``port`` and the master's
``pid``). The workers are still booting then: the bench waits for them separately. Runs in
gunicorn's master (its main thread).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from sidecar import __version__
from sidecar.gunicorn_conf import *  # noqa: F403  (every setting and hook of the shipped config)


def when_ready(server: Any) -> None:
    """The master listens: print the ready line."""
    port = server.LISTENERS[0].sock.getsockname()[1]
    line = {"event": "ready", "port": port, "pid": os.getpid(), "version": __version__}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
