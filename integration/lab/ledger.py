"""The invariant monitor's first layer: ``Ledger`` turns timestamped samples
of every host's addresses and roles into intervals (double holders of a VIP,
vacancies) and events, with no I/O and no clock; ``MonitorReport`` is what it
hands back. The sampling is ``integration.lab.sampler``'s; the process it runs
in is ``integration.lab.monitor``'s.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from dbvip.model import IPAddress, IPInterface, Role

VipSpec = IPInterface | IPAddress


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ifname: str = "eth0"


class VipChange(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True)
class VipEvent:
    """The VIP appeared on or disappeared from ``host`` in ``(previous_at_s, at_s]``.

    ``previous_at_s`` is None for a VIP already present at the host's first sample.
    """

    host: str
    change: VipChange
    at_s: float
    previous_at_s: float | None
    vip: str | None = None  # a reader VIP's address; None: the writer VIP


@dataclass(frozen=True)
class RoleEvent:
    """``host``'s role changed from ``old`` (None: first poll) to ``new``."""

    host: str
    old: Role | None
    new: Role
    at_s: float
    previous_at_s: float | None


@dataclass(frozen=True)
class Interval:
    """A violation from ``start_s`` to ``end_s``.

    ``hosts``: the holders seen (double holder) or the stable primary (vacancy).
    ``unfinished``: still going when the report was made; ``end_s`` is then the
    report's instant (the stop instant for the final report).
    """

    start_s: float
    end_s: float
    hosts: frozenset[str]
    unfinished: bool = False
    vip: str | None = None  # a reader VIP's address; None: the writer VIP

    def describe(self, origin_s: float) -> str:
        tail = " (still going at the end)" if self.unfinished else ""
        which = "" if self.vip is None else f"reader VIP {self.vip}: "
        return (
            f"{which}+{self.start_s - origin_s:.3f} s .. +{self.end_s - origin_s:.3f} s "
            f"({self.end_s - self.start_s:.3f} s): {', '.join(sorted(self.hosts))}{tail}"
        )


@dataclass(frozen=True)
class MonitorReport:
    started_s: float
    ended_s: float  # the stop instant, or the instant of a snapshot
    stopped: bool
    samples: int  # address samples, all hosts together
    mean_gap_s: float  # between consecutive samples of the same host
    max_gap_s: float
    double_holders: tuple[Interval, ...]
    vacancies: tuple[Interval, ...]
    vip_events: tuple[VipEvent, ...]
    role_events: tuple[RoleEvent, ...]
    errors: tuple[str, ...]
    # Per reader VIP (each interval and event names its VIP); empty without readers.
    reader_vips: tuple[str, ...] = ()
    reader_double_holders: tuple[Interval, ...] = ()
    reader_vip_events: tuple[VipEvent, ...] = ()

    def assert_one_writer(self) -> None:
        if self.double_holders:
            raise AssertionError(
                f"{len(self.double_holders)} double-holder interval(s) of the writer VIP:\n"
                + _lines(self.double_holders, self.started_s)
            )

    def assert_one_holder_per_reader_vip(self) -> None:
        if self.reader_double_holders:
            raise AssertionError(
                f"{len(self.reader_double_holders)} double-holder interval(s) of reader VIPs:\n"
                + _lines(self.reader_double_holders, self.started_s)
            )

    def assert_no_vacancy(self) -> None:
        if self.vacancies:
            raise AssertionError(
                f"{len(self.vacancies)} vacancy interval(s) (stable primary, no VIP anywhere):\n"
                + _lines(self.vacancies, self.started_s)
            )

    def summary(self) -> str:
        lines = [
            f"monitor: {self.samples} address samples over {self.ended_s - self.started_s:.3f} s, "
            f"gap mean {self.mean_gap_s * 1000:.2f} ms, max {self.max_gap_s * 1000:.2f} ms",
            f"double holders: {len(self.double_holders)}; vacancies: {len(self.vacancies)}; "
            f"VIP events: {len(self.vip_events)}; role events: {len(self.role_events)}",
        ]
        if self.double_holders:
            lines.append("double holders:\n" + _lines(self.double_holders, self.started_s))
        if self.vacancies:
            lines.append("vacancies:\n" + _lines(self.vacancies, self.started_s))
        if self.reader_vips:
            lines.append(
                f"reader VIPs {', '.join(self.reader_vips)}: double holders "
                f"{len(self.reader_double_holders)}; events {len(self.reader_vip_events)}"
            )
        if self.reader_double_holders:
            lines.append("reader double holders:\n"
                         + _lines(self.reader_double_holders, self.started_s))  # fmt: skip
        lines.extend(f"error: {error}" for error in self.errors)
        return "\n".join(lines)

    def timeline(self) -> str:
        """Role and VIP events in time order, relative to the start."""
        rows: list[tuple[float, str]] = []
        for vip in (*self.vip_events, *self.reader_vip_events):
            since = (
                ""
                if vip.previous_at_s is None
                else f" (not before +{self._rel(vip.previous_at_s)})"
            )
            which = "VIP" if vip.vip is None else f"reader VIP {vip.vip}"
            rows.append((vip.at_s, f"{vip.host}: {which} {vip.change.value}{since}"))
        for role in self.role_events:
            old = "none" if role.old is None else role.old.value
            rows.append((role.at_s, f"{role.host}: role {old} -> {role.new.value}"))
        rows.sort(key=lambda row: row[0])
        return "\n".join(f"+{self._rel(at_s)} {text}" for at_s, text in rows)

    def _rel(self, at_s: float) -> str:
        return f"{at_s - self.started_s:.3f} s"


