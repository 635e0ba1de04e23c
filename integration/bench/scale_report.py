"""The ``scale`` part's report: Markdown tables and a plot from results.json.

    python -m integration.bench.scale_report results.json [--readme README.md] [--no-plot]

makes results.md and results.png again beside a results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from integration.bench import etcd_cost
from integration.bench import scale_measure as sm
from integration.bench.report import finish_figure, provenance, replace_block, write_files

BLOCK = "bench-scale"  # the README's generated block


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _bounds(histogram: dict[str, dict[str, float]] | None) -> str:
    """p50 / p99 of etcd's unary requests as its histogram bounds them (every
    method together): "<= 5 / <= 25 ms of 874"; its buckets start at 5 ms."""
    merged: dict[float, float] = {}
    for buckets in (histogram or {}).values():
        for bound, count in buckets.items():
            merged[float(bound)] = merged.get(float(bound), 0.0) + count
    if merged.get(math.inf, 0.0) <= 0:
        return "-"
    p50, p99 = (sm.bucket_quantile(merged, q) for q in (0.5, 0.99))
    return f"<= {p50 * 1000:g} / <= {p99 * 1000:g} ms of {merged[math.inf]:.0f}"


def steps_table(results: dict[str, Any]) -> str:
    lines = [
        "| clusters | sidecars | etcd CPU, % of a core (3 members) | etcd RSS, MiB (3 members) "
        "| requests/s, all | per sidecar | raft writes/s | Range p50 / p99, ms (timed) "
        "| unary requests p50 / p99 (etcd's histogram) | client connections to etcd "
        "| sidecars' CPU, % of a core (all) | sidecars' RSS, MiB (all) |",
        "|" + "---:|" * 12,
    ]
    for s in results["steps"]:
        c = s["cost"]
        lines.append(
            f"| {s['clusters']} | {s['sidecars']} | {s['etcd']['core_percent']:.1f} "
            f"| {s['etcd']['rss_mib']:.0f} | {c['requests_per_s'] * s['sidecars']:.1f} "
            f"| {c['requests_per_s']:.2f} | {c['writes_per_s'] * s['sidecars']:.2f} "
            f"| {s['reads']['p50_ms']:.2f} / {s['reads']['p99_ms']:.2f} "
            f"| {_bounds(s['histogram'])} "
            f"| {s['etcd_connections']} | {s['sidecar_core_percent']:.1f} "
            f"| {s['sidecar_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def _all_sidecars(cost: dict[str, Any], sidecars: int) -> dict[str, Any]:
    """A per-sidecar cost times the number of sidecars: what etcd served in all."""
    out = {k: v * sidecars for k, v in cost.items() if k.endswith("_per_s") or k == "watch_streams"}
    out["requests"] = {k: v * sidecars for k, v in cost["requests"].items()}
    return out


def kinds_table(results: dict[str, Any]) -> str:
    """Requests per second by kind, per sidecar and in all, a pair of columns per step."""
    columns = {}
    for s in results["steps"]:
        columns[f"K = {s['clusters']}: per sidecar"] = s["cost"]
        columns[f"K = {s['clusters']}: all"] = _all_sidecars(s["cost"], s["sidecars"])
    return etcd_cost.table(columns).replace("| per sidecar, per second |", "| per second |", 1)


def _handoffs(step: dict[str, Any], field: str) -> list[float]:
    return [float(h[field]) for h in step["handoffs"] if h.get(field) is not None]


def handoff_table(results: dict[str, Any]) -> str:
    lines = [
        "| clusters | switchovers | ordinary client: promotion -> first write, ms "
        "(median / p95 / max) | vs one cluster (medians) | VIP configured, ms after the "
        "promotion (median) | etcd's unary requests during the switchovers, p50 / p99 "
        "| double holders | writes acknowledged by a non-primary |",
        "|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    steps = results["steps"]
    idle = _handoffs(steps[0], "ordinary_write_ms") if steps else []
    for s in steps:
        values = _handoffs(s, "ordinary_write_ms")
        summary = sm.handoff_summary(values)
        spread = "-" if summary is None else (
            f"{summary['median_ms']:.0f} / {summary['p95_ms']:.0f} / {summary['max_ms']:.0f}"
        )  # fmt: skip
        ratio = sm.handoff_ratio(idle, values)
        vip = sm.handoff_summary(_handoffs(s, "vip_ms"))
        vs = "-" if ratio is None else f"x{ratio:.2f}"
        vip_ms = "-" if vip is None else f"{vip['median_ms']:.0f}"
        lines.append(
            f"| {s['clusters']} | {len(s['handoffs'])} | {spread} | {vs} | {vip_ms} "
            f"| {_bounds(s.get('handoff_histogram'))} "
            f"| {sum(len(h['double_holders']) for h in s['handoffs'])} "
            f"| {sum(len(h['misdirected']) for h in s['handoffs'])} |"
        )
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> str:
    """The issue's goal for the hand-off: loaded within 20 % of idle."""
    steps = results["steps"]
    if len(steps) < 2:
        return "Hand-off goal: not measured (fewer than two steps)."
    idle, loaded = steps[0], steps[-1]
    ratio = sm.handoff_ratio(
        _handoffs(idle, "ordinary_write_ms"), _handoffs(loaded, "ordinary_write_ms")
    )
    if ratio is None:
        return "Hand-off goal: not measured (no completed switchover in a step)."
    met = "met" if ratio <= sm.GOAL_RATIO else "**not met**"
    return (
        f"Hand-off goal (with {loaded['clusters']} clusters, the median within "
        f"{(sm.GOAL_RATIO - 1) * 100:.0f}% of one cluster's): x{ratio:.2f}, {met}."
    )


