"""The report: the targets of issues 5, 18 and 24, the text tables and one-line summaries.

Pure functions of the report dictionary (``--json`` prints the same dictionary); no thread
owns anything here.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

from .stats import SATURATED


@dataclass(frozen=True)
class Target:
    """One row of the issue's target table."""

    label: str
    where: str  # "max", "rate", "connect", "idle"
    clients: int
    metric: str
    op: str  # "<=" or ">="
    value: float
    unit: str
    rate: float | None = None


TARGETS = (
    Target(
        "delivered msg/s, N=1000, as fast as possible",
        "max",
        1000,
        "msgs_per_s",
        ">=",
        250_000,
        "msg/s",
    ),
    Target("delivered, N=1000, as fast as possible", "max", 1000, "delivered_pct", ">=", 100, "%"),
    Target("p50 latency, N=1000, 200 ev/s", "rate", 1000, "p50_ms", "<=", 15, "ms", 200),
    Target("p99 latency, N=1000, 200 ev/s", "rate", 1000, "p99_ms", "<=", 50, "ms", 200),
    Target("delivered, N=1000, 200 ev/s", "rate", 1000, "delivered_pct", ">=", 100, "%", 200),
    Target("p99 latency, N=100, 200 ev/s", "rate", 100, "p99_ms", "<=", 5, "ms", 200),
    Target(
        "server CPU per delivery, N=1000, fixed rate",
        "rate",
        1000,
        "cpu_us_per_delivery",
        "<=",
        6,
        "µs",
    ),
    Target("RSS per idle connection, N=1000", "idle", 1000, "kib_per_conn_idle", "<=", 100, "KiB"),
    Target("connect 1000 clients, 50 in flight", "connect", 1000, "seconds", "<=", 2, "s"),
)

#: Issue 24's targets (on this machine, the same run as the previous code: compare with a
#: ``--server-root`` run of it for the relative one, CPU per delivery at N=100).
TARGETS_24 = (
    Target("p99 latency, N=1000, 200 ev/s", "rate", 1000, "p99_ms", "<=", 10, "ms", 200),
    Target("max latency, N=1000, 200 ev/s", "rate", 1000, "max_ms", "<=", 25, "ms", 200),
    Target("delivered, N=1000, 200 ev/s", "rate", 1000, "delivered_pct", ">=", 100, "%", 200),
    Target("p99 latency, N=100, 200 ev/s", "rate", 100, "p99_ms", "<=", 2.5, "ms", 200),
    Target("RSS with 1000 idle connections", "idle", 1000, "rss_idle_kib", "<=", 80, "MiB"),
    Target(
        "delivered msg/s, N=1000, as fast as possible",
        "max",
        1000,
        "msgs_per_s",
        ">=",
        2_000_000,
        "msg/s",
    ),
    Target("connect 1000 clients, 50 in flight", "connect", 1000, "seconds", "<=", 1, "s"),
)
#: Issue 18 §7: CPU per delivery over K channels against the broadcast's (same N, same
#: server), and the CPU of one event against the audience.
CHANNEL_RATIO = 1.2


def label(run: dict[str, Any]) -> str:
    """How tables name a run: its client count, its channels (``1000/10ch``), and the kind of
    server unless in-process."""
    kind = run.get("server", "in-process")
    k = run.get("channels") or 0
    return (
        f"{run['clients']}"
        + (f"/{k}ch" if k else "")
        + ("" if kind == "in-process" else f" {kind}")
    )


def find_run(
    runs: list[dict[str, Any]], clients: int, kind: str = "in-process", channels: int = 0
) -> dict[str, Any] | None:
    """The run of ``clients`` on ``channels`` (0: the default channel) with ``kind``."""
    return next(
        (
            r
            for r in runs
            if r["clients"] == clients
            and r.get("server", "in-process") == kind
            and (r.get("channels") or 0) == channels
        ),
        None,
    )


