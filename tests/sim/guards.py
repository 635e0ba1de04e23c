"""The fakes of the simulation, with hooks: every state change (clock,
etcd call, VIP add or removal) runs the invariant checks."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from dbvip.identity import Identity
from dbvip.model import (
    KeyUnknown,
    Role,
    WriterView,
)
from dbvip.ports import Alive, Done, Gone, Granted, Refused, Unknown, VipChanged
from dbvip.runner import Ports, Runner
from tests.sim.steps import (
    StoreFault,
)

if TYPE_CHECKING:
    from tests.sim.world import Sim
from tests.fakes import (
    FakeAnnouncer,
    FakeClock,
    FakeLeaseStore,
    FakeProbe,
    FakeVipDriver,
    FakeWaiter,
)

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

    def remove(self, before_delete: Callable[[], None] | None = None) -> VipChanged | Unknown:
        if self.delay_s and self.fault == "ok":
            self.kernel.clock.advance(self.delay_s)
        result = super().remove(before_delete)
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
