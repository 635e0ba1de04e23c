"""The loop's hands: one ``Action`` in, one ``Outcome`` out.

An adapter that raises is a failure, never a crash. Every etcd request is
bounded by the deadline the decision gave; a VIP's lifetime is recomputed
at the moment it is set, so it ends by the lease deadline however late the
action runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbvip.guard import vip_lifetime_s
from dbvip.model import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    Announced,
    Failed,
    Lease,
    LeaseGone,
    LeaseGranted,
    LeaseRefused,
    LeaseReleased,
    LeaseRenewed,
    Outcome,
    ReleaseLease,
    RemoveVip,
    RenewLease,
    Timing,
    VipAdded,
    VipRemoved,
)
from dbvip.ports import Alive, Gone, Granted, Refused, Unknown
from dbvip.reporting import action_kind, action_result
from dbvip.shell import MIN_REQUEST_S, Ports, Telemetry

log = logging.getLogger("dbvip")


class Actor:
    def __init__(self, timing: Timing, ports: Ports, telemetry: Telemetry) -> None:
        self.timing = timing
        self.ports = ports
        self.telemetry = telemetry

    def execute(
        self, action: Action, request_deadline_s: float, lease: Callable[[], Lease | None]
    ) -> Outcome:
        """Run one action; ``lease`` gives the lease as the core knows it now."""
        clock = self.ports.clock
        started = clock.monotonic_s()
        try:
            outcome = self._execute(action, request_deadline_s, lease)
        except Exception as e:
            log.exception("action=%s raised", type(action).__name__)
            outcome = Failed(action, f"unexpected {type(e).__name__}: {e}")
        seconds = clock.monotonic_s() - started
        self.telemetry.tell(
            lambda o: o.action_done(action_kind(action), action_result(outcome), seconds)
        )
        return outcome

    def _execute(
        self, action: Action, request_deadline_s: float, lease: Callable[[], Lease | None]
    ) -> Outcome:
        clock, store, etcd = self.ports.clock, self.ports.store, self.telemetry.etcd
        sent = clock.monotonic_s()
        budget = request_deadline_s - sent
        match action:
            case AddVip(planned_s):
                # Recomputed now: time may have passed since the decision (a
                # freeze, a slow chain), and the kernel lifetime must still end
                # by the deadline.
                held = lease()
                lifetime_s = 0 if held is None else vip_lifetime_s(held, sent, self.timing)
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
                acquired = etcd("acquire_lease", lambda: store.acquire(ttl_s, budget))
                if isinstance(acquired, Granted):
                    return LeaseGranted(acquired.lease_id, acquired.ttl_s, sent, acquired.revision)
                if isinstance(acquired, Refused):
                    return LeaseRefused(acquired.holder, acquired.revision)
                return Failed(action, acquired.cause)
            case AdoptLease(lease_id, mod_revision, ttl_s):
                adopted = etcd(
                    "adopt_lease", lambda: store.adopt(lease_id, mod_revision, ttl_s, budget)
                )
                if isinstance(adopted, Granted):
                    return LeaseGranted(adopted.lease_id, adopted.ttl_s, sent, adopted.revision)
                if isinstance(adopted, Refused):
                    return LeaseGone(lease_id)  # the key moved on: never adopt that lease
                return Failed(action, adopted.cause)
            case RenewLease(lease_id):
                renewed = etcd("renew_lease", lambda: store.keepalive(lease_id, budget))
                if isinstance(renewed, Alive):
                    return LeaseRenewed(lease_id, renewed.ttl_s, sent)
                if isinstance(renewed, Gone):
                    return LeaseGone(lease_id)
                return Failed(action, renewed.cause)
            case ReleaseLease(lease_id):
                released = etcd("release_lease", lambda: store.release(lease_id, budget))
                if isinstance(released, Unknown):
                    return Failed(action, released.cause)
                return LeaseReleased(lease_id)
        raise AssertionError(f"unhandled action {action!r}")  # pragma: no cover
