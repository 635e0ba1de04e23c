"""Regressions found by an independent review, each as a story on the fakes."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

from dbvip.board import liveness_window_s
from dbvip.members import MemberPublisher
from dbvip.model import Reason, Role
from dbvip.ports import MembersReading, Unknown
from dbvip.runner import Snapshot
from integration.lab.eventually import eventually
from tests.fakes import WRITER, FakeClock, FakeEtcd, FakeLeaseStore
from tests.unit.test_stories import T, World


def test_supersession_sticks_while_the_newer_primary_is_only_unseen() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(3.0)
    n2.probe.role, n2.probe.timeline = Role.PRIMARY, 2
    world.run(2 * T.renew_interval_s + 1.0)
    assert world.kernel.holders() == {"n2"}
    n2.probe.role = Role.UNKNOWN  # n2's database restarts: its report turns unknown
    world.run(T.renew_interval_s + T.role_grace_s + 2.0)
    assert world.kernel.holders() == set(), "the timeline-1 primary took the VIP back"
    assert n1.runner.state.reason is Reason.SUPERSEDED
    n2.probe.role = Role.PRIMARY  # back: it takes the VIP again, n1 never did meanwhile
    world.run(2 * T.renew_interval_s + 1.0)
    assert world.kernel.holders() == {"n2"}


def test_supersession_ends_when_the_newer_node_reports_itself_a_replica() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    _n1, n2 = world.nodes
    world.run(3.0)
    n2.probe.role, n2.probe.timeline = Role.PRIMARY, 2
    world.run(2 * T.renew_interval_s + 1.0)
    n2.probe.role = Role.REPLICA  # the promotion was a mistake: n2 rebuilt as a replica
    world.run(3 * T.renew_interval_s + 1.0)
    assert world.kernel.holders() == {"n1"}


def test_a_holder_looking_again_at_its_database_does_not_hammer_etcd() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(3.0)
    reads = n1.store.calls.count("read")
    n1.probe.role = Role.UNKNOWN  # connection refused at once, for most of the grace
    world.run(T.role_grace_s * 0.9)
    assert n1.runner.state.reason is Reason.HOLDING_ROLE_UNSURE
    # About 90 looks at the database; etcd no more than twice a probe interval.
    assert n1.store.calls.count("read") - reads <= 0.9 / (T.probe_interval_s / 2) + 2


def test_maintenance_unread_at_start_keeps_the_node_off_the_vip() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.etcd.maintenance.add("n1")
    world.run(3.0)
    assert world.kernel.holders() == set()
    n1.restart(world.clock)
    real = n1.store.read_members
    failed: list[int] = []

    def first_read_times_out(timeout_s: float) -> MembersReading | Unknown:
        if not failed:
            failed.append(1)
            return Unknown("members read: timed out")
        return real(timeout_s)

    n1.store.read_members = first_read_times_out  # type: ignore[method-assign]
    n1.runner.tick()
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None
    n1.runner.tick()  # asked again at once, not a renew interval later
    assert n1.runner.state.reason is Reason.MAINTENANCE
    world.run(5.0)
    assert world.kernel.holders() == set()


def test_a_moving_lsn_is_not_published_at_every_look() -> None:
    clock = FakeClock()
    store = FakeLeaseStore(FakeEtcd(clock), "n2")
    published: list[str | None] = []
    real_publish = store.publish_member
    lock = threading.Lock()

    def counting(report, timeout_s, lease_id=None):  # type: ignore[no-untyped-def]
        with lock:
            published.append(report.reason)
        return real_publish(report, timeout_s, lease_id)

    store.publish_member = counting  # type: ignore[method-assign]
    publisher = MemberPublisher(store, "vip", period_s=60.0, timeout_s=1.0)
    base = Snapshot("n2", "replica", "", {}, Role.REPLICA, 1, "0/0", False, None, None, 0.0, "")
    publisher.start()
    try:
        for i in range(200):
            publisher.offer(replace(base, lsn=f"0/{i:X}", tick_s=i * 0.01))
            time.sleep(0.001)  # a look every few ms, as an eager replica does
        publisher.offer(replace(base, reason="maintenance", lsn="0/FFFF"))
        eventually(lambda: "maintenance" in published, timeout_s=5)
    finally:
        publisher.stop()
    assert len(published) <= 4, published  # the first, perhaps one racing, the news


def test_one_look_fits_the_liveness_window_when_etcd_and_the_database_hang() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(3.0)
    ticks: list[float] = []
    n1.runner.publish = lambda s: ticks.append(s.tick_s)
    n1.store.fault, n1.probe.hang = "hang", True
    world.run(20.0)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) <= liveness_window_s(T)
