"""The whole benchmark: for each system and setting, a lab of its own; its
footprint at steady state, then every scenario's repetitions; results.json.

Each lab is the project's lab (three PostgreSQL nodes, one etcd member, a
client, the invariant monitor) with ``sidecars=False``: the sidecars under
test are started here, one per node, inside the node's namespace.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from integration.bench import footprint
from integration.bench.client import WRITER_INTERVAL_S
from integration.bench.peers import KEEPALIVED, VIP_MANAGER, Sidecars, sidecars_for
from integration.bench.scenarios import Orchestrator, Sample, wait_for
from integration.bench.setups import Setup
from integration.lab import cleanup
from integration.lab.etcd import ETCD
from integration.lab.lab import Lab, LabSpec
from integration.lab.monitor import InvariantMonitor
from integration.lab.postgres import PG_BIN, make_template

REPO = Path(__file__).resolve().parents[2]
SETTLE_S = 3.0  # after the first holder appears, before the footprint window
MAX_FAILURES = 5  # per setup; a lab is rebuilt after each failed repetition, which runs again

Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    setups: tuple[Setup, ...]
    scenarios: tuple[str, ...]
    repetitions: int
    footprint_s: float
    client_timeout_s: float
    seed: int  # of the random pause before each fault (setup i uses seed + i)
    quick: bool


class Rig:
    """One lab with its sidecars; the monitor and the orchestrator (and its
    client) once measuring starts."""

    def __init__(self, lab: Lab, sidecars: Sidecars) -> None:
        self.lab = lab
        self.sidecars = sidecars
        self.monitor: InvariantMonitor | None = None
        self.orchestrator: Orchestrator | None = None

    def measure(self, client_timeout_s: float, seed: int, phase_s: float) -> Orchestrator:
        self.monitor = self.lab.monitor()
        self.monitor.start()
        self.orchestrator = Orchestrator(
            self.lab, self.sidecars, self.monitor, client_timeout_s, seed, phase_s
        )
        return self.orchestrator

    def close(self) -> None:
        """Everything stopped and removed; what a stop misses, the lab's cleanup kills."""
        if self.orchestrator is not None:
            with contextlib.suppress(Exception):
                self.orchestrator.close()
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                self.monitor.stop()
        with contextlib.suppress(Exception):
            self.sidecars.stop()
        self.lab.close()


