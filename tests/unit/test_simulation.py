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
- S5: a lease is renewed, adopted or released only by the sidecar it was
  granted to; a sidecar whose node name another sidecar (a twin, given the
  same name) reports never adds the VIP.

The model: each sidecar ticks at the ``wake_s`` its last decision asked for
(or at once when a watched change of the writer key wakes it); ticks are
atomic, so the time one spends in a hung call delays the others, like a
short freeze. Leases expire in etcd at their exact instant. One fault is
added to the fakes' set, ``late``: a request that times out yet takes effect
later (``DeliverLate``), as a proposal committed after the client gave up.

A failing example prints as a list of steps that ``simulate`` replays as is.
The search is derandomized, so a run is the same on every machine.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dbvip.actions import (
    Action,
    Failed,
    Outcome,
)
from dbvip.config import TIMING_FIELDS, load
from dbvip.identity import Identity, Whose, whose
from dbvip.keys import Garbage, decode_writer
from dbvip.members import report_of
from dbvip.model import (
    KERNEL_EXPIRY_SLACK_S,
    Decision,
    KeyHeld,
    KeyUnknown,
    Reason,
    Role,
    Timing,
    WriterView,
)
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
)

NODES = ("n1", "n2", "n3")
INVARIANTS = frozenset({"S1", "S2", "S3", "S4", "S5"})
TIMINGS = {
    "default": Timing(),
    # A tighter configuration, near the edge of what dbvip.config accepts.
    "tight": Timing(
        ttl_s=6,
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
STALL_TICKS = 2000  # that many ticks without the clock moving: the scheduler is stuck
MAX_LATENESS_S = 1.0  # the kernel's expiry lateness (docs/DESIGN.md, "Facts measured")
NicFault = Literal["ok", "missing", "refuse"]
RoleName = Literal["primary", "replica", "down", "unknown"]
StoreFault = Literal["ok", "refuse", "hang", "lose_reply", "late"]


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
    """The database's role as its probe will report it (for ``for_s`` seconds,
    then back to what it was, unless changed meanwhile; None: for good)."""

    node: str
    role: RoleName
    for_s: float | None = None


@dataclass(frozen=True)
class ProbeHang:
    node: str
    hang: bool
    for_s: float | None = None


@dataclass(frozen=True)
class EtcdFault:
    node: str
    fault: StoreFault
    for_s: float | None = None


@dataclass(frozen=True)
class NetlinkFault:
    node: str
    fault: NicFault
    for_s: float | None = None


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
class DeliverLate:
    """Requests that timed out under the ``late`` fault take effect now."""


@dataclass(frozen=True)
class WriteGarbage:
    """An operator writes a value that is no writer value (no lease)."""


@dataclass(frozen=True)
class DeleteKey:
    """An operator deletes the writer key by hand."""


@dataclass(frozen=True)
class SnapshotEtcd:
    """``etcdctl snapshot save``: kept for a later ``RestoreEtcd``."""


@dataclass(frozen=True)
class RestoreEtcd:
    """etcd restored from the last snapshot: its keys, revision and leases
    (each with its whole TTL again)."""


@dataclass(frozen=True)
class WipeEtcd:
    """etcd's data deleted: empty, revisions from 1, lease ids granted again."""


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
    | DeliverLate
    | WriteGarbage
    | DeleteKey
    | SnapshotEtcd
    | RestoreEtcd
    | WipeEtcd
)


@dataclass(frozen=True)
class Setup:
    lateness_s: float = 1.0
    timing: str = "default"
    order: tuple[str, ...] = NODES  # tick order of nodes due at the same instant
    watch: bool = True  # nodes are woken when the writer key changes
    # Sidecar -> its configured node name, where not its own: a twin.
    names: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Fakes with hooks: every state change runs the checker.
# --------------------------------------------------------------------------


class HookedClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.before_advance: Callable[[float, float], None] = lambda t0, t1: None
        self.after_advance: Callable[[], None] = lambda: None

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now_s + seconds)

    def advance_to(self, instant_s: float) -> None:
        # Lands exactly on the instant: now + (t - now) may fall short of t.
        assert instant_s >= self.now_s, (instant_s, self.now_s)
        self.before_advance(self.now_s, instant_s)
        self.now_s = instant_s
        self.after_advance()


