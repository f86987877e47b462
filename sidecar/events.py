"""The event catalog under its first import path: a re-export of :mod:`sidecar.catalog`.

``from sidecar import events``, ``events.new_stream_created_event(...)``, ``events.CATALOG``,
``events.validate_payload`` and ``events.json_schema`` keep working, and so do the envelope
names this module always had (``events.Event``, ``events.new_event``); new code imports
:mod:`sidecar.catalog`.
"""

# Star imports from the modules whose __all__ is a literal list, so that type checkers see
# every name; the rest one by name.
from sidecar import catalog
from sidecar.catalog import CATALOG as CATALOG
from sidecar.catalog import MAX_BATCH as MAX_BATCH
from sidecar.catalog import MAX_DEPTH as MAX_DEPTH
from sidecar.catalog import Direction as Direction
from sidecar.catalog import EventSpec as EventSpec
from sidecar.catalog import PublishError as PublishError
from sidecar.catalog import json_problem as json_problem
from sidecar.catalog import json_schema as json_schema
from sidecar.catalog import parse_publish_body as parse_publish_body
from sidecar.catalog import validate_items as validate_items
from sidecar.catalog import validate_payload as validate_payload
from sidecar.catalog.constructors import *  # noqa: F403
from sidecar.catalog.names import *  # noqa: F403
from sidecar.catalog.payloads import *  # noqa: F403
from sidecar.envelope import EVENT_NAME_RE as EVENT_NAME_RE
from sidecar.envelope import Event as Event
from sidecar.envelope import new_event as new_event

__all__ = list(catalog.__all__)
