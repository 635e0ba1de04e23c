"""``python -m integration.bench --part readers``: reads through a load balancer
while a replica fails, dbvip's reader pool against HAProxy with Patroni's checks.

    python -m integration.bench --part readers [--quick] [--repetitions 18]
        [--scenarios crash,isolate,lag,switchover] [--out DIR] [--readme README.md]
        [--no-plot] [--seed 1]

Runs as root (network namespaces); ``scripts/bench.sh --part readers`` installs
what it needs and refreshes the README's block (unless ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from integration.bench import cli, readers_report, report
from integration.bench.cli import START_S, say
from integration.bench.readers_lb import SYSTEMS
from integration.bench.readers_run import CLIENT_INTERVAL_S, SCENARIOS, run_all
from integration.bench.runner import first_line, machine_info, run_facts
from integration.lab.etcd import ETCD
from integration.lab.haproxy import HAPROXY
from integration.lab.patroni import PATRONI
from integration.lab.postgres import PG_BIN

QUICK_REPETITIONS = 2
# Measured with --quick on this 2-core machine (shared with other test runs):
# about 83 s per repetition of the four scenarios (the slowest checks take ~9 s
# to react, dbvip's pool takes a replica back after reader_rejoin_s, 10 s) and
# 30 s to start. 20 repetitions would take about 28 minutes, too close to the
# 30-minute budget on a busy machine; 18 take about 25.
FULL_REPETITIONS = 18
BLOCK = "bench-readers"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.bench --part readers", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--repetitions",
        type=int,
        default=FULL_REPETITIONS,
        help=f"per scenario ({FULL_REPETITIONS}: what fits in 30 minutes)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_REPETITIONS} repetitions, to try the harness; never the README",
    )
    p.add_argument(
        "--scenarios", type=cli.choices(SCENARIOS), default=SCENARIOS, help=", ".join(SCENARIOS)
    )
    cli.output_options(p, "readers", BLOCK)
    p.add_argument("--seed", type=int, default=1, help="of the random pause before each fault")
    p.add_argument("--logs", type=Path, help="copy the lab's logs here before removing it")
    return p


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "postgresql": first_line([str(PG_BIN / "postgres"), "--version"]),
        "etcd": first_line([ETCD, "--version"]),
        "patroni": first_line([str(PATRONI), "--version"]),
        "haproxy": first_line([HAPROXY, "-v"]),
    }


def refresh(readme: Path, results: dict[str, Any], png: str | None) -> None:
    report.replace_block(readme, BLOCK, readers_report.markdown(results, png))


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    refused = cli.preflight(args, say)
    if refused is not None:
        return refused
    if args.quick and args.readme is not None:
        say("--quick never touches the README: --readme ignored")
        args.readme = None
    cli.unwind_on_sigterm()
    repetitions = QUICK_REPETITIONS if args.quick else args.repetitions
    say(
        f"readers: {len(SYSTEMS)} load balancers side by side, {len(args.scenarios)} scenarios "
        f"x {repetitions} repetitions; results in {args.out}"
    )
    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    measured = run_all(
        f"b{os.getpid() % 100000}xr", args.scenarios, repetitions, args.seed, say, args.logs
    )
    results = {
        "part": "readers",
        **run_facts(started, time.monotonic() - START_S, machine),
        "versions": versions(),
        "options": {
            "repetitions": repetitions,
            "quick": args.quick,
            "scenarios": list(args.scenarios),
            "client_interval_s": CLIENT_INTERVAL_S,
            "seed": args.seed,
        },
        "systems": [asdict(s) for s in SYSTEMS],
        **measured,
    }
    cli.publish(results, args.out, readers_report.write, args.readme, refresh, not args.no_plot,
                say)  # fmt: skip
    print(readers_report.main_table(results))
    return 0
