"""results.json -> results.md (tables) and results.png (latency distributions).

    python -m integration.bench.report RESULTS.json [--readme README.md]

Works on any results.json the runner wrote, so a report can be made again
(or the README refreshed) without running the benchmark. The README's copy
sits between ``<!-- generated: bench -->`` and ``<!-- end: bench -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.bench.measure import percentile
from integration.bench.setups import SCENARIOS

GOAL_P50_MS = 60.0
GOAL_P99_MS = 150.0
# An ordinary client (one connection attempt at a time) at default settings.
GOAL_ORDINARY_P50_MS = 100.0
GOAL_ORDINARY_P99_MS = 250.0
GOAL_RSS_MB = 40.0
GOAL_CORE_PERCENT = 1.0
MIB_TO_MB = 1.048576


@dataclass(frozen=True)
class Metric:
    field: str
    label: str  # from -> to
    short: str  # in the plot


WRITE = Metric(
    "write_ms",
    "promotion seen -> first write acknowledged (overlapping client)",
    "write after promotion (overlapping client)",
)
ORDINARY = Metric(
    "ordinary_write_ms",
    "promotion seen -> first write acknowledged (ordinary client)",
    "write after promotion (ordinary client)",
)
# Per scenario, what the latency table and the plot show.
METRICS: dict[str, tuple[Metric, ...]] = {
    "switchover": (
        Metric("vip_ms", "promotion seen -> VIP on the new primary", "VIP after promotion"),
        WRITE,
        ORDINARY,
    ),
    "crash": (
        Metric("vip_ms", "promotion seen -> VIP on the new primary", "VIP after promotion"),
        WRITE,
        ORDINARY,
    ),
    "dead-holder": (
        Metric(
            "write_after_fault_ms",
            "holder isolated -> first write acknowledged",
            "write after isolation",
        ),
        WRITE,
        ORDINARY,
    ),
}


def setup_keys(results: dict[str, Any]) -> list[str]:
    return [str(s["key"]) for s in results["setups"]]


def samples_of(results: dict[str, Any], setup: str, scenario: str) -> list[dict[str, Any]]:
    return [s for s in results["samples"] if s["setup"] == setup and s["scenario"] == scenario]


def values(samples: Iterable[dict[str, Any]], field: str) -> list[float]:
    # .get: results.json files from before a field existed still make a report.
    return [float(s[field]) for s in samples if not s["error"] and s.get(field) is not None]


def _ms(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def latency_table(results: dict[str, Any]) -> str:
    rows = [
        "| system | setting | scenario | from -> to | n | p50 | p90 | p99 | max | failed |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in setup_keys(results):
        system, setting = key.split("/")
        for scenario in SCENARIOS:
            samples = samples_of(results, key, scenario)
            if not samples:
                continue
            failed = sum(1 for s in samples if s["error"])
            for metric in METRICS[scenario]:
                got = values(samples, metric.field)
                stats = (
                    " | ".join(_ms(percentile(got, q)) for q in (50, 90, 99))
                    + f" | {_ms(max(got))}"
                    if got
                    else "- | - | - | -"
                )
                rows.append(
                    f"| {system} | {setting} | {scenario} | {metric.label} | {len(got)} | "
                    f"{stats} | {failed} |"
                )
    return "\n".join(rows)


def safety_table(results: dict[str, Any]) -> str:
    rows = [
        "| system | setting | repetitions | double-holder intervals | of which after the "
        "heal | double-holder time (ms) | writes acknowledged (both clients) | by a node not "
        "primary |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in setup_keys(results):
        system, setting = key.split("/")
        samples = [s for s in results["samples"] if s["setup"] == key]
        doubles = [d for s in samples for d in s["double_holders"]]
        after_heal = sum(1 for d in doubles if d["after_heal"])
        total_ms = sum(float(d["end_ms"]) - float(d["start_ms"]) for d in doubles)
        acked = sum(int(s["acked"]) for s in samples)
        wrong = sum(len(s["misdirected"]) for s in samples)
        acked += sum(int(s.get("ordinary_acked", 0)) for s in samples)
        rows.append(
            f"| {system} | {setting} | {len(samples)} | {len(doubles)} | {after_heal} | "
            f"{total_ms:.0f} | {acked} | {wrong} |"
        )
    return "\n".join(rows)


def footprint_table(results: dict[str, Any]) -> str:
    rows = [
        "| system | setting | node | RSS max (MiB) | CPU (s per hour) | one core (%) | processes |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for fp in results["footprints"]:
        system, setting = str(fp["setup"]).split("/")
        node = f"{fp['node']} (holder)" if fp["holder"] else fp["node"]
        rows.append(
            f"| {system} | {setting} | {node} | {fp['rss_mib_max']:.1f} | "
            f"{fp['cpu_s_per_hour']:.1f} | {fp['core_percent']:.2f} | "
            f"{fp['processes']} |"
        )
    return "\n".join(rows)


def goals(results: dict[str, Any], key: str = "dbvip/default") -> str:
    """The issue's goals for dbvip at its defaults, met or not, from the numbers."""
    samples = [s for s in results["samples"] if s["setup"] == key]
    if not samples:
        return f"No runs of {key}: goals not evaluated."
    doubles = sum(len(s["double_holders"]) for s in samples)
    wrong = sum(len(s["misdirected"]) for s in samples)
    prints = [f for f in results["footprints"] if f["setup"] == key]
    lines = []

    def line(goal: str, measured: str, met: bool) -> None:
        lines.append(f"| {goal} | {measured} | {'met' if met else '**not met**'} |")

    for field, client, goal_p50, goal_p99 in (
        ("write_ms", "overlapping", GOAL_P50_MS, GOAL_P99_MS),
        ("ordinary_write_ms", "ordinary", GOAL_ORDINARY_P50_MS, GOAL_ORDINARY_P99_MS),
    ):
        handoff = [
            v for sc in ("switchover", "crash") for v in values(samples_of(results, key, sc), field)
        ]
        if not handoff:
            continue
        for q, goal in ((50, goal_p50), (99, goal_p99)):
            measured = percentile(handoff, q)
            line(
                f"handoff to the first write p{q} <= {goal:.0f} ms, {client} client "
                "(switchover + crash)",
                f"{_ms(measured)} ms",
                measured <= goal,
            )
    line("zero double-holder samples, every scenario", f"{doubles} interval(s)", doubles == 0)
    line("zero writes acknowledged by a non-primary", str(wrong), wrong == 0)
    if prints:
        rss_mb = max(float(f["rss_mib_max"]) for f in prints) * MIB_TO_MB
        core = max(float(f["core_percent"]) for f in prints)
        line(f"resident memory <= {GOAL_RSS_MB:.0f} MB", f"{rss_mb:.1f} MB", rss_mb <= GOAL_RSS_MB)
        line(f"CPU < {GOAL_CORE_PERCENT:g}% of one core", f"{core:.2f}%", core < GOAL_CORE_PERCENT)
    header = ["| goal (dbvip, default settings) | measured | |", "|---|---|---|"]
    return "\n".join(header + lines)


