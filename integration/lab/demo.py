"""The README's first command: see the writer VIP follow the primary, and the
reader VIPs spread over the replicas.

Brings up a lab (three PostgreSQL nodes with sidecars, etcd, a client), starts
two clients that write through the VIP (an overlapping one, a new connection
every 20 ms whatever the last one does, and an ordinary one, one connection
attempt at a time as applications make them) and the invariant monitor, then
runs a switchover (n1 demoted cleanly, n2 promoted) and a crash failover (n2's
database stopped immediately, n3 promoted one second later). Prints a timeline
of each (promotion, VIP removed, VIP added, first write acknowledged by the new
primary for each client) and tears everything down.

With reader VIPs (4 by default), the sidecars also keep a pool of reader VIPs
on the replicas, HAProxy sits in front of them, and before the writer part
the demo crashes a replica's database to show its reader VIPs move to the
other replica while reads through HAProxy go on
(integration/lab/demo_readers.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from dbvip.model import Role
from integration.lab import cleanup
from integration.lab.demo_readers import finish_reader_part, run_reader_part
from integration.lab.eventually import eventually
from integration.lab.lab import Lab, LabSpec
from integration.lab.monitor import InvariantMonitor, MonitorReport, VipChange
from integration.lab.readers import READER_VIPS, pool
from integration.lab.writer import Attempt, ClientWriter, first_ok_after, outages

DEMO_NAME = "demo"


@dataclass
class Phase:
    title: str
    old: str
    new: str
    fault_s: float  # old primary demoted or crashed
    promote_s: float  # pg_ctl promote signalled on the new one


class Demo:
    def __init__(self, lab: Lab, say: Callable[[str], None]) -> None:
        self.lab = lab
        self.say = say
        self.origin_s = time.monotonic()
        self.phases: list[Phase] = []

    def rel(self, at_s: float | None) -> str:
        return "        -" if at_s is None else f"{at_s - self.origin_s:8.3f} s"

    def run(
        self, monitor: InvariantMonitor, writer: ClientWriter, ordinary: ClientWriter
    ) -> MonitorReport:
        lab = self.lab
        lab.wait_holder("n1")
        first: Attempt = eventually(
            lambda: first_ok_after(writer.attempts(), self.origin_s), timeout_s=30
        )
        self.say(f"n1 (primary) holds the VIP {lab.vip.ip}; first client write ok at "
                 f"{self.rel(first.ended_s)} by {first.node}")  # fmt: skip
        readers = run_reader_part(lab, self.say) if lab.reader_vips else []

        self.say("switchover: n1's database stopped cleanly and restarted as a replica; "
                 "n2 promoted")  # fmt: skip
        fault_s = time.monotonic()
        lab.demote("n1")
        promote_s = lab.promote("n2")
        lab.wait_primary("n2")
        lab.wait_holder("n2")
        self.wait_writes("n2", promote_s, writer, ordinary)
        self.phases.append(Phase("switchover n1 -> n2", "n1", "n2", fault_s, promote_s))

        self.say("crash failover: n2's database stopped immediately; n3 promoted 1 s later")
        fault_s = lab.crash_db("n2")
        time.sleep(1.0)  # what an HA manager takes to notice, at the very least
        promote_s = lab.promote("n3")
        lab.wait_primary("n3")
        lab.wait_holder("n3")
        self.wait_writes("n3", promote_s, writer, ordinary)
        self.phases.append(Phase("crash failover n2 -> n3", "n2", "n3", fault_s, promote_s))
        time.sleep(0.5)  # a few more writes on the new primary for the tally
        attempts = writer.stop()
        ordinary_attempts = ordinary.stop()
        report = monitor.stop()
        self.print_timeline(report, attempts, ordinary_attempts)
        if readers:
            finish_reader_part(lab, self.say, readers)
        return report

    @staticmethod
    def wait_writes(node: str, after_s: float, *clients: ClientWriter) -> None:
        for client in clients:
            eventually(partial(_acked, client, node, after_s), timeout_s=30)

    def print_timeline(
        self, report: MonitorReport, attempts: list[Attempt], ordinary: list[Attempt]
    ) -> None:
        self.say("timeline (seconds since the lab was up; VIP instants from netlink "
                 "samples every few ms, roles from pg_is_in_recovery() polls)")  # fmt: skip
        for phase in self.phases:
            promoted = _first_role(report, phase.new, Role.PRIMARY, phase.promote_s)
            removed = _first_vip(report, phase.old, VipChange.REMOVED, phase.fault_s)
            added = _first_vip(report, phase.new, VipChange.ADDED, phase.fault_s)
            written = first_ack(attempts, phase.new, phase.promote_s)
            app = first_ack(ordinary, phase.new, phase.promote_s)
            rows = [
                (f"{phase.old} database {'stopped' if 'switch' in phase.title else 'crashed'}",
                 phase.fault_s),
                (f"{phase.old} VIP removed", removed),
                (f"{phase.new} promote signalled", phase.promote_s),
                (f"{phase.new} is primary", promoted),
                (f"{phase.new} VIP added", added),
                (f"first write acknowledged by {phase.new} (overlapping client)",
                 written.ended_s if written else None),
                (f"first write acknowledged by {phase.new} (ordinary client)",
                 app.ended_s if app else None),
            ]  # fmt: skip
            self.say(f"  {phase.title}")
            for label, at_s in sorted(rows, key=lambda r: r[1] if r[1] is not None else 1e18):
                self.say(f"    {self.rel(at_s)}  {label}")
            if promoted is not None and added is not None and written and app:
                self.say(f"    => VIP on the new primary {_after(added, promoted, 'its promotion')}"
                         f"; first write {_after(written.ended_s, promoted)} (overlapping "
                         f"client), {_after(app.ended_s, promoted)} (ordinary client)")  # fmt: skip
        for name, made in (("overlapping client", attempts), ("ordinary client", ordinary)):
            ok = sum(a.ok for a in made)
            gaps = outages(made)
            longest = max((end - start for start, end in gaps), default=0.0)
            slowest = max((a.ended_s - a.started_s for a in made), default=0.0)
            self.say(f"{name}: {len(made)} write attempts, {ok} acknowledged; "
                     f"{len(gaps)} outages, longest {longest:.3f} s; slowest attempt "
                     f"{slowest:.3f} s")  # fmt: skip
        self.say(report.summary())


def first_ack(attempts: list[Attempt], node: str, after_s: float) -> Attempt | None:
    """The first write ``node`` acknowledged after ``after_s`` (an attempt begun
    earlier counts: the client was still waiting to write)."""
    done = [a for a in attempts if a.ok and a.node == node and a.ended_s >= after_s]
    return min(done, key=lambda a: a.ended_s, default=None)


def _acked(client: ClientWriter, node: str, after_s: float) -> Attempt | None:
    return first_ack(client.attempts(), node, after_s)


def _after(later_s: float, promoted_s: float, what: str = "it") -> str:
    """``N ms after <what>``; a change seen before the role poll saw the
    promotion (polls every few ms) says so instead of a negative figure."""
    gap_ms = 1000 * (later_s - promoted_s)
    if gap_ms < 0:
        return f"{-gap_ms:.0f} ms before the role poll saw the promotion"
    return f"{gap_ms:.0f} ms after {what}"


def _first_role(report: MonitorReport, host: str, role: Role, after_s: float) -> float | None:
    return next((e.at_s for e in report.role_events
                 if e.host == host and e.new is role and e.at_s >= after_s), None)  # fmt: skip


def _first_vip(report: MonitorReport, host: str, change: VipChange, after_s: float) -> float | None:
    return next((e.at_s for e in report.vip_events
                 if e.host == host and e.change is change and e.at_s >= after_s), None)  # fmt: skip


def run_demo(say: Callable[[str], None], readers: int = 4) -> int:
    """The demo, with ``readers`` reader VIPs (0: the writer VIP alone)."""
    if not cleanup.find(DEMO_NAME).empty():
        say(f"removing what an earlier demo left behind: {cleanup.down(DEMO_NAME).describe()}")
    started = time.monotonic()
    settings = ((READER_VIPS, pool(readers)),) if readers else ()
    with Lab.create(LabSpec(DEMO_NAME, sidecar_settings=settings)) as lab:
        say(f"lab {lab.name} up in {time.monotonic() - started:.1f} s: namespaces "
            f"{lab.netns('*')}, PostgreSQL 15 n1 primary + n2, n3 streaming replicas, "
            f"etcd at {', '.join(lab.spec.etcd_endpoints)}, a dbvip sidecar beside each "
            "database" + (f", HAProxy on host lb in front of {readers} reader VIPs"
                          if readers else ""))  # fmt: skip
        demo = Demo(lab, say)
        monitor = lab.monitor()
        monitor.start()
        writer = lab.start_writer()
        ordinary = lab.start_client("ordinary")
        try:
            report = demo.run(monitor, writer, ordinary)
        except BaseException:
            monitor.stop()
            for node in lab.spec.nodes:
                say(f"--- {node} sidecar log (tail) ---\n{lab.sidecar_log(node)[-2000:]}")
            raise
        report.assert_one_writer()
        report.assert_one_holder_per_reader_vip()
    left = cleanup.find(DEMO_NAME)
    say(f"lab torn down; left behind: {left.describe()}")
    return 0 if left.empty() else 1
