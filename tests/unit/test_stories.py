"""Multi-tick stories: the real Runner and core over in-memory fakes on a fake clock."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from typing import NoReturn

import pytest

from dbvip.actions import (
    AddVip,
    Failed,
)
from dbvip.guard import vip_lifetime_s
from dbvip.members import report_of
from dbvip.model import (
    Reason,
    Role,
    Timing,
)
from dbvip.runner import Ports, Runner, Snapshot
from tests.fakes import (
    WRITER,
    FakeAnnouncer,
    FakeClock,
    FakeEtcd,
    FakeKernel,
    FakeLeaseStore,
    FakeProbe,
    FakeVipDriver,
    FakeWaiter,
)

T = Timing()


class Node:
    def __init__(
        self,
        name: str,
        clock: FakeClock,
        etcd: FakeEtcd,
        kernel: FakeKernel,
        role: Role = Role.PRIMARY,
    ) -> None:
        self.name = name
        self.probe = FakeProbe(clock, role)
        self.store = FakeLeaseStore(etcd, name)
        self.vip = FakeVipDriver(kernel, name)
        self.announcer = FakeAnnouncer(kernel, name)
        self.waiter = FakeWaiter(clock)
        self.runner = self.restart(clock)

    def restart(self, clock: FakeClock) -> Runner:
        if hasattr(self, "runner"):  # a new process: a new instance, same host and interface
            self.store.identity = self.store.identity.restarted()
        self.runner = Runner(
            self.name,
            T,
            Ports(clock, self.probe, self.store, self.vip, self.announcer),
            self.waiter,
            self.publish,
        )
        return self.runner

    def reason(self) -> Reason | None:
        """The runner's reason now: read afresh, so that a check after the
        world ran is not judged by what an earlier check narrowed it to."""
        return self.runner.state.reason

    def publish(self, snapshot: Snapshot) -> None:
        """The member report, as the publisher thread would put it in etcd."""
        if self.store.fault == "ok":
            self.store.etcd.report(self.store.identity, report_of(snapshot, "vip"))


class World:
    def __init__(self, *roles: Role) -> None:
        self.clock = FakeClock()
        self.etcd = FakeEtcd(self.clock)
        self.kernel = FakeKernel(self.clock, lateness_s=1.0)
        self.nodes = [
            Node(f"n{i + 1}", self.clock, self.etcd, self.kernel, r) for i, r in enumerate(roles)
        ]

    def check(self) -> None:
        """S1 and the lease invariant, against ground truth."""
        holders = self.kernel.holders()
        assert len(holders) <= 1, f"two writers: {holders}"
        for node in holders:
            truth = self.etcd.writer_holder()
            # The kernel may still show a VIP whose lifetime runs out, but
            # only while the etcd lease it was added under is still alive.
            assert truth is not None and truth[0] == node, (node, truth)

    def run(self, seconds: float, nodes: list[Node] | None = None) -> None:
        until = self.clock.now_s + seconds
        nodes = self.nodes if nodes is None else nodes
        while self.clock.now_s < until:
            wake = until
            for node in nodes:
                wake = min(wake, node.runner.tick().wake_s)
                self.check()
            self.clock.advance(max(0.001, wake - self.clock.now_s))
            self.check()


def test_primary_takes_the_vip_and_announces_it_three_times_spaced() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}
    assert world.etcd.writer_holder() is not None
    assert world.etcd.writer_holder()[0] == "n1"  # type: ignore[index]
    times = [t for t, had_vip in n1.announcer.sent]
    assert len(times) == T.announce_count
    assert all(had for _, had in n1.announcer.sent), "announced a VIP it did not have"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= T.announce_interval_s - 1e-9 for g in gaps)


def test_take_over_happens_in_the_first_tick() -> None:
    world = World(Role.PRIMARY)
    world.nodes[0].runner.tick()
    assert world.kernel.holders() == {"n1"}


def test_replicas_never_take_the_vip() -> None:
    world = World(Role.REPLICA, Role.REPLICA)
    world.run(30.0)
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None


def test_switchover_vip_follows_and_key_is_freed_at_once() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(1.0)
    n1.probe.role = Role.REPLICA
    n1.runner.tick()
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None, "key must be deleted, not left to expire"
    assert world.etcd.leases == {}, "lease must be revoked"
    removed_at = n1.vip.ops[-1]
    n2.probe.role = Role.PRIMARY
    world.run(1.0)
    assert world.kernel.holders() == {"n2"}
    assert removed_at[0] == "remove"


def test_two_primaries_one_vip_and_the_other_reports_the_conflict() -> None:
    world = World(Role.PRIMARY, Role.PRIMARY)
    world.run(5.0)
    assert world.kernel.holders() == {"n1"}
    assert world.nodes[1].runner.state.reason is not None
    assert world.nodes[1].runner.state.reason.value == "conflict"


def test_a_replica_promoted_beside_the_holder_supersedes_it_by_timeline() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(3.0)
    n2.probe.role, n2.probe.timeline = Role.PRIMARY, 2  # promoted; n1 still primary
    world.run(2 * T.renew_interval_s + 1.0)  # n1 reads the members every renew interval
    assert world.kernel.holders() == {"n2"}
    assert n1.runner.state.reason is Reason.SUPERSEDED
    assert "timeline 2" in n1.runner.state.detail
    world.run(30.0)  # and it stays away while the newer primary lives
    assert world.kernel.holders() == {"n2"}


def test_maintenance_steps_down_stays_away_and_comes_back_when_told() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(3.0)
    world.etcd.maintenance.add("n1")  # dbvip maintenance on --node n1
    world.run(T.renew_interval_s + 0.5)  # read with the members, every renew interval
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None, "released, not left to expire"
    assert n1.reason() is Reason.MAINTENANCE
    n1.probe.role, n2.probe.role = Role.REPLICA, Role.PRIMARY  # the planned switchover
    world.run(2.0)
    assert world.kernel.holders() == {"n2"}
    world.etcd.maintenance.discard("n1")
    n1.runner.key_changed()  # the watch: a maintenance flag changed
    world.run(0.5)
    assert n1.reason() is Reason.REPLICA


def test_a_replica_that_saw_the_key_free_catches_its_promotion_at_once() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(3.0)
    n1.probe.role = Role.REPLICA  # switchover: the old primary is demoted first
    world.run(T.renew_interval_s + 0.5)  # n2 re-reads the key (no watch here): free
    promoted_s = world.clock.now_s
    n2.probe.role = Role.PRIMARY
    world.run(0.5)
    added_s = next(t for op, t in n2.vip.ops if op == "add")
    # One eager probe interval, not one probe interval, after the promotion.
    assert added_s - promoted_s <= T.eager_probe_interval_s + 1e-9


def test_a_holder_whose_database_stopped_answering_looks_again_at_once() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(3.0)
    n1.probe.role = Role.UNKNOWN  # restarting
    world.run(0.1)
    n1.probe.role = Role.REPLICA  # back, as a replica
    back_s = world.clock.now_s
    world.run(0.5)
    (removed_s,) = (t for op, t in n1.vip.ops if op == "remove")
    assert removed_s - back_s <= T.eager_probe_interval_s + 1e-9
    assert world.etcd.get(WRITER) is None


def test_eager_probing_ends_with_its_window_and_never_touches_etcd() -> None:
    world = World(Role.REPLICA, Role.REPLICA)  # no primary: the key stays free
    n1 = world.nodes[0]
    world.run(T.renew_interval_s + 0.5)
    reads, probes = n1.store.calls.count("read"), n1.probe.probes
    world.run(5.0)
    # The database is probed at the eager pace; etcd only every renew interval.
    assert n1.probe.probes - probes >= 0.9 * 5.0 / T.eager_probe_interval_s
    assert n1.store.calls.count("read") - reads <= 5.0 / T.renew_interval_s + 1
    world.run(T.eager_window_s)
    probes = n1.probe.probes
    world.run(5.0)
    assert n1.probe.probes - probes <= 5.0 / T.probe_interval_s + 2


def test_etcd_hangs_vip_comes_down_before_the_lease_can_expire() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    lease_id = n1.runner.state.lease.lease_id  # type: ignore[union-attr]
    n1.store.fault = "hang"
    world.run(T.ttl_s * 2)  # check() after every tick: VIP only under a live lease
    assert world.kernel.holders() == set()
    world.etcd.expire()
    assert lease_id not in world.etcd.leases
    n1.store.fault = "ok"
    world.run(3.0)
    assert world.kernel.holders() == {"n1"}, "primary must take the VIP again by itself"


def test_etcd_refuses_vip_comes_down_by_the_deadline_then_returns() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.store.fault = "refuse"
    world.run(T.ttl_s - T.margin_s)
    assert world.kernel.holders() == set()
    n1.store.fault = "ok"
    world.run(T.ttl_s)
    assert world.kernel.holders() == {"n1"}


def test_frozen_sidecar_kernel_lifetime_removes_the_vip_before_lease_expiry() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(3.0)
    n2.probe.role = Role.PRIMARY
    n1.probe.role = Role.REPLICA  # n1 is frozen: it will never see this
    world.run(T.ttl_s + 2, nodes=[n2])  # check() proves no overlap at any step
    assert world.kernel.holders() == {"n2"}


def test_restart_adopts_the_key_onto_a_new_lease_without_blinking_the_vip() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(3.0)
    old_lease = n1.runner.state.lease.lease_id  # type: ignore[union-attr]
    ops_before = len(n1.vip.ops)
    n1.restart(world.clock)
    world.run(5.0)
    lease = n1.runner.state.lease
    assert lease is not None
    assert lease.lease_id != old_lease, "a lease whose release may be in flight is not reused"
    assert world.etcd.writer_holder() == ("n1", lease.lease_id)
    assert old_lease not in world.etcd.leases
    assert all(op == "add" for op, _ in n1.vip.ops[ops_before:]), "the VIP must not blink"
    assert world.kernel.holders() == {"n1"}


def test_restart_as_replica_releases_the_old_key_at_once() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.probe.role = Role.REPLICA
    n1.restart(world.clock)
    n1.runner.tick()
    assert world.etcd.get(WRITER) is None
    assert world.kernel.holders() == set()


def test_stop_releases_everything_and_returns() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.waiter.on_wait = n1.runner.stop
    n1.runner.run()
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None
    assert world.etcd.leases == {}


def test_key_deleted_by_hand_vip_drops_then_comes_back() -> None:
    world = World(Role.PRIMARY)
    world.run(1.0)
    world.etcd.delete(WRITER)
    world.nodes[0].runner.key_changed()  # the watch
    world.nodes[0].runner.tick()
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}


def test_garbage_put_by_hand_over_the_writer_key_drops_the_vip_then_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``etcdctl put`` of garbage detaches the key from the holder's lease:
    the holder drops the VIP at once (reason writer_key_invalid); a key with
    no lease backs no VIP, so once the holder's claim is gone with its lease,
    the primary replaces it and never stays blocked."""
    world = World(Role.PRIMARY, Role.REPLICA)
    caplog.set_level(logging.INFO, "dbvip")
    world.run(1.0)
    world.etcd.put(WRITER, b"\x00garbage")
    world.nodes[0].runner.key_changed()  # the watch
    world.nodes[0].runner.tick()
    assert world.kernel.holders() == set()
    assert world.nodes[0].runner.state.reason is not None
    assert any("writer_key_invalid" in r.getMessage() for r in caplog.records)
    world.run(2.0)
    assert world.kernel.holders() == {"n1"}
    assert world.etcd.writer_holder() is not None