class Bench:
    def __init__(self, options: Options, say: Say) -> None:
        self.options = options
        self.say = say
        self.samples: list[Sample] = []
        self.footprints: list[dict[str, Any]] = []
        self.labs: list[str] = []
        self.template: Path | None = None

    def run(self) -> dict[str, Any]:
        started = datetime.datetime.now(datetime.UTC)
        started_s = time.monotonic()
        machine = machine_info()
        datadir, base = make_template()
        self.template = datadir
        try:
            for index, setup in enumerate(self.options.setups):
                self.run_setup(index, setup)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return {
            **run_facts(started, time.monotonic() - started_s, machine),
            "versions": versions(),
            "options": {
                "repetitions": self.options.repetitions,
                "quick": self.options.quick,
                "scenarios": list(self.options.scenarios),
                "footprint_window_s": self.options.footprint_s,
                "client_interval_s": WRITER_INTERVAL_S,
                "client_timeout_s": self.options.client_timeout_s,
                "seed": self.options.seed,
            },
            "setups": [asdict(s) | {"key": s.key} for s in self.options.setups],
            "samples": [s.to_json() for s in self.samples],
            "footprints": self.footprints,
        }

    # -- one system at one setting ----------------------------------------------------

    def run_setup(self, index: int, setup: Setup) -> None:
        name = f"b{os.getpid() % 100000}x{index}"
        say = self.say
        say(f"{setup.key}: lab {name} ({setup.note})")
        rig = self.rig_up(name, setup)
        failures = 0
        try:
            self.measure_footprint(setup, rig.sidecars)
            orchestrator = self.start_measuring(rig, index, setup)
            # A failed repetition is reported, then run again on a fresh lab, so
            # that every scenario still gets its count of measured repetitions.
            plan = [(r, s) for r in range(1, self.options.repetitions + 1)
                    for s in self.options.scenarios]  # fmt: skip
            while plan:
                rep, scenario = plan[0]
                try:
                    sample = orchestrator.run(setup.key, scenario, rep)
                except Exception as exc:
                    failures += 1
                    old = orchestrator.primary
                    failed = Sample(
                        setup.key,
                        scenario,
                        rep,
                        old,
                        orchestrator.next_node(old),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    self.samples.append(failed)
                    say(f"  {scenario} {rep}: FAILED {failed.error}")
                    self.print_logs(rig.lab, f"{setup.key} {scenario} {rep}")
                    rig.close()
                    if failures >= MAX_FAILURES:
                        say(f"{setup.key}: {failures} failures, giving up on this setup")
                        return
                    rig = self.rig_up(name, setup)  # a fresh lab, n1 primary again
                    orchestrator = self.start_measuring(rig, index, setup)
                    continue
                plan.pop(0)
                self.samples.append(sample)
                say(f"  {scenario} {rep}/{self.options.repetitions}: {describe(sample)}")
        finally:
            rig.close()

    def start_measuring(self, rig: Rig, index: int, setup: Setup) -> Orchestrator:
        seed = self.options.seed + index
        return rig.measure(self.options.client_timeout_s, seed, setup.phase_s)

    def rig_up(self, name: str, setup: Setup) -> Rig:
        return start_rig(name, setup, self.template, self.say)

    def print_logs(self, lab: Lab, what: str) -> None:
        """A failed repetition's logs, printed: the lab and its files go next."""
        logs = [
            *(lab.dir / "logs").glob("*.log"),
            *(lab.dir / "keepalived").glob("*.log"),
            *(lab.dir / "pg").glob("*.log"),
            *(lab.dir / "etcd").glob("*.log"),
        ]
        for path in sorted(logs):
            tail = path.read_text(errors="replace")[-1500:]
            self.say(f"--- {what}: {path.name} (tail) ---\n{tail}")

    def measure_footprint(self, setup: Setup, sidecars: Sidecars) -> None:
        time.sleep(SETTLE_S)
        window_s = self.options.footprint_s
        self.say(f"  footprint: {window_s:g} s at steady state (no client, no monitor)")
        for fp in footprint.measure(sidecars.pids(), window_s):
            row = asdict(fp) | {
                "setup": setup.key,
                "holder": fp.node == "n1",
                "cpu_s_per_hour": round(fp.cpu_s_per_hour, 2),
                "core_percent": round(fp.core_percent, 3),
            }
            self.footprints.append(row)
            self.say(
                f"    {fp.node}{' (holder)' if fp.node == 'n1' else ''}: "
                f"RSS {fp.rss_mib_max:.1f} MiB, CPU {fp.cpu_s_per_hour:.1f} s/h "
                f"({fp.core_percent:.2f}% of a core), {fp.processes} process(es)"
            )


def start_rig(
    name: str, setup: Setup, template: Path | None, say: Say, patroni: bool = False
) -> Rig:
    """A lab named ``name`` with ``setup``'s sidecars started, once n1 holds
    the VIP (with ``patroni``, Patroni runs the databases: it bootstraps n1)."""
    spec = LabSpec(
        name,
        sidecars=False,
        sidecar_settings=setup.params if setup.system == "dbvip" else (),
        etcd_args=("--enable-v2=true",) if setup.system == "vip-manager" else (),
        pg_template=None if template is None else str(template),
        patroni=patroni,
    )
    began_s = time.monotonic()
    lab = Lab.create(spec)
    try:
        sidecars = sidecars_for(lab, setup)
        sidecars.start("n1")
        wait_for("the VIP on n1", lambda: lab.holders() == {"n1"}, 60, interval_s=0.05)
    except BaseException:
        lab.close()
        raise
    say(f"  lab up, n1 holds the VIP ({time.monotonic() - began_s:.1f} s)")
    return Rig(lab, sidecars)


def describe(sample: Sample) -> str:
    def part(label: str, value: float | None) -> str:
        return f"{label} {value:+.0f} ms" if value is not None else f"{label} -"

    text = ", ".join(
        [
            part("flip", sample.flip_ms),
            part("VIP", sample.vip_ms),
            part("write", sample.write_ms),
            part("ordinary client's write", sample.ordinary_write_ms),
        ]
    )
    if sample.scenario == "dead-holder":
        text += f", writes again {sample.write_after_fault_ms:.0f} ms after the isolation"
    if sample.double_holders:
        text += f", DOUBLE HOLDERS {len(sample.double_holders)}"
    if sample.misdirected:
        text += f", MISDIRECTED WRITES {len(sample.misdirected)}"
    text += f"; recovered in {(sample.recovery_ms or 0) / 1000:.1f} s"
    if sample.rebuilt:
        text += f" (rebuilt {', '.join(sample.rebuilt)})"
    for note in sample.notes:
        text += f"\n      {note}"
    return f"{sample.old}->{sample.new}: {text}"


# -- facts about the run --------------------------------------------------------------


def first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "postgresql": first_line([str(PG_BIN / "postgres"), "--version"]),
        "etcd": first_line([ETCD, "--version"]),
        "vip-manager": first_line([VIP_MANAGER, "--version"]),
        "keepalived": first_line([KEEPALIVED, "--version"]),
    }


def run_facts(
    started: datetime.datetime, duration_s: float, machine: dict[str, Any]
) -> dict[str, Any]:
    """When, how long, at which commit, on which machine (``machine_info`` taken
    before the run, with the commit checked out then), and the load it left."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 1),
        "commit": machine["commit"],
        "machine": machine,
        "load_after": os.getloadavg(),
    }


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "os": os_name,
        "kernel": platform.release(),
        "load_before": os.getloadavg(),
        # The code under test is what was checked out when the run began (a
        # sidecar started later imports the tree as it is then: keep it still).
        "commit": commit_info(),
    }


def commit_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return first_line(["git", "-C", str(REPO), *args])

    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "sha": git("rev-parse", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty": bool(dirty),
    }


def leftover_labs() -> list[str]:
    """Labs an earlier, interrupted benchmark left on this machine."""
    return [n for n in cleanup.lab_names() if n.startswith("b") and "x" in n]
