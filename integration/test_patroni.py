"""dbvip paired with real Patroni (PyPI, ``.venv-patroni``): three nodes, each
with Patroni and a dbvip sidecar, etcd for both. The Patroni leader dies;
Patroni promotes a replica once its leader key expires (ttl 20 s, its
minimum) and dbvip moves the writer VIP to it, under the invariant monitor.

Two ways to die: the whole node (Patroni killed, PostgreSQL stopped at once),
and Patroni alone (SIGKILL): its PostgreSQL stays a primary on the old
timeline, and only dbvip's two-primaries rule (the newer timeline wins)
takes the VIP off it.
"""

from __future__ import annotations

import time

import pytest

from dbvip.model import Role
from integration.conftest import MakeLab
from integration.lab.eventually import eventually
from integration.lab.lab import Lab
from integration.lab.monitor import MonitorReport, VipChange
from integration.lab.patroni import TIMING, PatroniCluster
from integration.lab.writer import Attempt

pytestmark = pytest.mark.real
# The leader key outlives a killed Patroni by up to ttl; then an election.
FAILOVER_TIMEOUT_S = 3.0 * TIMING["ttl"]


def patroni(lab: Lab) -> PatroniCluster:
    assert lab.patroni is not None, "not a Patroni lab"
    return lab.patroni


def first_write_by(attempts: list[Attempt], node: str, after_s: float) -> Attempt | None:
    return min((a for a in attempts if a.ok and a.node == node and a.started_s >= after_s),
               key=lambda a: a.started_s, default=None)  # fmt: skip


def became_primary_s(report: MonitorReport, node: str) -> float:
    return next(e.at_s for e in report.role_events if e.host == node and e.new is Role.PRIMARY)


def vip_added_s(report: MonitorReport, node: str) -> float:
    return next(e.at_s for e in report.vip_events if e.host == node and e.change is VipChange.ADDED)


@pytest.mark.parametrize("fault", ["node-dies", "patroni-killed"])
def test_patroni_promotes_a_replica_and_the_vip_follows(make_lab: MakeLab, fault: str) -> None:
    lab = make_lab(patroni=True)
    cluster = patroni(lab)
    old = cluster.leader()
    assert old is not None
    lab.wait_holder(old)
    lab.written_by(old)
    with lab.watched() as monitor:
        writer = lab.start_writer(interval_s=0.05)
        killed_s = time.monotonic()
        cluster.kill(old)
        if fault == "node-dies":
            lab.crash_db(old)
        new = eventually(lambda: (leader := cluster.leader()) not in (None, old) and leader,
                         timeout_s=FAILOVER_TIMEOUT_S, interval_s=0.05)  # fmt: skip
        assert isinstance(new, str)  # truthy, so not the False of "and"
        lab.wait_primary(new, timeout_s=FAILOVER_TIMEOUT_S)
        lab.wait_holder(new, timeout_s=FAILOVER_TIMEOUT_S)
        first = eventually(lambda: first_write_by(writer.attempts(), new, killed_s), timeout_s=30)
        attempts = writer.stop()
    report = monitor.report()
    promoted_s, added_s = became_primary_s(report, new), vip_added_s(report, new)
    # Writes the old primary took once the new one was promoted: lost in the fork.
    late = [a for a in attempts if a.ok and a.node == old and a.started_s > promoted_s]
    print(
        f"{fault}: {old} -> {new}: promoted {promoted_s - killed_s:.3f} s after the kill, "
        f"VIP on {new} {added_s - killed_s:.3f} s, first write {first.ended_s - killed_s:.3f} s; "
        f"{len(late)} writes acknowledged by {old} after the promotion\n{report.timeline()}"
    )
    assert lab.holders() == {new}
    assert added_s >= promoted_s
    if fault == "node-dies":
        assert "database_down" in lab.sidecar_log(old)
    else:
        # Nobody demoted the old primary: dbvip's timeline rule took the VIP off it.
        assert lab.role(old) is Role.PRIMARY
        assert "reason=superseded" in lab.sidecar_log(old)
