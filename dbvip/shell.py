"""What the loop's three parts (look, act, report) share: the ports, the
observer of timings, and the record of the loop's own etcd requests.

The loop is split so each part can be read alone: ``looking`` turns the
ports into an ``Observation``, ``acting`` turns an ``Action`` into an
``Outcome``, ``reporting`` logs, publishes snapshots and hands over events;
``runner`` only sequences them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from dbvip.model import KeyUnknown, Role
from dbvip.ports import (
    Announcer,
    Clock,
    LeaseStore,
    ReaderStore,
    RoleProbe,
    Unknown,
    VipDriver,
    VipReading,
)

T = TypeVar("T")

log = logging.getLogger("dbvip")

# Below this an etcd request cannot usefully be sent.
MIN_REQUEST_S = 0.005

# What came of an action: done, refused by etcd (the key is held), the lease
# gone, or failed (unknown result, or not attempted for lack of time).
ActionResult = Literal["ok", "refused", "gone", "failed"]
# The loop's etcd requests: the writer key read, and the lease actions.
EtcdOperation = Literal[
    "read_writer",
    "read_members",
    "acquire_lease",
    "adopt_lease",
    "renew_lease",
    "release_lease",
    "read_pool",
    "grant_reader_lease",
    "take_reader",
    "give_back_reader",
    "revoke_reader_lease",
]
ReaderChange = Literal["taken", "given_back"]
# A peer's answer to a failsafe ask: unreachable also covers an answer that
# could not be proven to come from the peer asked.
PeerAnswerKind = Literal["acked", "declined", "unreachable"]


class Observer(Protocol):
    """Hears what the loop did and how long it took (metrics).

    Called on the loop's thread: an implementation must return at once and
    never do I/O. Durations are measured on the ports' clock.
    """

    def action_done(self, kind: str, result: ActionResult, seconds: float) -> None: ...

    def probe_done(self, role: Role, seconds: float) -> None: ...

    def etcd_done(self, operation: EtcdOperation, answered: bool, seconds: float) -> None: ...

    def reader_moved(self, vip: str, change: ReaderChange, reason: str) -> None:
        """A reader VIP was added to (``taken``) or removed from (``given_back``)
        this node, for ``reason`` (the reader policy's)."""
        ...

    def peers_answered(self, answers: dict[PeerAnswerKind, int]) -> None:
        """A failsafe ask ended: how many peers acknowledged, declined, or could
        not be reached (or not proven to be who answered)."""
        ...


class NoObserver:
    def action_done(self, kind: str, result: ActionResult, seconds: float) -> None:
        pass

    def probe_done(self, role: Role, seconds: float) -> None:
        pass

    def etcd_done(self, operation: EtcdOperation, answered: bool, seconds: float) -> None:
        pass

    def reader_moved(self, vip: str, change: ReaderChange, reason: str) -> None:
        pass

    def peers_answered(self, answers: dict[PeerAnswerKind, int]) -> None:
        pass


@dataclass(frozen=True)
class ReaderPorts:
    """The reader pool's ports: its keys, and one driver and announcer per
    reader VIP (keyed by the address alone, as in the keys)."""

    store: ReaderStore
    drivers: dict[str, VipDriver]
    announcers: dict[str, Announcer]
    # Every reader VIP's presence in one look (one address dump), when the
    # drivers offer it; else each driver is asked in turn.
    look: Callable[[], dict[str, VipReading]] | None = None


@dataclass(frozen=True)
class Ports:
    clock: Clock
    probe: RoleProbe
    store: LeaseStore
    vip: VipDriver
    announcer: Announcer
    readers: ReaderPorts | None = None  # None: no reader VIPs configured


class Telemetry:
    """The observer, told safely, and whether the loop's etcd requests are
    answered (for readiness and status)."""

    def __init__(self, clock: Clock, observer: Observer | None) -> None:
        self._clock = clock
        self.observer: Observer = observer or NoObserver()
        self.etcd_answered_s: float | None = None
        self.etcd_error = "no etcd request yet"

    def tell(self, event: Callable[[Observer], None]) -> None:
        """Metrics must never stop the safety loop."""
        try:
            event(self.observer)
        except Exception:
            log.exception("observer failed")

    def etcd(self, operation: EtcdOperation, call: Callable[[], T]) -> T:
        """One etcd request of the loop, timed; remembers whether it was answered."""
        started = self._clock.monotonic_s()
        try:
            result = call()
        except Exception as e:
            self._seen(operation, started, f"unexpected {type(e).__name__}: {e}")
            raise
        cause = result.cause if isinstance(result, KeyUnknown | Unknown) else ""
        self._seen(operation, started, cause)
        return result

    def _seen(self, operation: EtcdOperation, started_s: float, cause: str) -> None:
        now = self._clock.monotonic_s()
        self.etcd_error = cause
        if not cause:
            self.etcd_answered_s = now
        self.tell(lambda o: o.etcd_done(operation, not cause, now - started_s))


def guarded(call: Callable[[], T], unknown: Callable[[str], T]) -> T:
    """An observation whose adapter raises is an unknown, not a crash."""
    try:
        return call()
    except Exception as e:
        log.exception("observation failed")
        return unknown(f"unexpected {type(e).__name__}: {e}")
