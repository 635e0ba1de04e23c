"""The failure scenarios, each on a real lab: three PostgreSQL nodes with their
dbvip sidecars in network namespaces, etcd, and a client writing through the
writer VIP. The invariant monitor samples every node's addresses every few ms
during each scenario and ``lab.watched()`` fails the test on any sample with
two holders of the writer VIP.
"""

from __future__ import annotations

import signal
import time

import pytest

from dbvip.model import Role
from integration.conftest import MakeLab
from integration.lab.arpwatch import ArpWatch
from integration.lab.eventually import eventually
from integration.lab.lab import FAST_TIMING, Lab
from integration.lab.monitor import MonitorReport, VipChange
from integration.lab.writer import first_ok_after

pytestmark = pytest.mark.real
FAST = tuple(FAST_TIMING.items())
TTL_S = float(FAST_TIMING["DBVIP_TTL_S"])


def vip_instants(report: MonitorReport, node: str, change: VipChange) -> list[float]:
    return [e.at_s for e in report.vip_events if e.host == node and e.change is change]


def member(lab: Lab, node: str, via: str) -> dict[str, object]:
    """``node``'s member report as ``dbvip status --json`` on ``via`` shows it."""
    members = lab.status(via)["members"]
    assert isinstance(members, list)
    found: dict[str, object] = next(m for m in members if m["node"] == node)
    return found


# -- 1. start-up ---------------------------------------------------------------


def test_startup_primary_takes_the_vip_replicas_never_do(make_lab: MakeLab) -> None:
    lab = make_lab()
    with lab.watched() as monitor:
        lab.wait_holder("n1")
        assert lab.written_by("n1").node == "n1"
        time.sleep(1.5)  # replicas keep deciding: give them a few probe intervals
        assert lab.holders() == {"n1"}
    report = monitor.report()
    assert {e.host for e in report.vip_events} == {"n1"}, report.timeline()
    report.assert_no_vacancy()
    writer = lab.writer_value()
    assert writer is not None and writer["node"] == "n1"
    for replica in ("n2", "n3"):
        assert member(lab, replica, via="n1")["role"] == "replica"


# -- 2. switchover ---------------------------------------------------------------


