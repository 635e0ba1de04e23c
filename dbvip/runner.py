"""The loop: observe, decide, act in order, publish a snapshot.

The only place that sleeps. Everything it calls is bounded in time: the role
probe by ``probe_timeout_s``, every etcd request by the deadline the core
gives (so the VIP can still come down in time), netlink by the kernel.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar

from dbvip.core import absorb, decide, vip_lifetime_s
from dbvip.events import Event, EventTracker
from dbvip.identity import Identity
from dbvip.model import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    Announced,
    Decision,
    Failed,
    KeyHeld,
    KeyUnknown,
    LeaseGone,
    LeaseGranted,
    LeaseRefused,
    LeaseReleased,
    LeaseRenewed,
    NodeState,
    Observation,
    Outcome,
    PeerView,
    Reason,
    ReleaseLease,
    RemoveVip,
    RenewLease,
    Role,
    RoleReading,
    Timing,
    VipAdded,
    VipPresence,
    VipRemoved,
    WriterView,
)
from dbvip.ports import (
    Alive,
    Announcer,
    Clock,
    Gone,
    Granted,
    LeaseStore,
    Refused,
    RoleProbe,
    Unknown,
    VipDriver,
    VipReading,
)
from dbvip.schedule import request_deadline_s

T = TypeVar("T")

log = logging.getLogger("dbvip")

# Rounds of decide/act within one tick: enough for acquire, add, announce.
MAX_ROUNDS = 6
# Below this an etcd request cannot usefully be sent.
MIN_REQUEST_S = 0.005


class Waiter(Protocol):
    """Sleeps until a timeout or a wake-up (signal, watch event)."""

    def wait(self, timeout_s: float) -> None: ...

    def wake(self) -> None: ...


class EventWaiter:
    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, timeout_s: float) -> None:
        self._event.wait(max(0.0, timeout_s))
        self._event.clear()

    def wake(self) -> None:
        self._event.set()


# What came of an action: done, refused by etcd (the key is held), the lease
# gone, or failed (unknown result, or not attempted for lack of time).
ActionResult = Literal["ok", "refused", "gone", "failed"]
# The loop's etcd requests: the writer key read, and the lease actions.
EtcdOperation = Literal[
    "read_writer", "read_members", "acquire_lease", "adopt_lease", "renew_lease", "release_lease"
]


class Observer(Protocol):
    """Hears what the loop did and how long it took (metrics).

    Called on the loop's thread: an implementation must return at once and
    never do I/O. Durations are measured on the ports' clock.
    """

    def action_done(self, kind: str, result: ActionResult, seconds: float) -> None: ...

    def probe_done(self, role: Role, seconds: float) -> None: ...

    def etcd_done(self, operation: EtcdOperation, answered: bool, seconds: float) -> None: ...


class NoObserver:
    def action_done(self, kind: str, result: ActionResult, seconds: float) -> None:
        pass

    def probe_done(self, role: Role, seconds: float) -> None:
        pass

    def etcd_done(self, operation: EtcdOperation, answered: bool, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class Ports:
    clock: Clock
    probe: RoleProbe
    store: LeaseStore
    vip: VipDriver
    announcer: Announcer


@dataclass(frozen=True)
class Snapshot:
    """What this node shows the world after each decision."""

    node: str
    reason: str
    detail: str
    facts: dict[str, str]
    role: Role
    timeline: int | None
    lsn: str | None
    vip_present: bool
    lease_id: int | None
    deadline_in_s: float | None
    tick_s: float  # monotonic instant of the decision
    last_failure: str
    # The loop's own etcd requests (not the member reports): when the last
    # answer came (monotonic), and why the latest request got none ("" if it did).
    etcd_answered_s: float | None = None
    etcd_error: str = "no etcd request yet"


class Runner:
    def __init__(
        self,
        node: str,
        timing: Timing,
        ports: Ports,
        waiter: Waiter,
        publish: Callable[[Snapshot], None] = lambda _: None,
        observer: Observer | None = None,
        on_event: Callable[[Event], None] = lambda _: None,
    ) -> None:
        self.node = node
        # The identity the store writes into every value: the core acts only
        # on keys and leases that carry it (or this sidecar's from before).
        self.identity = ports.store.identity
        self.timing = timing
        self.ports = ports
        self.waiter = waiter
        self.publish = publish
        self.observer: Observer = observer or NoObserver()
        self.on_event = on_event  # must not block: hooks run elsewhere
        self._events = EventTracker(ports.clock.wall_iso)
        self.state = NodeState()
        self._key_dirty = True  # read the writer key at least once at start
        self._key_read_s = float("-inf")
        self._last_view: WriterView = KeyUnknown("not read yet")
        self._peers: tuple[PeerView, ...] = ()
        self._same_name: tuple[Identity, ...] = ()
        self._peers_read_s = float("-inf")
        self._maintenance: bool | None = None  # not read yet
        self._last_reason: tuple[str, str] | None = None
        self._last_failure = ""
        self._etcd_answered_s: float | None = None
        self._etcd_error = "no etcd request yet"
        self.stopping = threading.Event()

    # -- wiring ---------------------------------------------------------------

    def key_changed(self) -> None:
        """Watch callback: the writer key changed or the watch reconnected."""
        self._key_dirty = True
        self.waiter.wake()

    def stop(self) -> None:
        """Signal handler: release everything, then leave ``run``."""
        self.stopping.set()
        self.waiter.wake()

    # -- loop -----------------------------------------------------------------

    def run(self, shutdown_attempts: int = 5) -> NodeState:
        while not self.stopping.is_set():
            decision = self.tick()
            if not self.stopping.is_set():
                self.waiter.wait(decision.wake_s - self.ports.clock.monotonic_s())
        # Release everything; a failed removal is retried after its backoff,
        # a few times, before giving up (the kernel lifetime still bounds it).
        for _ in range(shutdown_attempts):
            decision = self.tick(stopping=True)
            if decision.reason is Reason.STOPPED:
                break
            self.waiter.wait(decision.wake_s - self.ports.clock.monotonic_s())
        return self.state

    def tick(self, stopping: bool = False) -> Decision:
        held = self.state.lease  # a release reports the lease it was under
        obs = self.observe(stopping)
        decision = decide(self.state, obs, self.timing, self.identity)
        for _ in range(MAX_ROUNDS):
            self.state = decision.state
            self._note(decision, obs)
            self._events.decided(decision, obs, self.state.lease or held)
            if not decision.actions:
                break
            for action in decision.actions:
                outcome = self.execute(action, decision.request_deadline_s)
                self._report(action, outcome, decision)
                self._events.happened(outcome, decision, obs, self.state.lease or held)
                self.state, obs = absorb(self.state, obs, outcome, self.timing, self.identity)
                if isinstance(outcome, Failed):
                    break  # the rest of the chain is only safe after this one
            obs = replace(obs, now_s=self.ports.clock.monotonic_s())
            decision = decide(self.state, obs, self.timing, self.identity)
        self._hand_over_events()
        return decision

    def observe(self, stopping: bool = False) -> Observation:
        clock = self.ports.clock
        vip = _guarded(self.ports.vip.observe, lambda c: VipReading(VipPresence.UNKNOWN, c))
        started = clock.monotonic_s()
        role = _guarded(
            lambda: self.ports.probe.probe(self.timing.probe_timeout_s),
            lambda c: RoleReading(Role.UNKNOWN, cause=c),
        )
        now = clock.monotonic_s()
        self._tell(lambda o: o.probe_done(role.role, now - started))
        if self._needs_key(role.role, vip.presence, stopping, now):
            self._key_dirty = False
            limit = request_deadline_s(self.state, now, vip.presence, self.timing)
            timeout = limit - now
            if timeout < MIN_REQUEST_S:
                view: WriterView = KeyUnknown("no time left before the lease deadline")
            else:
                view = self._etcd(
                    "read_writer",
                    lambda: _guarded(lambda: self.ports.store.read_writer(timeout), KeyUnknown),
                )
            if isinstance(view, KeyUnknown):
                self._key_dirty = True
            else:
                self._key_read_s = now
            self._last_view = view
            now = clock.monotonic_s()
        if not stopping and now - self._peers_read_s >= self.timing.renew_interval_s:
            self._read_peers(now, vip.presence)
            now = clock.monotonic_s()
        reset = _guarded(self.ports.store.history_reset, lambda c: None)
        return Observation(
            etcd_reset=reset,
            now_s=now,
            role=role,
            writer=self._last_view,
            vip=vip.presence,
            stopping=stopping,
            vip_cause=vip.cause,
            peers=self._peers if role.role is Role.PRIMARY else (),
            maintenance=self._maintenance,
            same_name=self._same_name,
        )

    def _read_peers(self, now: float, vip: VipPresence) -> None:
        """Other members' reports (is another primary newer?) and this node's
        maintenance flag, every renew interval: both are slow evidence anyway
        (a report is published after its node's own probe; an operator's
        flag is confirmed by this node's report, see ``dbvip maintenance``)."""
        timeout = request_deadline_s(self.state, now, vip, self.timing) - now
        if timeout < MIN_REQUEST_S:
            return
        reading = self._etcd(
            "read_members",
            lambda: _guarded(lambda: self.ports.store.read_members(timeout), Unknown),
        )
        if isinstance(reading, Unknown):
            # Keep the last known reports: no news is not evidence either way.
            # Until the first answer (the maintenance flag unknown), ask again
            # next tick rather than a renew interval later.
            log.debug("members not read cause=%r", reading.cause)
            if self._maintenance is not None:
                self._peers_read_s = now
            return
        self._peers_read_s = now
        self._peers, self._maintenance = reading.peers, reading.maintenance
        self._same_name = reading.same_name

    def _needs_key(self, role: Role, vip: VipPresence, stopping: bool, now: float) -> bool:
        """A settled replica only re-reads the key now and then; anything that
        may act on the key reads it every tick."""
        if self._key_dirty or stopping:
            return True
        if role is Role.UNKNOWN and now - self._key_read_s < self.timing.probe_interval_s / 2:
            # A holder looking again and again at a database that stopped
            # answering: the key was just read, the watch reports changes.
            return False
        if role is not Role.REPLICA and role is not Role.DOWN:
            return True
        if self.state.lease is not None or vip is not VipPresence.ABSENT:
            return True
        mine = isinstance(self._last_view, KeyHeld) and self._last_view.holder == self.node
        return mine or now - self._key_read_s >= self.timing.renew_interval_s

    def execute(self, action: Action, request_deadline_s: float) -> Outcome:
        """Run one action; an adapter that raises is a failure, never a crash."""
        clock = self.ports.clock
        started = clock.monotonic_s()
        try:
            outcome = self._execute(action, request_deadline_s)
        except Exception as e:
            log.exception("action=%s raised", type(action).__name__)
            outcome = Failed(action, f"unexpected {type(e).__name__}: {e}")
        seconds = clock.monotonic_s() - started
        self._tell(lambda o: o.action_done(action_kind(action), action_result(outcome), seconds))
        return outcome

    def _etcd(self, operation: EtcdOperation, call: Callable[[], T]) -> T:
        """One etcd request of the loop, timed; remembers whether it was answered."""
        clock = self.ports.clock
        started = clock.monotonic_s()
        try:
            result = call()
        except Exception as e:
            self._etcd_seen(operation, started, f"unexpected {type(e).__name__}: {e}")
            raise
        cause = result.cause if isinstance(result, KeyUnknown | Unknown) else ""
        self._etcd_seen(operation, started, cause)
        return result

    def _etcd_seen(self, operation: EtcdOperation, started_s: float, cause: str) -> None:
        now = self.ports.clock.monotonic_s()
        self._etcd_error = cause
        if not cause:
            self._etcd_answered_s = now
        self._tell(lambda o: o.etcd_done(operation, not cause, now - started_s))

    def _tell(self, event: Callable[[Observer], None]) -> None:
        """Metrics must never stop the safety loop."""
        try:
            event(self.observer)
        except Exception:
            log.exception("observer failed")

    def _execute(self, action: Action, request_deadline_s: float) -> Outcome:
        clock, store = self.ports.clock, self.ports.store
        sent = clock.monotonic_s()
        budget = request_deadline_s - sent
        match action:
            case AddVip(planned_s):
                # Recomputed now: time may have passed since the decision (a
                # freeze, a slow chain), and the kernel lifetime must still end
                # by the deadline.
                lease = self.state.lease
                lifetime_s = 0 if lease is None else vip_lifetime_s(lease, sent, self.timing)
                lifetime_s = min(planned_s, lifetime_s)
                if lifetime_s < 1:
                    return Failed(action, "lease deadline too close to add the VIP")
                added = self.ports.vip.add(lifetime_s)
                if isinstance(added, Unknown):
                    return Failed(action, added.cause)
                return VipAdded(lifetime_s, sent, added.was_present)
            case RemoveVip():
                removed = self.ports.vip.remove()
                if isinstance(removed, Unknown):
                    return Failed(action, removed.cause)
                return VipRemoved(removed.was_present)
            case Announce():
                announced = self.ports.announcer.announce()
                if isinstance(announced, Unknown):
                    return Failed(action, announced.cause)
                return Announced(clock.monotonic_s())
        if budget < MIN_REQUEST_S:
            return Failed(action, "no time left before the lease deadline")
        match action:
            case AcquireLease(ttl_s):
                acquired = self._etcd("acquire_lease", lambda: store.acquire(ttl_s, budget))
                if isinstance(acquired, Granted):
                    return LeaseGranted(acquired.lease_id, acquired.ttl_s, sent, acquired.revision)
                if isinstance(acquired, Refused):
                    return LeaseRefused(acquired.holder, acquired.revision)
                return Failed(action, acquired.cause)
            case AdoptLease(lease_id, mod_revision, ttl_s):
                adopted = self._etcd(
                    "adopt_lease", lambda: store.adopt(lease_id, mod_revision, ttl_s, budget)
                )
                if isinstance(adopted, Granted):
                    return LeaseGranted(adopted.lease_id, adopted.ttl_s, sent, adopted.revision)
                if isinstance(adopted, Refused):
                    return LeaseGone(lease_id)  # the key moved on: never adopt that lease
                return Failed(action, adopted.cause)
            case RenewLease(lease_id):
                renewed = self._etcd("renew_lease", lambda: store.keepalive(lease_id, budget))
                if isinstance(renewed, Alive):
                    return LeaseRenewed(lease_id, renewed.ttl_s, sent)
                if isinstance(renewed, Gone):
                    return LeaseGone(lease_id)
                return Failed(action, renewed.cause)
            case ReleaseLease(lease_id):
                released = self._etcd("release_lease", lambda: store.release(lease_id, budget))
                if isinstance(released, Unknown):
                    return Failed(action, released.cause)
                return LeaseReleased(lease_id)
        raise AssertionError(f"unhandled action {action!r}")  # pragma: no cover

    # -- reporting ------------------------------------------------------------

    def _hand_over_events(self) -> None:
        # After the whole chain: a release is reported once the VIP is down
        # and the key released, never in between.
        for event in self._events.take():
            try:
                self.on_event(event)
            except Exception:
                log.exception("event=%s not handed over", event.kind.value)

    def _note(self, decision: Decision, obs: Observation) -> None:
        # While holding, details (renewing, refreshing, announcing) change every
        # few seconds; only a change of reason is news there.
        routine = decision.reason is Reason.HOLDING
        key = (decision.reason.value, "" if routine else decision.detail)
        if key != self._last_reason:
            self._last_reason = key
            facts = " ".join(f"{k}={v}" for k, v in decision.facts.items())
            log.info(
                "reason=%s detail=%r %s",
                decision.reason.value,
                decision.detail,
                facts,
                extra={"reason": decision.reason.value, "facts": decision.facts},
            )
        lease = decision.state.lease
        snapshot = Snapshot(
            node=self.node,
            reason=decision.reason.value,
            detail=decision.detail,
            facts=decision.facts,
            role=obs.role.role,
            timeline=obs.role.timeline,
            lsn=obs.role.lsn,
            vip_present=obs.vip is VipPresence.PRESENT,
            lease_id=lease.lease_id if lease else None,
            deadline_in_s=lease.deadline_s - obs.now_s if lease else None,
            tick_s=obs.now_s,
            last_failure=decision.state.last_failure,
            etcd_answered_s=self._etcd_answered_s,
            etcd_error=self._etcd_error,
        )
        try:
            self.publish(snapshot)
        except Exception:  # status and metrics must never stop the safety loop
            log.exception("publishing the snapshot failed")

    def _report(self, action: Action, outcome: Outcome, decision: Decision) -> None:
        name = type(action).__name__
        # JSON lines carry the decision's reason and facts on its action lines too
        # (text lines stay short: the decision's own line above has them).
        extra = {"action": name, "reason": decision.reason.value, "facts": decision.facts}
        if isinstance(outcome, Failed):
            if outcome.cause != self._last_failure:
                self._last_failure = outcome.cause
                log.warning(
                    "action=%s failed cause=%r",
                    name,
                    outcome.cause,
                    extra={**extra, "cause": outcome.cause},
                )
            return
        self._last_failure = ""
        quiet = isinstance(outcome, LeaseRenewed | Announced) or (
            isinstance(outcome, VipAdded) and outcome.was_present
        )
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "action=%s done %s",
            name,
            describe(outcome),
            extra=extra,
        )


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def action_kind(action: Action) -> str:
    """``AddVip`` -> ``add_vip``: the action's label in metrics."""
    return snake_case(type(action).__name__)


def action_result(outcome: Outcome) -> ActionResult:
    if isinstance(outcome, Failed):
        return "failed"
    if isinstance(outcome, LeaseRefused):
        return "refused"
    if isinstance(outcome, LeaseGone):
        return "gone"
    return "ok"


def _guarded(call: Callable[[], T], unknown: Callable[[str], T]) -> T:
    """An observation whose adapter raises is an unknown, not a crash."""
    try:
        return call()
    except Exception as e:
        log.exception("observation failed")
        return unknown(f"unexpected {type(e).__name__}: {e}")


def describe(outcome: Outcome) -> str:
    """An outcome as ``field=value`` pairs, lease ids in hex as etcdctl shows them."""
    fields = vars(outcome)
    return " ".join(f"{k}={v:x}" if k == "lease_id" else f"{k}={v}" for k, v in fields.items())
