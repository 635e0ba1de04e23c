"""Property-based simulation of the reader VIP pool.

Three sidecars (the real ``Runner``, reader policy and core) over the fakes,
four reader VIPs. Hypothesis draws steps: time passes, a database goes down,
comes back, is promoted, lags, stops streaming; etcd hangs, refuses or loses
replies for one node; a sidecar is killed, restarted or stopped by SIGTERM;
an operator sets maintenance or deletes a reader key by hand; netlink fails.

Checked after every tick and every clock step (hangs inside a tick too):

- S1 per VIP: at most one node has a given reader VIP in its kernel.
- Bounded: a node that has a reader VIP is named by that VIP's key (or its
  claim, when the key was deleted by hand) under a lease alive in etcd.

And at the end, once every fault is healed and the roles settle (one primary,
the rest caught-up streaming replicas) for long enough: every reader VIP is on
exactly one healthy replica, each holding floor(R/H) or ceil(R/H) (balance and
convergence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbvip.model import Role, Timing
from dbvip.reader_model import ReaderSettings
from tests.fakes import READER_CLAIMS, READERS, FakeClock, parse_reader
from tests.unit.test_readers import VIPS, World

T = Timing()
NODES = ("n1", "n2", "n3")
BEHIND = "0/1000000"
HEAD = "0/3000000"


class CheckedClock(FakeClock):
    """A clock that runs the invariants at every step it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.check: Callable[[], None] = lambda: None

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.check()


@dataclass(frozen=True)
class Step:
    kind: str
    node: str = "n1"
    arg: str = ""


steps = st.one_of(
    st.builds(Step, st.just("advance"), st.just("n1"), st.sampled_from(["0.05", "0.3", "1", "4"])),
    st.builds(
        Step,
        st.just("role"),
        st.sampled_from(NODES),
        st.sampled_from(["replica", "down", "unknown", "primary"]),
    ),
    st.builds(Step, st.just("lag"), st.sampled_from(NODES), st.sampled_from(["behind", "head"])),
    st.builds(Step, st.just("streaming"), st.sampled_from(NODES), st.sampled_from(["on", "off"])),
    st.builds(
        Step,
        st.just("fault"),
        st.sampled_from(NODES),
        st.sampled_from(["ok", "refuse", "hang", "lose_reply"]),
    ),
    st.builds(Step, st.just("kill"), st.sampled_from(NODES)),
    st.builds(Step, st.just("restart"), st.sampled_from(NODES)),
    st.builds(Step, st.just("sigterm"), st.sampled_from(NODES)),
    st.builds(Step, st.just("maintenance"), st.sampled_from(NODES), st.sampled_from(["on", "off"])),
    st.builds(Step, st.just("delete_key"), st.just("n1"), st.sampled_from(VIPS)),
    st.builds(Step, st.just("netlink"), st.sampled_from(NODES), st.sampled_from(["ok", "refuse"])),
)


class Sim:
    def __init__(self) -> None:
        clock = CheckedClock()
        self.world = World(Role.PRIMARY, Role.REPLICA, Role.REPLICA, clock=clock)
        clock.check = self.check
        self.timeline = 1

    def check(self) -> None:
        w = self.world
        w.check()
        w.etcd.expire()
        for vip, kernel in w.reader_kernels.items():
            for holder in kernel.holders():
                entry = w.etcd.kv.get(READERS + vip)
                claim = w.etcd.kv.get(READER_CLAIMS + vip)
                key = parse_reader(vip, entry, claim)
                assert key is not None and key.holder == holder, (vip, holder, key)
                assert key.lease_id in w.etcd.leases, (vip, holder, "lease gone")

    def apply(self, step: Step) -> None:
        w, node = self.world, self.world.nodes[step.node]
        match step.kind:
            case "advance":
                w.run(float(step.arg))
            case "role":
                if step.arg == "primary" and node.probe.role is not Role.PRIMARY:
                    self.timeline += 1
                    node.probe.timeline = self.timeline
                node.probe.role = Role(step.arg)
            case "lag":
                node.probe.lsn = BEHIND if step.arg == "behind" else HEAD
            case "streaming":
                node.probe.streaming = step.arg == "on"
            case "fault":
                node.store.fault = step.arg  # type: ignore[assignment]
                if step.arg == "ok":
                    w.notify()  # the watch reconnects
            case "kill":
                node.alive = False
            case "restart":
                if not node.alive:
                    node.start()
            case "sigterm":
                if node.alive:
                    node.runner.stop()
                    node.runner.run()
                    node.alive = False
                    w.notify()
            case "maintenance":
                (w.etcd.maintenance.add if step.arg == "on" else w.etcd.maintenance.discard)(
                    step.node
                )
            case "delete_key":
                w.etcd.delete(READERS + step.arg)
                w.notify()
            case "netlink":
                for driver in node.reader_drivers.values():
                    driver.fault = step.arg  # type: ignore[assignment]
        self.check()

    def settle(self) -> None:
        """Heal everything: one primary (the writer's holder if it is one),
        caught-up streaming replicas, every sidecar running."""
        w = self.world
        holder = w.etcd.writer_holder()
        primaries = [n for n, node in w.nodes.items() if node.probe.role is Role.PRIMARY]
        keep = holder[0] if holder and holder[0] in primaries else (primaries or ["n1"])[0]
        for name, node in w.nodes.items():
            node.store.fault = "ok"
            for driver in node.reader_drivers.values():
                driver.fault = "ok"
            node.probe.lsn, node.probe.streaming = HEAD, True
            if name == keep:
                if node.probe.role is not Role.PRIMARY:
                    self.timeline += 1
                    node.probe.timeline = self.timeline
                node.probe.role = Role.PRIMARY
            else:
                node.probe.role = Role.REPLICA
            if not node.alive:
                node.start()
        w.etcd.maintenance.clear()
        w.notify()
        # Leases of the dead run out, the writer settles, the rejoin wait passes.
        w.run(2 * T.ttl_s + ReaderSettings().rejoin_s + 3 * T.renew_interval_s)
        spread = w.spread()
        replicas = [n for n in NODES if n != keep]
        assert sum(spread.values()) == len(VIPS), spread
        assert spread[keep] == 0, spread
        low, high = len(VIPS) // len(replicas), -(-len(VIPS) // len(replicas))
        assert all(low <= spread[n] <= high for n in replicas), spread


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(steps, min_size=1, max_size=30))
def test_no_reader_vip_on_two_nodes_and_the_pool_converges_balanced(drawn: list[Step]) -> None:
    sim = Sim()
    sim.world.run(3.0)
    for step in drawn:
        sim.apply(step)
    sim.settle()