def capacity_table(results: dict[str, Any]) -> str:
    """Clusters per etcd size, from the largest step's cost per sidecar."""
    last = results["steps"][-1]
    rate = last["cost"]["requests_per_s"]
    lines = [
        f"From the idle cost per sidecar with {last['clusters']} clusters ({rate:.2f} "
        "requests/s), three sidecars per cluster, and etcd's example hardware "
        "configurations ([Hardware recommendations](https://etcd.io/docs/v3.4/op-guide/"
        "hardware/)): a cluster of three sidecars is three clients.",
        "",
        "| etcd size (etcd's guidance) | vCPUs, memory | clusters by clients | "
        "clusters by requests/s | clusters |",
        "|---|---|---:|---:|---:|",
    ]
    for row in sm.capacity(rate):
        lines.append(
            f"| {row['tier']}: < {row['clients']} clients, < {row['requests_per_s']} "
            f"requests/s | {row['vcpus']}, {row['memory_gb']} GB | {row['by_clients']} "
            f"| {row['by_requests']} | **{row['clusters']}** ({row['bound']}) |"
        )
    slope = sm.per_cluster(results["steps"])
    if slope["core_percent"] is not None:
        per = slope["core_percent"]
        cores = f"{100 / per:.0f} clusters per core of etcd CPU" if per > 0 else "no growth"
        lines += [
            "",
            f"Measured growth per cluster (least squares over the steps): etcd CPU "
            f"{_fmt(per, 2)}% of a core (three members together; {cores}), RSS "
            f"{_fmt(slope['rss_mib'], 2)} MiB, {_fmt(slope['requests_per_s'], 2)} requests/s, "
            f"{_fmt(slope['writes_per_s'], 3)} raft writes/s.",
        ]
    return "\n".join(lines)


