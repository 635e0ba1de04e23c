"""Events an operator may act on: the VIP acquired, released, a conflict.

The loop derives them from outcomes and decisions it already has; it hands
them over at the end of a tick (after the whole chain of actions, so a
release comes after ``RemoveVip`` *and* ``ReleaseLease``) to a sink that
must never block (see ``dbvip.hooks``). No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from dbvip.actions import (
    Outcome,
    VipAdded,
    VipRemoved,
)
from dbvip.model import (
    Decision,
    KeyHeld,
    Lease,
    Observation,
    Reason,
    Role,
    VipPresence,
)


class EventKind(enum.Enum):
    ACQUIRE = "acquire"  # this node added the VIP where it was absent
    RELEASE = "release"  # the VIP left this node (removed by it, or vanished)
    CONFLICT = "conflict"  # the database is primary but another node holds the key


@dataclass(frozen=True)
class Event:
    kind: EventKind
    reason: str  # the decision's reason, e.g. taking_over, demoted, stopping
    detail: str
    lease_id: int | None  # this node's lease (for a release: the one it had)
    holder: str | None  # the node the writer key named, as last read
    role: Role
    timeline: int | None
    at: str  # wall-clock time of the change, ISO 8601


class EventTracker:
    """Turns outcomes and decisions into events, each change once."""

    def __init__(self, wall_iso: Callable[[], str]) -> None:
        self._wall_iso = wall_iso
        self._acquired = False  # an acquire was reported and no release since
        self._last_reason: Reason | None = None
        self._pending: list[Event] = []

    def decided(self, decision: Decision, obs: Observation, lease: Lease | None) -> None:
        if obs.vip is VipPresence.ABSENT:
            self._vanished(decision, obs, lease)
        # Conflict once per entry into that reason, not once per tick.
        entered = decision.reason is Reason.CONFLICT and self._last_reason is not Reason.CONFLICT
        self._last_reason = decision.reason
        if entered:
            self._add(EventKind.CONFLICT, decision, obs, None)

    def happened(
        self, outcome: Outcome, decision: Decision, obs: Observation, lease: Lease | None
    ) -> None:
        if isinstance(outcome, VipAdded) and not outcome.was_present:
            self._vanished(decision, obs, lease)  # while its presence was unknown
            self._acquired = True
            self._add(EventKind.ACQUIRE, decision, obs, lease)
        elif isinstance(outcome, VipRemoved) and (outcome.was_present or self._acquired):
            self._acquired = False
            self._add(EventKind.RELEASE, decision, obs, lease)

    def _vanished(self, decision: Decision, obs: Observation, lease: Lease | None) -> None:
        """Gone without a RemoveVip (its kernel lifetime ran out, or it was
        deleted by hand): still a release, so acquires and releases alternate."""
        if self._acquired:
            self._acquired = False
            gone = "the VIP disappeared without this node removing it"
            self._add(EventKind.RELEASE, decision, obs, lease, gone)

    def take(self) -> list[Event]:
        pending, self._pending = self._pending, []
        return pending

    def _add(
        self,
        kind: EventKind,
        decision: Decision,
        obs: Observation,
        lease: Lease | None,
        detail: str | None = None,
    ) -> None:
        writer = obs.writer
        self._pending.append(
            Event(
                kind=kind,
                reason=decision.reason.value,
                detail=decision.detail if detail is None else detail,
                lease_id=lease.lease_id if lease is not None else None,
                holder=writer.holder if isinstance(writer, KeyHeld) else None,
                role=obs.role.role,
                timeline=obs.role.timeline,
                at=self._wall_iso(),
            )
        )
