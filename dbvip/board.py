"""The latest published snapshot, and what it says about this node's health.

The loop offers a snapshot after each decision and never waits here: the
lock is held only to swap or copy one reference. Readers (the HTTP server,
the metrics collector) judge the snapshot against the clock at read time.

Two windows define the verdicts, both derived from the timing settings:

- alive: the last decision is at most ``liveness_window_s`` old: three probe
  intervals, plus the longest one tick may block on its adapters (a probe, an
  etcd request, a netlink call), so that an etcd that hangs, which the loop
  survives by design, does not make the process look dead.
- ready: the last probe gave ``primary`` or ``replica``, and the loop's latest
  etcd request was answered, at most ``etcd_window_s`` ago. The loop asks etcd
  at least every ``ttl_s`` (a settled replica without reader VIPs; every
  ``renew_interval_s`` otherwise, see ``looking.Looker._backstop_s``), each
  request takes up to ``request_timeout_s``, and the loop itself may be late
  by up to the liveness window.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dbvip.identity import Identity
from dbvip.keys import member_value
from dbvip.members import report_of
from dbvip.model import Role, Timing
from dbvip.ports import Clock
from dbvip.reporting import Snapshot
from dbvip.status_view import member_row


def liveness_window_s(t: Timing) -> float:
    # One look may block on a probe, the writer key read and the members read.
    return 3 * t.probe_interval_s + t.probe_timeout_s + 2 * t.request_timeout_s + t.vip_op_timeout_s


def etcd_window_s(t: Timing) -> float:
    every_s = max(t.renew_interval_s, float(t.ttl_s))  # a settled replica's backstop read
    return every_s + t.request_timeout_s + liveness_window_s(t)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    why: str


def liveness(snapshot: Snapshot | None, now_s: float, timing: Timing) -> Verdict:
    if snapshot is None:
        return Verdict(False, "no decision yet")
    age_s, window_s = now_s - snapshot.tick_s, liveness_window_s(timing)
    ok = age_s <= window_s
    where = "within" if ok else "past"
    return Verdict(ok, f"last decision {age_s:.2f} s ago ({where} the {window_s:g} s window)")


def etcd_problem(snapshot: Snapshot | None, now_s: float, timing: Timing) -> str:
    """Why etcd does not count as answering the loop ("" when it does): the
    etcd half of readiness, also exported on its own as a metric."""
    if snapshot is None:
        return "no decision yet"
    window_s = etcd_window_s(timing)
    if snapshot.etcd_error:
        return f"etcd unreachable: {snapshot.etcd_error}"
    if snapshot.etcd_answered_s is None:
        return "etcd has not answered yet"
    if (age_s := now_s - snapshot.etcd_answered_s) > window_s:
        return f"etcd last answered {age_s:.2f} s ago (past the {window_s:g} s window)"
    return ""


def readiness(snapshot: Snapshot | None, now_s: float, timing: Timing) -> Verdict:
    if snapshot is None:
        return Verdict(False, "no decision yet")
    problems = []
    if snapshot.role is Role.UNKNOWN or snapshot.role is Role.DOWN:
        cause = snapshot.facts.get("role_cause") or "no answer"
        problems.append(f"role {snapshot.role.value}: {cause}")
    if etcd := etcd_problem(snapshot, now_s, timing):
        problems.append(etcd)
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, f"role {snapshot.role.value}, etcd answering")


class Board:
    def __init__(
        self, vip: str, timing: Timing, clock: Clock, identity: Identity | None = None
    ) -> None:
        self._vip = vip
        self._identity = identity
        self._timing = timing
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: tuple[Snapshot, str] | None = None

    def offer(self, snapshot: Snapshot) -> None:
        """The runner's publish hook: keep the latest, with its wall time."""
        wall = self._clock.wall_iso()
        with self._lock:
            self._latest = (snapshot, wall)

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._latest[0] if self._latest else None

    def now_s(self) -> float:
        return self._clock.monotonic_s()

    def liveness(self) -> Verdict:
        return liveness(self.latest(), self.now_s(), self._timing)

    def readiness(self) -> Verdict:
        return readiness(self.latest(), self.now_s(), self._timing)

    def etcd_answering(self) -> bool:
        return not etcd_problem(self.latest(), self.now_s(), self._timing)

    def status(self) -> dict[str, Any] | None:
        """This node's row of ``dbvip status --json``, as of its last decision
        (``ttl_s`` is etcd's to tell: null), plus ``loop``: what only the
        running process knows."""
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        snap, wall = latest
        now_s = self.now_s()
        row = member_row(
            snap.node, member_value(report_of(snap, self._vip), wall, self._identity), None
        )
        row["loop"] = {
            "detail": snap.detail,
            "facts": snap.facts,
            "lease": None if snap.lease_id is None else f"{snap.lease_id:x}",
            "deadline_in_s": None
            if snap.deadline_in_s is None
            else round(snap.deadline_in_s - (now_s - snap.tick_s), 3),
            "decided_s_ago": round(now_s - snap.tick_s, 3),
            "last_failure": snap.last_failure,
            "etcd_error": snap.etcd_error,
            "alive": liveness(snap, now_s, self._timing).ok,
            "ready": readiness(snap, now_s, self._timing).ok,
        }
        if snap.reader_reason:  # reader VIPs are configured
            row["loop"]["readers"] = {"reason": snap.reader_reason, "detail": snap.reader_detail}
        return row
