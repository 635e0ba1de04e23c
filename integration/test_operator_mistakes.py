"""Operator mistakes on a real lab (issue 13): two sidecars given one node
name, the writer key deleted by hand, etcd wiped or restored from an older
snapshot. ``lab.watched()`` fails a test on any monitor sample with two
holders of the writer VIP.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from integration.conftest import MakeLab
from integration.lab.eventually import eventually
from integration.lab.lab import FAST_TIMING, Lab
from integration.lab.monitor import MonitorReport, VipChange

pytestmark = pytest.mark.real
FAST = tuple(FAST_TIMING.items())
TTL_S = float(FAST_TIMING["DBVIP_TTL_S"])


def twin_on(lab: Lab, host: str, name: str) -> None:
    """``host``'s own sidecar stopped; one configured with ``name`` started there."""
    lab.kill_sidecar(host, signal.SIGTERM)
    lab.start_sidecar(host, name=name)


def vip_removals(report: MonitorReport, node: str) -> int:
    return sum(1 for e in report.vip_events if e.host == node and e.change is VipChange.REMOVED)


# -- two sidecars, one node name -------------------------------------------------


def test_a_twin_on_a_replica_never_touches_the_holders_key(make_lab: MakeLab) -> None:
    """n3's sidecar is started with n1's name (a copied file). Before, it
    released n1's key as "its own" on a replica; now it holds nothing."""
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    lease_before = lab.writer_value()
    assert lease_before is not None
    with lab.watched() as monitor:
        twin_on(lab, "n3", "n1")
        eventually(lambda: "reason=name_conflict" in lab.sidecar_log("n3"), timeout_s=15)
        time.sleep(3 * TTL_S)
        assert lab.holders() == {"n1"}
    report = monitor.report()
    assert vip_removals(report, "n1") == 0, report.timeline()
    writer = lab.writer_value()
    assert writer is not None and writer["instance"] == lease_before["instance"]
    assert "reason=key_lost" not in lab.sidecar_log("n1")


def test_a_twin_on_a_second_primary_holds_nothing_until_the_first_goes_away(
    make_lab: MakeLab,
) -> None:
    """Two primaries, and the newer one's sidecar configured as n1: it must
    neither adopt n1's lease nor take the VIP while n1's sidecar lives; once
    that one is stopped (its key released, its report expired), it may."""
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    lab.kill_sidecar("n2", signal.SIGTERM)
    lab.promote("n2")
    lab.wait_primary("n2")
    with lab.watched():
        lab.start_sidecar("n2", name="n1")
        eventually(lambda: "reason=name_conflict" in lab.sidecar_log("n2"), timeout_s=15)
        time.sleep(3 * TTL_S)
        assert lab.holders() == {"n1"}
        lab.kill_sidecar("n1", signal.SIGTERM)  # the first one goes away
        lab.wait_holder("n2", timeout_s=6 * TTL_S)
        lab.written_by("n2")
    assert "adopting" not in lab.sidecar_log("n2")


# -- the writer key deleted by hand ------------------------------------------------


def test_writer_key_deleted_by_hand_with_two_primaries_never_gives_two_writers(
    make_lab: MakeLab,
) -> None:
    """n1 holds the VIP, its sidecar frozen (it cannot notice anything); n2
    is promoted too; an operator deletes the writer key. n1's claim, under
    its lease, keeps n2 off until that lease ends (n1's VIP is gone by then)."""
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    with lab.watched():
        lab.freeze_sidecar("n1")
        lab.promote("n2")
        lab.wait_primary("n2")
        lab.etcdctl("del", lab.writer_key)
        eventually(lambda: "reason=key_deleted" in lab.sidecar_log("n2"), timeout_s=10)
        lab.wait_holder("n2", timeout_s=4 * TTL_S)
        lab.thaw_sidecar("n1")
        time.sleep(2.0)
        assert lab.holders() == {"n2"}


# -- etcd wiped, etcd restored ---------------------------------------------------


def test_etcd_wiped_the_holder_starts_afresh(make_lab: MakeLab) -> None:
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    assert lab.etcd is not None
    with lab.watched():
        lab.etcd.wipe()
        eventually(lambda: "reason=etcd_reset" in lab.sidecar_log("n1"), timeout_s=15)
        lab.wait_holder("n1", timeout_s=6 * TTL_S)
        lab.written_by("n1")
    writer = lab.writer_value()
    assert writer is not None and writer["node"] == "n1"


def test_etcd_restored_from_an_older_snapshot_brings_back_no_second_writer(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    """A snapshot while n1 held the VIP; a switchover to n2; then etcd is
    restored: n1's key and lease are back, with their whole TTL. n1 (a
    replica now) lets go of its key, n2 starts afresh; one writer throughout."""
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    assert lab.etcd is not None
    snapshot = tmp_path / "etcd.snapshot"
    lab.etcd.snapshot_save(snapshot)
    lab.demote("n1")
    lab.promote("n2")
    lab.wait_holder("n2")
    time.sleep(2.0)  # more history after the snapshot
    with lab.watched():
        lab.etcd.restore(snapshot)
        eventually(lambda: "reason=etcd_reset" in lab.sidecar_log("n2"), timeout_s=15)
        lab.wait_holder("n2", timeout_s=6 * TTL_S)
        lab.written_by("n2")
    writer = lab.writer_value()
    assert writer is not None and writer["node"] == "n2"
