"""The subscriber's rules that do not depend on a connection: backoff, which closes and which
refused handshakes are retried, and the pace of ``channel:*`` messages.

Pure functions and small values; no thread owns anything here. ``sidecar-client.js`` follows
the same rules (the shared vectors in ``tests/data/client-vectors.json`` check both).
"""

from __future__ import annotations

import math
import random as _random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import should_reconnect

__all__ = [
    "DEFAULT_BACKOFF",
    "Backoff",
    "RateLimit",
    "backoff_delay",
    "retry_after_refusal",
    "should_reconnect",
]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect timing, in seconds (the JS client's ``backoff`` option, in milliseconds there).

    ``base``: the first ceiling of the random delay; ``cap``: the largest ceiling;
    ``stable_after``: a connection that stayed open this long resets the attempt count.
    """

    base: float = 0.5
    cap: float = 20.0
    stable_after: float = 5.0


#: The defaults (the JS client's: 500 ms, 20 s, 5 s).
DEFAULT_BACKOFF = Backoff()


def backoff_delay(
    attempt: int, backoff: Backoff = DEFAULT_BACKOFF, random: Callable[[], float] = _random.random
) -> float:
    """Full jitter: uniformly random in ``[0, min(cap, base * 2 ** attempt))`` seconds.

    ``attempt`` is the number of consecutive failed attempts so far (0-based).
    """
    backoff = backoff or DEFAULT_BACKOFF
    ceiling = min(backoff.cap, backoff.base * 2 ** min(max(attempt, 0), 30))
    return random() * ceiling


#: Refused handshakes worth another try: the hub is busy (503 with ``Retry-After``: too many
#: connections, a replay budget, the broker), timed out, or failed for a moment.
_RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: The longest ``Retry-After`` honoured, in seconds (a bad header must not park a client).
MAX_RETRY_AFTER = 60.0


def retry_after_refusal(status: int, retry_after: str | None) -> float | None:
    """Whether (and when, at the earliest) to try again after the hub refused the handshake
    with HTTP ``status``: ``None`` for never, else seconds to wait at least (0: backoff only).

    401 (wrong token), 403 (origin, host), 400 (a request the hub cannot take), 404 (no hub
    there) and the rest of 4xx cannot be fixed by retrying: the subscriber stops, keeping the
    answer as its reason. 408, 429 and 5xx are retried; ``Retry-After`` (seconds) is honoured
    up to :data:`MAX_RETRY_AFTER`.
    """
    if status not in _RETRIED_STATUSES:
        return None
    try:
        wait = float(retry_after) if retry_after is not None else 0.0
    except ValueError:
        wait = 0.0
    return min(max(wait, 0.0), MAX_RETRY_AFTER) if math.isfinite(wait) else 0.0


class RateLimit:
    """At most ``limit`` messages in any ``window`` seconds (owned by one thread).

    The hub closes a connection with 1008 when it gets more than 20 ``channel:*`` messages in
    a second (measured on arrival); the client paces its own at 20 per 1.25 s, so that network
    jitter cannot bunch them up into a violation.
    """

    def __init__(self, limit: int = 20, window: float = 1.25) -> None:
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque(maxlen=limit)

    def next_allowed(self, now: float) -> float:
        """The earliest time another message may be sent (``now`` if it may go now)."""
        if len(self._sent) < self.limit:
            return now
        return max(now, self._sent[0] + self.window)

    def record(self, now: float) -> None:
        """A message was sent at ``now``."""
        self._sent.append(now)

    def clear(self) -> None:
        """A new connection: the hub counts per connection."""
        self._sent.clear()
