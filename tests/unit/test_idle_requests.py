"""What an idle sidecar asks of etcd: one cluster read and one keepalive per
lease every renew interval, and no write when nothing changed."""

from __future__ import annotations

import time
from dataclasses import replace

from dbvip.members import MemberPublisher
from dbvip.model import Reason, Role
from dbvip.reporting import Snapshot
from integration.lab.eventually import eventually
from tests.fakes import FakeClock, FakeEtcd, FakeLeaseStore
from tests.unit import test_readers, test_stories

T = test_stories.T
IDLE_S = 20.0
BASE = Snapshot("n2", "replica", "", {}, Role.REPLICA, 1, "0/3000000", False, None, None, 0.0, "")


def test_the_holder_reads_the_cluster_each_renew_interval_a_settled_replica_each_ttl() -> None:
    world = test_stories.World(Role.PRIMARY, Role.REPLICA)
    world.run(5.0)  # settled: n1 holds the VIP
    assert world.kernel.holders() == {"n1"}
    before = [list(n.store.calls) for n in world.nodes]
    world.run(IDLE_S)
    every = {"n1": T.renew_interval_s, "n2": float(T.ttl_s)}
    for node, earlier in zip(world.nodes, before, strict=True):
        calls = node.store.calls[len(earlier) :]
        # The periodic look at the writer key rides on the members read.
        assert "read" not in calls, (node.name, calls)
        reads = calls.count("members")
        assert IDLE_S / every[node.name] - 1 <= reads <= IDLE_S / every[node.name] + 1, calls
    holder = world.nodes[0].store.calls[len(before[0]) :]
    assert holder.count("keepalive") <= IDLE_S / T.renew_interval_s + 1
    assert world.kernel.holders() == {"n1"}


def test_a_promoted_replica_reads_the_maintenance_flag_before_it_takes_the_key() -> None:
    world = test_stories.World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(5.0)
    world.run(T.ttl_s - 1.0)  # n2 read the cluster a while ago
    world.etcd.maintenance.add("n2")  # no watch tells it in this world
    n1.probe.role = Role.REPLICA  # switchover: n1 lets go, n2 is promoted
    world.run(1.0)
    n2.probe.role = Role.PRIMARY
    world.run(5.0)
    assert world.kernel.holders() == set()
    assert n2.runner.state.reason is Reason.MAINTENANCE


def test_a_change_reported_by_the_watch_is_still_read_at_once() -> None:
    world = test_stories.World(Role.PRIMARY, Role.REPLICA)
    world.run(5.0)
    n2 = world.nodes[1]
    seen = len(n2.store.calls)
    n2.runner.key_changed()
    n2.runner.tick()
    # At once, and the key with the members in one request.
    assert n2.store.calls[seen:] == ["members"]


def test_the_reader_pool_is_read_with_the_members_not_apart() -> None:
    world = test_readers.primary_and_replicas()
    world.run(5.0)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}
    before = {name: len(node.readers.calls) for name, node in world.nodes.items()}
    members = {name: node.store.calls.count("members") for name, node in world.nodes.items()}
    world.run(IDLE_S)
    for name, node in world.nodes.items():
        assert "read_pool" not in node.readers.calls[before[name] :], name
        assert node.store.calls.count("members") - members[name] >= IDLE_S / T.renew_interval_s - 1
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}
    # A change still moves the pool: a replica's database goes down.
    world.nodes["n2"].probe.role = Role.DOWN
    world.run(2.0)
    assert world.spread() == {"n1": 0, "n2": 0, "n3": 4}


def _publisher(period_s: float) -> tuple[FakeLeaseStore, MemberPublisher]:
    store = FakeLeaseStore(FakeEtcd(FakeClock()), "n2")
    return store, MemberPublisher(store, "vip", period_s=period_s, timeout_s=1.0)


def test_an_unchanged_report_is_not_written_again_only_its_lease_kept_alive() -> None:
    store, publisher = _publisher(0.02)
    publisher.start()
    try:
        publisher.offer(BASE)
        eventually(lambda: store.calls.count("keep_member") >= 10, timeout_s=10)
        publisher.offer(replace(BASE, tick_s=5.0))  # a later look, nothing new in it
        eventually(lambda: store.calls.count("keep_member") >= 20, timeout_s=10)
        assert len(store.members) == 1, store.members
        publisher.offer(replace(BASE, reason="maintenance"))  # news: put at once
        eventually(lambda: len(store.members) == 2, timeout_s=10)
    finally:
        publisher.stop()
    assert [r.reason for r in store.members] == ["replica", "maintenance"]


def test_a_moved_lsn_is_put_with_the_next_keepalive_and_a_lost_lease_puts_it_again() -> None:
    store, publisher = _publisher(0.05)
    publisher.start()
    try:
        publisher.offer(BASE)
        eventually(lambda: len(store.members) == 1, timeout_s=10)
        publisher.offer(replace(BASE, lsn="0/3000100"))
        eventually(lambda: len(store.members) == 2, timeout_s=10)
        assert store.members[-1].lsn == "0/3000100"
        store.member_lease = False  # the lease ended (expired, revoked by hand)
        eventually(lambda: len(store.members) == 3, timeout_s=10)
    finally:
        publisher.stop()
    assert store.members[-1] == store.members[-2]  # the same report, put again


def test_with_a_reader_lease_the_report_rides_on_it_and_needs_no_keepalive_of_its_own() -> None:
    store, publisher = _publisher(0.02)
    publisher.start()
    try:
        publisher.offer(BASE)
        eventually(lambda: store.calls.count("keep_member") >= 3, timeout_s=10)
        publisher.offer(replace(BASE, reader_lease_id=0x77))  # the loop granted one
        eventually(lambda: store.member_leases[-1:] == [0x77], timeout_s=10)
        kept = store.calls.count("keep_member")
        publisher.offer(replace(BASE, reader_lease_id=0x77, lsn="0/3000100"))
        eventually(lambda: len(store.members) == 3, timeout_s=10)  # the LSN, a period later
        time.sleep(0.3)  # fifteen periods
        assert store.calls.count("keep_member") == kept  # the loop keeps the lease alive
        assert len(store.members) == 3 and store.member_leases == [None, 0x77, 0x77]
        publisher.offer(replace(BASE, lsn="0/3000100"))  # the reader lease is gone
        eventually(lambda: store.member_leases[-1:] == [None], timeout_s=10)
        eventually(lambda: store.calls.count("keep_member") > kept + 3, timeout_s=10)
    finally:
        publisher.stop()
