"""One repetition of a scenario on a running lab, and the way back to a known state.

The primary moves round the nodes (n1 -> n2 -> n3 -> n1 ...): each repetition
promotes the node after the current primary. A client writes through the VIP
on a new connection every 20 ms and the invariant monitor samples, both for
the whole life of the lab; beside it, an ordinary client (one connection
attempt at a time, retried at once on error, as applications do) writes too.

- switchover: the primary's database is stopped cleanly (``-m fast``) and
  started again as a standby, then the next node is promoted.
- crash: the primary's database is stopped at once (``-m immediate``), the next
  node is promoted one second later.
- dead-holder: the primary's switch port goes down (cut off from everything,
  database still running), the next node is promoted one second later; once
  the client writes again, the port comes back up and the lab watches one
  more second with the old primary still running (does it answer for the
  VIP again?), then stops it.

After a crash or a dead holder, every node but the new primary is rebuilt as a
standby of it (``pg_basebackup``); after a switchover, a replica that does not
stream again within 10 s is.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dbvip.model import Role
from integration.bench.client import WRITER_TIMEOUT_S, AttemptTail, start_writer
from integration.bench.measure import (
    Reign,
    first_ack,
    last_ack,
    misdirected,
    ms,
    vip_added,
)
from integration.bench.peers import Sidecars
from integration.bench.promotion import Flip, PromotionWatch
from integration.lab.lab import Lab
from integration.lab.monitor import InvariantMonitor, MonitorReport
from integration.lab.postgres import PG_BIN, SUPERUSER
from integration.lab.writer import Attempt

T = TypeVar("T")

PROMOTE_DELAY_S = 1.0  # crash and dead-holder: what an HA manager takes to decide, at least
TALLY_TAIL_S = 0.2  # writes kept after the first acknowledgement, for the safety tally
AFTER_HEAL_S = 1.0  # a healed old holder would answer for the VIP again at once


class RepetitionError(Exception):
    """A repetition could not be completed; the message says which step."""


def wait_for(
    what: str, predicate: Callable[[], T | None], timeout_s: float, interval_s: float = 0.02
) -> T:
    deadline_s = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline_s:
            raise RepetitionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(interval_s)
    return value


@dataclass
class Sample:
    """One repetition; durations in ms, instants relative to the fault."""

    setup: str
    scenario: str
    repetition: int
    old: str
    new: str
    error: str = ""
    promote_ms: float | None = None  # promotion signalled, after the fault
    # pg_is_in_recovery() first seen false, after the fault: by the fast poller
    # or by the monitor's own role poll, whichever answer came first.
    flip_ms: float | None = None
    flip_resolution_ms: float | None = None  # since the poller's previous answer
    monitor_flip_lag_ms: float | None = None  # the monitor saw it this much after the poller
    vip_ms: float | None = None  # VIP configured on the new primary, after the flip
    write_ms: float | None = None  # first write acknowledged by the new primary, after the flip
    # The same, for the ordinary client (one connection attempt at a time).
    ordinary_write_ms: float | None = None
    write_after_fault_ms: float | None = None
    outage_ms: float | None = None  # last ack by the old primary -> first ack by the new
    fault_done_ms: float | None = None  # the fault action completed (e.g. pg_ctl stop returned)
    heal_ms: float | None = None  # dead-holder: switch port back up, after the fault
    attempts: int = 0
    acked: int = 0
    ordinary_attempts: int = 0
    ordinary_acked: int = 0
    recovery_ms: float | None = None  # back to a known state, after the measurement
    rebuilt: list[str] = field(default_factory=list)  # nodes made again by pg_basebackup
    notes: list[str] = field(default_factory=list)
    double_holders: list[dict[str, Any]] = field(default_factory=list)
    misdirected: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Events:
    """What happened in one repetition, as monotonic instants."""

    fault_s: float  # the fault began
    faulted_s: float  # the fault action completed
    promote_s: float  # the promotion was signalled
    flip: Flip  # the fast poller's view of the promotion
    vip_s: float  # the monitor first saw the VIP on the new primary
    heal_s: float | None  # dead-holder: the old holder's port came back up


class Orchestrator:
    """Runs repetitions on one lab with its sidecars and its monitor."""

    def __init__(
        self,
        lab: Lab,
        sidecars: Sidecars,
        monitor: InvariantMonitor,
        client_timeout_s: float = WRITER_TIMEOUT_S,
        seed: int = 0,
        phase_s: float = 1.0,
        primary: str = "n1",
    ) -> None:
        self.lab = lab
        self.client_timeout_s = client_timeout_s
        self.sidecars = sidecars
        self.monitor = monitor
        self.primary = primary
        self.reigns = [Reign(primary, -math.inf)]
        self.rng = random.Random(seed)
        self.phase_s = phase_s
        self.notes: list[str] = []  # what recovery found, for the current sample
        self.writer = start_writer(lab, client_timeout_s)
        self.tail = AttemptTail(self.writer.out_path)
        self.ordinary = start_writer(lab, client_timeout_s, mode="ordinary")
        self.ordinary_tail = AttemptTail(self.ordinary.out_path)
        self.tallied = 0  # attempts already in a sample's tally
        self.ordinary_tallied = 0
        self.window_s = time.monotonic()  # end of the last tally window

    def next_node(self, node: str) -> str:
        nodes = self.lab.spec.nodes
        return nodes[(nodes.index(node) + 1) % len(nodes)]

    # -- one repetition -------------------------------------------------------------

    def run(self, setup: str, scenario: str, repetition: int) -> Sample:
        old, new = self.primary, self.next_node(self.primary)
        sample = Sample(setup, scenario, repetition, old, new)
        first = len(self.tail.read())  # this repetition's first attempt
        first_ordinary = len(self.ordinary_tail.read())
        events = self._handoff(scenario, old, new, first, first_ordinary)
        report = self.monitor.report()
        end_s = time.monotonic()
        self._measure(
            sample, events, report, self.tail.since(first), self.ordinary_tail.since(first_ordinary)
        )
        self._tally(sample, events, report, end_s)
        began_s = time.monotonic()
        self.notes = []
        sample.rebuilt = self._recover(scenario, old, new)
        sample.notes = self.notes
        sample.recovery_ms = ms(time.monotonic(), began_s)
        return sample

    def _handoff(
        self, scenario: str, old: str, new: str, first: int, first_ordinary: int
    ) -> Events:
        """Fault, promotion, and waiting until the client writes to ``new``."""
        started_s = time.monotonic()
        wait_for(
            f"a write acknowledged by {old} before the fault",
            lambda: first_ack(self.tail.since(first), old, started_s),
            timeout_s=30,
        )
        # Every sidecar acts on timers (keepalived's script every second,
        # vip-manager's interval, dbvip's probe); recovery ends at a moment tied
        # to them, so a random pause puts each fault at a random phase.
        time.sleep(self.rng.uniform(0.0, self.phase_s))
        fault_s = time.monotonic()
        self._fault(scenario, old)
        # The old primary's reign ends when the fault is complete: a crash
        # takes a few ms, during which it may still acknowledge writes.
        faulted_s = time.monotonic()
        self.reigns[-1] = Reign(old, self.reigns[-1].start_s, faulted_s)
        if scenario != "switchover":
            time.sleep(max(0.0, fault_s + PROMOTE_DELAY_S - time.monotonic()))
        watch = PromotionWatch(self.lab.servers[new].conninfo())
        try:
            self.sidecars.promoting(new)
            promote_s = self.lab.promote(new)
            flip = watch.wait(30)
        finally:
            watch.close()
        self.reigns.append(Reign(new, flip.at_s))
        self.primary = new
        # A dead holder's lease (dbvip) or VRRP timers must run out first.
        wait_for(
            f"a write acknowledged by {new}",
            lambda: first_ack(self.tail.since(first), new, flip.at_s),
            90.0 if scenario == "dead-holder" else 30.0,
            interval_s=0.01,
        )
        # One attempt at a time: it may be waiting out a retransmission (a
        # peer that drops SYNs), or libpq's whole connect_timeout (10 s).
        wait_for(
            f"a write by the ordinary client acknowledged by {new}",
            lambda: first_ack(self.ordinary_tail.since(first_ordinary), new, flip.at_s),
            90.0 if scenario == "dead-holder" else 30.0,
            interval_s=0.01,
        )
        vip_s = wait_for(
            f"{new}'s VIP seen by the monitor",
            lambda: vip_added(self.monitor.report().vip_events, new, fault_s),
            timeout_s=10,
            interval_s=0.05,
        )
        time.sleep(TALLY_TAIL_S)
        heal_s = None
        if scenario == "dead-holder":
            heal_s = time.monotonic()
            self.lab.heal(old)
            time.sleep(AFTER_HEAL_S)
        return Events(fault_s, faulted_s, promote_s, flip, vip_s, heal_s)

    def _measure(
        self,
        sample: Sample,
        events: Events,
        report: MonitorReport,
        attempts: list[Attempt],
        ordinary: list[Attempt],
    ) -> None:
        old, new, fault_s = sample.old, sample.new, events.fault_s
        # A poll can stall on a busy machine (the poller's gaps reach 20 ms
        # here): the monitor's poll, every ~10 ms, sometimes answers first.
        seen_s = _role_seen(report, new, events.promote_s)
        flip_s = events.flip.at_s if seen_s is None else min(events.flip.at_s, seen_s)
        self.reigns[-1] = Reign(new, flip_s)
        ack_s = first_ack(attempts, new, flip_s)
        sample.fault_done_ms = ms(events.faulted_s, fault_s)
        sample.promote_ms = ms(events.promote_s, fault_s)
        sample.flip_ms = ms(flip_s, fault_s)
        sample.flip_resolution_ms = ms(events.flip.at_s, events.flip.previous_s)
        sample.monitor_flip_lag_ms = ms(seen_s, events.flip.at_s)
        sample.vip_ms = ms(events.vip_s, flip_s)
        sample.write_ms = ms(ack_s, flip_s)
        sample.ordinary_write_ms = ms(first_ack(ordinary, new, flip_s), flip_s)
        sample.write_after_fault_ms = ms(ack_s, fault_s)
        sample.outage_ms = ms(ack_s, last_ack(attempts, old, events.faulted_s))
        sample.heal_ms = ms(events.heal_s, fault_s)

    def _tally(self, sample: Sample, events: Events, report: MonitorReport, end_s: float) -> None:
        """Attempts and double holders from the end of the previous tally (so
        those during the previous recovery count too) to ``end_s``."""
        window = [a for a in self.tail.since(self.tallied) if a.started_s <= end_s]
        self.tallied += len(window)
        doubles = [i for i in report.double_holders if self.window_s < i.start_s <= end_s]
        self.window_s = end_s
        heal_s = events.heal_s
        sample.attempts = len(window)
        sample.acked = sum(a.ok for a in window)
        sample.double_holders = [
            {
                "start_ms": ms(i.start_s, events.fault_s),
                "end_ms": ms(i.end_s, events.fault_s),
                "hosts": sorted(i.hosts),
                "after_heal": heal_s is not None and i.end_s >= heal_s,
            }
            for i in doubles
        ]
        ordinary = [
            a for a in self.ordinary_tail.since(self.ordinary_tallied) if a.started_s <= end_s
        ]
        self.ordinary_tallied += len(ordinary)
        sample.ordinary_attempts = len(ordinary)
        sample.ordinary_acked = sum(a.ok for a in ordinary)
        sample.misdirected = [
            {**_attempt_json(a, events.fault_s), "client": client}
            for client, attempts in (("overlapping", window), ("ordinary", ordinary))
            for a in misdirected(attempts, self.reigns)
        ]

    def close(self) -> None:
        for writer in (self.writer, self.ordinary):
            if writer.returncode is None:
                writer.stop()

    def _fault(self, scenario: str, old: str) -> None:
        lab = self.lab
        if scenario == "switchover":
            server = lab.servers[old]
            server.stop("fast")
            self.sidecars.demoted(old)
            server.make_standby()
            server.start()
        elif scenario == "crash":
            lab.crash_db(old)
        elif scenario == "dead-holder":
            lab.isolate(old)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")

    # -- back to a known state ----------------------------------------------------------

    def _recover(self, scenario: str, old: str, new: str) -> list[str]:
        """Back to one primary (``new``) with streaming replicas and the VIP;
        returns the nodes rebuilt."""
        rebuilt = []
        if scenario != "switchover":
            # The old primary may hold WAL the new one never got; so may the
            # other replica (seen after long vacancies: it then asks the new
            # primary for a segment it does not have, forever). Rebuilding both
            # takes about a second and leaves every repetition the same start.
            rebuilt = [node for node in self.lab.spec.nodes if node != new]
            self.rebuild_all(rebuilt, new)
        rebuilt += self.ensure_streaming(new)
        wait_for(
            f"the VIP on {new} alone",
            lambda: self.monitor.holders() == {new},
            timeout_s=60,
            interval_s=0.05,
        )
        return rebuilt

    def rebuild_all(self, nodes: list[str], source: str) -> None:
        # One after the other: two base backups at once each force a
        # checkpoint, and one recycles WAL the other has yet to stream.
        for node in nodes:
            self.rebuild(node, source)

    def rebuild(self, node: str, source: str) -> None:
        """``node``'s data directory made again from ``source`` (its database
        stopped first), started as a standby streaming from the VIP."""
        lab = self.lab
        server, origin = lab.servers[node], lab.servers[source]
        if server.postmaster_pid() is not None:
            server.stop("immediate")
        shutil.rmtree(server.datadir)
        subprocess.run(
            [
                "runuser",
                "-u",
                SUPERUSER,
                "--",
                str(PG_BIN / "pg_basebackup"),
                "-D",
                str(server.datadir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-h",
                str(origin.socket_dir),
                "-p",
                str(origin.port),
                "-U",
                SUPERUSER,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        # The lab's own standby settings (primary_conninfo through the VIP).
        lab._prepare(server)
        server.start()

    def ensure_streaming(self, primary: str, timeout_s: float = 10.0) -> list[str]:
        """Every other node streams from ``primary``; returns those rebuilt.

        A demoted primary restarts as a standby while the VIP may still be its
        own: its WAL receiver then connects to itself, and that connection
        hangs once the VIP has moved (until keepalives or
        ``wal_receiver_timeout`` end it, 5 s or more). So a node not streaming
        gets its WAL receiver ended every second (the startup process starts
        another at once); one still not streaming after ``timeout_s`` is rebuilt.
        """
        others = set(self.lab.spec.nodes) - {primary}
        deadline_s = time.monotonic() + timeout_s
        kicked_s = time.monotonic() - 0.7  # the first kick 0.3 s from now
        while lagging := sorted(others - self._streaming(primary)):
            now_s = time.monotonic()
            if now_s > deadline_s:
                break
            if now_s - kicked_s >= 1.0:
                kicked_s = now_s
                for node in lagging:
                    self._restart_wal_receiver(node)
            time.sleep(0.1)
        else:
            return []
        for node in lagging:
            self.notes.append(f"{node} not streaming from {primary}: {self._log_tail(node)}")
        self.rebuild_all(lagging, primary)
        wait_for(
            "rebuilt replicas streaming",
            lambda: self._streaming(primary) >= others,
            30,
            interval_s=0.1,
        )
        return lagging

    def _log_tail(self, node: str) -> str:
        log = self.lab.servers[node].logfile
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return " | ".join(lines[-4:]) if lines else "empty log"

    def _restart_wal_receiver(self, node: str) -> None:
        # By process title: pg_stat_wal_receiver shows nothing until connected.
        for pid in self.lab.servers[node].children():  # processes the lab started
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"walreceiver" in title:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _streaming(self, primary: str) -> set[str]:
        out = self.lab.servers[primary].sql(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        )
        return {line for line in out.splitlines() if line}


def _role_seen(report: MonitorReport, node: str, after_s: float) -> float | None:
    return min(
        (
            e.at_s
            for e in report.role_events
            if e.host == node and e.new is Role.PRIMARY and e.at_s >= after_s
        ),
        default=None,
    )


def _attempt_json(attempt: Attempt, origin_s: float) -> dict[str, Any]:
    return {
        "node": attempt.node,
        "started_ms": ms(attempt.started_s, origin_s),
        "ended_ms": ms(attempt.ended_s, origin_s),
    }
