"""The ``readers`` part's report: Markdown tables and a plot from results.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from integration.bench.measure import percentile
from integration.bench.readers_lb import SYSTEMS
from integration.bench.report import provenance, write_files

SCENARIO_TITLES = {
    "crash": "replica's database crashes",
    "isolate": "replica's host isolated",
    "lag": "replica lags past 16 MiB",
    "switchover": "replica promoted (switchover)",
}


def rows_of(results: dict[str, Any], system: str, scenario: str) -> list[dict[str, Any]]:
    return [s for s in results["samples"] if s["system"] == system and s["scenario"] == scenario]


def spread(values: Sequence[float]) -> str:
    """``median / p95 / max`` (ms), or ``-`` with no value."""
    if not values:
        return "-"
    return " / ".join(f"{percentile(values, q):.0f}" for q in (50, 95, 100))


def longest(rows: Sequence[dict[str, Any]]) -> str:
    values = [float(r["longest_read_ms"]) for r in rows]
    return f"{percentile(values, 50):.0f} / {max(values):.0f}" if values else "-"


def main_table(results: dict[str, Any]) -> str:
    head = (
        "| scenario | system | n | failed reads (total; reps with any) | fault -> last failed "
        "read, ms (median / p95 / max) | lag passed 16 MiB -> last read it answered, ms "
        "(median / p95 / max) | reads by a replica past 16 MiB | reads by a non-replica | "
        "longest read, ms (median / max) |"
    )
    lines = [head, "|" + "---|" * 9]
    for scenario in results["options"]["scenarios"]:
        for system in SYSTEMS:
            rows = rows_of(results, system.key, scenario)
            if not rows:
                continue
            failed = sum(r["failed"] for r in rows)
            with_any = sum(1 for r in rows if r["failed"])
            last = [float(r["last_failure_ms"]) for r in rows if r["last_failure_ms"] is not None]
            stop = [float(r["stop_receiving_ms"]) for r in rows
                    if r["stop_receiving_ms"] is not None]  # fmt: skip
            lines.append(
                f"| {SCENARIO_TITLES.get(scenario, scenario)} | {system.key} | {len(rows)} | "
                f"{failed} of {sum(r['reads'] for r in rows)}; {with_any} | {spread(last)} | "
                f"{spread(stop) if scenario == 'lag' else 'n/a'} | "
                f"{sum(r['lagging'] for r in rows)} | {sum(r['non_replica'] for r in rows)} | "
                f"{longest(rows)} |"
            )
    return "\n".join(lines)


def checks_table(results: dict[str, Any]) -> str:
    """What the harness itself saw: faults undone before every system reacted,
    reads between faults, the clients' interference, repetitions that failed."""
    lines = ["| system | reads in all | between faults: reads, failed, by a non-replica |",
             "|---|---|---|"]  # fmt: skip
    for system in SYSTEMS:
        b = results["between_faults"].get(system.key, {"reads": 0, "failed": 0, "non_replica": 0})
        lines.append(f"| {system.key} | {results['reads'].get(system.key, 0)} | "
                     f"{b['reads']}, {b['failed']}, {b['non_replica']} |")  # fmt: skip
    early = [f for f in results["faults"] if not f["all_out"]]
    notes = [
        f"Faults undone (or ended) before every system had the replica out: {len(early)} "
        f"of {len(results['faults'])} (switchover: counted when patronictl returned, "
        "before the load balancers had seen the promotion; else: the most a fault is held).",
        f"Repetitions the harness could not finish: {len(results['errors'])}"
        + "".join(f"; {e['scenario']} {e['rep']}: {e['error']}" for e in results["errors"]),
        f"Lag poller's longest gap between two rounds: {results['poller_longest_gap_s']:.2f} s.",
    ]
    inter = results.get("interference", {})
    if inter:
        parts = [f"{label}: {v['reads_per_s']} reads/s, read {v['read_ms_median']} ms median, "
                 f"{v['read_ms_p95']} ms p95, machine CPU "
                 f"{v.get('machine_cpu_busy_percent', '?')}% busy"
                 for label, v in inter.items()]  # fmt: skip
        notes.append("Client interference (dbvip-pool's client) " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def settings(results: dict[str, Any]) -> str:
    return "\n".join(
        f"- **{s['key']}** (port {s['port']}): {s['note']}." for s in results["systems"]
    )


METHOD = """\
How it was measured: one lab in Patroni mode (three PostgreSQL 15 nodes run by
Patroni, `loop_wait` 1 s; one etcd; a dbvip sidecar beside every node), three
HAProxy processes side by side on one load-balancer host, each with its own
frontend and its own client, so every fault is seen by all three at once. Each
client stands for an application reading through its load balancer: one read at
a time on a new connection (`SELECT` of the node's name, `inet_server_addr()` and
`pg_is_in_recovery()`), a read every {interval_ms:.0f} ms, after a failure again
after 10 ms. A poller asks every node over its Unix socket every 50 ms for its
replayed WAL position (the primary: its current one); *by a replica past 16 MiB*
counts reads answered by a node whose last sample before the read was more than
16 MiB behind. Each fault hits one replica in rotation, after a random pause of
up to 3 s; a repetition's window runs from the fault until the cluster is
healthy and balanced again (Patroni: every member running and every replica
streaming; every replica within 1 MiB; the reader VIPs 2/2 on the replicas;
every load balancer with exactly the expected servers up), and only then comes
the next fault. A fault is held until every system has the replica out (plus
1 s, at most 45 s), then undone. *Crash*: Patroni paused (`patronictl pause`:
else it starts the database again within its 1 s loop, before any check
notices), `pg_ctl stop -m immediate` on the replica; undone by resuming Patroni,
which starts it again. *Isolated*: the replica's switch port down, then up.
*Lag*: Patroni paused (else it resumes a paused replay in its next loop),
`pg_wal_replay_pause()` on the replica while the primary writes 1 MiB of WAL
every 100 ms (`pg_logical_emit_message`); undone by `pg_wal_replay_resume()` and
resuming Patroni; *lag passed* is the poller's first sample past 16 MiB.
*Switchover*: `patronictl switchover --candidate` the replica."""


def markdown(results: dict[str, Any], plot_name: str | None = "results.png") -> str:
    parts = [
        "### Reads when a replica fails: dbvip's reader pool vs HAProxy with Patroni's checks",
        provenance(results),
        main_table(results),
    ]
    if plot_name:
        parts.append(f"![reads when a replica fails]({plot_name})")
    parts += [
        "#### Harness checks",
        checks_table(results),
        "#### Settings",
        settings(results),
        METHOD.format(interval_ms=1000 * results["options"]["client_interval_s"]),
    ]
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only the plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    scenarios = list(results["options"]["scenarios"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        x = [j + (i - 1) * width for j in range(len(scenarios))]
        failed, last, bad = [], [], []
        for scenario in scenarios:
            rows = rows_of(results, system.key, scenario)
            failed.append(sum(r["failed"] for r in rows) / max(1, len(rows)))
            ends = [r["last_failure_ms"] for r in rows if r["last_failure_ms"] is not None]
            last.append(percentile(ends, 50) / 1000.0 if ends else 0.0)
            bad.append(sum(r["lagging"] + r["non_replica"] for r in rows) / max(1, len(rows)))
        axes[0].bar(x, failed, width, label=system.key)
        axes[1].bar(x, last, width, label=system.key)
        axes[2].bar(x, bad, width, label=system.key)
    titles = ("failed reads per fault (mean)", "fault -> last failed read (s, median)",
              "reads by a lagging replica or a non-replica per fault (mean)")  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(scenarios)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"one read at a time per client, {results['options']['repetitions']} "
                 "repetitions per scenario", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path, with_plot: bool = True) -> list[Path]:
    return write_files(results, out_dir, with_plot, plot, markdown)