def settings_text(results: dict[str, Any]) -> str:
    o = results["options"]
    return (
        f"Settings: clusters {', '.join(str(k) for k in o['steps'])} (three sidecars each, "
        f"one per node, all watching the node's one database); dbvip at its defaults "
        f"(ttl_s 10, renew_interval_s 2, probe_interval_s 0.2, no reader VIPs, failsafe off); "
        f"etcd {results['versions']['etcd']}, three members in one namespace with "
        f"`{' '.join(o['etcd_args'])}`; idle windows of {o['window_s']:g} s, each "
        f"{o['quiet_s']:g} s after every cluster was settled (no client, no monitor); "
        f"{o['range_reads']} timed Range reads per step (the client: this harness, one "
        f"request at a time through the JSON gateway, members in turn); "
        f"{o['repetitions']} switchovers per step (the client: the failover benchmark's "
        f"ordinary client, one connection attempt at a time, a write every "
        f"{o['client_interval_s'] * 1000:.0f} ms, beside its overlapping client and the "
        f"invariant monitor), each {o['quiet_s']:g} s after the previous one settled."
    )


def markdown(results: dict[str, Any], plot_name: str | None = "results.png") -> str:
    steps = results["steps"]
    runs = f"clusters {', '.join(str(s['clusters']) for s in steps) or 'none'}"
    parts = ["### Many clusters on one etcd", "", provenance(results, runs), ""]
    if results["errors"]:
        parts += ["**Errors:** " + "; ".join(results["errors"]), ""]
    if not steps:
        return "\n".join([*parts, "No step completed."]) + "\n"
    parts += ["#### etcd at steady state (idle)", "", steps_table(results), ""]
    parts += ["#### Requests by kind (idle)", "", kinds_table(results), ""]
    parts += ["#### Hand-off in cluster 0 while the others run", "", handoff_table(results), ""]
    parts += [verdict(results), "", "#### How many clusters one etcd serves", ""]
    parts += [capacity_table(results), "", settings_text(results), ""]
    if plot_name:
        parts += [f"![many clusters on one etcd]({plot_name})", ""]
    return "\n".join(parts)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    steps = results["steps"]
    ks = [s["clusters"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].plot(ks, [s["etcd"]["core_percent"] for s in steps], "o-", label="etcd (3 members)")
    axes[0].plot(ks, [s["sidecar_core_percent"] for s in steps], "s--", label="all sidecars")
    axes[0].set(xlabel="clusters", ylabel="% of one core", title="CPU at idle")
    axes[0].legend(fontsize=8)
    axes[1].plot(ks, [s["cost"]["requests_per_s"] * s["sidecars"] for s in steps], "o-",
                 label="requests/s")  # fmt: skip
    axes[1].plot(ks, [s["reads"]["p99_ms"] for s in steps], "s--", label="Range p99, ms")
    axes[1].set(xlabel="clusters", title="etcd requests (idle) and read latency")
    axes[1].legend(fontsize=8)
    data = [_handoffs(s, "ordinary_write_ms") or [math.nan] for s in steps]
    axes[2].boxplot(data)
    axes[2].set_xticks(range(1, len(ks) + 1), [str(k) for k in ks])
    title = "switchover: promotion -> first write\n(ordinary client, cluster 0)"
    axes[2].set(xlabel="clusters", ylabel="ms", title=title)
    finish_figure(fig, path, "Many dbvip clusters on one etcd", results, top=0.88)


def write(results: dict[str, Any], out_dir: Path, with_plot: bool = True) -> list[Path]:
    return write_files(results, out_dir, with_plot, plot, markdown)


def refresh(readme: Path, results: dict[str, Any], png: str | None) -> None:
    replace_block(readme, BLOCK, markdown(results, png))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m integration.bench.scale_report",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("results", type=Path, help="a results.json written by --part scale")
    p.add_argument("--readme", type=Path, help=f"also refresh this README's {BLOCK} block")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in write(results, args.results.parent, not args.no_plot):
        print(f"wrote {path}")
    if args.readme is not None:
        png = args.results.parent / "results.png"
        relative = os.path.relpath(png, args.readme.resolve().parent)
        refresh(args.readme, results, None if args.no_plot else relative)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
