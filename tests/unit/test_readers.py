"""The reader VIP pool over the fakes: the real Runner, reader policy and
core, three nodes, four reader VIPs, one fake etcd and one fake kernel per
VIP. After every tick and clock step: at most one node has a given reader
VIP (S1 per VIP), and a node that has one is named by its key in etcd under
a live lease (or the kernel lifetime still runs within that lease)."""

from __future__ import annotations

from collections import Counter

from dbvip.members import report_of
from dbvip.model import Role, Timing
from dbvip.reader_model import ReaderKey, ReaderSettings
from dbvip.reporting import Snapshot
from dbvip.runner import Ports, Runner
from dbvip.shell import ReaderPorts
from tests.fakes import (
    FakeAnnouncer,
    FakeClock,
    FakeEtcd,
    FakeKernel,
    FakeLeaseStore,
    FakeProbe,
    FakeReaderStore,
    FakeVipDriver,
    FakeWaiter,
)

T = Timing()
VIPS = ("198.51.100.101", "198.51.100.102", "198.51.100.103", "198.51.100.104")


class Node:
    def __init__(self, world: World, name: str, role: Role, settings: ReaderSettings) -> None:
        self.world = world
        self.name = name
        self.settings = settings
        clock = world.clock
        self.probe = FakeProbe(clock, role)
        self.store = FakeLeaseStore(world.etcd, name)
        self.readers = FakeReaderStore(self.store)
        self.vip = FakeVipDriver(world.kernel, name)
        self.reader_drivers = {v: FakeVipDriver(world.reader_kernels[v], name) for v in VIPS}
        self.waiter = FakeWaiter(clock)
        self.alive = True
        self.runner = self.start()

    def start(self) -> Runner:
        if hasattr(self, "runner"):  # a new process: a new instance, same host and interface
            self.store.identity = self.store.identity.restarted()
        w = self.world
        readers = ReaderPorts(
            self.readers,
            dict(self.reader_drivers),
            {v: FakeAnnouncer(w.reader_kernels[v], self.name) for v in VIPS},
        )
        ports = Ports(
            w.clock,
            self.probe,
            self.store,
            self.vip,
            FakeAnnouncer(w.kernel, self.name),
            readers,
        )
        self.runner = Runner(
            self.name, T, ports, self.waiter, self.publish, reader_settings=self.settings
        )
        self.alive = True
        return self.runner

    def publish(self, snapshot: Snapshot) -> None:
        if self.store.fault == "ok":
            self.world.etcd.report(self.store.identity, report_of(snapshot, "vip"))

    def held(self) -> set[str]:
        return {v for v, k in self.world.reader_kernels.items() if self.name in k.holders()}


class World:
    def __init__(
        self, *roles: Role, settings: ReaderSettings | None = None, clock: FakeClock | None = None
    ) -> None:
        self.clock = clock or FakeClock()
        self.etcd = FakeEtcd(self.clock)
        self.kernel = FakeKernel(self.clock, lateness_s=1.0)
        self.reader_kernels = {v: FakeKernel(self.clock, lateness_s=1.0) for v in VIPS}
        settings = settings or ReaderSettings(vips=VIPS)
        self.nodes = {
            f"n{i + 1}": Node(self, f"n{i + 1}", r, settings) for i, r in enumerate(roles)
        }
        self.twice: list[tuple[float, str, set[str]]] = []

    def check(self) -> None:
        for vip, kernel in self.reader_kernels.items():
            holders = kernel.holders()
            assert len(holders) <= 1, f"{vip} on {holders} at {self.clock.now_s}"
        assert len(self.kernel.holders()) <= 1

    def watched(self) -> tuple[object, ...]:
        """What the pool watch wakes on: keys, and members' role or pool flag."""
        members = tuple((n, r.role, r.pool) for n, r in sorted(self.etcd.members.items()))
        return self.etcd.revision, members

    def notify(self) -> None:
        for node in self.nodes.values():
            node.runner.pool_changed()
            node.runner.key_changed()

    def run(self, seconds: float) -> None:
        until = self.clock.now_s + seconds
        while self.clock.now_s < until:
            wake = until
            for node in self.nodes.values():
                if node.alive:
                    before = self.watched()
                    wake = min(wake, node.runner.tick().wake_s)
                    self.check()
                    if self.watched() != before:  # the watch wakes everyone
                        self.notify()
                        wake = self.clock.now_s
            self.clock.advance(max(0.001, wake - self.clock.now_s))
            self.check()

    def spread(self) -> dict[str, int]:
        counts = Counter({n: 0 for n in self.nodes})
        for kernel in self.reader_kernels.values():
            for holder in kernel.holders():
                counts[holder] += 1
        return dict(counts)

    def kill(self, name: str) -> None:
        """SIGKILL: the process is gone; the kernel keeps what it had (lifetimes run)."""
        self.nodes[name].alive = False
        self.nodes[name].store.fault = "refuse"  # reports stop too


