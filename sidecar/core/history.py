"""The replay window of one channel: its last frames, bounded by count and by bytes.

Owned by the hub thread (no locks): only it appends, trims and reads. What other threads may
see is :attr:`History.span`, an immutable tuple replaced after each change (a single
assignment), used to estimate the cost of a replay before a connection is accepted.

Each frame is kept with its channel ``seq`` and its global position ``pos``, so that the
replays of several channels merge into the one order they were published in.
"""

from __future__ import annotations

from collections import deque


class History:
    """The last ``max_events`` frames and at most ``max_bytes`` bytes of them (0: none kept)."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._frames: deque[tuple[int, int, bytes]] = deque()
        self.total_bytes = 0
        #: ``(first seq, last seq, total bytes)`` of the window, or ``None`` when empty.
        self.span: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def enabled(self) -> bool:
        """Whether anything is kept at all."""
        return self.max_events > 0 and self.max_bytes > 0

    def append(self, seq: int, frame: bytes, pos: int | None = None) -> int:
        """Keep ``frame`` (event ``seq`` at position ``pos``, default ``seq``), dropping the
        oldest beyond the bounds; returns the change in :attr:`total_bytes`.

        ``seq`` must follow the last one kept (otherwise the window restarts at it); one frame
        larger than ``max_bytes`` empties the window.
        """
        if not self.enabled:
            return 0
        before = self.total_bytes
        kept = self._frames
        if kept and kept[-1][0] + 1 != seq:
            self.clear()
        kept.append((seq, seq if pos is None else pos, frame))
        self.total_bytes += len(frame)
        while len(kept) > self.max_events or self.total_bytes > self.max_bytes:
            self.total_bytes -= len(kept.popleft()[2])
        self._publish()
        return self.total_bytes - before

    def trim_to(self, max_bytes: int) -> int:
        """Drop the oldest frames until at most ``max_bytes`` are kept; the bytes freed."""
        before = self.total_bytes
        kept = self._frames
        while kept and self.total_bytes > max_bytes:
            self.total_bytes -= len(kept.popleft()[2])
        self._publish()
        return before - self.total_bytes

    def _publish(self) -> None:
        kept = self._frames
        self.span = (kept[0][0], kept[-1][0], self.total_bytes) if kept else None

    def clear(self) -> int:
        """Forget everything (a new epoch, a broken sequence); the bytes freed."""
        freed = self.total_bytes
        self._frames.clear()
        self.total_bytes = 0
        self.span = None
        return freed

    def after(self, seq: int) -> tuple[bytes, ...] | None:
        """The frames of every event after ``seq``, shared not copied; ``None`` if the window
        no longer reaches back to ``seq + 1``. ``seq`` must not be ahead of the last event.
        """
        entries = self.entries_after(seq)
        return None if entries is None else tuple(frame for _pos, frame in entries)

    def entries_after(self, seq: int) -> tuple[tuple[int, bytes], ...] | None:
        """:meth:`after` with each frame's position: ``((pos, frame), …)``."""
        kept = self._frames
        if not kept:
            return None
        first, last = kept[0][0], kept[-1][0]
        if seq >= last:
            return ()
        if seq + 1 < first:
            return None
        return tuple((kept[i][1], kept[i][2]) for i in range(seq + 1 - first, len(kept)))