def test_garbage_under_a_live_lease_blocks_taking_until_that_lease_ends() -> None:
    world = World(Role.REPLICA, Role.PRIMARY)
    lease_id, _ = world.etcd.grant(6)
    world.etcd.put(WRITER, b"\x00garbage", lease_id)
    world.run(5.0)
    assert world.kernel.holders() == set()
    assert world.nodes[1].runner.state.reason is Reason.WRITER_KEY_INVALID
    world.run(3.0)  # the lease ran out and took the garbage with it
    assert world.kernel.holders() == {"n2"}


def test_vip_deleted_by_hand_comes_back_and_is_announced_again() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    world.kernel.vips.clear()
    sent = len(n1.announcer.sent)
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}
    assert len(n1.announcer.sent) == sent + T.announce_count


def test_steady_renewals_keep_the_vip_for_a_long_time() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    for _ in range(60):
        world.run(1.0)
        assert world.kernel.holders() == {"n1"}
    assert [op for op, _ in n1.vip.ops].count("remove") == 0


def test_database_unreachable_within_grace_keeps_then_past_grace_releases() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.probe.role = Role.UNKNOWN
    world.run(T.role_grace_s / 2)
    assert world.kernel.holders() == {"n1"}
    world.run(T.role_grace_s)
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None


def test_hung_database_probe_still_lets_the_vip_come_down_in_time() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.probe.hang = True
    n1.store.fault = "hang"
    world.run(T.ttl_s * 2)
    assert world.kernel.holders() == set()


