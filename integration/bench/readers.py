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
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from integration.bench import readers_report, report
from integration.bench.readers_lb import SYSTEMS
from integration.bench.readers_run import CLIENT_INTERVAL_S, SCENARIOS, run_all
from integration.bench.runner import REPO, commit_info, first_line, leftover_labs, machine_info
from integration.lab.etcd import ETCD
from integration.lab.haproxy import HAPROXY
from integration.lab.patroni import PATRONI
from integration.lab.postgres import PG_BIN

START_S = time.monotonic()
QUICK_REPETITIONS = 2
# Measured with --quick on this 2-core machine (shared with other test runs):
# about 83 s per repetition of the four scenarios (the slowest checks take ~9 s
# to react, dbvip's pool takes a replica back after reader_rejoin_s, 10 s) and
# 30 s to start. 20 repetitions would take about 28 minutes, too close to the
# 30-minute budget on a busy machine; 18 take about 25.
FULL_REPETITIONS = 18
BLOCK = "bench-readers"


def say(text: str) -> None:
    elapsed_s = time.monotonic() - START_S
    print(f"[{int(elapsed_s // 60):02d}:{elapsed_s % 60:04.1f}] {text}", flush=True)


def _scenarios(text: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    if not chosen or any(c not in SCENARIOS for c in chosen):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of {', '.join(SCENARIOS)}"
        )
    return chosen


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
    p.add_argument("--scenarios", type=_scenarios, default=SCENARIOS, help=", ".join(SCENARIOS))
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "integration" / "bench" / "results" / "readers",
        help="where results.json, .md, .png go",
    )
    p.add_argument("--seed", type=int, default=1, help="of the random pause before each fault")
    p.add_argument("--readme", type=Path, help=f"refresh this README's {BLOCK} block")
    p.add_argument("--logs", type=Path, help="copy the lab's logs here before removing it")
    p.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib)")
    return p


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "postgresql": first_line([str(PG_BIN / "postgres"), "--version"]),
        "etcd": first_line([ETCD, "--version"]),
        "patroni": first_line([str(PATRONI), "--version"]),
        "haproxy": first_line([HAPROXY, "-v"]),
    }


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("integration.bench: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    if args.repetitions < 1:
        print("integration.bench: --repetitions must be at least 1", file=sys.stderr)
        return 2
    if args.quick and args.readme is not None:
        print("integration.bench: --quick never touches the README", file=sys.stderr)
        args.readme = None
    for name in leftover_labs():
        say(f"note: lab {name} is left from an earlier run: scripts/dbvip-lab down --name {name}")
    main_pid = os.getpid()

    def interrupt(*_: object) -> None:  # SIGTERM unwinds like Ctrl-C (the lab is removed)
        if os.getpid() == main_pid:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
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
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - START_S, 1),
        "commit": commit_info(),
        "machine": machine,
        "load_after": os.getloadavg(),
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
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    say(f"wrote {path}")
    for written in readers_report.write(results, args.out, with_plot=not args.no_plot):
        say(f"wrote {written}")
    if args.readme is not None:
        png = (
            None
            if args.no_plot
            else os.path.relpath(args.out / "results.png", args.readme.resolve().parent)
        )
        report.replace_block(args.readme, BLOCK, readers_report.markdown(results, png))
        say(f"updated {args.readme}")
    print(readers_report.main_table(results))
    return 0
