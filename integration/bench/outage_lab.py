"""One system through etcd outages, in a lab of its own: the lab and its
sidecars (``runner.start_rig``), the invariant monitor and the ordinary
client for the lab's whole life, then each outage in turn: a few seconds of
writes, every etcd member stopped (SIGTERM to the processes the lab started,
as a service stop does; clients then get connection refused), restarted
after the outage's length, a while of writes after it.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from integration.bench import outage_measure
from integration.bench.client import WRITER_TIMEOUT_S, AttemptTail, start_writer
from integration.bench.measure import percentile
from integration.bench.outage_systems import OutageSystem
from integration.bench.runner import Rig, start_rig
from integration.bench.scenarios import wait_for
from integration.lab.lab import Lab
from integration.lab.writer import Attempt, ClientWriter

Say = Callable[[str], None]
# The monitor samples addresses every 10 ms and roles every 50 ms (its
# defaults are 3 and 10 ms, for hand-offs measured in milliseconds): an
# outage is measured in seconds, and two labs may run side by side.
MONITOR_PERIOD_S = 0.01
MONITOR_ROLE_PERIOD_S = 0.05
READY_TIMEOUT_S = 180.0  # for the writes to flow again before the next outage
PROGRESS_S = 30.0
FAILSAFE_READ_BACK_S = 5.0  # the holder reads its failsafe record back (test_failsafe.py)


@dataclass(frozen=True)
class Plan:
    outages_s: tuple[float, ...]
    repetitions: int
    before_s: float
    after_s: float
    seed: int


def run_system(
    name: str, system: OutageSystem, plan: Plan, template: Path | None, say: Say
) -> dict[str, Any]:
    """Every outage of ``plan`` for ``system``; its results.json entry."""
    entry: dict[str, Any] = {
        "key": system.key,
        "setup": asdict(system.setup),
        "patroni": system.patroni_settings() or None,
        "outages": [],
        "error": "",
    }
    say(f"{system.key}: lab {name} ({system.setup.note})")
    rig: Rig | None = None
    client: ClientWriter | None = None
    try:
        rig = start_rig(name, system.setup, template, say, patroni=system.patroni)
        lab = rig.lab
        if system.failsafe:
            wait_for("n1's failsafe record", lambda: _record_lists_peers(lab, "n1"), 60)
            time.sleep(FAILSAFE_READ_BACK_S)
        rig.monitor = lab.monitor(period_s=MONITOR_PERIOD_S, role_period_s=MONITOR_ROLE_PERIOD_S)
        rig.monitor.start()
        client = start_writer(lab, WRITER_TIMEOUT_S, mode="ordinary")
        tail = AttemptTail(client.out_path)
        rng = random.Random(plan.seed)
        outages: list[tuple[float, outage_measure.Outage, dict[str, Any]]] = []
        for rep in range(1, plan.repetitions + 1):
            for length_s in plan.outages_s:
                waited_s = _ready(lab, tail)
                # A random pause, so the stop falls at a random phase of the system's timers.
                pause_s = rng.uniform(0.0, system.setup.phase_s)
                time.sleep(plan.before_s + pause_s)
                outage, facts = _outage(lab, tail, length_s, plan, say, system.key)
                facts |= {"repetition": rep, "ready_wait_s": round(waited_s, 3)}
                facts["pause_s"] = round(pause_s, 3)
                outages.append((length_s, outage, facts))
        attempts = client.stop()
        client = None
        report = rig.monitor.stop()
        ruled = outage_measure.reigns(report.role_events, report.ended_s)
        for length_s, outage, facts in outages:
            result = outage_measure.summary(outage, attempts, report.double_holders, ruled)
            entry["outages"].append({"outage_s": length_s, **facts, **result})
            say(f"  {system.key}: {describe(length_s, result)}")
        entry["monitor"] = {
            "samples": report.samples,
            "mean_gap_s": round(report.mean_gap_s, 4),
            "max_gap_s": round(report.max_gap_s, 4),
            "errors": len(report.errors),
            "period_s": MONITOR_PERIOD_S,
            "role_period_s": MONITOR_ROLE_PERIOD_S,
        }
        entry["client"] = _client_facts(attempts)
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        say(f"  {system.key}: FAILED {entry['error']}")
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop()
        if rig is not None:
            rig.close()
    return entry


def _outage(
    lab: Lab, tail: AttemptTail, length_s: float, plan: Plan, say: Say, key: str
) -> tuple[outage_measure.Outage, dict[str, Any]]:
    load_before = _load()
    stop_s = time.monotonic()
    lab.stop_etcd()
    stopped_s = time.monotonic()
    say(f"  {key}: etcd stopped for {length_s:g} s")
    end_s = stop_s + length_s
    while (now_s := time.monotonic()) < end_s:
        time.sleep(min(PROGRESS_S, end_s - now_s))
        seen = [a for a in tail.read() if a.ok and a.ended_s >= time.monotonic() - PROGRESS_S]
        if time.monotonic() < end_s - 1.0:
            say(f"  {key}: +{time.monotonic() - stop_s:.0f} s, {len(seen)} writes "
                f"acknowledged in the last {PROGRESS_S:g} s, VIP on {_holders(lab)}")  # fmt: skip
    restart_s = time.monotonic()
    lab.start_etcd()  # returns once etcd answers its health check
    back_s = time.monotonic()
    say(f"  {key}: etcd back after {back_s - stop_s:.1f} s, VIP on {_holders(lab)}")
    time.sleep(plan.after_s)
    outage = outage_measure.Outage(stop_s, back_s, plan.before_s, plan.after_s)
    facts = {
        "stop_took_s": round(stopped_s - stop_s, 3),
        "restart_took_s": round(back_s - restart_s, 3),
        "load_before": load_before,
        "load_after": _load(),
    }
    return outage, facts


def _ready(lab: Lab, tail: AttemptTail) -> float:
    """Wait until one node holds the VIP and the client's writes land on it."""
    began_s = time.monotonic()

    def flowing() -> bool:
        holders = lab.holders()
        recent = [a for a in tail.read()[-20:] if a.ended_s >= time.monotonic() - 1.0]
        return (
            len(holders) == 1
            and bool(recent)
            and all(a.ok and a.node in holders for a in recent[-5:])
        )

    wait_for("writes through the VIP", flowing, READY_TIMEOUT_S, interval_s=0.2)
    return time.monotonic() - began_s


