"""``--plot``: a PNG of delivered msg/s and latency against the client count (matplotlib)."""

from __future__ import annotations

from typing import Any

from . import BenchError


def plot(report: dict[str, Any], path: str) -> None:
    """Write a PNG: delivered msg/s (as fast as possible) and latency (fixed rate) against N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib: run through scripts/bench (it installs it into .venv) "
            "or .venv/bin/pip install matplotlib"
        ) from None
    runs = [r for r in report["runs"] if r.get("server", "in-process") == "in-process"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    maxes = [(r["clients"], r["phases"]["max"]) for r in runs if "max" in r.get("phases", {})]
    if maxes:
        ax1.plot(
            [n for n, _ in maxes], [p["msgs_per_s"] for _, p in maxes], "o-", label="delivered"
        )
        capped = [(n, p) for n, p in maxes if "LOAD" in p["saturated"]]
        if capped:
            ax1.plot(
                [n for n, _ in capped],
                [p["msgs_per_s"] for _, p in capped],
                "o",
                ms=13,
                mfc="none",
                color="tab:red",
                label="load generator saturated (lower bound)",
            )
    batch = report["config"]["batch"]
    ax1.set_title(f"As fast as possible (POSTs of {batch} events)")
    ax1.plot([1000], [250_000], "*", color="grey", ms=12, label="target (≥ at N=1000)")
    ax1.yaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v / 1000:,.0f} k")
    )
    ax1.set_ylabel("messages delivered/s")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    rate = report["config"]["rate"]
    for mode, style, label in (
        ("rate", "-", f"{rate:g} ev/s"),
        ("max", ":", "as fast as possible"),
    ):
        ph = [(r["clients"], r["phases"][mode]) for r in runs if mode in r.get("phases", {})]
        if not ph:
            continue
        ns = [n for n, _ in ph]
        for key, marker in (("p50_ms", "o"), ("p99_ms", "s")):
            ax2.plot(ns, [p[key] for _, p in ph], marker + style, label=f"{key[:3]} {label}")
    ax2.plot([100, 1000, 1000], [5, 15, 50], "x", color="grey", ms=9, label="targets (≤, 200 ev/s)")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency, ms (publish → receipt)")
    ax2.set_title("End-to-end latency")
    ax2.legend(fontsize=8)
    ticks = sorted({r["clients"] for r in runs} | {1000})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("subscribers (N)")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"sidecar fan-out: {m['cores']} cores, {m['pinning']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
