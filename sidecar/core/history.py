"""The replay window: the last broadcast frames, bounded by count and by bytes.

Owned by the hub thread (no locks): only it appends and reads. What other threads may see is
:attr:`History.span`, an immutable tuple replaced after each change (a single assignment),
used to estimate the cost of a replay before a connection is accepted.
"""

from __future__ import annotations

from collections import deque


class History:
    """The last ``max_events`` frames and at most ``max_bytes`` bytes of them (0: none kept)."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._frames: deque[tuple[int, bytes]] = deque()
        self.total_bytes = 0
        #: ``(first seq, last seq, total bytes)`` of the window, or ``None`` when empty.
        self.span: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def enabled(self) -> bool:
        """Whether anything is kept at all."""
        return self.max_events > 0 and self.max_bytes > 0

    def append(self, seq: int, frame: bytes) -> None:
        """Keep ``frame`` (whose event is ``seq``), dropping the oldest beyond the bounds.

        ``seq`` must follow the last one kept; one frame larger than ``max_bytes`` empties
        the window.
        """
        if not self.enabled:
            return
        kept = self._frames
        if kept and kept[-1][0] + 1 != seq:
            self.clear()
        kept.append((seq, frame))
        self.total_bytes += len(frame)
        while len(kept) > self.max_events or self.total_bytes > self.max_bytes:
            self.total_bytes -= len(kept.popleft()[1])
        self.span = (kept[0][0], kept[-1][0], self.total_bytes) if kept else None

    def clear(self) -> None:
        """Forget everything (a new epoch, a broken sequence)."""
        self._frames.clear()
        self.total_bytes = 0
        self.span = None

    def after(self, seq: int) -> tuple[bytes, ...] | None:
        """The frames of every event after ``seq``, shared not copied; ``None`` if the window
        no longer reaches back to ``seq + 1``. ``seq`` must not be ahead of the last event.
        """
        kept = self._frames
        if not kept:
            return None
        first, last = kept[0][0], kept[-1][0]
        if seq >= last:
            return ()
        if seq + 1 < first:
            return None
        return tuple(kept[i][1] for i in range(seq + 1 - first, len(kept)))