def settings_list(results: dict[str, Any]) -> str:
    lines = []
    for setup in results["setups"]:
        params = ", ".join(f"`{k}={v}`" for k, v in setup["params"]) or "no setting changed"
        pause = (
            f"; each fault after a random pause of 0-{setup['phase_s']:g} s"
            if "phase_s" in setup
            else ""
        )
        lines.append(f"- **{setup['key']}**: {params}; {setup['note']}{pause}.")
    return "\n".join(lines)


def provenance(results: dict[str, Any], runs: str | None = None) -> str:
    """Date, commit, machine, load and versions; ``runs``: what was run (the
    failover part's repetitions per scenario by default)."""
    commit = results["commit"]
    machine = results["machine"]
    options = results["options"]
    dirty = " with uncommitted changes" if commit["dirty"] else ""
    quick = " (**--quick**: indicative only)" if options["quick"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    runs = runs or f"{options['repetitions']} repetitions per scenario"
    return (
        f"Run on {results['date']} at commit `{commit['sha'][:12]}`{dirty} "
        f"({commit['subject']}); {runs}{quick}, "
        f"{results['duration_s'] / 60:.1f} minutes in all. Machine: {machine['cores']} cores "
        f"({machine['cpu']}), {machine['memory_gib']} GiB, {machine['os']}, kernel "
        f"{machine['kernel']}; load average before {_load(machine['load_before'])}, after "
        f"{_load(results['load_after'])}. Versions: {versions}."
    )


def _load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


METHOD = """\
How it was measured: every system runs in its own lab (three PostgreSQL 15
nodes in network namespaces, one etcd, a client host); the primary moves round
the nodes. *Promotion seen*: the first `pg_is_in_recovery()` = false from a
poller that asks the promoted node every 2 ms over its Unix socket, or from the
monitor's own poll (about every 10 ms) when that answered first (a poll can
stall on a busy machine; the poller's gaps are in results.json). *VIP on the new
primary*: the invariant monitor's first netlink sample showing it there
(samples every few ms); negative when the VIP arrived before the promotion
completed (vip-manager follows a key written just before the promotion).
*First write acknowledged*: the instant the new primary's acknowledgement
reached a client writing through the VIP. Two clients write side by side. The
*overlapping* client starts a new connection every 20 ms whether or not the
last one finished, each with a {timeout_ms:.0f} ms timeout: it tells when
writing became possible (an attempt sent while no node held the VIP delays the
first success by up to that timeout). The *ordinary* client behaves like an
application: one connection attempt at a time (psycopg's blocking `connect`,
`connect_timeout=10`), a new connection per write every 20 ms, and on any error
a new attempt at once: it tells when an application writes again, and a SYN
lost in the hand-off costs it the kernel's retransmission timeout (1 s).
Each fault comes after a random pause
(up to the longest period of the system's timers), so it falls at a random
phase of them.
Switchover: the primary stopped cleanly and restarted as a standby, then the
next node promoted. Crash: the primary stopped immediately, the next node
promoted one second later. Dead holder: the holder's switch port down (a veth:
its link loses carrier), the next node promoted one second later; after the
first write the port comes back up with the old primary still running, for one
more second. *Double-holder intervals*: the monitor saw the VIP configured on
two nodes at once (while one is cut off, only one of them can answer). *By a
node not primary*: writes acknowledged by a node that was not the primary at
any instant of the attempt (the primary being the node the orchestrator last
promoted, from its promotion until its demotion, crash or isolation).
*Failed*: repetitions the harness could not finish (most often: a rebuilt
replica not streaming within 30 s); each is logged with the lab's log tails,
and run again on a fresh lab, so *n* counts measured repetitions only.
Percentiles interpolate linearly between ranks. Footprint: the sum of VmRSS and
of CPU time (user + system, with reaped children such as keepalived's check
scripts) over each sidecar's process tree during a window at steady state with
no client and no monitor; the database-side cost of the sidecars' queries is
not included."""


def markdown(results: dict[str, Any], plot_name: str | None = "results.png") -> str:
    parts = [
        "### Failover benchmark: dbvip, vip-manager and keepalived",
        provenance(results),
        "#### Goals",
        goals(results),
        "#### Handoff latency (ms)",
        latency_table(results),
    ]
    if plot_name:
        parts.append(f"![latency distributions]({plot_name})")
    parts += [
        "#### Safety tally (all repetitions of all scenarios)",
        safety_table(results),
        "#### Footprint at steady state",
        footprint_table(results),
        "#### Settings",
        settings_list(results),
        METHOD.format(timeout_ms=1000 * results["options"].get("client_timeout_s", 0.1)),
    ]
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only the plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    keys = setup_keys(results)
    scenarios = [sc for sc in SCENARIOS if any(samples_of(results, k, sc) for k in keys)]
    per_setup = max(len(m) for m in METRICS.values()) + 1  # the metrics and a gap
    rows = len(keys) * per_setup
    fig, axes = plt.subplots(
        len(scenarios), 1, figsize=(10, 1.0 + 0.28 * rows * len(scenarios)), squeeze=False
    )
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        positions, data, labels = [], [], []
        for i, key in enumerate(keys):
            for j, metric in enumerate(METRICS[scenario]):
                got = values(samples_of(results, key, scenario), metric.field)
                y = i * per_setup + j
                positions.append(y)
                data.append(got or [float("nan")])
                labels.append(f"{key}: {metric.short}")
                ax.scatter(got, [y] * len(got), s=10, alpha=0.6, color=f"C{j}", zorder=3)
        ax.boxplot(
            data, positions=positions, orientation="horizontal", widths=0.6, showfliers=False
        )
        ax.set_yticks(positions, labels, fontsize=7)
        # Linear within 10 ms of zero: vip-manager's VIP can come before the
        # promotion completes (negative), everything else spans 10 ms..10 s.
        ax.set_xscale("symlog", linthresh=10)
        everything = [v for got in data for v in got if not math.isnan(v)]
        if everything:
            ax.set_xlim(min(0.0, 1.5 * min(everything)), 1.5 * max(everything))
        ax.set_title(scenario, fontsize=9, loc="left")
        ax.set_xlabel("ms", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.invert_yaxis()
    finish_figure(fig, path, "Failover handoff", results, top=0.98)


def finish_figure(fig: Any, path: Path, title: str, results: dict[str, Any], top: float) -> None:
    """Title ``fig`` with the run's date, commit and machine; save it to ``path``; close it."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    commit = results["commit"]["sha"][:12]
    quick = ", --quick" if results["options"].get("quick") else ""
    fig.suptitle(
        f"{title}: {results['date']}, commit {commit}, {results['machine']['cores']} cores{quick}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path, with_plot: bool = True) -> list[Path]:
    """results.md (and results.png) next to results.json in ``out_dir``."""
    return write_files(results, out_dir, with_plot, plot, markdown)


def write_files(
    results: dict[str, Any],
    out_dir: Path,
    with_plot: bool,
    plot: Callable[[dict[str, Any], Path], None],
    markdown: Callable[[dict[str, Any], str | None], str],
) -> list[Path]:
    """A part's results.md (from ``markdown``) and results.png (from ``plot``)."""
    written = []
    if with_plot:
        png = out_dir / "results.png"
        plot(results, png)
        written.append(png)
    md = out_dir / "results.md"
    md.write_text(markdown(results, "results.png" if with_plot else None))
    written.append(md)
    return written


def replace_block(readme: Path, name: str, body: str) -> None:
    """Replace what sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``."""
    block = re.compile(
        rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)",
        re.DOTALL,
    )
    text = readme.read_text()
    if not block.search(text):
        raise ValueError(f"{readme}: no <!-- generated: {name} --> ... <!-- end: {name} --> block")
    readme.write_text(block.sub(lambda m: m.group(1) + body + m.group(2), text))


def update_readme(readme: Path, results: dict[str, Any], plot_path: str | None) -> None:
    """Replace the README's benchmark block with the tables of ``results``."""
    replace_block(readme, "bench", markdown(results, plot_path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integration.bench.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("results", type=Path, help="a results.json written by the benchmark")
    parser.add_argument("--no-plot", action="store_true", help="tables only")
    parser.add_argument("--readme", type=Path, help="also refresh this README's bench block")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in write(results, args.results.parent, with_plot=not args.no_plot):
        print(f"wrote {path}")
    if args.readme is not None:
        relative = (args.results.parent / "results.png").resolve()
        plot_path = None if args.no_plot else _relative(relative, args.readme.resolve().parent)
        update_readme(args.readme, results, plot_path)
        print(f"updated {args.readme}")
    return 0


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