def test_missing_interface_is_logged_once_and_never_crashes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    caplog.set_level(logging.INFO, "dbvip")
    n1.vip.fault = "missing"
    world.run(5.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "action=RemoveVip failed cause='interface eth0 not found'"
    ]
    n1.vip.fault = "ok"
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}


def test_lost_reply_on_acquire_is_recovered_by_adoption() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    n1.store.fault = "lose_reply"
    n1.runner.tick()
    assert world.kernel.holders() == set()
    n1.store.fault = "ok"
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}


def test_replica_reads_the_key_rarely() -> None:
    world = World(Role.REPLICA)
    n1 = world.nodes[0]
    world.run(10.0)
    # The key alone, or with the members in one read.
    reads = n1.store.calls.count("read") + n1.store.calls.count("members")
    assert 0 < reads <= 10.0 / T.renew_interval_s + 2


def test_add_after_a_freeze_past_the_deadline_is_refused() -> None:
    """Review finding: a node frozen between deciding AddVip and doing it must
    not add the VIP with a lifetime computed before the freeze."""
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    world.kernel.vips.clear()
    lease = n1.runner.state.lease
    assert lease is not None
    planned = vip_lifetime_s(lease, world.clock.now_s, T)
    world.clock.advance(lease.deadline_s - world.clock.now_s + 1)  # frozen past the deadline
    outcome = n1.runner.execute(AddVip(planned), world.clock.now_s + 1)
    assert isinstance(outcome, Failed)
    assert world.kernel.holders() == set()


