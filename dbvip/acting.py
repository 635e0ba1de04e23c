"""The loop's hands: one ``Action`` in, one ``Outcome`` out.

An adapter that raises is a failure, never a crash. Every etcd request is
bounded by the deadline the decision gave; a VIP's lifetime is recomputed
at the moment it is set, so it ends by the lease deadline however late the
action runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from dbvip.actions import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    Announced,
    Failed,
    LeaseGone,
    LeaseGranted,
    LeaseRefused,
    LeaseReleased,
    LeaseRenewed,
    Outcome,
    ReleaseLease,
    RemoveVip,
    RenewLease,
    VipAdded,
    VipRemoved,
)
from dbvip.guard import vip_lifetime_s
from dbvip.model import (
    Lease,
    Timing,
)
from dbvip.ports import Alive, Gone, Granted, Refused, Taken, Unknown
from dbvip.reader_model import (
    GiveBackReader,
    GrantReaderLease,
    ReaderGivenBack,
    ReaderLeaseGranted,
    ReaderLeaseRevoked,
    ReaderRefused,
    ReaderTaken,
    RevokeReaderLease,
    TakeReader,
)
from dbvip.reader_outcomes import ReaderAction, ReaderOutcome
from dbvip.reporting import action_kind, action_result
from dbvip.shell import MIN_REQUEST_S, Ports, Telemetry

log = logging.getLogger("dbvip")

R = TypeVar("R")


class Actor:
    def __init__(self, timing: Timing, ports: Ports, telemetry: Telemetry) -> None:
        self.timing = timing
        self.ports = ports
        self.telemetry = telemetry

    def execute(
        self, action: Action, request_deadline_s: float, lease: Callable[[], Lease | None]
    ) -> Outcome:
        """Run one of the writer's actions; ``lease`` gives the writer lease
        as the core knows it now."""
        return self._timed(action, lambda: self._execute(action, request_deadline_s, lease))

    def execute_reader(
        self, action: ReaderAction, request_deadline_s: float, lease: Callable[[], Lease | None]
    ) -> ReaderOutcome:
        """Run one of the reader policy's actions; ``lease`` gives the reader lease."""
        return self._timed(action, lambda: self._execute_reader(action, request_deadline_s, lease))

    def _timed(self, action: Action | ReaderAction, run: Callable[[], R]) -> R | Failed:
        clock = self.ports.clock
        started = clock.monotonic_s()
        outcome: R | Failed
        try:
            outcome = run()
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

    def _execute_reader(
        self, action: ReaderAction, request_deadline_s: float, lease: Callable[[], Lease | None]
    ) -> ReaderOutcome:
        readers = self.ports.readers
        if readers is None:
            return Failed(action, "no reader VIPs configured")
        clock, store, etcd = self.ports.clock, readers.store, self.telemetry.etcd
        sent = clock.monotonic_s()
        budget = request_deadline_s - sent
        match action:
            case AddVip(planned_s, vip):
                held = lease()
                lifetime_s = 0 if held is None else vip_lifetime_s(held, sent, self.timing)
                lifetime_s = min(planned_s, lifetime_s)
                if lifetime_s < 1:
                    return Failed(action, "reader lease deadline too close to add the VIP")
                added = readers.drivers[vip].add(lifetime_s)
                if isinstance(added, Unknown):
                    return Failed(action, added.cause)
                return VipAdded(lifetime_s, sent, added.was_present, vip)
            case RemoveVip(vip):
                removed = readers.drivers[vip].remove()
                if isinstance(removed, Unknown):
                    return Failed(action, removed.cause)
                return VipRemoved(removed.was_present, vip)
            case Announce(vip):
                announced = readers.announcers[vip].announce()
                if isinstance(announced, Unknown):
                    return Failed(action, announced.cause)
                return Announced(clock.monotonic_s(), vip)
        if budget < MIN_REQUEST_S:
            return Failed(action, "no time left before the lease deadline")
        match action:
            case GrantReaderLease(ttl_s):
                granted = etcd(
                    "grant_reader_lease", lambda: store.grant_reader_lease(ttl_s, budget)
                )
                if isinstance(granted, Granted):
                    return ReaderLeaseGranted(granted.lease_id, granted.ttl_s, sent)
                return Failed(action, granted.cause)
            case RenewLease(lease_id):
                renewed = etcd("renew_lease", lambda: store.keepalive(lease_id, budget))
                if isinstance(renewed, Alive):
                    return LeaseRenewed(lease_id, renewed.ttl_s, sent)
                if isinstance(renewed, Gone):
                    return LeaseGone(lease_id)
                return Failed(action, renewed.cause)
            case TakeReader(vip, lease_id, mod_revision):
                taken = etcd(
                    "take_reader", lambda: store.take_reader(vip, lease_id, mod_revision, budget)
                )
                if isinstance(taken, Taken):
                    return ReaderTaken(vip, taken.revision)
                if isinstance(taken, Refused):
                    return ReaderRefused(vip, taken.holder)
                return Failed(action, taken.cause)
            case GiveBackReader(vip, lease_id):
                given = etcd(
                    "give_back_reader", lambda: store.give_back_reader(vip, lease_id, budget)
                )
                if isinstance(given, Unknown):
                    return Failed(action, given.cause)
                return ReaderGivenBack(vip)
            case RevokeReaderLease(lease_id):
                revoked = etcd("revoke_reader_lease", lambda: store.revoke(lease_id, budget))
                if isinstance(revoked, Unknown):
                    return Failed(action, revoked.cause)
                return ReaderLeaseRevoked(lease_id)
        raise AssertionError(f"unhandled reader action {action!r}")  # pragma: no cover
