"""Configuration: one frozen :class:`Config`, and the table that defines every option once.

Each field of :class:`Config` carries its own metadata (:class:`Option`): help text, bounds,
and whether it has a CLI flag. From that one table come the ``sidecar serve`` argument parser
(:func:`add_arguments`), the ``SIDECAR_*`` environment loader, the Flask ``app.config``
loader, the range checks, and the table of ``docs/options.md`` (:func:`markdown_table`; a test
fails when it differs). Precedence, highest first: explicit options (CLI flags or keyword
arguments), ``app.config["SIDECAR_…"]``, ``SIDECAR_…`` variables, defaults.

Immutable once built; shared read-only by every thread.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from .protocol import TOKEN_RE

#: The seed's allowlist (its Vite/dev ports), Tauri on every OS, Electron's ``file://`` pages
#: of older versions. ``null`` (Electron ``loadFile`` today, sandboxed iframes) is never a
#: default: list it explicitly to accept it.
DEFAULT_ORIGINS: tuple[str, ...] = (
    "http://localhost:5173",
    "http://localhost:3007",
    "http://localhost:3008",
    "http://127.0.0.1:5173",
    "http://127.0.0.1:3007",
    "http://127.0.0.1:3008",
    "tauri://localhost",
    "http://tauri.localhost",
    "https://tauri.localhost",
    "file://",
)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json", "auto")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class Option:
    """How one :class:`Config` field is set and checked."""

    help: str
    #: Least allowed value, and whether that value itself is allowed.
    least: float | None = None
    inclusive: bool = True
    most: float | None = None
    choices: tuple[str, ...] | None = None
    #: ``False``: no CLI flag (the token: argv shows in ``ps``).
    flag: bool = True
    #: The value type for optional fields (``None`` default): int or str.
    kind: type | None = None
    #: How the options reference shows the default, when ``repr`` would not do.
    shown: str | None = None
    metavar: str | None = None
    #: What is wrong with a value beyond bounds and choices (``None``: nothing).
    check: Callable[[Any], str | None] | None = None
    #: A number of bytes: its text may carry a unit, as the README shows it (``16 MiB``).
    size: bool = False


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, **meta)})


MiB = 1 << 20
#: The URL schemes of a Redis broker (what redis-py's ``from_url`` takes).
BROKER_SCHEMES = ("redis", "rediss", "unix")


def broker_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a broker URL (``None``: it can be used).

    Checked here, once, so that ``--broker localhost:6379`` is one clear line everywhere
    (``serve``, ``publish``, ``EventHub``, gunicorn) rather than the driver's traceback.
    """
    example = "redis://HOST:PORT/DB, rediss://… or unix:///PATH"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        return f"has a bad port: expected {example}, got {url!r}"
    if parts.scheme.lower() not in BROKER_SCHEMES:
        return f"must be a Redis URL ({example}), got {url!r}"
    if parts.scheme.lower() == "unix" and not parts.path:
        return f"names no socket path: expected unix:///PATH, got {url!r}"
    return None


