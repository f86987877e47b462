"""Numbers of a phase: nearest-rank percentiles and which side saturated its core."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Share of a core above which a side counts as saturated.
SATURATED = 0.85


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def saturation(
    srv: float,
    gen: float,
    cores: dict[int, float],
    irq: dict[int, float],
    server_core: int | None,
    gen_core: int | None,
) -> str:
    """Which side used up its core during a phase, in words."""
    srv_full = srv >= SATURATED
    gen_full = gen >= SATURATED
    notes = []
    if server_core is not None and gen_core is not None:  # pinned
        for core, own in ((server_core, srv), (gen_core, gen)):
            other = cores.get(core, 0.0) - own - irq.get(core, 0.0)
            if other > 0.15:
                notes.append(f"core {core} also {other:.0%} busy with other processes")
    elif srv + gen >= SATURATED * 2 * 0.9 or sum(cores.values()) >= 0.9 * len(cores):
        notes.append("unpinned: both share the cores")
    if srv_full and gen_full:
        verdict = f"both (server {srv:.0%}, load generator {gen:.0%})"
    elif srv_full:
        verdict = f"server ({srv:.0%} of a core)"
    elif gen_full:
        verdict = f"LOAD GENERATOR ({gen:.0%} of a core): the figure is a lower bound"
    else:
        verdict = f"neither (server {srv:.0%}, load generator {gen:.0%})"
    return verdict + ("; " + "; ".join(notes) if notes else "")