def test_short_request_timeout_still_reads_and_acquires() -> None:
    """Review finding: a stale request limit made every read 'too late'."""
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    n1.runner = Runner(
        "n1",
        replace(T, request_timeout_s=0.15),
        Ports(world.clock, n1.probe, n1.store, n1.vip, n1.announcer),
        n1.waiter,
    )
    world.run(2.0)
    assert world.kernel.holders() == {"n1"}


def test_an_adapter_that_raises_is_unknown_not_a_crash() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]

    def explode(timeout_s: float) -> NoReturn:
        raise RecursionError("maximum recursion depth exceeded")

    # The fake's reads swapped for one that raises, on this instance only.
    n1.store.read_writer = explode  # type: ignore[method-assign]
    n1.store.read_members = explode  # type: ignore[method-assign]
    world.run(2.0)
    assert world.kernel.holders() == set()
    assert n1.runner.state.reason is not None
    assert n1.runner.state.reason.value == "etcd_unreachable"


def test_shutdown_retries_a_failed_removal() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.vip.fault = "refuse"
    waits = 0

    def on_wait() -> None:
        nonlocal waits
        waits += 1
        if waits == 1:
            n1.runner.stop()
        elif waits == 2:
            n1.vip.fault = "ok"  # the netlink trouble passes during shutdown

    n1.waiter.on_wait = on_wait
    n1.runner.run()
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None


def test_a_holder_resumed_after_a_suspend_drops_the_vip_before_anything_else() -> None:
    """A paused VM: the boot-time clock jumps forward by the suspended time
    while etcd's lease ran on. The kernel's own expiry did not run meanwhile
    (lateness covers the pause), so only the sidecar can take the VIP down:
    the first thing it does on waking is remove it, never renew first."""
    world = World(Role.PRIMARY)
    world.kernel.lateness_s = 60.0
    n1 = world.nodes[0]
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}
    held = n1.runner.state.lease
    assert held is not None
    resumed_s = world.clock.now_s + 3 * T.ttl_s
    world.clock.advance(3 * T.ttl_s)  # suspended: nothing ran, the clock counted on
    ops_before, calls_before = len(n1.vip.ops), len(n1.store.calls)
    n1.runner.tick()
    assert n1.vip.ops[ops_before] == ("remove", resumed_s)
    assert "keepalive" not in n1.store.calls[calls_before:]
    world.etcd.expire()
    assert held.lease_id not in world.etcd.leases  # etcd let it go while suspended
    lease = n1.runner.state.lease
    assert lease is None or lease.lease_id != held.lease_id  # a fresh lease, if any


def test_the_sidecar_clock_is_the_boot_time_clock() -> None:
    from dbvip.boottime import boot_s  # noqa: PLC0415
    from dbvip.wiring import SystemClock  # noqa: PLC0415

    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    read = SystemClock().monotonic_s()
    after = boot_s()
    assert before <= read <= after


# The exact bytes a dbvip before value formats wrote (format 1: a name, no identity).
TODAYS_WRITER = (
    b'{"node":"n1","vip":"198.51.100.10/32","lease":"%x","since":"2026-01-02T03:04:05Z"}'
)


@pytest.mark.parametrize("upgraded", ["n1", "n2"])
def test_a_key_in_todays_format_is_read_and_never_taken_by_name(upgraded: str) -> None:
    """A rolling upgrade: the old n1 sidecar held the key (today's format)
    and was killed before it could release. The new sidecars read the
    value, and neither the other primary nor n1's own new sidecar takes,
    adopts or releases it by name: the VIP stays away until its lease ends
    (the old n1's VIP is gone by then), then one new sidecar takes it."""
    world = World(Role.PRIMARY, Role.PRIMARY)
    world.nodes = [n for n in world.nodes if n.name == upgraded]
    old_lease, _ = world.etcd.grant(T.ttl_s)
    world.etcd.put(WRITER, TODAYS_WRITER % old_lease, old_lease)
    world.run(T.ttl_s - 1.0)
    node = world.nodes[0]
    assert world.kernel.holders() == set()
    assert node.runner.state.reason is Reason.CONFLICT
    assert "read" in node.store.calls
    assert not {"adopt", "release", "keepalive", "acquire"} & set(node.store.calls)
    world.run(3.0)  # the old lease expired: the key is free
    assert world.kernel.holders() == {node.name}
