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
import sys
from collections.abc import Sequence
from pathlib import Path

from integration.bench import cli, report
from integration.bench.cli import say
from integration.bench.client import WRITER_TIMEOUT_S
from integration.bench.runner import REPO, Bench, Options
from integration.bench.setups import SCENARIOS, SETTINGS, SYSTEMS, setup

QUICK_REPETITIONS = 2
QUICK_FOOTPRINT_S = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.bench",
        description=__doc__.split("\n")[0],
        parents=[_picker()],
    )
    p.add_argument("--repetitions", type=int, default=20, help="per scenario and setup (20)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_REPETITIONS} repetitions and a {QUICK_FOOTPRINT_S:g} s "
        "footprint window: to try the harness, not to publish",
    )
    p.add_argument("--systems", type=cli.choices(SYSTEMS), default=SYSTEMS, help=", ".join(SYSTEMS))
    p.add_argument(
        "--settings", type=cli.choices(SETTINGS), default=SETTINGS, help=", ".join(SETTINGS)
    )
    p.add_argument(
        "--scenarios", type=cli.choices(SCENARIOS), default=SCENARIOS, help=", ".join(SCENARIOS)
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
PARTS: dict[str, str] = {
    "failover": __name__,
    "outage": "integration.bench.outage_run",
    "readers": "integration.bench.readers",
    "scale": "integration.bench.scale",
}


def _picker() -> argparse.ArgumentParser:
    """``--part`` alone: read first, then the part parses the rest (the
    failover part's parser has it too, for its --help)."""
    p = argparse.ArgumentParser(prog="python -m integration.bench", add_help=False)
    p.add_argument(
        "--part",
        choices=tuple(PARTS),
        default="failover",
        help="which part to run (failover: writer hand-offs, this page's options)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    rest = list(sys.argv[1:] if argv is None else argv)
    picked, rest = _picker().parse_known_args(rest)
    if picked.part != "failover":
        module = importlib.import_module(PARTS[picked.part])
        code: int = module.main(rest)
        return code
    return _failover(rest)


def _failover(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    refused = cli.preflight(args, say)
    if refused is not None:
        return refused
    options = Options(
        setups=tuple(setup(system, s) for system in args.systems for s in args.settings),
        scenarios=args.scenarios,
        repetitions=QUICK_REPETITIONS if args.quick else args.repetitions,
        footprint_s=QUICK_FOOTPRINT_S if args.quick else args.footprint_s,
        client_timeout_s=args.client_timeout_s,
        seed=args.seed,
        quick=args.quick,
    )
    cli.unwind_on_sigterm()
    runs = len(options.setups) * len(options.scenarios) * options.repetitions
    say(
        f"{len(options.setups)} setups x {len(options.scenarios)} scenarios x "
        f"{options.repetitions} repetitions = {runs} runs; results in {args.out}"
    )
    results = Bench(options, say).run()
    cli.publish(results, args.out, report.write, args.readme, report.update_readme,
                not args.no_plot, say)  # fmt: skip
    print(report.latency_table(results))
    print(report.safety_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
