"""The ``readers`` part's numbers from one repetition's records: no I/O, no clock.

Inputs: the reading clients' reads (``integration/lab/reader.Read``: when,
ok or not, which node answered, was it in recovery) and the lag poller's
samples (each node's replay position behind the primary's current WAL
position), all on the system-wide monotonic clock.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from integration.lab.reader import Read


@dataclass(frozen=True)
class LagSample:
    """What the poller saw on ``node`` at ``at_s``: ``lag_bytes`` None when the
    node or the primary did not answer, or the node is not a replica."""

    at_s: float
    node: str
    lag_bytes: int | None


def parse_lsn(text: str) -> int:
    """``0/5F0B860`` -> its byte position."""
    high, _, low = text.partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) + int(low, 16)


class LagHistory:
    """Every sample per node, in time order, for 'what was its lag at t'."""

    def __init__(self, samples: Iterable[LagSample]) -> None:
        self._by_node: dict[str, list[LagSample]] = {}
        for s in sorted(samples, key=lambda s: s.at_s):
            self._by_node.setdefault(s.node, []).append(s)
        self._times = {n: [s.at_s for s in ss] for n, ss in self._by_node.items()}

    def at(self, node: str, at_s: float) -> int | None:
        """The lag of the latest sample at or before ``at_s`` (None: unknown)."""
        times = self._times.get(node, [])
        i = bisect.bisect_right(times, at_s)
        return self._by_node[node][i - 1].lag_bytes if i else None

    def passed(self, node: str, threshold: int, after_s: float, before_s: float) -> float | None:
        """The first sample within ``[after_s, before_s]`` with the lag past ``threshold``."""
        for s in self._by_node.get(node, []):
            if (
                after_s <= s.at_s <= before_s
                and s.lag_bytes is not None
                and s.lag_bytes > threshold
            ):
                return s.at_s
        return None


def within(reads: Iterable[Read], start_s: float, end_s: float) -> list[Read]:
    """The reads begun within ``[start_s, end_s)``."""
    return [r for r in reads if start_s <= r.started_s < end_s]


def last_failure_ms(reads: Sequence[Read], fault_s: float) -> float | None:
    """From the fault to the end of the last failed read (None: no read failed)."""
    ends = [r.ended_s for r in reads if not r.ok]
    return round((max(ends) - fault_s) * 1000.0, 1) if ends else None


def lagging_reads(reads: Iterable[Read], lag: LagHistory, threshold: int) -> list[Read]:
    """Reads answered by a node whose lag, at the poller's last sample before
    the read began, was past ``threshold``."""
    found = []
    for r in reads:
        if r.ok and r.node is not None:
            behind = lag.at(r.node, r.started_s)
            if behind is not None and behind > threshold:
                found.append(r)
    return found


def non_replica_reads(reads: Iterable[Read]) -> list[Read]:
    """Reads answered by a node that said it was not in recovery (a primary)."""
    return [r for r in reads if r.ok and r.recovery is False]


def stop_receiving_ms(
    reads: Sequence[Read], lag: LagHistory, threshold: int, node: str, passed_s: float
) -> float:
    """From the instant ``node``'s lag passed ``threshold`` to the end of the last
    read it answered while still past it (0: it answered none)."""
    ends = [
        r.ended_s
        for r in lagging_reads(reads, lag, threshold)
        if r.node == node and r.started_s >= passed_s
    ]
    return round(max(0.0, max(ends) - passed_s) * 1000.0, 1) if ends else 0.0


def longest_read_ms(reads: Iterable[Read]) -> float:
    """The longest read, ok or not: a read the load balancer kept waiting on a
    server that no longer answers, then retried elsewhere, is slow, not failed."""
    return round(max(((r.ended_s - r.started_s) * 1000.0 for r in reads), default=0.0), 1)


@dataclass(frozen=True)
class Outcome:
    """One system's view of one repetition."""

    reads: int
    failed: int
    last_failure_ms: float | None
    lagging: int  # reads answered by a replica lagging past the threshold
    non_replica: int  # reads answered by a node that was not a replica
    stop_receiving_ms: float | None  # lag scenario only: lag passed -> last read it answered
    longest_read_ms: float


def outcome(
    reads: Sequence[Read],
    lag: LagHistory,
    fault_s: float,
    end_s: float,
    threshold: int,
    lagging_node: str | None = None,
    passed_s: float | None = None,
) -> Outcome:
    """The numbers of the reads begun between the fault and ``end_s`` (the instant
    everything was healthy and balanced again)."""
    mine = within(reads, fault_s, end_s)
    stop = None
    if lagging_node is not None and passed_s is not None:
        stop = stop_receiving_ms(mine, lag, threshold, lagging_node, passed_s)
    return Outcome(
        reads=len(mine),
        failed=sum(1 for r in mine if not r.ok),
        last_failure_ms=last_failure_ms(mine, fault_s),
        lagging=len(lagging_reads(mine, lag, threshold)),
        non_replica=len(non_replica_reads(mine)),
        stop_receiving_ms=stop,
        longest_read_ms=longest_read_ms(mine),
    )


def outside(reads: Iterable[Read], windows: Sequence[tuple[float, float]]) -> list[Read]:
    """Reads begun in no repetition's window (steady state between faults)."""
    return [r for r in reads if not any(a <= r.started_s < b for a, b in windows)]
