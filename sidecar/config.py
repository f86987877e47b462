"""Configuration: one frozen :class:`Config`, from defaults, ``SIDECAR_*`` variables and options.

Immutable once built; shared read-only by every thread.
"""

from __future__ import annotations

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
    #: Seconds between keepalive pings; a peer that has not answered by the next one is dropped.
    ping_interval: float = 25.0
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

    def with_options(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


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
        try:
            changes[f.name] = _parse(type(default), environ[name])
        except ValueError:
            raise ValueError(
                f"{name}={environ[name]!r} is not a valid {type(default).__name__}"
            ) from None
    return replace(config, **changes)
