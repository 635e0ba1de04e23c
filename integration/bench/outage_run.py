"""``python -m integration.bench --part outage``: writes through an etcd outage.

    python -m integration.bench --part outage [--quick] [--systems KEY,...]
        [--outages-s 300,30] [--repetitions 1] [--parallel 2]
        [--out integration/bench/results/outage] [--readme README.md] [--no-plot] [--seed 1]

Each system (``outage_systems``) gets a lab of its own, an ordinary client
writing through the writer VIP for the lab's whole life, and each outage in
turn (``outage_lab``). ``--parallel N`` runs N labs side by side, each in a
worker process of its own (this module with ``--worker``), systems dealt
round-robin; results.json says how many ran at once, with the load and the
client's write latency, so a distortion would show.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from integration.bench import cli, outage_report
from integration.bench.cli import say
from integration.bench.client import WRITER_INTERVAL_S
from integration.bench.outage_lab import Plan, run_system
from integration.bench.outage_systems import KEYS, system
from integration.bench.runner import (
    REPO,
    first_line,
    machine_info,
    versions,
)
from integration.lab import cleanup
from integration.lab.patroni import PATRONI
from integration.lab.postgres import make_template

OUTAGES_S = (300.0, 30.0)
QUICK_OUTAGES_S = (20.0, 5.0)
BEFORE_S, QUICK_BEFORE_S = 10.0, 5.0
AFTER_S, QUICK_AFTER_S = 30.0, 10.0
LAB_PREFIX = "o"


def _keys(text: str) -> tuple[str, ...]:
    chosen = tuple(k.strip() for k in text.split(",") if k.strip())
    if not chosen or any(k not in KEYS for k in chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {', '.join(KEYS)}")
    return chosen


def _lengths(text: str) -> tuple[float, ...]:
    try:
        chosen = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        chosen = ()
    if not chosen or any(not 0 < x <= 3600 for x in chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, comma-separated, each 0..3600")
    return chosen


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.bench --part outage", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true",
                   help=f"outages of {', '.join(f'{x:g}' for x in QUICK_OUTAGES_S)} s: "
                   "to try the harness, not to publish; the README is left alone")  # fmt: skip
    p.add_argument("--systems", type=_keys, default=KEYS, help=", ".join(KEYS))
    p.add_argument("--outages-s", type=_lengths, help="etcd outage lengths (300,30)")
    p.add_argument("--repetitions", type=int, default=1, help="of every outage per system (1)")
    p.add_argument("--parallel", type=int, default=2, help="labs side by side (2)")
    cli.output_options(p, "outage", outage_report.TAG)
    p.add_argument("--seed", type=int, default=1, help="of the random pause before each stop")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a worker's output file
    p.add_argument("--template", type=Path, help=argparse.SUPPRESS)  # the PostgreSQL template
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("integration.bench: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    if args.repetitions < 1 or not 1 <= args.parallel <= len(args.systems):
        print("integration.bench: --repetitions must be at least 1 and --parallel "
              "between 1 and the number of systems", file=sys.stderr)  # fmt: skip
        return 2
    if args.readme is not None and args.quick:
        args.readme = None  # a quick run never touches the README
    plan = Plan(
        outages_s=args.outages_s or (QUICK_OUTAGES_S if args.quick else OUTAGES_S),
        repetitions=args.repetitions,
        before_s=QUICK_BEFORE_S if args.quick else BEFORE_S,
        after_s=QUICK_AFTER_S if args.quick else AFTER_S,
        seed=args.seed,
    )
    cli.unwind_on_sigterm()
    if args.worker is not None:
        return _work(args, plan)
    return _lead(args, plan)


def _work(args: argparse.Namespace, plan: Plan) -> int:
    """A worker: its systems one after the other, into ``--worker``'s file."""
    entries = []
    for key in args.systems:
        index = KEYS.index(key)
        name = f"{LAB_PREFIX}{os.getpid() % 100000}x{index}"
        entries.append(run_system(name, system(key), plan, args.template, say))
        args.worker.write_text(json.dumps(entries) + "\n")
    return 0


def _lead(args: argparse.Namespace, plan: Plan) -> int:
    for name in cleanup.lab_names():
        if name.startswith(LAB_PREFIX) and "x" in name:
            say(f"note: lab {name} is left from an earlier run: "
                f"scripts/dbvip-lab down --name {name}")  # fmt: skip
    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    total_s = sum(plan.outages_s) * plan.repetitions
    say(f"{len(args.systems)} systems, outages of {', '.join(f'{x:g}' for x in plan.outages_s)} "
        f"s ({total_s / 60:.1f} min of outage per system), {args.parallel} lab(s) side by side; "
        f"results in {args.out}")  # fmt: skip
    datadir, base = make_template()
    work = Path(tempfile.mkdtemp(prefix="dbvip-bench-outage-"))
    try:
        entries = _run_workers(args, plan, datadir, work)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    entries.sort(key=lambda e: KEYS.index(e["key"]))
    results = {
        "part": "outage",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - cli.START_S, 1),
        "commit": machine["commit"],
        "machine": machine,
        "load_after": os.getloadavg(),
        "versions": versions() | {"patroni": first_line([str(PATRONI), "--version"])},
        "options": {
            "quick": args.quick,
            "outages_s": list(plan.outages_s),
            "repetitions": plan.repetitions,
            "before_s": plan.before_s,
            "after_s": plan.after_s,
            "parallel": args.parallel,
            "seed": args.seed,
            "client": "ordinary",
            "client_interval_s": WRITER_INTERVAL_S,
            "etcd": "one member (the lab's), stopped by SIGTERM to its process and "
            "restarted after the outage's length",
        },
        "systems": entries,
    }
    cli.publish(results, args.out, outage_report.write, args.readme,
                outage_report.update_readme, not args.no_plot, say)  # fmt: skip
    print(outage_report.availability_table(results))
    return 1 if any(e["error"] for e in entries) else 0


def _run_workers(
    args: argparse.Namespace, plan: Plan, template: Path, work: Path
) -> list[dict[str, Any]]:
    """Deal the systems round-robin to ``--parallel`` workers; wait for all."""
    shares = [args.systems[i :: args.parallel] for i in range(args.parallel)]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, share in enumerate(shares):
            out = work / f"worker{i}.json"
            argv = [sys.executable, "-m", "integration.bench.outage_run", "--worker", str(out),
                    "--template", str(template), "--systems", ",".join(share),
                    "--outages-s", ",".join(f"{x:g}" for x in plan.outages_s),
                    "--repetitions", str(plan.repetitions), "--seed", str(args.seed + i),
                    "--parallel", "1", *(["--quick"] if args.quick else [])]  # fmt: skip
            procs.append((subprocess.Popen(argv, cwd=REPO), out))
        for proc, _ in procs:
            proc.wait()
    finally:
        for proc, _ in procs:  # interrupted: each worker unwinds and removes its lab
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(120)
    entries: list[dict[str, Any]] = []
    for (proc, out), share in zip(procs, shares, strict=True):
        done = json.loads(out.read_text()) if out.exists() else []
        entries += done
        missing = [k for k in share if k not in {e["key"] for e in done}]
        entries += [_failed(k, f"worker exited with {proc.returncode}") for k in missing]
    return entries


def _failed(key: str, why: str) -> dict[str, Any]:
    return {"key": key, "setup": None, "patroni": None, "outages": [], "error": why}


if __name__ == "__main__":
    sys.exit(main())
