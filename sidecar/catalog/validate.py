"""Payload validation: catalogued shapes (with msgspec) and JSON limits, as one-line messages.

Pure functions; no thread owns anything here. Two checks, each returning ``None`` or a
message that names the offending field, e.g. ``payload.streamId: required field missing``:

* :func:`validate_payload`: a payload against the :class:`~typing.TypedDict` shape(s) of its
  catalogued type, with :func:`msgspec.convert` (extra keys are allowed: forward
  compatibility).
* :func:`json_problem`: any value against what the wire can carry: JSON types only, string
  keys, no lone surrogates, finite floats, integers within 64 bits, at most
  :data:`MAX_DEPTH` levels of nesting.

:func:`describe` turns a :class:`msgspec.ValidationError` into the same message style.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import msgspec

from .spec import CATALOG

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "describe",
    "json_problem",
    "quote",
    "validate_payload",
]

#: Deepest nesting of arrays and objects accepted in a payload (the payload object is level 1).
MAX_DEPTH = 64
#: Integers must fit in 64 bits, signed or unsigned (what msgspec, Go and most decoders take).
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1

# msgspec's messages look like "Expected `str`, got `int` - at `$.payload.name`" (or
# "... - at `key` in `$.payload`" for a mapping key); only the wording before " - at " varies.
_MESSAGE = re.compile(
    r"(?P<text>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<outer>[^`]*)`)?)?", re.DOTALL
)
_EXPECTED = re.compile(r"Expected `(?P<expected>[^`]*)`, got `(?P<got>[^`]*)`")
_FIELD = re.compile(
    r"Object (?P<kind>missing required|contains unknown) field `(?P<field>.*)`", re.DOTALL
)
_JSON_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "null": "null",
    "array": "array",
    "object": "object",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]{0,39}")
_SHAPE_KEYS: dict[type, frozenset[str]] = {
    shape: frozenset(shape.__required_keys__ | shape.__optional_keys__)  # type: ignore[attr-defined]
    for spec in CATALOG.values()
    for shape in spec.shapes
}


def quote(text: str, limit: int = 40) -> str:
    """``text`` quoted for a one-line message: escaped (``repr``) and cut to ``limit`` chars."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _json_names(types: str) -> str:
    return " or ".join(_JSON_NAMES.get(name, name) for name in types.split(" | "))


def _where(root: str, path: str | None) -> str:
    if not path or not path.startswith("$"):
        return root
    # "[...]" stands for a key msgspec does not name (inside a free-form object): stop there
    return root + path[1:].partition("[...]")[0]


def describe(error: msgspec.ValidationError, root: str) -> str:
    """``error`` as ``<root><path>: <problem>``, e.g. ``payload.seq: expected integer, got null``.

    ``root`` names what was validated (msgspec's ``$``), e.g. ``payload`` or ``events[3]``.
    """
    match = _MESSAGE.fullmatch(str(error))
    assert match is not None  # the pattern matches any text
    text, path, outer = match["text"], match["path"], match["outer"]
    if outer is not None:  # a mapping key was wrong: msgspec says "at `key` in `$...`"
        where = _where(root, outer)
        expected = _EXPECTED.fullmatch(text)
        if expected:
            return f"{where}: keys must be {_json_names(expected['expected'])}s"
        return f"{where}: a key is invalid: {text}"
    where = _where(root, path)
    if expected := _EXPECTED.fullmatch(text):
        wanted, got = _json_names(expected["expected"]), _json_names(expected["got"])
        return f"{where}: expected {wanted}, got {got}"
    if field := _FIELD.fullmatch(text):
        if field["kind"] == "missing required":
            return f"{where}.{field['field']}: required field missing"
        return f"{where}: unexpected key {quote(field['field'])}"
    if text == "Number out of range":
        return f"{where}: number out of range (larger than a 64-bit float)"
    if text == "Integer value out of range":
        return f"{where}: integer out of range (64 bits at most)"
    return f"{where}: {text[:1].lower()}{text[1:]}"


