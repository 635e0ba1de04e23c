"""Property-based simulation: three sidecars, one etcd, one kernel, one clock.

Hypothesis draws a list of steps (advance time, promote, demote, etcd faults,
crash, freeze, SIGTERM, ...); the real ``Runner`` and core run over the fakes
and the invariants are checked against the fakes' ground truth right after
every state change: every clock advance (hangs inside a tick included), every
etcd call, every VIP add or removal, every step.

- S1: at most one node has the VIP in the kernel.
- S2: an add happens only while the node's runner holds the writer key under
  its own lease, alive in etcd, with more than ``release_lead_s`` left.
- S3: a VIP in the kernel is backed by the etcd lease it was last added under,
  alive in etcd; checked over every clock jump, not only at its ends.
- S4: ``release`` only while the node's VIP is out of the kernel; ``acquire``
  only while the node's database says primary.

A failing example prints as a list of steps that ``simulate`` replays as is.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbvip.model import Role, Timing, WriterView
from dbvip.ports import Alive, Done, Gone, Granted, Refused, Unknown, VipChanged
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
    Fault,
)

NODES = ("n1", "n2", "n3")
INVARIANTS = frozenset({"S1", "S2", "S3", "S4"})
TIMINGS = {
    "default": Timing(),
    # A tighter configuration: shorter TTL, margin and intervals.
    "tight": Timing(
        ttl_s=5,
        probe_interval_s=0.1,
        request_timeout_s=0.5,
        margin_s=1.0,
        renew_interval_s=1.0,
        role_grace_s=0.5,
    ),
}
# The scheduler never sleeps less than this between two ticks of one node, so
# a runner that asks to be woken "now" again and again cannot stall fake time.
MIN_SLEEP_S = 0.01
MAX_LATENESS_S = 1.0  # the kernel's expiry lateness measured in LAB.md
NicFault = Literal["ok", "missing", "refuse"]
RoleName = Literal["primary", "replica", "unknown"]


class InvariantViolationError(AssertionError):
    """A safety invariant broke; ``invariant`` names which one."""

    def __init__(self, invariant: str, detail: str, trace: Iterable[str] = ()) -> None:
        lines = "\n  ".join(trace)
        super().__init__(f"{invariant}: {detail}\nlast events:\n  {lines}")
        self.invariant = invariant


class LivenessFailureError(AssertionError):
    """Safety held, but the healed cluster did not put the VIP on its primary."""


# --------------------------------------------------------------------------
# Steps: plain data, so a shrunk counterexample reads (and replays) as code.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class SetRole:
    """The database's role as its probe will report it."""

    node: str
    role: RoleName


@dataclass(frozen=True)
class ProbeHang:
    node: str
    hang: bool


@dataclass(frozen=True)
class EtcdFault:
    node: str
    fault: Fault


@dataclass(frozen=True)
class NetlinkFault:
    node: str
    fault: NicFault


@dataclass(frozen=True)
class NetlinkDelay:
    """Every netlink add/remove of this node takes this long (within budget)."""

    node: str
    seconds: float


@dataclass(frozen=True)
class Crash:
    node: str


@dataclass(frozen=True)
class Restart:
    """Start a fresh Runner (fresh NodeState) for a crashed sidecar."""

    node: str


@dataclass(frozen=True)
class Freeze:
    """Stop ticking the sidecar for a while, then resume the same Runner."""

    node: str
    seconds: float


@dataclass(frozen=True)
class Sigterm:
    node: str


@dataclass(frozen=True)
class WriteGarbage:
    """An operator writes a value that is no writer value (no lease)."""


@dataclass(frozen=True)
class DeleteKey:
    """An operator deletes the writer key by hand."""


Step: TypeAlias = (
    Advance
    | SetRole
    | ProbeHang
    | EtcdFault
    | NetlinkFault
    | NetlinkDelay
    | Crash
    | Restart
    | Freeze
    | Sigterm
    | WriteGarbage
    | DeleteKey
)


@dataclass(frozen=True)
class Setup:
    lateness_s: float = 1.0
    timing: str = "default"
    order: tuple[str, ...] = NODES  # tick order of nodes due at the same instant
    watch: bool = True  # nodes are woken when the writer key changes