def test_switchover_moves_the_vip_and_the_client_learns_the_new_mac(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    lab.written_by("n1")
    assert lab.client_neighbour_mac() == lab.mac("n1")
    arp = ArpWatch(lab.netns("client"))
    try:
        with lab.watched() as monitor:
            writer = lab.start_writer()
            lab.demote("n1")
            promote_s = lab.promote("n2")
            lab.wait_primary("n2")
            lab.wait_holder("n2")
            # The client kept writing to n1's MAC a moment ago; only an
            # announcement makes its entry point to n2 this soon.
            eventually(lambda: lab.client_neighbour_mac() == lab.mac("n2"), timeout_s=5)
            eventually(lambda: first_ok_after(writer.attempts(), promote_s), timeout_s=30)
            attempts = writer.stop()
        announcements = [f for f in arp.frames() if f.gratuitous and f.sender_ip == lab.vip.ip]
    finally:
        arp.close()
    assert any(f.sender_mac == lab.mac("n2") for f in announcements), announcements
    assert all(f.sender_mac == lab.mac("n2") for f in announcements)
    first = first_ok_after(attempts, promote_s)
    assert first is not None and first.node == "n2"
    monitor.report().assert_no_vacancy()
    assert lab.role("n1") is Role.REPLICA


# -- 3. crash failover -----------------------------------------------------------


def test_crash_failover_old_holder_lets_go_then_the_vip_follows(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        lab.crash_db("n1")
        # Before anyone is promoted, the crashed primary's sidecar drops the
        # VIP and deletes the writer key (nothing listens: no role grace), not
        # at ttl.
        lab.wait_holder(None, timeout_s=10)
        eventually(lambda: lab.writer_value() is None, timeout_s=10)
        lab.promote("n2")
        lab.wait_holder("n2")
        lab.written_by("n2")
    assert "database_down" in lab.sidecar_log("n1")


# -- 4. SIGTERM / SIGINT on the holder ---------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_holder_sidecar_stopped_releases_vip_and_key_at_once(
    make_lab: MakeLab, signum: signal.Signals
) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    eventually(lambda: lab.writer_value() is not None)
    with lab.watched():
        lab.kill_sidecar("n1", signum)
        # The process has exited: the VIP and the key must already be gone.
        assert lab.sidecars["n1"].proc.returncode == 0
        assert lab.holders() == set()
        assert lab.writer_value() is None


# -- 5. SIGKILL on the holder ----------------------------------------------------


def test_killed_holder_vip_expires_by_kernel_before_a_new_holder_takes_it(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    with lab.watched() as monitor:
        killed_s = time.monotonic()
        lab.kill_sidecar("n1", signal.SIGKILL)
        assert lab.holders() == {"n1"}  # nobody removed it: only the kernel will
        lab.promote("n2")  # a second primary; n1's database still runs
        lab.wait_holder("n2", timeout_s=3 * TTL_S)
    report = monitor.report()
    (gone_s,) = vip_instants(report, "n1", VipChange.REMOVED)
    (added_s,) = vip_instants(report, "n2", VipChange.ADDED)
    assert gone_s < added_s
    assert gone_s - killed_s < TTL_S  # the kernel lifetime ends before etcd's lease


def test_frozen_holder_sidecar_cannot_keep_the_vip_and_stays_off_when_thawed(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    with lab.watched() as monitor:
        lab.freeze_sidecar("n1")
        try:
            lab.crash_db("n1")
            lab.promote("n2")
            lab.wait_holder("n2", timeout_s=3 * TTL_S)
        finally:
            lab.thaw_sidecar("n1")
        time.sleep(1.0)  # n1's sidecar wakes up past its deadline
        assert lab.holders() == {"n2"}
    report = monitor.report()
    (gone_s,) = vip_instants(report, "n1", VipChange.REMOVED)
    (added_s,) = vip_instants(report, "n2", VipChange.ADDED)
    assert gone_s < added_s


def test_restarted_sidecar_adopts_its_key_without_a_blink(make_lab: MakeLab) -> None:
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    before = eventually(lab.writer_value)
    with lab.watched() as monitor:
        lab.kill_sidecar("n1", signal.SIGKILL)
        lab.start_sidecar("n1")
        after = eventually(lambda: (v := lab.writer_value()) and v["lease"] != before["lease"]
                           and v)  # fmt: skip
        assert isinstance(after, dict)  # truthy, so not the False of "and"
        time.sleep(TTL_S)  # past the old lease's expiry: the VIP stays
        assert lab.holders() == {"n1"}
    assert after["node"] == "n1"
    assert vip_instants(monitor.report(), "n1", VipChange.REMOVED) == []
    assert "adopting" in lab.sidecar_log("n1")


# -- 6. holder cut off from etcd -------------------------------------------------


@pytest.mark.parametrize("cut", ["from-etcd", "isolated"])
def test_holder_cut_off_drops_vip_before_its_lease_expires(make_lab: MakeLab, cut: str) -> None:
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    eventually(lab.writer_value)
    with lab.watched() as monitor:
        if cut == "from-etcd":
            lab.cut_from_etcd("n1")  # its clients still reach it
        else:
            lab.isolate("n1")  # its switch port down: cut off from everything
        # etcd's side: the key goes when the lease expires there.
        key_gone_s = eventually(
            lambda: time.monotonic() if lab.writer_value() is None else None,
            timeout_s=3 * TTL_S, interval_s=0.02,
        )  # fmt: skip
        lab.heal("n1")
        lab.wait_holder("n1", timeout_s=3 * TTL_S)
        lab.written_by("n1")
    report = monitor.report()
    removed = vip_instants(report, "n1", VipChange.REMOVED)
    assert removed and removed[0] < key_gone_s, report.timeline()
    assert "lease_expiring" in lab.sidecar_log("n1") or "lease_expired" in lab.sidecar_log("n1")


# -- 7. etcd frozen / stopped past the ttl ------------------------------------------


@pytest.mark.parametrize("outage", ["frozen", "stopped"])
def test_etcd_outage_drops_vip_by_deadline_and_recovers(make_lab: MakeLab, outage: str) -> None:
    lab = make_lab(sidecar_settings=FAST)
    lab.wait_holder("n1")
    with lab.watched() as monitor:
        began_s = time.monotonic()
        if outage == "frozen":
            lab.freeze_etcd()
        else:
            lab.stop_etcd()
        try:
            lab.wait_holder(None, timeout_s=3 * TTL_S)
            time.sleep(1.0)  # well past the ttl in all: the VIP stays down
            assert lab.holders() == set()
        finally:
            if outage == "frozen":
                lab.thaw_etcd()
            else:
                lab.start_etcd()
        lab.wait_holder("n1", timeout_s=6 * TTL_S)
        lab.written_by("n1")
    (removed_s, *_) = vip_instants(monitor.report(), "n1", VipChange.REMOVED)
    assert removed_s - began_s < TTL_S


# -- 8. two primaries ----------------------------------------------------------


def test_two_primaries_one_vip_and_the_newer_timeline_wins(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        lab.promote("n2")  # n1's database still runs and still believes it is primary
        lab.wait_primary("n2")
        # n2 reports the conflict while n1 holds the key; n1 reads the members
        # every renew interval, sees a primary on a newer timeline, steps down.
        lab.wait_holder("n2", timeout_s=30)
        eventually(lambda: member(lab, "n1", via="n1")["reason"] == "superseded", timeout_s=30)
        assert lab.holders() == {"n2"}
        lab.written_by("n2")
    assert lab.primaries() == ["n1", "n2"]
    assert "reason=conflict" in lab.sidecar_log("n2")
    assert "reason=superseded" in lab.sidecar_log("n1")
    assert "timeline 2" in lab.sidecar_log("n1")


# -- 9. three-member etcd, the holder's member stopped ----------------------------------


def test_holder_keeps_vip_when_its_etcd_member_stops(make_lab: MakeLab) -> None:
    lab = make_lab(etcd_members=3, sidecar_settings=FAST)
    lab.wait_holder("n1")
    used = lab.etcd_members_used_by("n1")
    assert used, "the holder has no connection to etcd"
    with lab.watched() as monitor:
        lab.stop_etcd(used[0])
        time.sleep(2 * TTL_S)  # several renewals, all through the other members
        assert lab.holders() == {"n1"}
    report = monitor.report()
    assert vip_instants(report, "n1", VipChange.REMOVED) == [], report.timeline()
    report.assert_no_vacancy()


# -- 10. bad input at run time -------------------------------------------------------


def test_garbage_in_the_writer_key_is_logged_and_replaced(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        lab.etcdctl("put", lab.writer_key, "{not json")  # no lease: backs no VIP
        # The holder drops the VIP (nobody can prove it holds the key), then,
        # its own claim released, replaces the garbage: no operator repair.
        eventually(lambda: (lab.writer_value() or {}).get("node") == "n1", timeout_s=30)
        lab.wait_holder("n1")
        assert all(s.proc.poll() is None for s in lab.sidecars.values())  # no crash loop
    # The VIP went down in between: the rule that reports this removes it
    # first (too briefly, a few ms, for the monitor to be sure to see it).
    assert "reason=writer_key_invalid" in lab.sidecar_log("n1")


def test_vip_deleted_by_hand_comes_back(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        lab.delete_vip("n1")
        lab.wait_holder("n1", timeout_s=10)
    assert "vip_restored" in lab.sidecar_log("n1")
    assert lab.sidecars["n1"].proc.poll() is None


def test_interface_down_and_up(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        lab.set_link("n1", up=False)
        time.sleep(1.0)
        lab.set_link("n1", up=True)
        lab.wait_holder("n1", timeout_s=30)
        lab.written_by("n1")
    assert all(s.proc.poll() is None for s in lab.sidecars.values())


def test_postgres_refusing_connections(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        lab.refuse_sidecar_connections("n1")
        lab.wait_holder(None, timeout_s=10)
        eventually(lambda: lab.writer_value() is None, timeout_s=10)
        assert lab.sidecars["n1"].proc.poll() is None
        lab.accept_sidecar_connections("n1")
        lab.wait_holder("n1", timeout_s=10)
    log = lab.sidecar_log("n1")
    assert "role_unknown_past_grace" in log
    assert "pg_hba.conf rejects connection" in log