def measure(target: Target, runs: list[dict[str, Any]]) -> tuple[float | None, str]:
    """The value of ``target`` in ``runs`` (``None`` when not measured) and a note.

    The targets are the in-process sidecar's (issue 5); broker runs are reported beside them.
    """
    run = find_run(runs, target.clients)
    measured: float | None = None
    note = ""
    if run is None:
        return None, ""
    if target.where == "connect":
        conn = run.get("connect") or {}
        if conn.get("connected") == target.clients and conn.get("in_flight", 0) <= 50:
            measured = conn.get("seconds")
        elif conn:
            note = f"{conn.get('connected')} of {target.clients} connected"
    elif target.where == "idle":
        measured = (run.get("memory") or {}).get(target.metric)
        if measured is not None and target.unit == "MiB":
            measured /= 1024
    else:
        phase = (run.get("phases") or {}).get(target.where)
        if phase and target.rate is not None and phase.get("rate") != target.rate:
            note = f"run at {phase.get('rate')} ev/s, not {target.rate:g}"
        elif phase:
            if target.metric == "delivered_pct":
                measured = 100.0 * phase["delivered_fraction"]
            else:
                measured = phase.get(target.metric)
            if "LOAD GENERATOR" in phase.get("saturated", "") and target.unit == "msg/s":
                note = "load generator saturated"
    if measured is not None and isinstance(measured, float) and math.isnan(measured):
        measured = None
    return measured, note


def evaluate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured value and ``pass`` (``None`` when not measured);
    ``group`` names the issue."""
    out = []
    for group, targets in (("issue 5", TARGETS), ("issue 24", TARGETS_24)):
        for target in targets:
            measured, note = measure(target, runs)
            ok: bool | None = None
            if measured is not None:
                if target.metric == "delivered_pct":
                    ok = measured >= 100.0 - 1e-9
                elif target.op == ">=":
                    ok = measured >= target.value
                else:
                    ok = measured <= target.value
            out.append(
                {
                    "group": group,
                    "target": target.label,
                    "op": target.op,
                    "value": target.value,
                    "unit": target.unit,
                    "measured": measured,
                    "pass": ok,
                    "note": note,
                }
            )
        if group == "issue 24":
            out += [_gunicorn_memory(runs, "rss"), _gunicorn_memory(runs, "pss")]
    return out + channel_targets(runs)


def _row(
    group: str, text: str, op: str, value: float, unit: str, measured: float | None, note: str = ""
) -> dict[str, Any]:
    ok = None if measured is None else (measured <= value if op == "<=" else measured >= value)
    return {
        "group": group,
        "target": text,
        "op": op,
        "value": value,
        "unit": unit,
        "measured": measured,
        "pass": ok,
        "note": note,
    }


def _gunicorn_memory(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """RSS (or PSS: pages shared by the master and its worker counted once) with 1000 idle
    connections under gunicorn against the CLI's (issue 24)."""
    cli, gun = find_run(runs, 1000), find_run(runs, 1000, "gunicorn")
    ratio = None
    note = "needs --gunicorn"
    if cli and gun:
        a = (cli.get("memory") or {}).get(f"{kind}_idle_kib")
        b = (gun.get("memory") or {}).get(f"{kind}_idle_kib")
        ratio = b / a if a and b else None
        note = "master + worker against the CLI" if ratio else ""
    text = f"{kind.upper()}, 1000 idle, gunicorn / CLI"
    return _row("issue 24", text, "<=", 1.2, "x", ratio, note)


