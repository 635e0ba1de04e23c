"""``python -m integration.bench --part scale``: many dbvip clusters on one etcd.

    python -m integration.bench --part scale [--quick] [--clusters 20]
        [--window-s 60] [--repetitions 5] [--out DIR] [--readme README.md]
        [--no-plot] [--seed 1]

One lab (three PostgreSQL nodes, a three-member etcd), K dbvip clusters of
three sidecars side by side (``scale_run``): etcd's cost at idle and a
switchover's hand-off in cluster 0, at 1, K/2 and K clusters. Runs as root
(network namespaces); ``scripts/bench.sh --part scale`` installs what it needs
and refreshes the README's block (unless ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
from collections.abc import Sequence

from integration.bench import cli, scale_report
from integration.bench.cli import START_S, say
from integration.bench.client import WRITER_INTERVAL_S
from integration.bench.runner import first_line, machine_info, run_facts
from integration.bench.scale_run import ETCD_ARGS, MAX_CLUSTERS, QUIET_S, RANGE_READS, run_all
from integration.lab.etcd import ETCD
from integration.lab.postgres import PG_BIN, make_template

CLUSTERS, QUICK_CLUSTERS = 20, 5
WINDOW_S, QUICK_WINDOW_S = 60.0, 20.0
REPETITIONS, QUICK_REPETITIONS = 5, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.bench --part scale", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--clusters",
        type=int,
        help=f"the most clusters, K ({CLUSTERS}; --quick: {QUICK_CLUSTERS}); steps 1, K/2, K "
        f"(--quick: 1, K); at most {MAX_CLUSTERS}",
    )
    p.add_argument("--window-s", type=float, help=f"each idle window ({WINDOW_S:g} s; "
                   f"--quick: {QUICK_WINDOW_S:g})")  # fmt: skip
    p.add_argument("--repetitions", type=int, help=f"switchovers per step ({REPETITIONS}; "
                   f"--quick: {QUICK_REPETITIONS})")  # fmt: skip
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer clusters, shorter windows, fewer switchovers: to try the harness; "
        "never the README",
    )
    cli.output_options(p, "scale", scale_report.BLOCK)
    p.add_argument("--seed", type=int, default=1, help="of the random pause before each switchover")
    return p


def steps(clusters: int, quick: bool) -> list[int]:
    """1, K/2 and K clusters (1 and K with --quick), each once, growing."""
    return sorted({1, clusters} if quick else {1, max(1, clusters // 2), clusters})


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "postgresql": first_line([str(PG_BIN / "postgres"), "--version"]),
        "etcd": first_line([ETCD, "--version"]),
    }


def main(argv: Sequence[str]) -> int:
    p = _parser()
    args = p.parse_args(argv)
    quick = args.quick
    clusters = args.clusters or (QUICK_CLUSTERS if quick else CLUSTERS)
    window_s = args.window_s or (QUICK_WINDOW_S if quick else WINDOW_S)
    args.repetitions = args.repetitions or (QUICK_REPETITIONS if quick else REPETITIONS)
    if not 1 <= clusters <= MAX_CLUSTERS:
        p.error(f"--clusters must be 1..{MAX_CLUSTERS}")
    if window_s < 5:
        p.error("--window-s must be at least 5")
    refused = cli.preflight(args, say)
    if refused is not None:
        return refused
    if quick and args.readme is not None:
        say("--quick never touches the README: --readme ignored")
        args.readme = None
    cli.unwind_on_sigterm()
    plan = steps(clusters, quick)
    say(f"scale: clusters {', '.join(map(str, plan))}; idle windows of {window_s:g} s, "
        f"{args.repetitions} switchovers per step; results in {args.out}")  # fmt: skip
    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    datadir, base = make_template()
    try:
        measured = run_all(f"b{os.getpid() % 100000}xs", plan, window_s, args.repetitions,
                           args.seed, say, datadir)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = {
        "part": "scale",
        **run_facts(started, time.monotonic() - START_S, machine),
        "versions": versions(),
        "options": {
            "steps": plan,
            "window_s": window_s,
            "repetitions": args.repetitions,
            "quick": quick,
            "quiet_s": QUIET_S,
            "range_reads": RANGE_READS,
            "etcd_args": list(ETCD_ARGS),
            "client_interval_s": WRITER_INTERVAL_S,
            "seed": args.seed,
        },
        **measured,
    }
    cli.publish(results, args.out, scale_report.write, args.readme, scale_report.refresh,
                not args.no_plot, say)  # fmt: skip
    if measured["steps"]:
        print(scale_report.steps_table(results))
        print(scale_report.handoff_table(results))
        print(scale_report.verdict(results))
    return 1 if measured["errors"] else 0
