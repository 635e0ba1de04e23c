"""The outage part's report: Markdown tables, a plot, the README's block.

Every table names its client: the ordinary client (one connection attempt at
a time, a new connection per write every 20 ms, retried at once on error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from integration.bench import report
from integration.bench.report import provenance, replace_block, write_files

CLIENT = (
    "ordinary client: one connection attempt at a time, a new connection per write "
    "every 20 ms, retried at once on error"
)
TAG = "bench-outage"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _length(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def rows(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(system, outage) in order; a system that failed before any outage: (system, None)."""
    found: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for entry in results["systems"]:
        found += [(entry, o) for o in entry["outages"]] or [(entry, None)]
    return found


def availability_table(results: dict[str, Any]) -> str:
    repeated = results["options"].get("repetitions", 1) > 1
    lines = [
        f"Writes through an etcd outage ({CLIENT}). *Available*: the share of the time "
        "outside stretches of more than 1 s without an acknowledged write.",
        "",
        "| System | Outage | Available during | Before | After | Whole window "
        "| Longest gap during (s) | Writes acked during | Double-holder intervals "
        "| Writes by a non-primary |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for entry, outage in rows(results):
        if outage is None:
            lines.append(f"| {entry['key']} | failed: {entry['error']} |" + " |" * 8)
            continue
        ph = outage["phases"]
        length = _length(outage["outage_s"])
        if repeated:
            length += f" (#{outage['repetition']})"
        doubles = outage["double_holders"]
        double_s = sum(d["length_s"] for d in doubles)
        lines.append(
            f"| {entry['key']} | {length} | {_pct(ph['during']['available'])} "
            f"| {_pct(ph['before']['available'])} | {_pct(ph['after']['available'])} "
            f"| {_pct(ph['window']['available'])} | {_s(ph['during']['longest_gap_s'])} "
            f"| {ph['during']['acked']} | {len(doubles)}"
            + (f" ({double_s:.1f} s)" if doubles else "")
            + f" | {len(outage['misdirected'])} |"
        )
    return "\n".join(lines)


def gaps_table(results: dict[str, Any]) -> str:
    """Where the writes stopped and started again, relative to etcd's stop."""
    lines = [
        f"Gaps over 1 s without an acknowledged write in the window ({CLIENT}); "
        "instants in seconds from etcd's stop, *back*: when etcd answered again.",
        "",
        "| System | Outage | etcd back at | Gaps: from (length) |",
        "|---|---|--:|---|",
    ]
    for entry, outage in rows(results):
        if outage is None:
            continue
        back_s = outage["phases"]["during"]["length_s"]
        found = ", ".join(
            f"{g['from_s']:+.1f} ({g['length_s']:.1f})" for g in outage["gaps_over_1s"]
        )
        lines.append(
            f"| {entry['key']} | {_length(outage['outage_s'])} | {back_s:.1f} | {found or 'none'} |"
        )
    return "\n".join(lines)


def settings_list(results: dict[str, Any]) -> str:
    lines = []
    for entry in results["systems"]:
        setup = entry["setup"]
        if setup is None:
            lines.append(f"- **{entry['key']}**: failed before it started ({entry['error']}).")
            continue
        params = ", ".join(f"`{k}={v}`" for k, v in setup["params"]) or "no setting changed"
        patroni = entry.get("patroni")
        db = (
            "Patroni runs the databases ("
            + ", ".join(f"`{k}: {str(v).lower()}`" for k, v in patroni.items())
            + ")"
            if patroni
            else "the lab's plain PostgreSQL (n1 primary, nobody promotes anything)"
        )
        lines.append(f"- **{entry['key']}**: {params}; {setup['note']}; {db}.")
    return "\n".join(lines)


METHOD = """\
How it was measured: each system runs in a lab of its own (three PostgreSQL 15
nodes in network namespaces, n1 primary, one etcd member, a client host),
{parallel} lab(s) side by side. The ordinary client writes through the writer
VIP for the lab's whole life. Before each outage the harness waits until one
node holds the VIP and the client's writes land on it, then {before_s:g} s (plus
a random pause up to the system's longest timer period), then stops etcd
(SIGTERM to every etcd member the lab started: etcd is down, its port refuses
connections), starts it again after the outage's length and measures
{after_s:g} s more. *During*: from the stop to the instant etcd answered its
health check again (the restart adds about a second). *Available*: the share
of the phase outside every stretch of more than 1 s in which the client got no
write acknowledged (shorter ones, a write slowed by a busy machine, do not
count). *Longest gap*: the longest stretch without an acknowledgement,
the phase's edges included. *Double-holder intervals*: the invariant monitor
(addresses sampled every {period_ms:g} ms) saw the VIP on two nodes at once.
*Writes by a non-primary*: acknowledged by a node the monitor's role polls
(every {role_ms:g} ms) never saw primary during the attempt."""


def markdown(results: dict[str, Any], plot_name: str | None = "results.png") -> str:
    options = results["options"]
    monitor: dict[str, Any] = next((e["monitor"] for e in results["systems"] if "monitor" in e), {})
    runs = (
        f"outages of {', '.join(_length(x) for x in options['outages_s'])}, "
        f"{options['repetitions']} of each per system, {options['parallel']} lab(s) side by side"
    )
    parts = [
        "### Writes through an etcd outage",
        provenance(results, runs),
        availability_table(results),
    ]
    if plot_name:
        parts.append(f"![acknowledged writes per second through each outage]({plot_name})")
    parts += [
        gaps_table(results),
        "#### Settings",
        settings_list(results),
        METHOD.format(
            parallel=options["parallel"],
            before_s=options["before_s"],
            after_s=options["after_s"],
            period_ms=1000 * monitor.get("period_s", 0.01),
            role_ms=1000 * monitor.get("role_period_s", 0.05),
        ),
    ]
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Acknowledged writes per second through each outage length, one line per system."""
    import matplotlib  # noqa: PLC0415 (only the plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lengths = results["options"]["outages_s"]
    fig, axes = plt.subplots(len(lengths), 1, figsize=(10, 3.2 * len(lengths)), squeeze=False)
    before_s = results["options"]["before_s"]
    for ax, length in zip(axes[:, 0], lengths, strict=True):
        back_s = None
        for i, entry in enumerate(results["systems"]):
            mine = [o for o in entry["outages"] if o["outage_s"] == length]
            if not mine:
                continue
            outage = mine[0]  # the first repetition
            counts = outage["window_slots"][:-1]  # the last second is cut short by the window
            xs = [k - before_s for k in range(len(counts))]
            ax.step(xs, counts, where="post", label=entry["key"], color=f"C{i}", lw=1)
            back_s = outage["phases"]["during"]["length_s"]
        if back_s is not None:
            ax.axvspan(0, back_s, color="grey", alpha=0.15, label="etcd down")
        ax.set_title(f"{_length(length)} outage ({CLIENT})", fontsize=8, loc="left")
        ax.set_xlabel("s from etcd's stop", fontsize=8)
        ax.set_ylabel("writes acknowledged / s", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    report.finish_figure(fig, path, "Writes through an etcd outage", results, top=0.97)


def write(results: dict[str, Any], out_dir: Path, with_plot: bool = True) -> list[Path]:
    """results.md (and results.png) next to results.json in ``out_dir``."""
    return write_files(results, out_dir, with_plot, plot, markdown)


def update_readme(readme: Path, results: dict[str, Any], plot_path: str | None) -> None:
    """Replace the README's ``bench-outage`` block with the tables of ``results``."""
    replace_block(readme, TAG, markdown(results, plot_path))