def _record_lists_peers(lab: Lab, holder: str) -> bool:
    raw = lab.etcdctl("get", f"/dbvip/{lab.name}/failsafe", "--print-value-only").strip()
    if not raw:
        return False
    record = json.loads(raw)
    peers = sorted(m["node"] for m in record["members"])
    return bool(record["holder"]["node"] == holder and peers == [
        n for n in lab.spec.nodes if n != holder
    ])  # fmt: skip


def _holders(lab: Lab) -> str:
    return ", ".join(sorted(lab.holders())) or "nobody"


def _load() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def _client_facts(attempts: list[Attempt]) -> dict[str, Any]:
    """How fast the client wrote when it could (a side-by-side lab's cost shows here)."""
    took_ms = [(a.ended_s - a.started_s) * 1000 for a in attempts if a.ok]
    return {
        "mode": "ordinary",
        "attempts": len(attempts),
        "acked": len(took_ms),
        "write_ms_p50": round(percentile(took_ms, 50), 2) if took_ms else None,
        "write_ms_p99": round(percentile(took_ms, 99), 2) if took_ms else None,
    }


def describe(length_s: float, result: dict[str, Any]) -> str:
    during = result["phases"]["during"]
    window = result["phases"]["window"]
    return (
        f"{length_s:g} s outage: writes available {100 * (during['available'] or 0):.1f}% "
        f"of it ({100 * (window['available'] or 0):.1f}% of the window), longest gap "
        f"{during['longest_gap_s']:.1f} s, {during['acked']} writes acknowledged during it, "
        f"{len(result['double_holders'])} double-holder interval(s), "
        f"{len(result['misdirected'])} misdirected write(s)"
    )