def _lines(intervals: Sequence[Interval], origin_s: float) -> str:
    return "\n".join("  " + interval.describe(origin_s) for interval in intervals)


class Ledger:
    """Bookkeeping of address samples and role polls; no I/O, no clock, no lock.

    A double holder is counted only once it is certain despite the hosts being
    sampled one after the other: each host's holding run is known to span from
    its first to its last holding sample, and an overlap is recorded when two
    such spans intersect. So a clean hand-over whose remove and add fall
    between two hosts' samples of one sweep is not reported; an overlap shorter
    than about one sampling period may be missed. The interval starts at the
    first holding sample of the later host and ends at the first sample that
    leaves at most one host possibly holding.

    An unknown sample (the dump failed) neither starts nor ends anything: a
    host holding before stays in its run, and no vacancy starts while any host
    is unknown.
    """

    def __init__(self, hosts: Sequence[str], stable_after_s: float, started_s: float) -> None:
        self._hosts = tuple(hosts)
        self._stable_after_s = stable_after_s
        self._started_s = started_s
        self._latest: dict[str, bool | None] = {}  # latest sample; None: unknown
        self._last_known: dict[str, tuple[bool, float]] = {}
        self._run_first_s: dict[str, float] = {}  # hosts in a holding run
        self._run_last_s: dict[str, float] = {}
        self._last_sample_s: dict[str, float] = {}
        self._samples = 0
        self._gaps = 0
        self._gap_total_s = 0.0
        self._max_gap_s = 0.0
        self._double: tuple[float, set[str]] | None = None
        self._doubles: list[Interval] = []
        self._roles: dict[str, tuple[Role, float]] = {}
        self._primary_since_s: dict[str, float] = {}
        self._vacancy: tuple[float, str] | None = None
        self._vacancies: list[Interval] = []
        self._vip_events: list[VipEvent] = []
        self._role_events: list[RoleEvent] = []
        self._errors: list[str] = []

    def holders(self) -> frozenset[str]:
        return frozenset(host for host, holding in self._latest.items() if holding)

    def error(self, message: str) -> None:
        """Keep ``message`` once, however often it happens."""
        if message not in self._errors:
            self._errors.append(message)

    def address(self, host: str, at_s: float, holding: bool | None) -> None:
        """One address sample of ``host``: holding the VIP, not, or unknown (None)."""
        self._count(host, at_s)
        self._latest[host] = holding
        if holding is None:
            return
        known = self._last_known.get(host)
        self._last_known[host] = (holding, at_s)
        if holding:
            if known is None or not known[0]:
                previous_s = None if known is None else known[1]
                self._vip_events.append(VipEvent(host, VipChange.ADDED, at_s, previous_s))
            self._run_first_s.setdefault(host, at_s)
            self._run_last_s[host] = at_s
            self._confirm_overlap(host)
            if self._vacancy is not None:
                self._close_vacancy(at_s)
            return
        if known is not None and known[0]:
            self._vip_events.append(VipEvent(host, VipChange.REMOVED, at_s, known[1]))
        self._run_first_s.pop(host, None)
        self._run_last_s.pop(host, None)
        if self._double is not None and len(self._run_first_s) <= 1:
            start_s, seen = self._double
            self._doubles.append(Interval(start_s, at_s, frozenset(seen)))
            self._double = None
        if self._vacancy is None:
            primary = self._stable_primary(at_s)
            if primary is not None and all(self._latest.get(name) is False for name in self._hosts):
                self._vacancy = (at_s, primary)

    def role(self, host: str, at_s: float, role: Role) -> None:
        """One role poll of ``host``, answered at ``at_s``."""
        previous = self._roles.get(host)
        if previous is None or previous[0] is not role:
            previous_s = None if previous is None else previous[1]
            old = None if previous is None else previous[0]
            self._role_events.append(RoleEvent(host, old, role, at_s, previous_s))
            if role is Role.PRIMARY:
                self._primary_since_s[host] = at_s
            else:
                self._primary_since_s.pop(host, None)
        self._roles[host] = (role, at_s)
        if self._vacancy is not None and self._stable_primary(at_s) != self._vacancy[1]:
            self._close_vacancy(at_s)

    def report(self, at_s: float, stopped: bool = False) -> MonitorReport:
        """Everything so far; intervals still going are cut at ``at_s`` and marked."""
        doubles = list(self._doubles)
        if self._double is not None:
            doubles.append(Interval(self._double[0], at_s, frozenset(self._double[1]), True))
        vacancies = list(self._vacancies)
        if self._vacancy is not None:
            vacancies.append(Interval(self._vacancy[0], at_s, frozenset({self._vacancy[1]}), True))
        return MonitorReport(
            started_s=self._started_s,
            ended_s=at_s,
            stopped=stopped,
            samples=self._samples,
            mean_gap_s=self._gap_total_s / self._gaps if self._gaps else 0.0,
            max_gap_s=self._max_gap_s,
            double_holders=tuple(doubles),
            vacancies=tuple(vacancies),
            vip_events=tuple(self._vip_events),
            role_events=tuple(self._role_events),
            errors=tuple(self._errors),
        )

    def _count(self, host: str, at_s: float) -> None:
        self._samples += 1
        previous_s = self._last_sample_s.get(host)
        self._last_sample_s[host] = at_s
        if previous_s is not None:
            gap_s = at_s - previous_s
            self._gaps += 1
            self._gap_total_s += gap_s
            self._max_gap_s = max(self._max_gap_s, gap_s)

    def _confirm_overlap(self, host: str) -> None:
        first_s = self._run_first_s[host]
        partners = {
            other
            for other, last_s in self._run_last_s.items()
            if other != host and last_s >= first_s
        }
        if not partners:
            return
        if self._double is None:
            start_s = min(max(first_s, self._run_first_s[other]) for other in partners)
            self._double = (start_s, {host, *partners})
        else:
            self._double[1].update({host, *partners})

    def _stable_primary(self, at_s: float) -> str | None:
        primaries = [host for host, (role, _) in self._roles.items() if role is Role.PRIMARY]
        if len(primaries) != 1:
            return None
        (primary,) = primaries
        if at_s - self._primary_since_s[primary] > self._stable_after_s:
            return primary
        return None

    def _close_vacancy(self, at_s: float) -> None:
        assert self._vacancy is not None
        start_s, primary = self._vacancy
        # A role poll's instant is read before it waits for the lock, so it
        # may precede the address sample that opened the vacancy.
        self._vacancies.append(Interval(start_s, max(start_s, at_s), frozenset({primary})))
        self._vacancy = None
