"""``python -m integration.bench``: run one part of the benchmark and write its report.

    python -m integration.bench [--part failover] [--quick] [--repetitions 20]
        [--systems dbvip,keepalived] [--settings default,fast]
        [--scenarios switchover,crash,dead-holder]
        [--out integration/bench/results] [--footprint-s 20] [--readme README.md]

``--part`` picks the part (``PARTS``; ``failover``, the first round, by
default); every part but ``failover`` is a module of its own whose ``main``
takes the remaining arguments, so each part finishes within 30 minutes on a
2-core machine and can be run again alone.

Runs as root (network namespaces); ``scripts/bench.sh`` installs what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from integration.bench import report
from integration.bench.client import WRITER_TIMEOUT_S
from integration.bench.runner import REPO, Bench, Options, leftover_labs
from integration.bench.setups import SCENARIOS, SETTINGS, SYSTEMS, setup

START_S = time.monotonic()
QUICK_REPETITIONS = 2
QUICK_FOOTPRINT_S = 10.0


def say(text: str) -> None:
    elapsed_s = time.monotonic() - START_S
    print(f"[{int(elapsed_s // 60):02d}:{elapsed_s % 60:04.1f}] {text}", flush=True)


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a comma-separated list of {', '.join(allowed)}"
            )
        return chosen

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--part",
        choices=tuple(PARTS),
        default="failover",
        help="which part to run (failover: writer hand-offs, this page's options)",
    )
    p.add_argument("--repetitions", type=int, default=20, help="per scenario and setup (20)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_REPETITIONS} repetitions and a {QUICK_FOOTPRINT_S:g} s "
        "footprint window: to try the harness, not to publish",
    )
    p.add_argument("--systems", type=_choices(SYSTEMS), default=SYSTEMS, help=", ".join(SYSTEMS))
    p.add_argument(
        "--settings", type=_choices(SETTINGS), default=SETTINGS, help=", ".join(SETTINGS)
    )
    p.add_argument(
        "--scenarios", type=_choices(SCENARIOS), default=SCENARIOS, help=", ".join(SCENARIOS)
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "integration" / "bench" / "results",
        help="where results.json, .md, .png go (integration/bench/results)",
    )
    p.add_argument(
        "--footprint-s", type=float, default=30.0, help="steady-state window per setup (20)"
    )
    p.add_argument(
        "--client-timeout-s",
        type=float,
        default=WRITER_TIMEOUT_S,
        help=f"the client's bound on one write attempt ({WRITER_TIMEOUT_S:g})",
    )
    p.add_argument("--seed", type=int, default=1, help="of the random pause before each fault")
    p.add_argument("--readme", type=Path, help="refresh this README's benchmark block")
    p.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib)")
    return p


# part -> module whose ``main(argv) -> int`` runs it; ``failover`` is this module.
PARTS: dict[str, str] = {"failover": __name__, "readers": "integration.bench.readers"}


def main(argv: Sequence[str] | None = None) -> int:
    rest = list(sys.argv[1:] if argv is None else argv)
    picker = argparse.ArgumentParser(prog="python -m integration.bench", add_help=False)
    picker.add_argument("--part", choices=tuple(PARTS), default="failover")
    picked, rest = picker.parse_known_args(rest)
    if picked.part != "failover":
        module = importlib.import_module(PARTS[picked.part])
        code: int = module.main(rest)
        return code
    return _failover(rest)


def _failover(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("integration.bench: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    if args.repetitions < 1:
        print("integration.bench: --repetitions must be at least 1", file=sys.stderr)
        return 2
    for name in leftover_labs():
        say(f"note: lab {name} is left from an earlier run: scripts/dbvip-lab down --name {name}")
    options = Options(
        setups=tuple(setup(system, s) for system in args.systems for s in args.settings),
        scenarios=args.scenarios,
        repetitions=QUICK_REPETITIONS if args.quick else args.repetitions,
        footprint_s=QUICK_FOOTPRINT_S if args.quick else args.footprint_s,
        client_timeout_s=args.client_timeout_s,
        seed=args.seed,
        quick=args.quick,
    )
    # SIGTERM unwinds through the finally blocks like Ctrl-C (labs are removed),
    # in this process only: pyroute2 forks helpers that inherit the handler.
    main_pid = os.getpid()

    def interrupt(*_: object) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    runs = len(options.setups) * len(options.scenarios) * options.repetitions
    say(
        f"{len(options.setups)} setups x {len(options.scenarios)} scenarios x "
        f"{options.repetitions} repetitions = {runs} runs; results in {args.out}"
    )
    results = Bench(options, say).run()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    say(f"wrote {path}")
    for written in report.write(results, args.out, with_plot=not args.no_plot):
        say(f"wrote {written}")
    if args.readme is not None:
        png = (
            None
            if args.no_plot
            else os.path.relpath(args.out / "results.png", args.readme.resolve().parent)
        )
        report.update_readme(args.readme, results, png)
        say(f"updated {args.readme}")
    print(report.latency_table(results))
    print(report.safety_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
