"""Events for hooks: the real Runner over the fakes, a sink that records each
event with the world as it was when the event was handed over."""

from __future__ import annotations

from dataclasses import dataclass, replace

from dbvip.events import Event, EventKind
from dbvip.model import Role, Timing, VipPresence
from dbvip.ports import VipReading
from dbvip.runner import Ports, Runner
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
ACQUIRE, RELEASE, CONFLICT = EventKind.ACQUIRE, EventKind.RELEASE, EventKind.CONFLICT


@dataclass(frozen=True)
class Seen:
    event: Event
    vip_holders: set[str]  # nodes with the VIP in the kernel at hand-over
    key_holder: str | None  # node named by the writer key at hand-over


class Node:
    def __init__(self, name: str, world: World, role: Role) -> None:
        self.name = name
        self.probe = FakeProbe(world.clock, role)
        self.store = FakeLeaseStore(world.etcd, name)
        self.vip = FakeVipDriver(world.kernel, name)
        self.waiter = FakeWaiter(world.clock)
        self.seen: list[Seen] = []

        def sink(event: Event) -> None:
            truth = world.etcd.writer_holder()
            holder = truth[0] if truth else None
            self.seen.append(Seen(event, world.kernel.holders(), holder))

        ports = Ports(
            world.clock, self.probe, self.store, self.vip, FakeAnnouncer(world.kernel, name)
        )
        self.runner = Runner(name, T, ports, self.waiter, on_event=sink)

    def kinds(self) -> list[EventKind]:
        return [s.event.kind for s in self.seen]


class World:
    def __init__(self, *roles: Role) -> None:
        self.clock = FakeClock()
        self.etcd = FakeEtcd(self.clock)
        self.kernel = FakeKernel(self.clock)
        self.nodes = [Node(f"n{i + 1}", self, r) for i, r in enumerate(roles)]

    def run(self, seconds: float) -> None:
        until = self.clock.now_s + seconds
        while self.clock.now_s < until:
            wake = min(node.runner.tick().wake_s for node in self.nodes)
            self.clock.advance(max(0.001, min(until, wake) - self.clock.now_s))


def test_acquire_is_handed_over_once_after_the_vip_is_up_with_its_facts() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(30.0)  # many refreshes and renewals: still one acquire
    assert n1.kinds() == [ACQUIRE]
    seen = n1.seen[0]
    assert seen.vip_holders == {"n1"}
    assert seen.key_holder == "n1"
    lease = n1.runner.state.lease
    assert lease is not None
    assert seen.event.lease_id == lease.lease_id
    assert seen.event.reason == "taking_over"
    assert seen.event.holder == "n1"
    assert seen.event.role is Role.PRIMARY
    assert seen.event.timeline == 1
    assert seen.event.at == "T+1000.000"  # the fake clock's wall time of the first tick


def test_demotion_hands_over_release_after_the_vip_is_down_and_the_key_deleted() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    lease = n1.runner.state.lease
    assert lease is not None
    n1.probe.role = Role.REPLICA
    n1.probe.timeline = 2
    world.run(5.0)
    assert n1.kinds() == [ACQUIRE, RELEASE]
    release = n1.seen[1]
    assert release.vip_holders == set()
    assert release.key_holder is None
    assert release.event.reason == "demoted"
    assert release.event.lease_id == lease.lease_id, "the lease the VIP was held under"
    assert release.event.role is Role.REPLICA
    assert release.event.timeline == 2


def test_stop_hands_over_release_after_removal_and_release_of_the_key() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    n1.waiter.on_wait = n1.runner.stop
    n1.runner.run()
    assert n1.kinds() == [ACQUIRE, RELEASE]
    release = n1.seen[1]
    assert release.event.reason == "stopping"
    assert release.vip_holders == set()
    assert release.key_holder is None
    assert world.etcd.get(WRITER) is None


