"""Write availability through an etcd outage, from the client's attempts: no
I/O, no clock.

An outage's *window* runs from ``before_s`` ahead of etcd's stop to
``after_s`` past the instant etcd answered again; its phases are *before*,
*during* (stop sent .. healthy again) and *after*. A write counts at the
instant its acknowledgement reached the client (``Attempt.ended_s``).

Two figures per phase, both from acknowledgements only:

* *available*: the share of the phase that lies outside every stretch of
  more than ``DOWN_AFTER_S`` (1 s) without an acknowledgement. The ordinary
  client writes every 20 ms when it can, so a second without one is a second
  in which the application could not write; shorter stretches (a write slowed
  by a busy machine) do not count as unavailability;
* *longest gap*: the longest stretch without an acknowledgement, the phase's
  edges included (a phase with none at all is one gap, its whole length).

Per-second counts of acknowledgements (``slots``) are kept for the plot.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbvip.model import Role
from integration.bench.measure import Reign, misdirected
from integration.lab.monitor import Interval, RoleEvent
from integration.lab.writer import Attempt

SLOT_S = 1.0  # the plot's resolution
DOWN_AFTER_S = 1.0


@dataclass(frozen=True)
class Phase:
    name: str  # before, during, after, window
    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Outage:
    """etcd stopped at ``stop_s`` (the instant the stop was sent) and answered
    again at ``back_s`` (healthy after its restart)."""

    stop_s: float
    back_s: float
    before_s: float
    after_s: float

    def phases(self) -> list[Phase]:
        return [
            Phase("before", self.stop_s - self.before_s, self.stop_s),
            Phase("during", self.stop_s, self.back_s),
            Phase("after", self.back_s, self.back_s + self.after_s),
            Phase("window", self.stop_s - self.before_s, self.back_s + self.after_s),
        ]


@dataclass(frozen=True)
class Gap:
    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


def acks(attempts: Iterable[Attempt]) -> list[float]:
    """The instants of every acknowledgement, in order."""
    return sorted(a.ended_s for a in attempts if a.ok)


def _within(instants: Sequence[float], phase: Phase) -> list[float]:
    return [t for t in instants if phase.start_s <= t <= phase.end_s]


def slots(instants: Sequence[float], phase: Phase, slot_s: float = SLOT_S) -> list[int]:
    """Acknowledgements per ``slot_s`` slot of ``phase`` (the last slot may be shorter)."""
    if phase.length_s <= 0:
        return []
    counts = [0] * math.ceil(phase.length_s / slot_s)
    for t in _within(instants, phase):
        counts[min(int((t - phase.start_s) // slot_s), len(counts) - 1)] += 1
    return counts


def available(
    instants: Sequence[float], phase: Phase, down_after_s: float = DOWN_AFTER_S
) -> float | None:
    """The share of ``phase`` outside gaps longer than ``down_after_s`` (None: empty phase)."""
    if phase.length_s <= 0:
        return None
    down_s = sum(g.length_s for g in gaps(instants, phase) if g.length_s > down_after_s)
    return 1.0 - down_s / phase.length_s


def gaps(instants: Sequence[float], phase: Phase) -> list[Gap]:
    """Every stretch of ``phase`` between acknowledgements, its edges included, longest first."""
    edges = [phase.start_s, *_within(instants, phase), phase.end_s]
    found = [Gap(a, b) for a, b in itertools.pairwise(edges) if b > a]
    return sorted(found, key=lambda g: -g.length_s)


def longest_gap(instants: Sequence[float], phase: Phase) -> Gap | None:
    found = gaps(instants, phase)
    return found[0] if found else None


def reigns(role_events: Iterable[RoleEvent], end_s: float) -> list[Reign]:
    """When each node was primary, from the monitor's role polls: from the
    earliest instant the change to primary may have happened (the previous
    poll) to the poll that saw it end, so a write is blamed on a node only if
    no poll could have missed its being primary. An unknown role (a poll that
    timed out) does not end a reign: the node may still have been primary."""
    found: list[Reign] = []
    began: dict[str, float] = {}
    for e in sorted(role_events, key=lambda e: e.at_s):
        if e.new is Role.PRIMARY and e.host not in began:
            began[e.host] = e.at_s if e.previous_at_s is None else e.previous_at_s
        elif e.new in (Role.REPLICA, Role.DOWN) and e.host in began:
            found.append(Reign(e.host, began.pop(e.host), e.at_s))
    found += [Reign(node, start_s, end_s) for node, start_s in began.items()]
    return found


def overlapping(intervals: Iterable[Interval], phase: Phase) -> list[Interval]:
    return [i for i in intervals if i.start_s <= phase.end_s and i.end_s >= phase.start_s]


def in_phase(attempts: Iterable[Attempt], phase: Phase) -> list[Attempt]:
    """Attempts that ended within ``phase``."""
    return [a for a in attempts if phase.start_s <= a.ended_s <= phase.end_s]


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)


def summary(
    outage: Outage,
    attempts: Sequence[Attempt],
    doubles: Sequence[Interval],
    ruled: Sequence[Reign],
) -> dict[str, object]:
    """One outage's figures for results.json; instants relative to etcd's stop.

    ``doubles``: the monitor's double-holder intervals; ``ruled``: who was
    primary when (``reigns``): a write acknowledged by a node outside its
    reign is *misdirected*.
    """
    instants = acks(attempts)
    phases: dict[str, object] = {}
    for phase in outage.phases():
        within = in_phase(attempts, phase)
        gap = longest_gap(instants, phase)
        share = available(instants, phase)
        phases[phase.name] = {
            "length_s": _r(phase.length_s),
            "attempts": len(within),
            "acked": sum(a.ok for a in within),
            "available": None if share is None else _r(share, 5),
            "longest_gap_s": None if gap is None else _r(gap.length_s),
            "longest_gap_from_s": None if gap is None else _r(gap.start_s - outage.stop_s),
        }
    window = outage.phases()[-1]
    in_window = in_phase(attempts, window)
    wrong = misdirected(in_window, ruled)
    return {
        "phases": phases,
        # Every second of the window: acknowledgements in it (the plot's line).
        "window_slots": slots(instants, window),
        "gaps_over_1s": [
            {"from_s": _r(g.start_s - outage.stop_s), "length_s": _r(g.length_s)}
            for g in gaps(instants, window)
            if g.length_s > 1.0
        ],
        "double_holders": [
            {
                "from_s": _r(i.start_s - outage.stop_s),
                "length_s": _r(i.end_s - i.start_s),
                "hosts": sorted(i.hosts),
            }
            for i in overlapping(doubles, window)
        ],
        "misdirected": [{"at_s": _r(a.ended_s - outage.stop_s), "node": a.node} for a in wrong],
        "acked_by": _count_by_node(in_window),
        "errors": _count_errors(in_window),
    }


def _count_by_node(attempts: Iterable[Attempt]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in attempts:
        if a.ok and a.node is not None:
            counts[a.node] = counts.get(a.node, 0) + 1
    return dict(sorted(counts.items()))


def _count_errors(attempts: Iterable[Attempt]) -> dict[str, int]:
    """Failed attempts by cause: libpq's last clause (``... failed: Connection
    refused``), without the address and port that precede it."""
    counts: dict[str, int] = {}
    for a in attempts:
        if not a.ok:
            kind = a.error.rsplit("failed:", 1)[-1].strip()[:80] or "unknown"
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
