"""The simulated world: three sidecars, one etcd, one kernel, one clock.

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
from collections.abc import Callable, Sequence

from dbvip.identity import Whose, whose
from dbvip.keys import Garbage, decode_writer
from dbvip.members import report_of
from dbvip.model import (
    Role,
)
from dbvip.runner import Runner, Snapshot
from tests.fakes import (
    WRITER,
    EtcdSnapshot,
    FakeEtcd,
    FakeKernel,
)
from tests.sim.guards import (
    GuardedStore,
    HookedClock,
    RunnerFactory,
    SimNode,
)
from tests.sim.steps import (
    INVARIANTS,
    MIN_SLEEP_S,
    NODES,
    STALL_TICKS,
    TIMINGS,
    Advance,
    Crash,
    DeleteKey,
    DeliverLate,
    EtcdFault,
    Freeze,
    InvariantViolationError,
    NetlinkDelay,
    NetlinkFault,
    ProbeHang,
    Restart,
    RestoreEtcd,
    SetRole,
    Setup,
    Sigterm,
    SnapshotEtcd,
    Step,
    WipeEtcd,
    WriteGarbage,
)

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
        self.snapshot: EtcdSnapshot | None = None
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
    setup: Setup = Setup(),  # noqa: B008  (a frozen dataclass)
    checks: frozenset[str] = INVARIANTS,
    factories: dict[str, RunnerFactory] | None = None,
) -> Sim:
    sim = Sim(setup, checks, factories)
    sim.check("start")
    for step in steps:
        sim.apply(step)
    return sim
