"""Idempotency keys of a hub without a broker: which publishes already happened, for a while.

A publisher that retries after an answer it could not read (a timeout, a dropped connection)
sends the same idempotency key again; the hub then answers with the seqs the first publish
got instead of broadcasting the events twice. With a broker, Redis keeps the keys instead
(``publish.lua``); this is the same rule in one process.

:class:`RecentKeys` is bounded twice: a key is forgotten ``window`` seconds after its publish,
and at most ``max_keys`` are held (the oldest go first). It is not thread-safe by itself: the
:class:`~sidecar.core.stream.LocalSequencer` uses it under its lock, the lock under which it
numbers, so that checking a key and publishing with it are one step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..protocol import IdempotencyKeyReused, PublishedSeqs


class RecentKeys:
    """Keys of recent publishes, each with the seqs its publish got (each item's, in order)."""

    def __init__(self, window: float, max_keys: int, clock: Callable[[], float]) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        # key -> (forget at, seqs); in the order published (the window is fixed, so also in
        # the order they expire)
        self._keys: OrderedDict[str, tuple[float, tuple[int, ...]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def recall(self, key: str, count: int) -> PublishedSeqs | None:
        """The seqs of the publish that used ``key`` within the window, or ``None``.

        Raises :class:`IdempotencyKeyReused` when that publish had another number of events
        than ``count``: the key names another batch.
        """
        self._expire()
        seen = self._keys.get(key)
        if seen is None:
            return None
        _until, published = seen
        if len(published) != count:
            raise IdempotencyKeyReused(
                f"idempotency key {key} was used for a batch of {len(published)} events, "
                f"not {count}"
            )
        seqs = PublishedSeqs(published)
        seqs.duplicate = True
        return seqs

    def remember(self, key: str, seqs: Sequence[int]) -> None:
        """Record that ``key`` published events that got ``seqs``."""
        self._keys[key] = (self._clock() + self.window, tuple(seqs))
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def clear(self) -> None:
        """Forget every key (the hub's numbering started again)."""
        self._keys.clear()

    def _expire(self) -> None:
        now = self._clock()
        while self._keys:
            until = next(iter(self._keys.values()))[0]
            if until > now:
                return
            self._keys.popitem(last=False)
