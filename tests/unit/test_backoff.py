"""The relay's :class:`~sidecar.broker.relay.Backoff`: pure arithmetic, no I/O and no fakes.

The relay's tests (tests/test_relay.py) show the backoff growing, capped and reset through
real outages of a real redis-server, with timing bounds; those cannot tell a factor of 2 from
3, or the jitter's exact range, which many draws of the real ``random`` pin here.
"""

from __future__ import annotations

from sidecar.broker.relay import Backoff


def test_backoff_doubles_up_to_its_cap_with_jitter_from_half_to_all() -> None:
    draws = [[b.next() for _ in range(4)] for b in (Backoff(0.1, 0.4) for _ in range(200))]
    for step, full in enumerate([0.1, 0.2, 0.4, 0.4]):
        column = [delays[step] for delays in draws]
        assert full / 2 <= min(column) and max(column) <= full
        # spread over the whole range (each bound fails by chance with p = 0.8 ** 200)
        assert min(column) < 0.6 * full and max(column) > 0.9 * full


def test_backoff_resets_to_low_and_its_cap_is_at_least_low() -> None:
    backoff = Backoff(0.1, 0.4)
    for _ in range(3):
        backoff.next()
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1
    assert Backoff(0.5, 0.1).high == 0.5
