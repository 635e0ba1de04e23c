"""Turning one repetition's records into numbers: no I/O, no clock.

Inputs are instants on the system-wide monotonic clock: the orchestrator's own
(fault, promotion), the fast promotion poller's, the invariant monitor's VIP
events and double-holder intervals, and the client writer's attempts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from integration.lab.monitor import Interval, VipChange, VipEvent
from integration.lab.writer import Attempt


@dataclass(frozen=True)
class Reign:
    """``node`` was the cluster's primary from ``start_s`` to ``end_s``, as the
    orchestrator decided it: from the instant its promotion was seen complete
    until the instant the orchestrator demoted, crashed or isolated it."""

    node: str
    start_s: float
    end_s: float = math.inf


def vip_added(events: Iterable[VipEvent], node: str, after_s: float) -> float | None:
    """The first instant after ``after_s`` the monitor saw the VIP appear on ``node``."""
    return min(
        (
            e.at_s
            for e in events
            if e.host == node and e.change is VipChange.ADDED and e.at_s >= after_s
        ),
        default=None,
    )


def first_ack(attempts: Iterable[Attempt], node: str, after_s: float) -> float | None:
    """The instant the client received the first acknowledgement from ``node``
    after ``after_s`` (an attempt that started earlier counts once its answer
    came later: it was still a client waiting to write)."""
    return min(
        (a.ended_s for a in attempts if a.ok and a.node == node and a.ended_s >= after_s),
        default=None,
    )


def last_ack(attempts: Iterable[Attempt], node: str, before_s: float) -> float | None:
    return max(
        (a.ended_s for a in attempts if a.ok and a.node == node and a.ended_s <= before_s),
        default=None,
    )


def misdirected(attempts: Iterable[Attempt], reigns: Sequence[Reign]) -> list[Attempt]:
    """Acknowledged writes whose node was not the primary at any instant of the
    attempt: such a write went to a database the cluster had given up on."""
    return [
        a
        for a in attempts
        if a.ok
        and not any(
            r.node == a.node and r.start_s <= a.ended_s and a.started_s <= r.end_s for r in reigns
        )
    ]


def doubles_within(intervals: Iterable[Interval], start_s: float, end_s: float) -> list[Interval]:
    """Double-holder intervals that overlap ``[start_s, end_s]``."""
    return [i for i in intervals if i.start_s <= end_s and i.end_s >= start_s]


def ms(later_s: float | None, earlier_s: float | None) -> float | None:
    if later_s is None or earlier_s is None:
        return None
    return round((later_s - earlier_s) * 1000.0, 3)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