def test_conflict_is_handed_over_once_per_entry_then_acquire_when_the_key_frees() -> None:
    world = World(Role.PRIMARY, Role.REPLICA)
    n1, n2 = world.nodes
    world.run(1.0)
    n2.probe.role = Role.PRIMARY  # two primaries: n1 keeps the key
    world.run(10.0)
    assert n2.kinds() == [CONFLICT]
    conflict = n2.seen[0].event
    assert conflict.reason == "conflict"
    assert conflict.holder == "n1"
    assert conflict.lease_id is None
    assert "n1 holds the writer key" in conflict.detail
    n1.probe.role = Role.REPLICA  # n1 steps down and frees the key
    world.run(3.0)
    assert n1.kinds() == [ACQUIRE, RELEASE]
    assert n2.kinds() == [CONFLICT, ACQUIRE]
    n2.probe.role = Role.REPLICA  # and a second conflict is a second entry
    world.run(3.0)
    n1.probe.role = Role.PRIMARY
    n2.probe.role = Role.PRIMARY
    world.run(3.0)
    assert n2.kinds().count(CONFLICT) + n1.kinds().count(CONFLICT) == 2


def test_a_vip_deleted_by_hand_is_released_then_acquired_again() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    world.kernel.vips.clear()
    world.run(1.0)
    assert n1.kinds() == [ACQUIRE, RELEASE, ACQUIRE]
    assert n1.seen[1].event.detail == "the VIP disappeared without this node removing it"
    assert n1.seen[2].event.reason == "vip_restored"
    assert n1.seen[2].vip_holders == {"n1"}


class BlindVipDriver(FakeVipDriver):
    """Cannot tell whether the VIP is there while ``blind``; adds work."""

    blind = False

    def observe(self) -> VipReading:
        if self.blind:
            return VipReading(VipPresence.UNKNOWN, "netlink dump interrupted")
        return super().observe()


def test_a_vip_that_vanished_while_unobservable_is_released_before_acquired_again() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    n1.vip = BlindVipDriver(world.kernel, n1.name)
    n1.runner.ports = replace(n1.runner.ports, vip=n1.vip)
    world.run(1.0)
    world.kernel.vips.clear()
    n1.vip.blind = True
    world.run(0.5)
    assert world.kernel.holders() == {"n1"}, "re-added though its presence was unknown"
    assert n1.kinds() == [ACQUIRE, RELEASE, ACQUIRE]
    assert n1.seen[1].event.detail == "the VIP disappeared without this node removing it"


def test_a_vip_the_kernel_expired_still_gets_its_release() -> None:
    """Frozen past the VIP's kernel lifetime: nothing left to remove, yet the
    acquire reported earlier gets its release."""
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]
    world.run(1.0)
    lease = n1.runner.state.lease
    assert lease is not None
    n1.store.fault = "hang"
    world.clock.advance(T.ttl_s)  # frozen: no tick while the lifetime runs out
    world.run(1.0)
    assert n1.kinds() == [ACQUIRE, RELEASE]
    release = n1.seen[1]
    assert release.event.reason == "lease_expired"
    assert release.event.detail == "the VIP disappeared without this node removing it"
    assert release.event.lease_id == lease.lease_id
    assert release.vip_holders == set()


def test_a_vip_found_without_a_lease_is_released_without_an_acquire() -> None:
    world = World(Role.REPLICA)
    n1 = world.nodes[0]
    world.kernel.vips[n1.name] = float("inf")  # left over from an earlier run
    world.run(1.0)
    assert n1.kinds() == [RELEASE]
    assert n1.seen[0].event.lease_id is None
    assert world.kernel.holders() == set()


def test_a_sink_that_raises_does_not_stop_the_loop() -> None:
    world = World(Role.PRIMARY)
    n1 = world.nodes[0]

    def broken(event: Event) -> None:
        raise OSError("hook queue on fire")

    n1.runner.on_event = broken
    world.run(1.0)
    assert world.kernel.holders() == {"n1"}
    n1.probe.role = Role.REPLICA
    world.run(1.0)
    assert world.kernel.holders() == set()
    assert world.etcd.get(WRITER) is None
