"""The event catalog: names, payload shapes, constructors, validation, publishing, codegen.

No threads, no state: pure functions and values (``codegen.main`` also writes files). This
layer imports :mod:`sidecar.envelope`, :mod:`sidecar.protocol` and libraries (msgspec), never
the web layer or the hub core.

* :mod:`.names`: one constant per event type, ``namespace:kebab-case``.
* :mod:`.payloads`: one :class:`~typing.TypedDict` per payload, keys as on the wire.
* :mod:`.constructors`: ``new_*_event(...)``, the seed's ``New…Event`` pattern.
* :mod:`.spec`: :data:`CATALOG`, each type with its direction and shape(s).
* :mod:`.validate`: :func:`validate_payload` (msgspec) and :func:`json_problem`.
* :mod:`.publish`: :func:`parse_publish_body`, :func:`validate_items`, :class:`PublishError`.
* :mod:`.codegen`: :func:`json_schema` and the generated files (``sidecar schema``).
"""

from . import constructors, names, payloads
from .codegen import json_schema
from .constructors import *  # noqa: F403  (each module's __all__ is its public part)
from .names import *  # noqa: F403
from .payloads import *  # noqa: F403
from .publish import MAX_BATCH, Publication, PublishError, parse_publish_body, validate_items
from .spec import CATALOG, Direction, EventSpec
from .validate import MAX_DEPTH, json_problem, validate_payload

__all__ = [
    "CATALOG",
    "MAX_BATCH",
    "MAX_DEPTH",
    "Direction",
    "EventSpec",
    "Publication",
    "PublishError",
    "json_problem",
    "json_schema",
    "parse_publish_body",
    "validate_items",
    "validate_payload",
]
__all__ += names.__all__
__all__ += payloads.__all__
__all__ += constructors.__all__