def primary_and_replicas() -> World:
    return World(Role.PRIMARY, Role.REPLICA, Role.REPLICA)


def test_replicas_share_the_reader_vips_evenly_and_the_primary_holds_none() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}
    # Every reader VIP is named in etcd by the node that has it.
    truth = world.nodes["n1"].readers.holders()
    for name, node in world.nodes.items():
        for vip in node.held():
            assert truth[vip] == name


def test_a_replica_whose_database_goes_down_hands_its_vips_to_the_other() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.nodes["n2"].probe.role = Role.DOWN
    world.run(1.0)
    assert world.spread() == {"n1": 0, "n2": 0, "n3": 4}
    world.nodes["n2"].probe.role = Role.REPLICA
    world.run(3.0)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}


def test_a_lagging_replica_leaves_and_comes_back_only_after_the_rejoin_time() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    rejoin_s = ReaderSettings().rejoin_s
    world.nodes["n1"].probe.lsn = "0/5000000"  # the primary moved on by 32 MiB
    world.run(T.renew_interval_s * 2 + 1)  # its report carries the position; replicas read it
    assert world.spread() == {"n1": 4, "n2": 0, "n3": 0}  # nobody healthy: fallback
    world.nodes["n3"].probe.lsn = "0/5000000"  # n3 caught up, n2 did not
    world.run(rejoin_s / 2)
    assert world.spread()["n3"] == 0, "back before staying caught up for reader_rejoin_s"
    world.run(rejoin_s / 2 + T.renew_interval_s * 2)
    assert world.spread() == {"n1": 0, "n2": 0, "n3": 4}
    world.nodes["n2"].probe.lsn = "0/5000000"
    world.run(rejoin_s + T.renew_interval_s * 2)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}


def test_a_replica_that_stops_streaming_leaves_the_pool() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.nodes["n3"].probe.streaming = False
    world.run(1.0)
    assert world.spread() == {"n1": 0, "n2": 4, "n3": 0}


def test_when_every_stream_breaks_the_replicas_keep_their_vips_and_say_so() -> None:
    """A switchover breaks every replica's stream at once. With no streaming
    replica left to go to, each stays in the pool with its share (the first
    to notice may leave for a moment, while the other's report still says it
    streams, and comes back), and its member report says
    in_pool_not_streaming; once one streams again the other leaves for it."""
    world = primary_and_replicas()
    world.run(5.0)
    for name in ("n2", "n3"):
        world.nodes[name].probe.streaming = False
    world.run(T.renew_interval_s * 2 + 1)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}
    pools = {n: world.etcd.members[n].pool for n in ("n2", "n3")}
    assert pools == {"n2": "in_pool_not_streaming", "n3": "in_pool_not_streaming"}
    world.nodes["n2"].probe.streaming = True
    world.run(T.renew_interval_s * 2 + 1)
    assert world.spread() == {"n1": 0, "n2": 4, "n3": 0}
    assert world.etcd.members["n2"].pool == "in_pool"
    assert world.etcd.members["n3"].pool == "not_streaming"


