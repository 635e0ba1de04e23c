"""What every part's command does around its measuring: the checks before it,
Ctrl-C or SIGTERM unwinding through the labs' cleanup, and writing the results
(results.json, the report's files, the README's generated block)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from integration.bench.runner import REPO, leftover_labs

Say = Callable[[str], None]
START_S = time.monotonic()  # a part's progress lines count from here


def say(text: str) -> None:
    """One progress line, with the minutes and seconds since the command started."""
    elapsed_s = time.monotonic() - START_S
    print(f"[{int(elapsed_s // 60):02d}:{elapsed_s % 60:04.1f}] {text}", flush=True)


def choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list of some of ``allowed``."""

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a comma-separated list of {', '.join(allowed)}"
            )
        return chosen

    return parse


def output_options(p: argparse.ArgumentParser, results: str, block: str) -> None:
    """Every part's --out (under integration/bench/results), --readme and --no-plot."""
    where = REPO / "integration" / "bench" / "results" / results
    p.add_argument("--out", type=Path, default=where, help="where results.json, .md, .png go")
    p.add_argument("--readme", type=Path, help=f"refresh this README's {block} block")
    p.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib)")


def preflight(args: argparse.Namespace, say: Say) -> int | None:
    """An exit code if the part cannot run (not root, no repetition); else None,
    after noting labs an earlier, interrupted run left behind."""
    if os.geteuid() != 0:
        print("integration.bench: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    if args.repetitions < 1:
        print("integration.bench: --repetitions must be at least 1", file=sys.stderr)
        return 2
    for name in leftover_labs():
        say(f"note: lab {name} is left from an earlier run: scripts/dbvip-lab down --name {name}")
    return None


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds through the finally blocks like Ctrl-C (labs are removed),
    in this process only: pyroute2 forks helpers that inherit the handler."""
    main_pid = os.getpid()

    def interrupt(*_: object) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def publish(
    results: dict[str, Any],
    out: Path,
    write: Callable[[dict[str, Any], Path, bool], Iterable[Path]],
    readme: Path | None,
    refresh: Callable[[Path, dict[str, Any], str | None], None],
    with_plot: bool,
    say: Say,
) -> None:
    """``out``/results.json, the report's files (``write``), and with ``readme``
    its generated block (``refresh``, given the plot's path relative to it)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    say(f"wrote {path}")
    for written in write(results, out, with_plot):
        say(f"wrote {written}")
    if readme is not None:
        png = os.path.relpath(out / "results.png", readme.resolve().parent) if with_plot else None
        refresh(readme, results, png)
        say(f"updated {readme}")