class GuardedStore(FakeLeaseStore):
    """Checks S4 before and the invariants after every call.

    Adds one fault to the fakes' set: ``late``, a request that times out on
    the client but still takes effect in etcd later (a proposal committed
    after the client gave up, or on another endpoint), when a ``DeliverLate``
    step comes.
    """

    def __init__(self, sim: Sim, sidecar: str, node: str) -> None:
        # Each sidecar on a host of its own; ``node`` is its configured name,
        # which a twin (a copied configuration) shares with another sidecar.
        super().__init__(sim.etcd, node, Identity.fresh(node, f"host-{sidecar}", "eth0"))
        self.sim = sim
        self.sidecar = sidecar
        self._sent_as: deque[Identity] = deque()  # identities of late requests, in order
        self.fault: StoreFault = "ok"  # type: ignore[assignment]

    def _late(self, what: str, timeout_s: float, effect: Callable[[], object]) -> Unknown | None:
        if self.fault != "late":
            return None
        self.etcd.clock.advance(timeout_s)
        self._sent_as.append(self.identity)
        self.sim.defer(f"{self.sidecar} {what}", lambda: self._effect(effect))
        return Unknown(f"timed out after {timeout_s:.3f} s (will take effect later)")

    def _effect(self, effect: Callable[[], object]) -> None:
        # A late request lands as the process that sent it: its fault lifted,
        # its identity (that process may have been restarted since).
        fault, self.fault = self.fault, "ok"
        identity, self.identity = self.identity, self._sent_as.popleft()
        try:
            effect()
        finally:
            self.fault, self.identity = fault, identity

    def acquire(self, ttl_s: int, timeout_s: float) -> Granted | Refused | Unknown:
        self.sim.before_acquire(self.sidecar)
        base = super().acquire
        result = self._late("acquire", timeout_s, lambda: base(ttl_s, timeout_s)) or base(
            ttl_s, timeout_s
        )
        self.sim.check(f"{self.sidecar} acquire -> {result}")
        return result

    def adopt(
        self, lease_id: int, mod_revision: int, ttl_s: int, timeout_s: float
    ) -> Granted | Refused | Unknown:
        self.sim.before_acquire(self.sidecar)  # adopting is acquiring: primary only
        self.sim.before_lease_action(self, "adopt", lease_id)

        def effect() -> Granted | Refused | Unknown:
            moved = FakeLeaseStore.adopt(self, lease_id, mod_revision, ttl_s, timeout_s)
            # The key moved onto a new lease in one step (whether or not the
            # reply arrives), and the VIP's backing moved with it; the old lease,
            # revoked after, carries nothing.
            truth = self.etcd.writer_holder()
            if (truth is not None and truth[0] == self.sidecar and truth[1] != lease_id
                    and self.sim.vip_lease.get(self.sidecar) == lease_id):  # fmt: skip
                self.sim.vip_lease[self.sidecar] = truth[1]
            return moved

        late = self._late(f"adopt {lease_id:x}", timeout_s, effect)
        result = late or effect()
        self.sim.check(f"{self.sidecar} adopt {lease_id:x} -> {result}")
        return result

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown:
        self.sim.before_lease_action(self, "keepalive", lease_id)
        base = super().keepalive
        late = self._late(f"keepalive {lease_id:x}", timeout_s, lambda: base(lease_id, timeout_s))
        result = late or base(lease_id, timeout_s)
        self.sim.check(f"{self.sidecar} keepalive {lease_id:x} -> {result}")
        return result

    def release(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        self.sim.before_release(self.sidecar, lease_id)
        self.sim.before_lease_action(self, "release", lease_id)
        base = super().release
        late = self._late(f"release {lease_id:x}", timeout_s, lambda: base(lease_id, timeout_s))
        result = late or base(lease_id, timeout_s)
        self.sim.check(f"{self.sidecar} release {lease_id:x} -> {result}")
        return result

    def read_writer(self, timeout_s: float) -> WriterView:
        if self.fault == "late":  # a late read changes nothing: a plain hang
            self.etcd.clock.advance(timeout_s)
            result: WriterView = KeyUnknown(f"timed out after {timeout_s:.3f} s")
        else:
            result = super().read_writer(timeout_s)
        self.sim.check(f"{self.sidecar} read -> {result}" if self.fault != "ok" else "")
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
    def __init__(
        self, sim: Sim, name: str, role: Role, factory: RunnerFactory, node: str | None = None
    ) -> None:
        self.sim = sim
        self.name = name  # the sidecar, on a host of its own
        self.node = node or name  # its configured node name
        self.factory = factory
        self.probe = FakeProbe(sim.clock, role)
        self.store = GuardedStore(sim, name, self.node)
        self.vip = GuardedVip(sim, name)
        self.announcer = FakeAnnouncer(sim.kernel, name)
        self.waiter = FakeWaiter(sim.clock)
        self.running = True
        self.frozen_until_s = -math.inf
        self.next_wake_s = sim.clock.now_s
        self.runner = self.fresh_runner()

    def fresh_runner(self) -> Runner:
        ports = Ports(self.sim.clock, self.probe, self.store, self.vip, self.announcer)
        return self.factory(
            self.node, self.sim.timing, ports, self.waiter, lambda s: self.sim.published(self, s)
        )

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
        self._still = 0  # ticks in a row at one instant
        self._still_at = self.clock.now_s
        self.pending: list[tuple[str, Callable[[], None]]] = []  # late requests
        self.timers: list[tuple[float, Callable[[], None]]] = []  # faults that end
        self.snapshot: tuple[int, dict[str, object], dict[int, int]] | None = None
        factories = factories or {}
        self.nodes = {
            name: SimNode(
                self,
                name,
                Role.PRIMARY if name == "n1" else Role.REPLICA,
                factories.get(name, Runner),
                setup.names.get(name),
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
        value = decode_writer(entry.value)
        if isinstance(value, Garbage):
            return None, entry.lease_id
        # The sidecar, not the name: a twin writes the same name from its host.
        host = value.identity.host if value.identity else ""
        return (host.removeprefix("host-") if host else value.node), entry.lease_id

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
        node = self.nodes[name]
        reported = self.etcd.member_ids.get(node.node)
        if reported is not None and whose(node.node, reported, node.store.identity) is (
            Whose.NAME_TAKEN
        ):
            self.fail("S5", f"{name} adds the VIP while {reported.short()} reports its name")
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

    def before_lease_action(self, store: GuardedStore, what: str, lease_id: int) -> None:
        """S5: a lease is renewed, adopted or released only by the sidecar it
        was granted to (any process of it: the same node, host, interface)."""
        owner = self.etcd.lease_owner.get(lease_id)
        mine = store.identity
        if owner is not None and whose(owner.node, owner, mine) not in (
            Whose.MINE,
            Whose.PREDECESSOR,
        ):
            self.fail("S5", f"{store.sidecar} {what}s lease {lease_id:x} of {owner.short()}")

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

    def published(self, node: SimNode, snap: Snapshot) -> None:
        # The member report goes to etcd off the loop; a partitioned node's
        # does not arrive, nor one over a twin's. Reports are not expired
        # (their leases are not modelled), which only delays liveness (a
        # twin's name stays taken), never helps safety.
        if node.store.fault in ("ok", "lose_reply"):
            self.etcd.report(node.store.identity, report_of(snap, "vip"))
        if self._reasons.get(node.name) != snap.reason:
            self._reasons[node.name] = snap.reason
            self.note(f"{node.name} {snap.reason}: {snap.detail} {snap.facts}")

    # -- scheduling ----------------------------------------------------------------

    def advance(self, seconds: float, after_tick: Callable[[], None] = lambda: None) -> None:
        """Run every awake sidecar at its own wake-up instants for ``seconds``.

        Ticks are atomic: time a tick spends (a hung request, a hung probe)
        delays the other sidecars' ticks as if they were frozen meanwhile.
        """
        until = self.clock.now_s + seconds
        while True:
            self._fire_timers()
            self._expire_leases()
            now = self.clock.now_s
            due = [self.nodes[n] for n in self.setup.order if self._due(self.nodes[n], now)]
            if not due:
                if now >= until:
                    return
                wakes = [until]
                for node in self.nodes.values():
                    if node.running:
                        wakes.append(max(node.next_wake_s, node.frozen_until_s))
                wakes.extend(end for _, end in self.etcd.leases.values() if end > now)
                wakes.extend(at for at, _ in self.timers)
                self.clock.advance_to(max(now, min(wakes)))
                continue
            for node in due:
                if node.awake(self.clock.now_s):
                    self._tick(node)
                    after_tick()
            if self.clock.now_s >= until:
                return  # hung ticks overran the step; the rest run in the next one

    def _due(self, node: SimNode, now: float) -> bool:
        return node.awake(now) and node.next_wake_s <= now

    def _tick(self, node: SimNode) -> None:
        decision = node.runner.tick()
        now = self.clock.now_s
        self._still = self._still + 1 if now == self._still_at else 0
        self._still_at = now
        if self._still > STALL_TICKS:
            raise AssertionError(
                f"fake time stands still after {self._still} ticks:\n  " + "\n  ".join(self.trace)
            )
        if decision.wake_s <= now:
            self.spins += 1
        node.next_wake_s = max(decision.wake_s, now + MIN_SLEEP_S)
        self.check()
        self._watch()

    def _fire_timers(self) -> None:
        while self.timers:
            first = min(range(len(self.timers)), key=lambda i: self.timers[i][0])
            at, revert = self.timers[first]
            if at > self.clock.now_s:
                return
            del self.timers[first]
            revert()

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
            case SetRole(name, role, for_s):
                probe = self.nodes[name].probe
                self._for(for_s, step, SetRole(name, probe.role.value), lambda: probe.role.value)
                if Role(role) is Role.PRIMARY and probe.role is not Role.PRIMARY:
                    # A promotion starts a new timeline, above every one so far.
                    probe.timeline = 1 + max(n.probe.timeline for n in self.nodes.values())
                probe.role = Role(role)
            case ProbeHang(name, hang, for_s):
                probe = self.nodes[name].probe
                self._for(for_s, step, ProbeHang(name, probe.hang), lambda: probe.hang)
                probe.hang = hang
            case EtcdFault(name, fault, for_s):
                node = self.nodes[name]
                store = node.store
                self._for(for_s, step, EtcdFault(name, store.fault), lambda: store.fault)
                store.fault = fault
                if fault == "ok" and node.running and self.setup.watch:
                    node.runner.key_changed()  # the watch reconnects
            case NetlinkFault(name, fault, for_s):
                vip = self.nodes[name].vip
                self._for(for_s, step, NetlinkFault(name, vip.fault), lambda: vip.fault)
                vip.fault = fault
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
            case DeliverLate():
                while self.pending:
                    self._deliver(self.pending[0])
            case WriteGarbage():
                self.etcd.put(WRITER, b"\x00garbage")
            case DeleteKey():
                self.etcd.delete(WRITER)
            case SnapshotEtcd():
                self.snapshot = self.etcd.snapshot()
            case RestoreEtcd():
                if self.snapshot is not None:
                    self.etcd.restore(self.snapshot)
            case WipeEtcd():
                self.etcd.wipe()
        self._watch()
        self.check(f"after {step}")

    def _for(
        self, for_s: float | None, step: Step, back: Step, current: Callable[[], object]
    ) -> None:
        """After ``for_s``, apply ``back`` unless something else changed the
        setting meanwhile (the last field of ``step`` is what it sets)."""
        if for_s is None:
            return
        value = getattr(step, next(f for f in ("role", "hang", "fault") if hasattr(step, f)))

        def revert() -> None:
            if current() == value:
                self.apply(back)

        self.timers.append((self.clock.now_s + for_s, revert))

    def defer(self, what: str, effect: Callable[[], None]) -> None:
        self.pending.append((what, effect))

    def _deliver(self, late: tuple[str, Callable[[], None]]) -> None:
        if late in self.pending:
            self.pending.remove(late)
            late[1]()
            self._watch()
            self.check(f"late {late[0]} took effect")

    def _restart(self, node: SimNode) -> None:
        if node.running:
            return
        node.running = True
        node.frozen_until_s = -math.inf
        node.next_wake_s = self.clock.now_s
        node.store.identity = node.store.identity.restarted()  # a new process
        node.runner = node.fresh_runner()

    def heal(self, winner: str) -> None:
        """Lift every fault; ``winner`` is the only primary; all sidecars run."""
        self.timers.clear()
        newest = max(n.probe.timeline for n in self.nodes.values())
        if self.nodes[winner].probe.timeline < newest:
            # A primary on an older timeline than another node's is a stale
            # one (the others rightly call it superseded): the only primary
            # of a healed cluster is the one promoted last.
            self.apply(SetRole(winner, "replica"))
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
        self.apply(DeliverLate())
        truth = self.writer_truth()
        if truth is not None and truth[0] is None:
            # An operator cleans up garbage, once every sidecar has seen it and
            # every lease that may back a VIP has been revoked or has run out
            # (deleting it earlier is unsafe: see the operator tests below).
            self.advance(self.timing.ttl_s + 1.0)
            self.apply(DeleteKey())


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


node_names = st.one_of(st.just("n1"), st.sampled_from(NODES))  # n1 starts as the holder
role_names: st.SearchStrategy[RoleName] = st.sampled_from(("primary", "replica", "down", "unknown"))
# ``late``: a request that times out but lands later (found the adoption
# defect, fixed by adopting onto a fresh lease; its tests are below).
faults: st.SearchStrategy[StoreFault] = st.sampled_from(
    ("ok", "refuse", "hang", "lose_reply", "late")
)
nic_faults: st.SearchStrategy[NicFault] = st.sampled_from(("ok", "missing", "refuse"))

# Short steps explore races around one instant, long ones reach deadlines,
# lease expiry and kernel lifetimes.
durations = st.one_of(st.none(), _seconds(8.0))  # None: until changed again
advances = st.one_of(_seconds(0.5), _seconds(2.0), _seconds(12.0)).map(Advance)
_fault_events: list[st.SearchStrategy[Step]] = [
    st.builds(SetRole, node_names, role_names, durations),
    st.builds(SetRole, node_names, st.just("primary"), durations),
    st.builds(ProbeHang, node_names, st.booleans(), durations),
    st.builds(EtcdFault, node_names, faults, durations),
    st.builds(NetlinkFault, node_names, nic_faults, durations),
    st.builds(NetlinkDelay, node_names, _seconds(TIMINGS["default"].vip_op_timeout_s)),
    st.builds(Crash, node_names),
    st.builds(Restart, node_names),
    st.builds(Freeze, node_names, _seconds(15.0)),
    st.builds(Sigterm, node_names),
    st.just(WriteGarbage()),
    st.just(DeleteKey()),  # safe with the claim: see the operator tests
    st.just(DeliverLate()),
]


def scenarios(
    events: list[st.SearchStrategy[Step]], max_events: int, swarm: bool = True
) -> st.SearchStrategy[list[Step]]:
    """Events, each followed by some time passing (possibly none).

    Swarm testing: each example draws from a random subset of the kinds of
    event, so rare combinations (say, late requests with role flips and no
    crashes to interrupt them) come up far more often than from all at once.
    """

    def among(kinds: list[st.SearchStrategy[Step]]) -> st.SearchStrategy[list[Step]]:
        pairs = st.lists(st.tuples(st.one_of(kinds), advances), min_size=3, max_size=max_events)
        return pairs.map(lambda ps: [step for pair in ps for step in pair])

    if not swarm:
        return among(events)
    enabled = st.lists(st.sampled_from(events), min_size=1, max_size=len(events), unique=True)
    return enabled.flatmap(among)


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


@settings(SIM_SETTINGS, max_examples=400)
@given(setup=setups, steps=scenarios(_fault_events, 25))
def test_safety_under_random_faults(setup: Setup, steps: list[Step]) -> None:
    sim = simulate(steps, setup)
    assert sim.spins == 0, "a runner asked to be woken at once again: it would spin"


# n3 runs with n1's configuration copied (one node name, two hosts).
TWINS = {"n3": "n1"}


@settings(SIM_SETTINGS, max_examples=300)
@given(setup=setups.map(lambda s: replace(s, names=TWINS)), steps=scenarios(_fault_events, 25))
def test_safety_with_two_sidecars_given_one_node_name(setup: Setup, steps: list[Step]) -> None:
    simulate(steps, setup)


@pytest.mark.parametrize("twin_role", ["primary", "replica"])
def test_a_twin_holds_nothing_and_touches_nothing(twin_role: RoleName) -> None:
    """n1 holds the VIP; n3 starts with n1's name on another host, its
    database primary too (or a replica). It never adopts, renews or
    releases n1's key (S5, checked on every call), reports name_conflict."""
    sim = simulate(
        [Advance(1.0), SetRole("n3", twin_role), Advance(1.0), Crash("n3"), Restart("n3")],
        Setup(names=TWINS),
    )
    sim.apply(Advance(3 * sim.timing.ttl_s))
    assert sim.kernel.holders() == {"n1"}
    assert sim.nodes["n3"].runner.state.reason is Reason.NAME_CONFLICT
    assert sim.nodes["n1"].runner.state.reason is Reason.HOLDING


def settle(sim: Sim, winner: str) -> float:
    """Heal every fault with ``winner`` the only primary; return how long it
    took ``winner`` to hold the key and the VIP; then check it keeps them."""
    sim.heal(winner)
    bound_s = sim.timing.ttl_s + 3.0
    start_s = sim.clock.now_s
    got: list[float] = []

    def holds() -> bool:
        truth = sim.writer_truth()
        return sim.kernel.holders() == {winner} and truth is not None and truth[0] == winner

    def track() -> None:
        if not got and holds():
            got.append(sim.clock.now_s)

    while not got and sim.clock.now_s - start_s < bound_s:
        sim.advance(0.1, after_tick=track)
    if not got:
        raise LivenessFailureError(
            f"{winner} has no VIP {bound_s} s after healing; holders {sim.kernel.holders()}, "
            f"key {sim.writer_truth()}\n  " + "\n  ".join(sim.trace)
        )

    def keeps() -> None:
        if not holds():
            raise LivenessFailureError(
                f"{winner} lost the VIP after healing:\n  " + "\n  ".join(sim.trace)
            )

    sim.advance(3.0 * sim.timing.ttl_s, after_tick=keeps)  # no flapping once healed
    return got[0] - start_s


def test_healing_makes_a_stale_primary_the_newest_one() -> None:
    """CI found this: n1 primary on timeline 1, n2 promoted to timeline 2;
    healed with n1 the only primary, n1 must be on a timeline above n2's or
    the cluster rightly keeps calling it superseded."""
    steps: list[Step] = [
        SetRole("n1", "primary"),
        Advance(0.07),
        SetRole("n2", "primary"),
        Advance(1.74),
    ]
    sim = simulate(steps, Setup(watch=False))
    settle(sim, "n1")
    assert sim.nodes["n1"].probe.timeline > sim.nodes["n2"].probe.timeline


@SIM_SETTINGS
@given(setup=setups, steps=scenarios(_fault_events, 15), winner=node_names)
def test_healed_cluster_puts_the_vip_on_its_only_primary(
    setup: Setup, steps: list[Step], winner: str
) -> None:
    settle(simulate(steps, setup), winner)


def test_the_simulated_timings_are_ones_the_config_accepts() -> None:
    for name, timing in TIMINGS.items():
        # failsafe_window_s is 0 with failsafe off, the default.
        flags = {f: str(getattr(timing, f)) for f in TIMING_FIELDS if f != "failsafe_window_s"}
        assert load(flags, {}, required=("ttl_s",)).timing == timing, name


class Mute(Runner):
    """A broken sidecar whose every action fails."""

    def execute(self, action: Action, request_deadline_s: float) -> Outcome:
        return Failed(action, "muted")


def test_the_liveness_check_fires_when_the_primary_never_gets_the_vip() -> None:
    sim = simulate([Advance(1.0)], factories={"n2": Mute})
    with pytest.raises(LivenessFailureError, match="n2 has no VIP"):
        settle(sim, "n2")


# --------------------------------------------------------------------------
# The checker itself: every check fires on a setup broken on purpose.
# --------------------------------------------------------------------------


class AddsWithoutLease(Runner):
    """A broken sidecar that adds the VIP every tick, lease or not."""

    def tick(self, stopping: bool = False) -> Decision:
        self.ports.vip.add(5)
        return super().tick(stopping)


class ReleasesFirst(Runner):
    """A broken sidecar that releases its lease while the VIP is still up."""

    def tick(self, stopping: bool = False) -> Decision:
        if self.state.lease is not None:
            self.ports.store.release(self.state.lease.lease_id, 1.0)
        return super().tick(stopping)


class RenewsByName(Runner):
    """A broken sidecar that renews whatever lease the key naming it is under."""

    def tick(self, stopping: bool = False) -> Decision:
        view = self.ports.store.read_writer(1.0)
        if isinstance(view, KeyHeld) and view.holder == self.node and view.lease_id > 0:
            self.ports.store.keepalive(view.lease_id, 1.0)
        return super().tick(stopping)


class AcquiresAsReplica(Runner):
    """A broken sidecar that tries to take the writer key whatever its role."""

    def tick(self, stopping: bool = False) -> Decision:
        self.ports.store.acquire(self.timing.ttl_s, 1.0)
        return super().tick(stopping)


# Beyond the slack the VIP lifetime is cut by: a kernel this late breaks the
# backstop that covers frozen and crashed sidecars.
TOO_LATE = Setup(lateness_s=KERNEL_EXPIRY_SLACK_S + Timing().margin_s + 1.0)


@pytest.mark.parametrize(
    ("invariant", "factories", "setup", "steps"),
    [
        ("S1", {"n2": AddsWithoutLease}, Setup(), [Advance(1.0)]),
        ("S2", {"n2": AddsWithoutLease}, Setup(), [Advance(1.0)]),
        ("S3", {"n2": AddsWithoutLease}, Setup(), [Crash("n1"), Advance(1.0)]),
        ("S4", {"n1": ReleasesFirst}, Setup(), [Advance(1.0)]),
        ("S4", {"n2": AcquiresAsReplica}, Setup(), [Advance(1.0)]),
        ("S5", {"n3": RenewsByName}, Setup(names=TWINS), [Advance(1.0)]),
        ("S3", {}, TOO_LATE, [Advance(1.0), Freeze("n1", 30.0), Advance(30.0)]),
        (
            "S1",
            {},
            TOO_LATE,
            [
                Advance(1.0),
                Freeze("n1", 30.0),
                SetRole("n1", "replica"),
                SetRole("n2", "primary"),
                Advance(30.0),
            ],
        ),
    ],
    ids=[
        "S1-rogue-add",
        "S2-rogue-add",
        "S3-rogue-add",
        "S4-release-first",
        "S4-acquire-as-replica",
        "S5-renew-by-name",
        "S3-kernel-too-late",
        "S1-kernel-too-late",
    ],
)
def test_each_check_fires_on_a_broken_setup(
    invariant: str, factories: dict[str, RunnerFactory], setup: Setup, steps: list[Step]
) -> None:
    # Only this one invariant is checked, so it cannot hide behind another.
    with pytest.raises(InvariantViolationError) as caught:
        simulate(steps, setup, checks=frozenset({invariant}), factories=factories)
    assert caught.value.invariant == invariant


def test_s3_check_sees_a_violation_that_begins_and_ends_inside_one_clock_jump() -> None:
    steps: list[Step] = [Advance(1.0), Crash("n1"), Crash("n2"), Crash("n3")]
    sim = simulate(steps, TOO_LATE)
    with pytest.raises(InvariantViolationError, match="dies at") as caught:
        sim.apply(Advance(60.0))  # nothing ticks: one single jump of the clock
    assert caught.value.invariant == "S3"
    # At the far end of the jump both the lease and the VIP are gone, so
    # checks at instants alone would have seen nothing.
    sim.clock.now_s += 60.0
    assert sim.kernel.holders() == set()
    assert not sim.lease_alive(sim.vip_lease["n1"])


def test_the_search_finds_the_broken_kernel_backstop() -> None:
    """The same search as the safety property finds two writers, or a VIP
    outliving its lease, once the kernel is later than the slack allows."""
    too_late = setups.map(lambda s: replace(s, lateness_s=s.lateness_s + TOO_LATE.lateness_s))

    @settings(SIM_SETTINGS, phases=[Phase.generate], report_multiple_bugs=False)
    @given(setup=too_late, steps=scenarios(_fault_events, 25))
    def search(setup: Setup, steps: list[Step]) -> None:
        simulate(steps, setup)

    with pytest.raises(InvariantViolationError) as caught:
        search()
    assert caught.value.invariant in {"S1", "S3"}


# --------------------------------------------------------------------------
# Defects the search found. Each is a scenario family (a property over its
# timings and settings) plus the shrunk counterexample replayed verbatim.
# The late release (a release that times out, then lands after the node has
# taken its key again) is fixed: adoption moves the key onto a fresh lease,
# so the late delete fails its comparison and the late revoke finds an empty
# lease. The comments give the violation each replay showed before the fix.
# Deleting the writer key by hand was a gap, closed by the claim: a second key
# put with the writer key under the holder's lease, which a taker must also
# find free (tests below).
# --------------------------------------------------------------------------


@settings(SIM_SETTINGS, max_examples=100)
@given(
    setup=setups,
    drop=st.sampled_from(("replica", "down", "unknown", "sigterm")),
    back_after_s=_seconds(3.0),
    late_by_s=_seconds(8.0),
    rival=st.booleans(),
)
def test_a_release_in_doubt_never_leaves_a_vip_without_its_lease(
    setup: Setup, drop: str, back_after_s: float, late_by_s: float, rival: bool
) -> None:
    """n1 holds the VIP; its etcd requests start timing out yet still take
    effect later; its database drops (or the sidecar stops), so it releases;
    then etcd answers again and n1 is primary (or restarted) once more."""
    steps: list[Step] = [Advance(0.5)]
    if rival:  # n2's database wrongly claims to be primary as well
        steps.append(SetRole("n2", "primary"))
    steps.append(EtcdFault("n1", "late"))
    if drop == "sigterm":
        steps += [Sigterm("n1"), EtcdFault("n1", "ok"), Advance(back_after_s), Restart("n1")]
    else:
        steps += [SetRole("n1", drop if drop in ("down", "unknown") else "replica"), Advance(2.5)]
        steps += [EtcdFault("n1", "ok"), Advance(back_after_s), SetRole("n1", "primary")]
    steps += [Advance(late_by_s), DeliverLate(), Advance(1.0)]
    simulate(steps, setup)


def test_late_release_after_sigterm_cannot_touch_the_readopted_key() -> None:
    # S3 at t=1002.0: n1 has the VIP but its lease 4097 is not alive in etcd.
    simulate(
        [
            Advance(0.0),
            EtcdFault("n1", "late"),
            Sigterm("n1"),  # removes the VIP; the release times out, lands later
            EtcdFault("n1", "ok"),
            Restart("n1"),
            Advance(0.0),  # the fresh sidecar adopts lease 4097 and adds the VIP
            DeliverLate(),  # the old release deletes the key and revokes 4097
        ]
    )


def test_late_release_after_demotion_cannot_touch_the_key_readopted_on_promotion() -> None:
    # S3 at t=1006.7: n1 has the VIP but its lease 4097 is not alive in etcd.
    simulate(
        [
            Advance(0.5),
            EtcdFault("n1", "late", for_s=1.0),
            SetRole("n1", "replica", for_s=2.0),  # release in doubt, then primary again
            Advance(4.0),  # n1 re-adopts lease 4097 and adds the VIP
            DeliverLate(),
        ]
    )


def test_late_release_never_gives_two_writers_when_another_database_claims_primary() -> None:
    # S1 at t=1002.0: ['n1', 'n2'] all have the VIP.
    simulate(
        [
            Advance(0.0),
            SetRole("n2", "primary"),
            EtcdFault("n1", "late"),
            Sigterm("n1"),
            EtcdFault("n1", "ok"),
            Restart("n1"),
            Advance(0.0),
            DeliverLate(),  # the key vanishes: n2's watch fires, n2 takes it at once
            Advance(0.0),
        ],
        Setup(order=("n2", "n1", "n3")),
        checks=frozenset({"S1"}),
    )


@settings(SIM_SETTINGS, max_examples=100)
@given(
    setup=setups,
    holder=st.sampled_from(("running", "frozen", "crashed", "etcd hangs")),
    garbage_first=st.booleans(),
    wait_s=_seconds(4.0),
)
def test_an_operator_edit_of_the_writer_key_never_gives_two_writers(
    setup: Setup, holder: str, garbage_first: bool, wait_s: float
) -> None:
    """n1 holds the VIP, n2's database is (or believes it is) primary, and an
    operator deletes the writer key, or overwrites it and then deletes it."""
    steps: list[Step] = [Advance(1.0), SetRole("n2", "primary")]
    holder_faults: dict[str, list[Step]] = {
        "running": [],
        "frozen": [Freeze("n1", 20.0)],
        "crashed": [Crash("n1")],
        "etcd hangs": [EtcdFault("n1", "hang")],
    }
    steps += holder_faults[holder]
    steps += [Advance(wait_s)]
    steps += [WriteGarbage(), DeleteKey()] if garbage_first else [DeleteKey()]
    steps += [Advance(3.0)]
    simulate(steps, setup)


def test_deleting_the_key_of_a_crashed_holder_never_gives_two_writers() -> None:
    # S1 at t=1002.0: ['n1', 'n2'] all had the VIP before the claim. The
    # "help" an operator might give a failover: n1's sidecar died, so delete
    # its stale key. n1's claim, under its lease, keeps n2 waiting.
    sim = simulate(
        [
            Advance(1.0),
            Crash("n1"),
            SetRole("n2", "primary"),
            Advance(1.0),
            DeleteKey(),  # n1's lease is alive and so is its VIP, for 4 s more
            Advance(0.5),
        ]
    )
    assert sim.kernel.holders() == {"n1"}
    assert sim.nodes["n2"].runner.state.reason is Reason.KEY_DELETED
    sim.apply(Advance(sim.timing.ttl_s))  # n1's lease runs out, and its claim with it
    assert sim.kernel.holders() == {"n2"}


# A wiped or restored etcd no longer has the lease a VIP was added under: S3
# and S5 (lease ids are granted again) cannot hold across it by design; what
# must hold is one writer (S1), adds only under a live key (S2), and S4.
AFTER_RESET = frozenset({"S1", "S2", "S4"})


@settings(SIM_SETTINGS, max_examples=150)
@given(
    setup=setups,
    wipe=st.booleans(),
    moved=st.booleans(),
    rival=st.booleans(),
    holder=st.sampled_from(("running", "frozen", "etcd hangs")),
    before_s=_seconds(6.0),
    after_s=_seconds(4.0),
)
def test_etcd_wiped_or_restored_never_gives_two_writers(
    setup: Setup,
    wipe: bool,
    moved: bool,
    rival: bool,
    holder: str,
    before_s: float,
    after_s: float,
) -> None:
    """n1 holds the VIP; a snapshot is taken; maybe the VIP moves to n2; maybe
    another database claims primary too; the holder freezes, or loses etcd,
    or runs on; then etcd is wiped, or restored from the snapshot (which
    brings n1's old key and lease back to life)."""
    steps: list[Step] = [Advance(1.0), SnapshotEtcd(), Advance(before_s)]
    current = "n1"
    if moved:
        steps += [SetRole("n1", "replica"), SetRole("n2", "primary"), Advance(3.0)]
        current = "n2"
    if rival:
        steps.append(SetRole("n3", "primary"))
    steps += {
        "running": [],
        "frozen": [Freeze(current, 5.0)],
        "etcd hangs": [EtcdFault(current, "hang", for_s=3.0)],
    }[holder]
    steps += [WipeEtcd() if wipe else RestoreEtcd(), Advance(after_s), Advance(15.0)]
    simulate(steps, setup, checks=AFTER_RESET)


def test_after_a_wipe_a_frozen_holder_and_a_second_primary_never_overlap() -> None:
    # Without the reset rule: S1, n3 takes the key at once while n1's VIP
    # lives on to its deadline (etcd forgot n1's lease and its claim).
    sim = simulate(
        [Advance(1.0), SetRole("n3", "primary"), Advance(1.0), Freeze("n1", 4.0), WipeEtcd()],
        checks=AFTER_RESET,
    )
    sim.apply(Advance(0.5))
    assert sim.nodes["n3"].runner.state.reason is Reason.ETCD_RESET
    sim.apply(Advance(2 * sim.timing.ttl_s))
    assert len(sim.kernel.holders()) == 1  # and afterwards someone holds it again