def test_with_no_healthy_replica_the_primary_holds_them_and_gives_them_back() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    for name in ("n2", "n3"):
        world.nodes[name].probe.role = Role.DOWN
    world.run(2.0)
    assert world.spread() == {"n1": 4, "n2": 0, "n3": 0}
    world.nodes["n2"].probe.role = Role.REPLICA
    world.run(3.0)
    assert world.spread() == {"n1": 0, "n2": 4, "n3": 0}


def test_without_fallback_the_reader_vips_stay_unassigned() -> None:
    settings = ReaderSettings(vips=VIPS, fallback_to_primary=False)
    world = World(Role.PRIMARY, Role.DOWN, Role.DOWN, settings=settings)
    world.run(5.0)
    assert world.spread() == {"n1": 0, "n2": 0, "n3": 0}


def test_a_promoted_replica_gives_up_its_reader_vips_before_taking_the_writer_vip() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.nodes["n1"].probe.role = Role.DOWN
    world.run(1.0)
    world.nodes["n2"].probe.role = Role.PRIMARY
    world.nodes["n2"].probe.timeline = 2
    # Within the tick that sees the promotion, the reader VIPs go first.
    world.nodes["n2"].runner.tick()
    assert world.nodes["n2"].held() == set()
    world.run(3.0)
    assert world.kernel.holders() == {"n2"}
    assert world.spread() == {"n1": 0, "n2": 0, "n3": 4}


def test_sigterm_frees_the_vips_at_once_and_a_new_replica_takes_its_share() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    n2 = world.nodes["n2"]
    n2.runner.stop()
    n2.runner.run()
    n2.alive = False
    assert n2.held() == set()
    world.notify()
    world.run(0.5)
    assert world.spread()["n3"] == 4
    n2.start()
    world.run(3.0)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}


def test_a_killed_replica_keeps_nothing_past_its_lease_and_the_other_takes_over() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.kill("n3")
    world.run(T.ttl_s + 5.0)
    assert world.spread() == {"n1": 0, "n2": 4, "n3": 0}


def test_maintenance_and_no_load_balance_keep_a_node_out() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.etcd.maintenance.add("n2")
    world.run(T.renew_interval_s + 2)
    assert world.spread() == {"n1": 0, "n2": 0, "n3": 4}
    settings = ReaderSettings(vips=VIPS, no_load_balance=True)
    quiet = World(Role.PRIMARY, Role.REPLICA, Role.REPLICA, settings=settings)
    quiet.run(5.0)
    assert quiet.spread() == {"n1": 4, "n2": 0, "n3": 0}  # everyone opted out: fallback


def test_a_reader_key_deleted_by_hand_is_not_taken_while_its_claim_lives() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    vip = sorted(world.nodes["n2"].held())[0]
    world.etcd.delete("/dbvip/c1/readers/" + vip)
    world.run(3.0)  # check() after every step: never on two nodes
    assert sum(world.spread().values()) == 4


def test_etcd_unreachable_to_a_replica_removes_its_vips_before_its_lease_ends() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.nodes["n3"].store.fault = "hang"
    world.run(T.ttl_s + 3.0)
    assert world.nodes["n3"].held() == set()
    assert world.spread()["n2"] == 4


def test_a_restarted_sidecar_gives_back_its_earlier_keys_and_takes_its_share_again() -> None:
    world = primary_and_replicas()
    world.run(5.0)
    world.kill("n2")
    world.nodes["n2"].store.fault = "ok"
    world.nodes["n2"].start()
    world.run(5.0)
    assert world.spread() == {"n1": 0, "n2": 2, "n3": 2}
    identities = {k.identity for k in _keys(world) if k.holder == "n2" and k.identity is not None}
    assert identities == {world.nodes["n2"].store.identity}


def _keys(world: World) -> list[ReaderKey]:
    reading = world.nodes["n1"].readers.read_pool(1.0)
    assert not hasattr(reading, "cause")
    return list(reading.keys)
