"""Configuration: one frozen :class:`Config`, from defaults, ``SIDECAR_*`` variables and options.

Immutable once built; shared read-only by every thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

#: The seed's allowlist (its Vite/dev ports, Tauri and file origins) in both host forms.
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


@dataclass(frozen=True)
class Config:
    """Every knob of the sidecar, with its default."""

    host: str = "127.0.0.1"
    port: int = 3008
    allowed_origins: tuple[str, ...] = DEFAULT_ORIGINS
    #: Frames (or batches of frames) waiting per client before it is dropped as slow.
    queue_size: int = 256
    #: Bytes waiting per client before it is dropped as slow.
    max_pending_bytes: int = 16 << 20
    #: Largest client→server message, in bytes (larger: close 1009).
    max_message_size: int = 64 * 1024
    #: Seconds between keepalive pings (0 = off).
    ping_interval: float = 25.0
    #: Seconds a ping may go unanswered before the peer is dropped (1011); 0 = the interval.
    ping_timeout: float = 0.0
    #: Seconds a write may make no progress before the client is dropped.
    write_deadline: float = 10.0
    #: Seconds to wait for the peer's close frame after ours.
    close_timeout: float = 3.0
    log_level: str = "info"
    #: Broadcasts kept for resume (count and bytes); 0 turns history off.
    history_size: int = 1024
    history_bytes: int = 8 << 20
    #: Largest event the hub accepts for broadcast, in bytes of JSON.
    max_event_bytes: int = 1 << 20
    #: Shared secret for every authenticated route; ``None`` with ``auth`` on: generate one.
    token: str | None = None
    #: ``False`` (``--no-auth``) turns the token checks off, for local development only.
    auth: bool = True
    #: Concurrent WebSocket sessions; more are answered 503 before the upgrade.
    max_clients: int = 1024
    #: Seconds a client may take to send its request head (slowloris guard).
    handshake_timeout: float = 10.0
    #: Accept permessage-deflate when a client offers it (costs ~150 KiB per connection).
    compression: bool = False
    #: The hub writes frames itself when a client has no backlog. ``False`` sends every frame
    #: through the client's writer thread: the literal design, kept to measure against.
    fast_path: bool = True

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ConfigError(*problem)

    def with_options(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Lower bounds: (field, least value, whether the least value itself is allowed).
_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    ("port", 0, True),
    ("queue_size", 1, True),
    ("max_pending_bytes", 1, True),
    ("max_message_size", 1, True),
    ("ping_interval", 0, True),
    ("ping_timeout", 0, True),
    ("write_deadline", 0, False),
    ("close_timeout", 0, False),
    ("history_size", 0, True),
    ("history_bytes", 0, True),
    ("max_event_bytes", 1, True),
    ("max_clients", 1, True),
    ("handshake_timeout", 0, False),
)
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting out of range; the message names the option (``--queue-size must be …``)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"--{field.replace('_', '-')} {detail}")
        self.field = field
        self.detail = detail


def _problem(config: Config) -> tuple[str, str] | None:
    """The first setting of ``config`` out of range, and what is wrong with it."""
    for name, least, inclusive in _BOUNDS:
        value = getattr(config, name)
        if not math.isfinite(value):
            return name, f"must be a finite number, got {value!r}"
        if value < least or (value == least and not inclusive):
            relation = "at least" if inclusive else "more than"
            return name, f"must be {relation} {least:g}, got {value!r}"
    if config.port > 65535:
        return "port", f"must be at most 65535, got {config.port!r}"
    if config.log_level not in LOG_LEVELS:
        return "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}"
    return None


def _parse(kind: type, text: str) -> Any:
    if kind is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    return kind(text)


def from_env(environ: Mapping[str, str] | None = None, base: Config | None = None) -> Config:
    """Apply ``SIDECAR_<FIELD>`` variables (e.g. ``SIDECAR_PORT=0``) on top of ``base``.

    Raises ``ValueError`` naming the variable when a value does not parse.
    """
    environ = os.environ if environ is None else environ
    config = base or Config()
    changes: dict[str, Any] = {}
    for f in fields(Config):
        name = f"SIDECAR_{f.name.upper()}"
        if name not in environ:
            continue
        default = getattr(config, f.name)
        if f.name == "token":
            changes["token"] = environ[name] or None
            continue
        if f.name == "log_level":
            changes["log_level"] = environ[name].strip().lower()
            continue
        try:
            changes[f.name] = _parse(type(default), environ[name])
        except ValueError:
            raise ValueError(
                f"{name}={environ[name]!r} is not a valid {type(default).__name__}"
            ) from None
    try:
        return replace(config, **changes)
    except ConfigError as exc:
        if exc.field not in changes:
            raise
        raise ValueError(f"SIDECAR_{exc.field.upper()} {exc.detail}") from None
