"""The ``readers`` part's orchestration: one Patroni lab, three load balancers and
three reading clients side by side, the faults in rotation, every record kept.

The lab (``integration/lab``, Patroni mode): three PostgreSQL nodes run by
Patroni, one etcd, a dbvip sidecar beside every node with a pool of four reader
VIPs, host ``lb`` with the lab's HAProxy (the dbvip pool) and the two
Patroni-checked ones started here, host ``client`` with one per-read client per
load balancer. Each fault hits one replica (in rotation) and is seen by all
three at once; before the next one everything is healthy and balanced again.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from integration.bench import readers_measure as rm
from integration.bench.readers_lb import (
    DBVIP,
    LAG_BYTES,
    SYSTEMS,
    LbSystem,
    render_patroni,
)
from integration.bench.readers_probe import LagPoller, WalWriter
from integration.lab.haproxy import HAProxy, server_name
from integration.lab.lab import Lab, LabSpec, node_v4
from integration.lab.patroni import PATRONICTL, PatroniCluster
from integration.lab.reader import ClientReader, Read
from integration.lab.readers import READER_VIPS, balanced, pool

SCENARIOS = ("crash", "isolate", "lag", "switchover")
READER_COUNT = 4
CLIENT_INTERVAL_S = 0.05  # each client: one read at a time, a new one every 50 ms
SETTLE_TIMEOUT_S = 120.0
HOLD_MAX_S = 45.0  # a fault is undone once every system has the replica out, or after this
HOLD_AFTER_S = 1.0  # ... plus this, so reads after the exclusion are seen too
PHASE_S = 3.0  # a random pause up to the slowest check interval before each fault
CALM_LAG_BYTES = 1 << 20  # "healthy": every replica within 1 MiB of the primary
INTERFERENCE_S = 10.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class Fault:
    scenario: str
    rep: int
    node: str  # the replica it hit (switchover: the candidate)
    primary: str  # the primary before it
    fault_s: float
    end_s: float  # healthy and balanced again
    held_s: float  # from the fault to its undoing (0: undone by itself)
    all_out: bool  # every system had the replica out before the fault was undone
    passed_s: float | None = None  # lag: the poller saw the lag pass 16 MiB


class ReadersRig:
    def __init__(self, name: str, say: Say, seed: int, logs: Path | None = None) -> None:
        self.say = say
        self.logs = logs  # where the lab's logs are copied before it is removed
        self.random = random.Random(seed)
        settings = ((READER_VIPS, pool(READER_COUNT)),
                    ("DBVIP_READER_FALLBACK_TO_PRIMARY", "off"))  # fmt: skip
        self.lab = Lab.create(LabSpec(name, patroni=True, sidecar_settings=settings))
        self.balancers: dict[str, HAProxy] = {}
        self.clients: dict[str, ClientReader] = {}
        self.poller: LagPoller | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def patroni(self) -> PatroniCluster:
        if self.lab.patroni is None:
            raise RuntimeError("not a Patroni lab")
        return self.lab.patroni

    def _start(self) -> None:
        lab = self.lab
        if lab.haproxy is None:
            raise RuntimeError("the lab started no HAProxy for its reader VIPs")
        self.balancers[DBVIP.key] = lab.haproxy
        nodes = [(n, node_v4(i).ip) for i, n in enumerate(lab.spec.nodes, start=1)]
        listen = lab.haproxy.listen
        for system in SYSTEMS:
            if system.patroni:

                def render(sock: Path, system: LbSystem = system) -> str:
                    return render_patroni(system, nodes, listen, sock)

                lb = HAProxy(lab.netns("lb"), lab.dir, [], None, listen,
                             name=f"haproxy-{system.key}", render=render)  # fmt: skip
                lb.start()
                self.balancers[system.key] = lb
        self.poller = LagPoller({n: lab.servers[n].conninfo() for n in lab.spec.nodes})
        self.poller.start()

    def backend(self, system: LbSystem) -> str:
        return "readers" if system is DBVIP else system.key

    # -- clients ------------------------------------------------------------------

    def start_client(self, system: LbSystem) -> None:
        self.clients[system.key] = self.lab.start_reader(
            "per-read", CLIENT_INTERVAL_S, port=system.port
        )

    def reads(self) -> dict[str, list[Read]]:
        return {key: client.reads() for key, client in self.clients.items()}

    # -- health ----------------------------------------------------------------------

    def unsettled(self) -> str:
        """Why the cluster is not healthy and balanced yet ('' when it is)."""
        states = self.patroni.states()
        leader = self.patroni.leader()
        nodes = self.lab.spec.nodes
        if leader is None:
            return "no Patroni leader"
        for node in nodes:
            state = states.get(node, {})
            if state.get("state") != "running":
                return f"{node} is {state.get('state')}"
            if node != leader and state.get("replication_state") != "streaming":
                return f"{node} is not streaming"
        replicas = [n for n in nodes if n != leader]
        latest = self.poller.latest if self.poller else {}
        for node in replicas:
            lag = latest.get(node)
            if lag is None or lag > CALM_LAG_BYTES:
                return f"{node} lags {lag}"
        counts = self.lab.reader_counts()
        if counts.get(leader) or not balanced([counts[n] for n in replicas], READER_COUNT):
            return f"reader VIPs not balanced: {counts}"
        for system in SYSTEMS:
            up = self.balancers[system.key].up_servers(self.backend(system))
            want = (
                {server_name(v.ip) for v in self.lab.reader_vips}
                if system is DBVIP
                else set(replicas)
            )
            if up != want:
                return f"{system.key}: up {sorted(up)}"
        return ""

    def settle(self) -> float:
        """Wait until healthy and balanced; the instant it was."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        why = self.unsettled()
        while why:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not settled within {SETTLE_TIMEOUT_S:g} s: {why}")
            time.sleep(0.1)
            why = self.unsettled()
        return time.monotonic()

    def out(self, node: str) -> bool:
        """Every system has stopped sending reads to ``node``."""
        if self.lab.reader_counts().get(node):
            return False
        for system in SYSTEMS:
            if system.patroni:
                state = self.balancers[system.key].server_states(self.backend(system))
                if state.get(node, "").startswith("UP"):
                    return False
        return True

    def hold(self, node: str, fault_s: float) -> bool:
        """Until every system has ``node`` out (plus ``HOLD_AFTER_S``) or ``HOLD_MAX_S``."""
        while time.monotonic() - fault_s < HOLD_MAX_S:
            if self.out(node):
                time.sleep(HOLD_AFTER_S)
                return True
            time.sleep(0.1)
        return False

    # -- faults ----------------------------------------------------------------------

    def patronictl(self, *args: str) -> str:
        first = self.lab.spec.nodes[0]
        done = subprocess.run(
            ["ip", "netns", "exec", self.lab.netns(first), "runuser", "-u", "postgres", "--",
             str(PATRONICTL), "-c", str(self.patroni.config_path(first)), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"patronictl {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    @contextlib.contextmanager
    def patroni_paused(self) -> Iterator[None]:
        """Patroni in maintenance mode for a block: it neither starts a stopped
        database again nor resumes a paused replay (it does both in every loop
        otherwise, so the fault would last about a second)."""
        self.patronictl("pause", "--wait")
        try:
            yield
        finally:
            self.patronictl("resume", "--wait")

    def held(self, node: str, fault_s: float) -> tuple[float, bool]:
        all_out = self.hold(node, fault_s)
        return time.monotonic() - fault_s, all_out

    def run(self, scenario: str, rep: int, node: str, primary: str) -> Fault:
        time.sleep(self.random.uniform(0.0, PHASE_S))
        server = self.lab.servers[node]
        passed_s = None
        if scenario == "crash":
            with self.patroni_paused():
                fault_s = self.lab.crash_db(node)
                held_s, all_out = self.held(node, fault_s)
            # Patroni, resumed, starts it again (as a replica).
        elif scenario == "isolate":
            fault_s = time.monotonic()
            self.lab.isolate(node)
            try:
                held_s, all_out = self.held(node, fault_s)
            finally:
                self.lab.heal(node)
        elif scenario == "lag":
            with self.patroni_paused():
                server.sql("SELECT pg_wal_replay_pause()")
                writer = WalWriter(self.lab.servers[primary].conninfo())
                fault_s = time.monotonic()
                writer.start()
                try:
                    held_s, all_out = self.held(node, fault_s)
                finally:
                    server.sql("SELECT pg_wal_replay_resume()")
                    writer.stop()
            if self.poller is not None:
                history = rm.LagHistory(self.poller.samples)
                passed_s = history.passed(node, LAG_BYTES, fault_s, time.monotonic())
        elif scenario == "switchover":
            fault_s = time.monotonic()
            self.patronictl("switchover", "--leader", primary, "--candidate", node, "--force")
            # Returns once the candidate is the leader; the load balancers may not know yet.
            held_s, all_out = time.monotonic() - fault_s, self.out(node)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
        end_s = self.settle()
        return Fault(scenario, rep, node, primary, fault_s, end_s, held_s, all_out, passed_s)

    def close(self) -> None:
        for client in self.clients.values():
            if client.returncode is None:
                try:
                    client.stop()
                except Exception as exc:  # the lab's close stops what is left
                    self.say(f"  a client did not stop cleanly: {exc}")
        if self.poller is not None:
            self.poller.stop()
        for key, lb in self.balancers.items():
            if key != DBVIP.key:
                lb.stop()
        if self.logs is not None:
            shutil.copytree(self.lab.dir / "logs", self.logs, dirs_exist_ok=True)
        self.lab.close()


def cpu_busy() -> tuple[int, int]:
    """The machine's busy and total CPU time so far (jiffies, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def interference(rig: ReadersRig, say: Say, window_s: float = INTERFERENCE_S) -> dict[str, Any]:
    """The dbvip pool's client alone, then with the two others: reads per second,
    read latency and the machine's CPU use, so the report can say whether the
    clients slow each other."""
    rig.start_client(DBVIP)
    alone = (time.monotonic(), cpu_busy())
    time.sleep(window_s)
    together = (time.monotonic(), cpu_busy())
    for system in SYSTEMS:
        if system is not DBVIP:
            rig.start_client(system)
    time.sleep(window_s)
    until = (time.monotonic(), cpu_busy())
    reads = rig.clients[DBVIP.key].reads()
    found = {}
    windows = (("alone", alone, together), ("with the other two", together, until))
    for label, (start, busy0), (end, busy1) in windows:
        mine = [r for r in rm.within(reads, start + 1.0, end) if r.ok]
        latencies = sorted((r.ended_s - r.started_s) * 1000.0 for r in mine)
        found[label] = {
            "reads_per_s": round(len(mine) / (end - start - 1.0), 1),
            "read_ms_median": round(latencies[len(latencies) // 2], 1) if latencies else None,
            "read_ms_p95": round(latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
            "machine_cpu_busy_percent": round(
                100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1
            ),
        }
        say(f"  dbvip-pool client {label}: {found[label]}")
    return found


def run_all(name: str, scenarios: tuple[str, ...], repetitions: int, seed: int,
            say: Say, logs: Path | None = None,
            interference_s: float = INTERFERENCE_S) -> dict[str, Any]:  # fmt: skip
    """Every repetition of every scenario; the records and the numbers."""
    rig = ReadersRig(name, say, seed, logs)
    faults: list[Fault] = []
    errors: list[dict[str, Any]] = []
    try:
        say("  lab up; waiting until healthy and balanced")
        rig.settle()
        inter = interference(rig, say, interference_s)
        turn = 0
        for rep in range(1, repetitions + 1):
            for scenario in scenarios:
                primary = rig.patroni.leader() or ""
                replicas = sorted(n for n in rig.lab.spec.nodes if n != primary)
                node = replicas[turn % len(replicas)]
                turn += 1
                try:
                    fault = rig.run(scenario, rep, node, primary)
                except Exception as exc:
                    errors.append({"scenario": scenario, "rep": rep, "node": node,
                                   "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                    say(f"  {scenario} {rep}: FAILED {errors[-1]['error']}")
                    if len(errors) >= 3:
                        say("  3 failures: stopping here")
                        raise StopIteration from exc
                    rig.settle()
                    continue
                faults.append(fault)
                say(f"  {scenario} {rep}/{repetitions} on {node}: "
                    f"held {fault.held_s:.1f} s, settled {fault.end_s - fault.fault_s:.1f} s"
                    f"{'' if fault.all_out else ' (not every system had it out)'}")  # fmt: skip
    except StopIteration:
        pass
    finally:
        reads = rig.reads()
        samples = list(rig.poller.samples) if rig.poller else []
        gaps_s = rig.poller.gaps_s if rig.poller else 0.0
        rig.close()
    return {
        "interference": inter,
        "faults": [asdict(f) for f in faults],
        "errors": errors,
        "samples": measure(faults, reads, samples),
        "between_faults": between(faults, reads),
        "poller_longest_gap_s": round(gaps_s, 3),
        "reads": {k: len(v) for k, v in reads.items()},
    }


def measure(faults: list[Fault], reads: dict[str, list[Read]],
            samples: list[rm.LagSample]) -> list[dict[str, Any]]:  # fmt: skip
    history = rm.LagHistory(samples)
    rows = []
    for f in faults:
        for system in SYSTEMS:
            lagging = f.node if f.scenario == "lag" else None
            got = rm.outcome(reads.get(system.key, []), history, f.fault_s, f.end_s, LAG_BYTES,
                             lagging, f.passed_s)  # fmt: skip
            rows.append({"system": system.key, "scenario": f.scenario, "rep": f.rep,
                         "node": f.node, "all_out": f.all_out,
                         "lag_passed_ms": None if f.passed_s is None
                         else round((f.passed_s - f.fault_s) * 1000.0, 1),
                         **asdict(got)})  # fmt: skip
    return rows


def between(faults: list[Fault], reads: dict[str, list[Read]]) -> dict[str, dict[str, int]]:
    """Per system: reads outside every fault's window, and how many failed or were bad."""
    windows = [(f.fault_s, f.end_s) for f in faults]
    found = {}
    for key, mine in reads.items():
        rest = rm.outside(mine, windows)
        found[key] = {"reads": len(rest), "failed": sum(1 for r in rest if not r.ok),
                      "non_replica": len(rm.non_replica_reads(rest))}  # fmt: skip
    return found
