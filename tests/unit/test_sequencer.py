"""The local sequencer on its own: epochs, the bound on channels held, and forgetting.

What is checked is what a publisher and a subscriber see: the seqs and epochs it hands out,
and when it refuses (``PublishRefused``) for want of room.
"""

from __future__ import annotations

import re

import pytest

from sidecar.core.stream import Delivered, LocalSequencer, Position, new_epoch
from sidecar.protocol import PublishRefused

#: What an epoch looks like on the wire (11 characters of the URL-safe alphabet).
EPOCH = re.compile(r"[A-Za-z0-9_-]{11}")


def make(max_channels: int = 2) -> tuple[LocalSequencer, list[tuple[Delivered, ...]]]:
    handed: list[tuple[Delivered, ...]] = []
    return LocalSequencer("e", lambda _epoch, items: handed.append(items), max_channels), handed


def test_a_new_epoch_is_eleven_url_safe_characters_and_new_each_time() -> None:
    epochs = {new_epoch() for _ in range(50)}
    assert len(epochs) == 50 and all(EPOCH.fullmatch(epoch) for epoch in epochs)
    sequencer, _handed = make()
    assert EPOCH.fullmatch(sequencer.heads(["a:1"])[0].epoch)


def test_positions_beyond_the_channel_bound_are_refused() -> None:
    sequencer, _handed = make(max_channels=2)
    first = sequencer.heads(["a:1", "b:1"])
    assert [p.seq for p in first] == [0, 0] and first[0].epoch != first[1].epoch
    with pytest.raises(PublishRefused, match="too many channels"):
        sequencer.heads(["c:1"])
    assert sequencer.heads(["a:1", ""]) == [first[0], Position("e", 0)]  # known ones still are
    assert sequencer.held() == 2


def test_one_batch_creating_more_channels_than_there_is_room_for_is_refused_whole() -> None:
    sequencer, handed = make(max_channels=2)
    with pytest.raises(PublishRefused, match="too many channels"):
        sequencer.publish_items([("a:1", b"{}"), ("b:1", b"{}"), ("c:1", b"{}")])
    assert handed == [] and sequencer.held() == 0
    assert sequencer.publish_items([("a:1", b"{}"), ("b:1", b"{}"), ("a:1", b"{}")]) == [1, 1, 2]


def test_the_default_channel_is_never_forgotten_and_an_unknown_one_is_gone_already() -> None:
    sequencer, _handed = make()
    sequencer.publish_items([("", b"{}")])
    assert not sequencer.forget("", Position("e", 1))
    assert sequencer.publish_items([("", b"{}")]) == [2]  # numbering goes on
    assert sequencer.forget("nobody:1", Position("x", 0))