@dataclass(frozen=True)
class Config:
    """Every knob of the sidecar, with its default (see :data:`OPTIONS` for the table)."""

    host: str = _opt("127.0.0.1", "interface to bind (loopback unless told otherwise)")
    port: int = _opt(
        3008, "TCP port; 0 picks a free one (the ready line has it)", least=0, most=65535
    )
    allowed_origins: tuple[str, ...] = _opt(
        DEFAULT_ORIGINS,
        "comma-separated origins allowed to connect, replacing the defaults (`null` only if "
        "listed)",
        shown="see [Security](security.md)",
        metavar="LIST",
    )
    max_clients: int = _opt(1024, "concurrent WebSockets (503 beyond)", least=1)
    max_pending_handshakes: int = _opt(
        128, "connections still sending their request at once (503 beyond)", least=1
    )
    handshake_timeout: float = _opt(
        10.0,
        "seconds a connection has for its whole request until upgraded or answered",
        least=0,
        inclusive=False,
    )
    queue_size: int = _opt(256, "writes queued per client before it is dropped (4008)", least=1)
    max_pending_bytes: int = _opt(
        16 * MiB,
        "bytes queued per client before it is dropped (4008)",
        least=1,
        shown="16 MiB",
        size=True,
    )
    max_message_size: int = _opt(
        64 * 1024,
        "largest client message, in UTF-8 bytes (1009)",
        least=1,
        shown="64 KiB",
        size=True,
    )
    max_event_bytes: int = _opt(
        1 * MiB,
        "largest event accepted for broadcast, in bytes of JSON (413)",
        least=1,
        shown="1 MiB",
        size=True,
    )
    inbox_limit: int = _opt(
        65536, "events waiting for the hub thread before publishing is refused (503)", least=1
    )
    ping_interval: float = _opt(25.0, "seconds between keepalive pings; 0 = off", least=0)
    ping_timeout: float = _opt(
        0.0,
        "seconds a ping may go unanswered before the peer is dropped (1011); 0 = the interval",
        least=0,
        shown="the interval",
    )
    write_deadline: float = _opt(
        10.0,
        "seconds a write may make no progress before the client is dropped",
        least=0,
        inclusive=False,
    )
    close_timeout: float = _opt(
        3.0, "seconds to wait for the peer's close frame after ours", least=0, inclusive=False
    )
    history_size: int = _opt(1024, "broadcasts kept for resume; 0 = off", least=0)
    history_bytes: int = _opt(
        8 * MiB, "bytes of broadcasts kept for resume; 0 = off", least=0, shown="8 MiB", size=True
    )
    history_total_bytes: int = _opt(
        64 * MiB,
        "bytes of history over all channels (the largest windows are cut first)",
        least=0,
        shown="64 MiB",
    )
    max_channels: int = _opt(
        64, "named channels one connection may join (`channel:error` `limit` beyond)", least=0
    )
    max_channel_states: int = _opt(
        16384,
        "named channels held (position and window) before idle ones are forgotten",
        least=1,
    )
    channel_ttl: float = _opt(
        3600.0,
        "seconds a channel with no subscriber and no event is kept (then: a new epoch)",
        least=0,
        inclusive=False,
    )
    replay_rate: int = _opt(
        32 * MiB,
        "bytes of replay per second one peer address may ask for (503 beyond); 0 = off",
        least=0,
        shown="32 MiB",
        size=True,
    )
    compression: bool = _opt(False, "accept permessage-deflate (costs ~150 KiB per connection)")
    fast_path: bool = _opt(
        True, "the hub writes to clients with no backlog itself (off: always via the writer)"
    )
    gc_freeze: bool = _opt(
        True,
        "keep long-lived objects out of full garbage collections (`gc.freeze` after start-up "
        "and bursts of connections; the CLI and gunicorn workers)",
    )
    auth: bool = _opt(True, "require the token (`--no-auth`: development only)")
    token: str | None = _opt(
        None, "the shared secret (generated per launch when unset)", flag=False, kind=str
    )
    log_level: str = _opt("info", "log level", choices=LOG_LEVELS)
    log_file: str | None = _opt(
        None, "write the log to PATH instead of stderr", kind=str, metavar="PATH"
    )
    log_format: str = _opt(
        "text",
        "log lines as `text`, `json` (one object per line) or `auto` (JSON unless a terminal)",
        choices=LOG_FORMATS,
        metavar="FORMAT",
    )
    drain: float = _opt(
        0.0,
        "seconds open sessions keep being served after SIGTERM (new WebSockets get 503), then 1001",
        least=0,
        metavar="SECONDS",
    )
    parent_pid: int | None = _opt(
        None, "exit gracefully within 2 s of process PID ending", least=1, kind=int, metavar="PID"
    )
    exit_on_stdin_eof: bool = _opt(False, "exit gracefully when stdin (a pipe) closes")
    broker: str | None = _opt(
        None,
        "Redis URL of the backplane for several workers or hosts (redis://, rediss://, unix://)",
        kind=str,
        metavar="URL",
        check=broker_url_problem,
    )
    broker_prefix: str = _opt("sidecar", "prefix of the broker's Redis keys", metavar="PREFIX")
    ready_max_lag: int = _opt(
        1000,
        "relay lag, in events, beyond which `/health/ready` answers 503 (with --broker); 0 = "
        "no bound",
        least=0,
        metavar="EVENTS",
    )

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ConfigError(*problem)

    def with_options(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def effective_ping_timeout(self) -> float:
        """The ping timeout in seconds (``ping_timeout``, or the interval when it is 0)."""
        return self.ping_timeout or self.ping_interval


def option(name: str) -> Option:
    """The :class:`Option` of field ``name``."""
    return OPTIONS[name]


OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in fields(Config)}
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config) if f.default is not MISSING}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names where it came from.

    ``--queue-size must be at least 1, got 0``, ``SIDECAR_PORT='x' is not a valid int`` …
    """

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name} {detail}")
        self.name = name
        self.detail = detail

    @property
    def field(self) -> str | None:
        """The :class:`Config` field the error is about, when it names one."""
        for prefix in ("--", "SIDECAR_", 'app.config["SIDECAR_'):
            if self.name.startswith(prefix):
                candidate = self.name[len(prefix) :].split("=")[0].rstrip('"]').lower()
                candidate = candidate.replace("-", "_")
                if candidate in OPTIONS:
                    return candidate
        return None


def flag_name(name: str) -> str:
    """The CLI flag of field ``name`` (``queue_size`` → ``--queue-size``)."""
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    """The environment variable of field ``name`` (``queue_size`` → ``SIDECAR_QUEUE_SIZE``)."""
    return "SIDECAR_" + name.upper()


def _kind(name: str) -> type:
    meta = OPTIONS[name]
    return meta.kind or type(_DEFAULTS[name])


def _problem(config: Config) -> tuple[str, str] | None:
    """The first setting of ``config`` that is out of range, and what is wrong with it."""
    for name, meta in OPTIONS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if is_empty(value):
            return flag_name(name), empty_detail(name)
        if meta.check is not None and (problem := meta.check(value)) is not None:
            return flag_name(name), problem
        if meta.choices is not None and value not in meta.choices:
            return flag_name(name), f"must be one of {', '.join(meta.choices)}, got {value!r}"
        if meta.least is None and meta.most is None:
            continue
        if not math.isfinite(value):
            return flag_name(name), f"must be a finite number, got {value!r}"
        if meta.least is not None and (
            value < meta.least or (value == meta.least and not meta.inclusive)
        ):
            relation = "at least" if meta.inclusive else "more than"
            return flag_name(name), f"must be {relation} {meta.least:g}, got {value!r}"
        if meta.most is not None and value > meta.most:
            return flag_name(name), f"must be at most {meta.most:g}, got {value!r}"
    return None


def is_empty(value: Any) -> bool:
    """Whether ``value`` is empty: a blank string, or an empty origin list."""
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, tuple | list | set | frozenset) and not value


def empty_detail(name: str) -> str:
    """Why an empty value of ``name`` is refused, and what to do instead.

    One rule for every option and every source: an empty value (``SIDECAR_AUTH=``, an
    env-file line, a compose ``${VAR}`` whose VAR is unset) never stands for a setting, least
    of all for "off"; it is refused, and unsetting the variable gives the default.
    """
    if name == "token":
        return "is empty: set the token, or unset it (the CLI then generates one)"
    default = _shown_default(name)
    if "](" in default:  # a README link: say it in words
        default = "the built-in list"
    if _DEFAULTS[name] is None:
        return "is empty: give a value, or unset it"
    return f"is empty: give a value, or unset it for the default ({default})"


def parse_value(name: str, text: str) -> Any:
    """Parse the text form of field ``name`` (an env value, a flag's argument).

    Raises ``ValueError`` with a short reason (an empty text is refused: :func:`empty_detail`).
    """
    if not text.strip():
        raise ValueError(empty_detail(name))
    kind = _kind(name)
    if kind is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("is not a boolean (1/0, true/false, yes/no, on/off)")
    if kind is str:
        return text.strip().lower() if name in ("log_level", "log_format") else text
    if OPTIONS[name].size:
        return parse_size(text)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"is not a valid {kind.__name__}") from None


#: The units a size may carry (powers of 1024, as the README's option table shows them).
SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_SIZE_RE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A number of bytes from ``16MiB``, ``64 KiB``, ``1.5GiB`` or plain ``65536``.

    Raises ``ValueError`` naming the accepted forms (``16MB`` is refused: MB or MiB?).
    """
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise ValueError("is not a size: bytes, or a number with KiB, MiB or GiB (16MiB)")
    value = float(match.group(1)) * SIZE_UNITS[unit]
    if not value.is_integer():
        raise ValueError("is not a whole number of bytes")
    return int(value)


def _coerce(name: str, value: Any, label: str) -> Any:
    """``value`` from a source other than text: checked for its type, parsed if a string."""
    if is_empty(value):
        raise ConfigError(label, empty_detail(name))
    if isinstance(value, str) and _kind(name) is not str:
        try:
            return parse_value(name, value)
        except ValueError as exc:
            raise ConfigError(f"{label}={value!r}", str(exc)) from None
    if name == "allowed_origins" and isinstance(value, list | tuple | set | frozenset):
        return tuple(value)
    return value


def _source(values: Mapping[str, Any], label: Any) -> dict[str, tuple[Any, str]]:
    """The known settings in ``values`` with the label that names each one in errors."""
    changes: dict[str, tuple[Any, str]] = {}
    for name in OPTIONS:
        if name in values and values[name] is not None:
            changes[name] = (_coerce(name, values[name], label(name)), label(name))
    return changes


def _env_source(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    changes: dict[str, tuple[Any, str]] = {}
    for name in OPTIONS:
        var = env_name(name)
        if var not in environ:
            continue
        text = environ[var]
        if name == "token":
            if not text.strip():
                raise ConfigError(var, empty_detail(name))
            changes[name] = (text, var)
            continue
        try:
            changes[name] = (parse_value(name, text), var)
        except ValueError as exc:
            raise ConfigError(var if not text.strip() else f"{var}={text!r}", str(exc)) from None
    return changes


def load(
    options: Mapping[str, Any] | None = None,
    *,
    app_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """A :class:`Config` from defaults, ``environ``, ``app_config`` and ``options``.

    ``options`` are field names (``queue_size=…``; ``None`` values are ignored), ``app_config``
    keys are ``SIDECAR_<FIELD>`` as in Flask's ``app.config``. Raises :class:`ConfigError`
    naming the setting as it was given (``SIDECAR_PORT``, ``app.config["SIDECAR_PORT"]``,
    ``--port``).
    """
    environ = os.environ if environ is None else environ
    merged = _env_source(environ)
    if app_config is not None:
        picked = {n: app_config[env_name(n)] for n in OPTIONS if env_name(n) in app_config}
        merged.update(_source(picked, lambda n: f'app.config["{env_name(n)}"]'))
    unknown = sorted(set(options or {}) - set(OPTIONS))
    if unknown:
        raise ConfigError(unknown[0], "is not a sidecar option")
    merged.update(_source(options or {}, flag_name))
    try:
        return Config(**{name: value for name, (value, _label) in merged.items()})
    except ConfigError as exc:
        field_name = exc.name[2:].replace("-", "_")
        label = merged[field_name][1] if field_name in merged else exc.name
        raise ConfigError(label, exc.detail) from None


def from_env(environ: Mapping[str, str] | None = None) -> Config:
    """A :class:`Config` from defaults and ``SIDECAR_*`` variables (see :func:`load`)."""
    return load(environ=environ)


def resolve_token(config: Config, *, generate: bool) -> Config:
    """The one token policy: a usable token, a generated one, or a clear refusal.

    With ``auth`` off there is no token. A given token must be sendable in every documented
    way (subprotocol, bearer, query): 1-256 of letters, digits and ``-._~``. Without one,
    ``generate`` makes a fresh one (the CLI: one per launch); otherwise it is an error (an app
    or a WSGI server must be told its token).
    """
    if not config.auth:
        return replace(config, token=None)
    if config.token:
        if TOKEN_RE.fullmatch(config.token) is None:
            raise ConfigError(
                "SIDECAR_TOKEN",
                "must be 1-256 of letters, digits and -._~ (it travels as a subprotocol, a "
                "bearer token and a query value)",
            )
        return config
    if generate:
        return replace(config, token=secrets.token_urlsafe(32))
    raise ConfigError(
        "SIDECAR_TOKEN",
        "is not set: set it (or pass token=…), or turn authentication off explicitly "
        "(auth=False, --no-auth, SIDECAR_AUTH=0) for local development",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every option that has one (values stay ``None`` unless given)."""
    for name, meta in OPTIONS.items():
        if not meta.flag:
            continue
        default = _DEFAULTS[name]
        kind = _kind(name)
        if kind is bool:
            flag = flag_name(name) if default is False else f"--no-{name.replace('_', '-')}"
            parser.add_argument(
                flag, dest=name, action="store_const", const=not default, help=meta.help
            )
            continue
        parser.add_argument(
            flag_name(name),
            dest=name,
            metavar=meta.metavar or name.upper(),
            choices=meta.choices,
            type=_parser_type(name),
            help=f"{meta.help} ({env_name(name)})",
        )


def _parser_type(name: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return parse_value(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None

    parse.__name__ = _kind(name).__name__
    return parse


def _shown_default(name: str) -> str:
    meta = OPTIONS[name]
    if meta.shown is not None:
        return meta.shown
    default = _DEFAULTS[name]
    if default is None:
        return "-"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default:g}" if isinstance(default, float) else str(default)


def markdown_table() -> str:
    """The options reference's table (``docs/options.md``), generated from :data:`OPTIONS`."""
    rows = ["| option | variable | default | meaning |", "|---|---|---|---|"]
    for name, meta in OPTIONS.items():
        default = _DEFAULTS[name]
        if not meta.flag:
            flag = "-"
        elif isinstance(default, bool) and default:
            flag = f"`--no-{name.replace('_', '-')}`"
        else:
            flag = f"`{flag_name(name)}`"
        rows.append(f"| {flag} | `{env_name(name)}` | {_shown_default(name)} | {meta.help} |")
    return "\n".join(rows) + "\n"