def channel_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 18 §7 for every kind of server: CPU per delivery over K channels within
    :data:`CHANNEL_RATIO` of the broadcast's at the fixed rate, and an event for 10
    subscribers about 1/100 of a broadcast to 1000 (CPU per event, the same ratio)."""
    out = []
    for run in runs:
        k, n, kind = run.get("channels") or 0, run["clients"], run.get("server", "in-process")
        base = find_run(runs, n, kind)
        phase = (run.get("phases") or {}).get("rate")
        ref = ((base or {}).get("phases") or {}).get("rate")
        if not k or not phase or not ref:
            continue
        where = f"{label(run)}, fixed rate"
        per_delivery = phase["cpu_us_per_delivery"] / ref["cpu_us_per_delivery"]
        text = f"CPU/delivery {where} / broadcast"
        out.append(_row("issue 18", text, "<=", CHANNEL_RATIO, "x", per_delivery))
        audience = phase.get("audience") or n / k
        per_event = phase["cpu_us_per_event"] / ref["cpu_us_per_event"]
        share = audience / (ref.get("audience") or n)
        text = f"CPU/event {where} / broadcast (audience {audience:g} of {n})"
        out.append(_row("issue 18", text, "<=", CHANNEL_RATIO * share, "x", per_event))
    return out


def fmt(value: Any, spec: str = ",.0f", missing: str = "-") -> str:
    """Format a number, or ``missing`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def table(headers: list[str], rows: list[list[str]], left: frozenset[int] = frozenset()) -> str:
    """A plain text table: columns in ``left`` left-aligned, the others right-aligned."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    out = _header(report)
    out += ["", "Connect and memory (server process)", _connect_table(report["runs"])]
    rate = report["config"]["rate"]
    for mode, title in (
        ("max", "As fast as possible (bounded window)"),
        (
            "rate",
            f"Fixed rate {rate:g} events/s (over K channels K x that, at most "
            f"{report['config'].get('channel_max_rate', 0):g})",
        ),
    ):
        phases = [
            (label(r), r["phases"][mode]) for r in report["runs"] if mode in r.get("phases", {})
        ]
        if phases:
            out += ["", title, _phase_table(phases)]
    broker = [r for r in report["runs"] if r.get("server") == "broker" and r.get("phases")]
    if broker:
        out += [
            "",
            f"Broker mode: gunicorn -w {report['config'].get('workers')} on one port, Redis",
        ]
        out.append(_broker_table(broker))
    channel_runs = [r for r in report["runs"] if r.get("channels") and r.get("phases")]
    if channel_runs:
        out += ["", "Channels (issue 18): N subscribers over K channels, events round robin"]
        out.append(_channel_table(channel_runs, report["runs"]))
    gc_rows = _gc_rows(report["runs"])
    if gc_rows:
        out += ["", "Garbage collection in the server (gc.callbacks; pauses of all processes)"]
        out.append(table(GC_COLUMNS, gc_rows, left=frozenset({1})))
    notes = _notes(report["runs"])
    if notes:
        out += ["", "Notes", *(f"  {n}" for n in notes)]
    out.append("")
    out += textwrap.wrap(LEGEND, 100)
    for group in ("issue 5", "issue 24", "issue 18"):
        rows = [t for t in report["targets"] if t.get("group", "issue 5") == group]
        if rows:
            out += ["", f"Targets ({group})", _targets_table(rows)]
    out.append("")
    out.append(
        f"load generator: {report['gen_cpu_s']:.1f} s CPU in total; run took "
        f"{report['elapsed_s']:.1f} s; status: {report['status']}"
    )
    return "\n".join(out)


LEGEND = (
    "latency = POST sent by the publisher -> frame read by a subscriber (one clock); "
    "p50/p99 from every k-th frame, max over the oldest frame of every read. "
    "srv µs/deliv = server CPU (all threads) / frames delivered. saturated = the side "
    f"using >= {SATURATED:.0%} of its core; a figure limited by the load generator is a "
    "lower bound for the server."
)


def _header(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    c = report["config"]
    busy = m.get("busy_before") or {}
    return [
        f"sidecar fan-out bench — {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, "
        f"Python {m['python']}, sidecar {report.get('server_version') or '?'}",
        f"pinning: {m['pinning']}; cores busy before the run: "
        + (", ".join(f"{k}: {v:.0%}" for k, v in sorted(busy.items())) or "?")
        + f"; load average {m['loadavg'][0]:.2f} at start",
        f"frames ~{c['frame_bytes']} B; {c['publishers']} publish connection(s), one POST in "
        f"flight on each; as fast as possible: POSTs of {c['batch']} events, window "
        f"{c['window']} events; fixed rate: {c['rate']:g} events/s for {c['duration']:g} s, "
        f"a POST every {c['tick_ms']:g} ms with the events due",
    ]


CHANNEL_COLUMNS = [
    "N/K",
    "phase",
    "subs/ch",
    "ev/s",
    "deliv/s",
    "deliv %",
    "p99 ms",
    "max ms",
    "µs/deliv",
    "x bcast",
    "µs/event",
    "x bcast",
    "channels",
    "hist MiB",
    "RSS end MiB",
]


def _channel_table(runs: list[dict[str, Any]], everything: list[dict[str, Any]]) -> str:
    """Per channel run and phase: the fan-out cost against the broadcast's (same N and kind),
    per delivery and per event, and what the hub holds afterwards."""
    rows = []
    for r in runs:
        base = find_run(everything, r["clients"], r.get("server", "in-process"))
        hub = r.get("hub_end") or {}
        for mode, p in r["phases"].items():
            ref = ((base or {}).get("phases") or {}).get(mode) or {}
            per_deliv = ref.get("cpu_us_per_delivery")
            per_event = ref.get("cpu_us_per_event")
            rate = p["events_accepted"] / p["seconds"] if p.get("seconds") else math.nan
            rows.append(
                [
                    label(r),
                    mode,
                    fmt(p.get("audience"), ",.0f"),
                    fmt(rate),
                    fmt(p["msgs_per_s"]),
                    fmt(100 * p["delivered_fraction"], ".2f"),
                    fmt(p["p99_ms"], ".2f"),
                    fmt(p["max_ms"], ".1f"),
                    fmt(p["cpu_us_per_delivery"], ".2f"),
                    fmt(p["cpu_us_per_delivery"] / per_deliv if per_deliv else None, ".2f"),
                    fmt(p.get("cpu_us_per_event"), ",.1f"),
                    fmt(p.get("cpu_us_per_event", 0) / per_event if per_event else None, ".4f"),
                    fmt(hub.get("channels"), ",d"),
                    _mib((hub.get("channelHistoryBytes") or 0) / 1024),
                    _mib((r.get("memory") or {}).get("rss_end_kib")),
                ]
            )
    return table(CHANNEL_COLUMNS, rows, left=frozenset({1}))


GC_COLUMNS = [
    "N",
    "window",
    "gen0",
    "gen1",
    "gen2",
    "gen2 ms total",
    ">= 1 ms",
    ">= 10 ms",
    "max ms",
    "frozen",
    "threshold",
]


def _gc_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """One row per run's connect burst and per phase: collections and their pauses."""
    rows = []
    for r in runs:
        windows = [("connect", r.get("gc_connect"))]
        windows += [(mode, p.get("gc")) for mode, p in (r.get("phases") or {}).items()]
        for name, g in windows:
            if not g:
                continue
            long = g.get("long") or []
            rows.append(
                [
                    label(r),
                    name,
                    fmt(g["count"][0], ",d"),
                    fmt(g["count"][1], ",d"),
                    fmt(g["count"][2], ",d"),
                    fmt(g["total_ms"][2], ".1f"),
                    fmt(len(long), "d"),
                    fmt(sum(1 for x in long if x["ms"] >= 10), "d"),
                    fmt(max((x["ms"] for x in long), default=None), ".1f", "< 1"),
                    fmt(g.get("frozen"), ",d"),
                    "/".join(str(t) for t in g.get("threshold") or []),
                ]
            )
    return rows


CONNECT_COLUMNS = [
    "N",
    "connected",
    "connect s",
    "hs p50 ms",
    "hs max ms",
    "RSS base MiB",
    "RSS idle MiB",
    "PSS idle MiB",
    "KiB/conn idle",
    "threads idle",
    "RSS end MiB",
    "KiB/conn end",
    "threads end",
    "SIGTERM→exit s",
    "got 1001",
    "objects/conn",
]


def _mib(kib: float | None) -> str:
    return fmt((kib or math.nan) / 1024, ".1f")


def _connect_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        cn = r.get("connect") or {}
        mem = r.get("memory") or {}
        shutdown = r.get("shutdown") or {}
        rows.append(
            [
                label(r),
                f"{cn.get('connected', 0)}/{r['clients']}",
                fmt(cn.get("seconds"), ".2f"),
                fmt(cn.get("handshake_p50_ms"), ".1f"),
                fmt(cn.get("handshake_max_ms"), ".1f"),
                _mib(mem.get("rss_base_kib")),
                _mib(mem.get("rss_idle_kib")),
                _mib(mem.get("pss_idle_kib")),
                fmt(mem.get("kib_per_conn_idle"), ".1f"),
                fmt(mem.get("threads_idle"), "d"),
                _mib(mem.get("rss_end_kib")),
                fmt(mem.get("kib_per_conn_end"), ".1f"),
                fmt(mem.get("threads_end"), "d"),
                fmt(shutdown.get("seconds"), ".2f"),
                fmt(shutdown.get("closed_1001"), "d"),
                fmt((r.get("objects") or {}).get("per_connection"), ".0f"),
            ]
        )
    return table(CONNECT_COLUMNS, rows)


PHASE_COLUMNS = [
    "N",
    "events",
    "deliveries",
    "msg/s",
    "deliv %",
    "p50 ms",
    "p99 ms",
    "max ms",
    "srv µs/deliv",
    "srv CPU",
    "gen CPU",
    "saturated",
]


def _phase_table(phases: list[tuple[str, dict[str, Any]]]) -> str:
    rows = [
        [
            n,
            fmt(p["events_accepted"], ",d"),
            fmt(p["received"], ",d"),
            fmt(p["msgs_per_s"]),
            fmt(100 * p["delivered_fraction"], ".2f"),
            fmt(p["p50_ms"], ".2f"),
            fmt(p["p99_ms"], ".2f"),
            fmt(p["max_ms"], ".1f"),
            fmt(p["cpu_us_per_delivery"], ".2f"),
            f"{100 * p['server_cpu_util']:.0f}%",
            f"{100 * p['gen_cpu_util']:.0f}%",
            short_saturation(p["saturated"]),
        ]
        for n, p in phases
    ]
    return table(PHASE_COLUMNS, rows)


BROKER_COLUMNS = [
    "N",
    "phase",
    "clients per worker",
    "relay lag p50",
    "relay lag max",
    "lag samples",
    "workers µs/deliv",
    "redis µs/deliv",
    "redis MiB",
    "redis keys",
]


def _broker_table(runs: list[dict[str, Any]]) -> str:
    """Per broker phase: how the clients split, the relay lag (events), CPU per delivery."""
    rows = []
    for r in runs:
        for mode, p in r["phases"].items():
            split = p.get("clients_by_worker") or {}
            rows.append(
                [
                    label(r),
                    mode,
                    "/".join(str(split[k]) for k in sorted(split)) or "-",
                    fmt(p.get("relay_lag_p50"), ",.0f"),
                    fmt(p.get("relay_lag_max"), ",d"),
                    fmt(p.get("relay_lag_samples"), "d"),
                    fmt(p["cpu_us_per_delivery"], ".2f"),
                    fmt((p.get("extra_cpu_us_per_delivery") or {}).get("redis"), ".3f"),
                    fmt((r.get("redis") or {}).get("used_memory", 0) / 2**20, ".1f"),
                    fmt((r.get("redis") or {}).get("keys"), ",d"),
                ]
            )
    return table(BROKER_COLUMNS, rows, left=frozenset({1}))


def _notes(runs: list[dict[str, Any]]) -> list[str]:
    """Everything worth a line below the tables: losses, early stops, odd exits."""
    notes = []
    reconnects = 0
    for r in runs:
        for mode, p in r.get("phases", {}).items():
            notes += _phase_notes(f"N={label(r)} {mode}", p)
            werkzeug = r.get("server", "in-process") == "in-process"
            if werkzeug and p.get("posts") and p.get("publisher_connections", 0) >= p["posts"]:
                reconnects += 1
        notes += _run_notes(r)
    if reconnects:
        notes.append(
            "every POST needed its own TCP connection: the server answers each request with "
            "'Connection: close' (Werkzeug), so each publish pays a connect and a new thread"
        )
    return notes


def _phase_notes(label: str, p: dict[str, Any]) -> list[str]:
    notes = []
    if p["missing"]:
        parts = [
            f"{v:,} {k}"
            + (f" ({p['lost_clients'][k]} clients)" if p["lost_clients"].get(k) else "")
            for k, v in p["losses"].items()
        ]
        notes.append(
            f"{label}: sent x N - received = {p['expected']:,} - {p['received']:,} = "
            f"{p['missing']:,}: " + "; ".join(parts)
        )
    if p["stopped_early"]:
        notes.append(f"{label}: {p['stopped_early']}")
    if p["integrity"]:
        notes.append(f"{label}: integrity problems: {p['integrity']}")
    if set(p["post_status"]) - {"202"}:
        notes.append(f"{label}: publish answers {p['post_status']} {p['post_errors']}")
    if "; " in p["saturated"] or "LOAD" in p["saturated"]:
        notes.append(f"{label}: saturated: {p['saturated']}")
    core = p.get("server_core")
    soft = p.get("core_irq", {}).get(str(core), 0.0) if core is not None else 0.0
    if soft >= 0.1:
        notes.append(
            f"{label}: core {core} also spent {soft:.0%} in softirq (loopback TCP "
            "delivery triggered by the server's sends; not in its CPU figure)"
        )
    if p.get("publish_lag_max_ms") and p["publish_lag_max_ms"] > 20:
        notes.append(
            f"{label}: the publisher ran up to {p['publish_lag_max_ms']:.0f} ms behind schedule"
        )
    return notes


def _run_notes(r: dict[str, Any]) -> list[str]:
    notes = []
    sd = r.get("shutdown") or {}
    if sd and (
        sd.get("closed_1001") != sd.get("clients")
        or not sd.get("exited")
        or sd.get("seconds", 0) > 3
    ):
        notes.append(
            f"N={label(r)}: after SIGTERM: {sd.get('closes')} of {sd.get('clients')} "
            f"subscribers; exited: {sd.get('exited')} ({sd.get('exit_code')}) "
            f"in {sd.get('seconds', 0):.2f} s"
        )
    ex = r.get("server_exit") or {}
    if ex and (ex.get("code") != 0 or ex.get("killed")):
        notes.append(
            f"N={label(r)}: server exit {ex.get('code')} after SIGTERM "
            f"({ex.get('seconds')} s{', killed' if ex.get('killed') else ''})"
            + (f"; its stacks: {ex['stacks']}" if ex.get("stacks") else "")
        )
    if r.get("error"):
        notes.append(f"N={label(r)}: {r['error']}")
    return notes


def _targets_table(targets: list[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        mark = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        unit = t["unit"]
        spec = "," if unit == "msg/s" else ".2f" if unit in ("ms", "µs", "s") else ".1f"
        spec = ".3f" if unit == "x" else spec
        rows.append(
            [
                t["target"],
                f"{t['op']} {fmt(t['value'], ',.0f' if t['value'] >= 1000 else 'g')} {unit}",
                fmt(t["measured"], spec + ("d" if spec == "," else ""))
                if t["measured"] is None or spec != ","
                else f"{t['measured']:,.0f}",
                mark,
                t["note"],
            ]
        )
    return table(["metric", "target", "measured", "", "note"], rows, left=frozenset({0, 3, 4}))


def short_saturation(text: str) -> str:
    """The first word of a saturation verdict."""
    head = text.split(" ", 1)[0]
    return {"LOAD": "load gen", "server": "server", "neither": "neither", "both": "both"}.get(
        head, head
    )


def phase_line(p: dict[str, Any]) -> str:
    """A one-line summary of a phase for progress output."""
    return (
        f"{p['msgs_per_s']:,.0f} msg/s, delivered {100 * p['delivered_fraction']:.2f} %, "
        f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
        f"server {p['cpu_us_per_delivery']:.2f} µs/delivery, saturated: {p['saturated']}"
    )