def validate_payload(event_type: str, payload: object) -> str | None:
    """Check ``payload`` against the catalogued shape(s) of ``event_type``.

    Returns None if it matches at least one shape: every required field present, every
    present field of the declared JSON type (``bool`` is not an integer, a float is not an
    integer); extra keys are allowed. Otherwise returns a one-line message naming the
    offending field, e.g. ``"payload.streamId: required field missing"``. With several shapes
    the error reported is from the closest one: the shape sharing most keys with the payload,
    then the first declared.

    Raises :class:`KeyError` if ``event_type`` is not in :data:`~sidecar.catalog.CATALOG`.
    """
    best: tuple[int, str] | None = None
    for shape in CATALOG[event_type].shapes:
        try:
            msgspec.convert(payload, shape)
        except msgspec.ValidationError as exc:
            shared = len(_SHAPE_KEYS[shape] & payload.keys()) if isinstance(payload, Mapping) else 0
            if best is None or shared > best[0]:
                best = (shared, describe(exc, "payload"))
            continue
        return None
    assert best is not None  # every spec has at least one shape
    return best[1]


def _join(where: str, key: object, in_object: bool) -> str:
    """The path of ``key`` in ``where``: ``a.b``, ``a[3]``, or ``a['odd key']`` (quoted)."""
    if not in_object:
        return f"{where}[{key}]"
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{where}.{key}"
    return f"{where}[{quote(str(key))}]"


def _scalar_problem(value: object) -> str | None:
    if type(value) is str:
        if not value.isascii() and _SURROGATE.search(value):
            return "lone surrogate in string (not valid Unicode; send the character itself)"
        return None
    if type(value) is int:
        return None if INT_MIN <= value <= INT_MAX else "integer out of range (64 bits at most)"
    if type(value) is float:
        if math.isnan(value):
            return "NaN is not a JSON number"
        return None if math.isfinite(value) else "number out of range (larger than a 64-bit float)"
    if value is None or type(value) is bool:
        return None
    return f"{type(value).__name__} is not a JSON type"


def json_problem(value: object, path: str, *, level: int = 1) -> str | None:
    """The first reason ``value`` cannot go on the wire as it is, as ``<path>...: <problem>``.

    Accepts exactly what JSON can carry and every peer can decode: ``dict`` (with ``str``
    keys), ``list``, ``str`` without lone surrogates, ``int`` within 64 bits, finite
    ``float``, ``bool`` and ``None``, nested at most :data:`MAX_DEPTH` levels. ``value`` is at
    ``level`` (a payload is level 1). Iterative: a deep value costs no recursion. ``path``
    names ``value``, e.g. ``events[2].payload``.
    """
    if type(value) is not dict and type(value) is not list:
        problem = _scalar_problem(value)
        return f"{path}: {problem}" if problem else None
    stack: list[tuple[object, str, int]] = [(value, path, level)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            where = where if len(where) <= 60 else where[:57] + "..."
            return f"{where}: nested deeper than {MAX_DEPTH} levels"
        in_object = type(node) is dict
        pairs: Iterable[tuple[object, object]]
        if type(node) is dict:
            pairs = node.items()
        else:
            assert type(node) is list
            pairs = enumerate(node)
        for key, item in pairs:
            if in_object and (type(key) is not str or _scalar_problem(key)):
                shown = quote(key) if isinstance(key, str) else repr(key)[:40]
                return f"{where}: key {shown} is not a valid string"
            if type(item) is str and item.isascii():
                continue  # the common case, checked inline
            if type(item) is dict or type(item) is list:
                stack.append((item, _join(where, key, in_object), depth + 1))
                continue
            problem = _scalar_problem(item)
            if problem:
                return f"{_join(where, key, in_object)}: {problem}"
    return None