# --------------------------------------------------------------------------
# Fakes with hooks: every state change runs the checker.
# --------------------------------------------------------------------------


class HookedClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.before_advance: Callable[[float, float], None] = lambda t0, t1: None
        self.after_advance: Callable[[], None] = lambda: None

    def advance(self, seconds: float) -> None:
        self.before_advance(self.now_s, self.now_s + seconds)
        super().advance(seconds)
        self.after_advance()


class GuardedStore(FakeLeaseStore):
    def __init__(self, sim: Sim, node: str) -> None:
        super().__init__(sim.etcd, node)
        self.sim = sim

    def acquire(self, ttl_s: int, timeout_s: float) -> Granted | Refused | Unknown:
        self.sim.before_acquire(self.node)
        result = super().acquire(ttl_s, timeout_s)
        self.sim.check(f"{self.node} acquire -> {result}")
        return result

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown:
        result = super().keepalive(lease_id, timeout_s)
        self.sim.check(f"{self.node} keepalive {lease_id:x} -> {result}")
        return result

    def release(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        self.sim.before_release(self.node, lease_id)
        result = super().release(lease_id, timeout_s)
        self.sim.check(f"{self.node} release {lease_id:x} -> {result}")
        return result

    def read_writer(self, timeout_s: float) -> WriterView:
        result = super().read_writer(timeout_s)
        self.sim.check(f"{self.node} read -> {result}" if self.fault != "ok" else "")
        return result


class GuardedVip(FakeVipDriver):
    def __init__(self, sim: Sim, node: str) -> None:
        super().__init__(sim.kernel, node)
        self.sim = sim
        self.delay_s = 0.0

    def add(self, lifetime_s: int) -> VipChanged | Unknown:
        self.sim.before_add(self.node)
        # A slow netlink call takes effect at its end: the worst case for S3.
        if self.delay_s and self.fault == "ok":
            self.kernel.clock.advance(self.delay_s)
        result = super().add(lifetime_s)
        if not isinstance(result, Unknown):
            self.sim.vip_added(self.node, lifetime_s)
        self.sim.check(f"{self.node} add {lifetime_s} s -> {result}")
        return result

    def remove(self) -> VipChanged | Unknown:
        if self.delay_s and self.fault == "ok":
            self.kernel.clock.advance(self.delay_s)
        result = super().remove()
        self.sim.check(f"{self.node} remove -> {result}")
        return result


RunnerFactory = Callable[..., Runner]


class SimNode:
    def __init__(self, sim: Sim, name: str, role: Role, factory: RunnerFactory) -> None:
        self.sim = sim
        self.name = name
        self.factory = factory
        self.probe = FakeProbe(sim.clock, role)
        self.store = GuardedStore(sim, name)
        self.vip = GuardedVip(sim, name)
        self.announcer = FakeAnnouncer(sim.kernel, name)
        self.waiter = FakeWaiter(sim.clock)
        self.running = True
        self.frozen_until_s = -math.inf
        self.next_wake_s = sim.clock.now_s
        self.runner = self.fresh_runner()

    def fresh_runner(self) -> Runner:
        ports = Ports(self.sim.clock, self.probe, self.store, self.vip, self.announcer)
        return self.factory(self.name, self.sim.timing, ports, self.waiter, self.sim.published)

    def awake(self, now_s: float) -> bool:
        return self.running and now_s >= self.frozen_until_s


# --------------------------------------------------------------------------
# The world.
# --------------------------------------------------------------------------


class Sim:
    def __init__(
        self,
        setup: Setup,
        checks: frozenset[str] = INVARIANTS,
        factories: dict[str, RunnerFactory] | None = None,
    ) -> None:
        self.setup = setup
        self.timing = TIMINGS[setup.timing]
        self.checks = checks
        self.trace: deque[str] = deque(maxlen=40)
        self.clock = HookedClock()
        self.etcd = FakeEtcd(self.clock)
        self.kernel = FakeKernel(self.clock, lateness_s=setup.lateness_s)
        # The lease each node's VIP was last added or refreshed under.
        self.vip_lease: dict[str, int | None] = {}
        self.spins = 0  # ticks that asked to be woken again at once
        self._reasons: dict[str, str] = {}
        factories = factories or {}
        self.nodes = {
            name: SimNode(
                self,
                name,
                Role.PRIMARY if name == "n1" else Role.REPLICA,
                factories.get(name, Runner),
            )
            for name in NODES
        }
        self.clock.before_advance = self._check_clock_jump
        self.clock.after_advance = self.check
        self._revision = self.etcd.revision

    # -- ground truth -----------------------------------------------------------

    def lease_alive(self, lease_id: int | None) -> bool:
        entry = self.etcd.leases.get(lease_id) if lease_id is not None else None
        return entry is not None and entry[1] > self.clock.now_s

    def writer_truth(self) -> tuple[str | None, int] | None:
        """(holder or None for garbage, lease) of the writer key, if it exists."""
        entry = self.etcd.kv.get(WRITER)
        if entry is None or (entry.lease_id and not self.lease_alive(entry.lease_id)):
            return None
        try:
            holder = json.loads(entry.value)["node"]
        except (ValueError, KeyError, TypeError):
            holder = None
        return (holder if isinstance(holder, str) else None), entry.lease_id

    # -- invariants ---------------------------------------------------------------

    def fail(self, invariant: str, detail: str) -> None:
        if invariant in self.checks:
            raise InvariantViolationError(
                invariant, f"{detail} (t={self.clock.now_s:.3f})", self.trace
            )

    def check(self, where: str = "") -> None:
        if where:
            self.note(where)
        holders = self.kernel.holders()
        if len(holders) > 1:
            self.fail("S1", f"{sorted(holders)} all have the VIP")
        for node in sorted(holders):
            lease = self.vip_lease.get(node)
            if not self.lease_alive(lease):
                self.fail("S3", f"{node} has the VIP but its lease {lease} is not alive in etcd")

    def _check_clock_jump(self, t0: float, t1: float) -> None:
        """S3 between two instants: no lease may die while its VIP lives on."""
        for node in sorted(self.kernel.holders()):
            lease = self.vip_lease.get(node)
            if lease is None or lease not in self.etcd.leases:
                continue  # check() has reported it at t0 already
            lease_end = self.etcd.leases[lease][1]
            vip_end = self.kernel.vips[node] + self.kernel.lateness_s
            if lease_end <= t1 and vip_end > lease_end:
                self.fail(
                    "S3",
                    f"lease {lease:x} of {node} dies at {lease_end:.3f} but its VIP lives "
                    f"until {vip_end:.3f} (clock {t0:.3f} -> {t1:.3f})",
                )

    def before_add(self, name: str) -> None:
        now = self.clock.now_s
        lease = self.nodes[name].runner.state.lease
        truth = self.writer_truth()
        if lease is None:
            self.fail("S2", f"{name} adds the VIP without a lease (key: {truth})")
            return
        if truth != (name, lease.lease_id) or not self.lease_alive(lease.lease_id):
            self.fail("S2", f"{name} adds the VIP under lease {lease.lease_id:x}, key: {truth}")
        if lease.deadline_s - now <= self.timing.release_lead_s:
            self.fail("S2", f"{name} adds the VIP {lease.deadline_s - now:.3f} s before deadline")

    def vip_added(self, name: str, lifetime_s: int) -> None:
        lease = self.nodes[name].runner.state.lease
        self.vip_lease[name] = lease.lease_id if lease is not None else None

    def before_release(self, name: str, lease_id: int) -> None:
        if name in self.kernel.holders():
            self.fail("S4", f"{name} releases lease {lease_id:x} while its VIP is up")

    def before_acquire(self, name: str) -> None:
        probe = self.nodes[name].probe
        if probe.hang or probe.role is not Role.PRIMARY:
            role = "hung" if probe.hang else probe.role.value
            self.fail("S4", f"{name} acquires while its database is {role}")

    # -- trace -------------------------------------------------------------------

    def note(self, event: str) -> None:
        self.trace.append(f"{self.clock.now_s:10.3f} {event}")

    def published(self, snap: Snapshot) -> None:
        if self._reasons.get(snap.node) != snap.reason:
            self._reasons[snap.node] = snap.reason
            self.note(f"{snap.node} {snap.reason}: {snap.detail} {snap.facts}")

    # -- scheduling ----------------------------------------------------------------

    def advance(self, seconds: float, after_tick: Callable[[], None] = lambda: None) -> None:
        """Run every awake sidecar at its own wake-up instants for ``seconds``."""
        until = self.clock.now_s + seconds
        while True:
            self._expire_leases()
            now = self.clock.now_s
            due = [self.nodes[n] for n in self.setup.order if self._due(self.nodes[n], now)]
            for node in due:
                if node.awake(self.clock.now_s):
                    self._tick(node)
                    after_tick()
            if due:
                continue
            if now >= until:
                return
            wakes = [until]
            for node in self.nodes.values():
                if node.running:
                    wakes.append(max(node.next_wake_s, node.frozen_until_s))
            wakes.extend(end for _, end in self.etcd.leases.values() if end > now)
            self.clock.advance(max(0.0, min(wakes) - now))

    def _due(self, node: SimNode, now: float) -> bool:
        return node.awake(now) and node.next_wake_s <= now

    def _tick(self, node: SimNode) -> None:
        decision = node.runner.tick()
        now = self.clock.now_s
        if decision.wake_s <= now:
            self.spins += 1
        node.next_wake_s = max(decision.wake_s, now + MIN_SLEEP_S)
        self.check()
        self._watch()

    def _expire_leases(self) -> None:
        self.etcd.expire()
        self._watch()

    def _watch(self) -> None:
        """A change of the writer key wakes every watching sidecar at once."""
        if self.etcd.revision == self._revision:
            return
        self._revision = self.etcd.revision
        if not self.setup.watch:
            return
        for node in self.nodes.values():
            if node.running and node.store.fault in ("ok", "lose_reply"):
                node.runner.key_changed()
                node.next_wake_s = min(node.next_wake_s, self.clock.now_s)

    # -- steps -------------------------------------------------------------------------

    def apply(self, step: Step) -> None:
        self.note(f"step {step}")
        match step:
            case Advance(seconds):
                self.advance(seconds)
            case SetRole(name, role):
                self.nodes[name].probe.role = Role(role)
            case ProbeHang(name, hang):
                self.nodes[name].probe.hang = hang
            case EtcdFault(name, fault):
                node = self.nodes[name]
                node.store.fault = fault
                if fault == "ok" and node.running and self.setup.watch:
                    node.runner.key_changed()  # the watch reconnects
            case NetlinkFault(name, fault):
                self.nodes[name].vip.fault = fault
            case NetlinkDelay(name, seconds):
                self.nodes[name].vip.delay_s = seconds
            case Crash(name):
                self.nodes[name].running = False
            case Restart(name):
                self._restart(self.nodes[name])
            case Freeze(name, seconds):
                node = self.nodes[name]
                if node.running:
                    node.frozen_until_s = max(node.frozen_until_s, self.clock.now_s + seconds)
            case Sigterm(name):
                node = self.nodes[name]
                if node.awake(self.clock.now_s):
                    node.runner.stop()
                    node.runner.run()  # straight to the shutdown ticks
                    node.running = False
            case WriteGarbage():
                self.etcd.put(WRITER, b"\x00garbage")
            case DeleteKey():
                self.etcd.delete(WRITER)
        self._watch()
        self.check(f"after {step}")

    def _restart(self, node: SimNode) -> None:
        if node.running:
            return
        node.running = True
        node.frozen_until_s = -math.inf
        node.next_wake_s = self.clock.now_s
        node.runner = node.fresh_runner()

    def heal(self, winner: str) -> None:
        """Lift every fault; ``winner`` is the only primary; all sidecars run."""
        for node in self.nodes.values():
            for step in (
                EtcdFault(node.name, "ok"),
                NetlinkFault(node.name, "ok"),
                NetlinkDelay(node.name, 0.0),
                ProbeHang(node.name, False),
                SetRole(node.name, "primary" if node.name == winner else "replica"),
                Restart(node.name),
            ):
                self.apply(step)
            node.frozen_until_s = -math.inf
        truth = self.writer_truth()
        if truth is not None and truth[0] is None:
            self.apply(DeleteKey())  # an operator cleans up garbage


def simulate(
    steps: Sequence[Step],
    setup: Setup = Setup(),
    checks: frozenset[str] = INVARIANTS,
    factories: dict[str, RunnerFactory] | None = None,
) -> Sim:
    sim = Sim(setup, checks, factories)
    sim.check("start")
    for step in steps:
        sim.apply(step)
    return sim


# --------------------------------------------------------------------------
# Strategies.
# --------------------------------------------------------------------------


def _seconds(high: float) -> st.SearchStrategy[float]:
    return st.integers(0, int(high * 100)).map(lambda cs: cs / 100)


node_names = st.sampled_from(NODES)
role_names: st.SearchStrategy[RoleName] = st.sampled_from(("primary", "replica", "unknown"))
faults: st.SearchStrategy[Fault] = st.sampled_from(("ok", "refuse", "hang", "lose_reply"))
nic_faults: st.SearchStrategy[NicFault] = st.sampled_from(("ok", "missing", "refuse"))

# Advance is listed three times: it should be the most frequent step.
_advance = st.builds(Advance, _seconds(12.0))
_fault_steps: list[st.SearchStrategy[Step]] = [
    _advance,
    _advance,
    _advance,
    st.builds(SetRole, node_names, role_names),
    st.builds(SetRole, node_names, st.just("primary")),
    st.builds(ProbeHang, node_names, st.booleans()),
    st.builds(EtcdFault, node_names, faults),
    st.builds(NetlinkFault, node_names, nic_faults),
    st.builds(NetlinkDelay, node_names, _seconds(TIMINGS["default"].vip_op_timeout_s)),
    st.builds(Crash, node_names),
    st.builds(Restart, node_names),
    st.builds(Freeze, node_names, _seconds(15.0)),
    st.builds(Sigterm, node_names),
]
_operator_steps: list[st.SearchStrategy[Step]] = [st.just(WriteGarbage()), st.just(DeleteKey())]

fault_steps = st.one_of(_fault_steps)
setups = st.builds(
    Setup,
    lateness_s=_seconds(MAX_LATENESS_S),
    timing=st.sampled_from(sorted(TIMINGS)),
    order=st.permutations(NODES).map(tuple),
    watch=st.booleans(),
)

SIM_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------


@SIM_SETTINGS
@given(setup=setups, steps=st.lists(fault_steps, max_size=30))
def test_safety_under_random_faults(setup: Setup, steps: list[Step]) -> None:
    simulate(steps, setup)


@SIM_SETTINGS
@given(
    setup=setups,
    steps=st.lists(fault_steps, max_size=20),
    winner=node_names,
)
def test_healed_cluster_puts_the_vip_on_its_only_primary(
    setup: Setup, steps: list[Step], winner: str
) -> None:
    sim = simulate(steps, setup)
    sim.heal(winner)
    bound_s = sim.timing.ttl_s + 3.0
    start_s = sim.clock.now_s
    got: list[float] = []

    def holds() -> None:
        truth = sim.writer_truth()
        if sim.kernel.holders() == {winner} and truth is not None and truth[0] == winner:
            got.append(sim.clock.now_s)

    while not got and sim.clock.now_s - start_s < bound_s:
        sim.advance(0.1, after_tick=holds)
    if not got:
        raise LivenessFailureError(
            f"{winner} has no VIP {bound_s} s after healing; holders {sim.kernel.holders()}, "
            f"key {sim.writer_truth()}\n  " + "\n  ".join(sim.trace)
        )
    # Once healed and up, it stays up: no flapping.
    for _ in range(3 * sim.timing.ttl_s):
        sim.advance(1.0)
        if sim.kernel.holders() != {winner}:
            raise LivenessFailureError(
                f"{winner} lost the VIP after healing:\n  " + "\n  ".join(sim.trace)
            )
