"""The lab's invariant monitor: watches every host's addresses and roles while a
scenario runs, and reports double holders of the writer VIP (S1) and vacancies
(a stable primary, yet no host holds the VIP), with a timeline of events.

Two layers: ``Ledger`` turns timestamped samples into intervals and events with
no I/O and no clock; ``InvariantMonitor`` feeds it from one address-sampling
thread (one netlink socket per namespace) and one role-polling thread per host,
so that a frozen database never slows the address sampling.

Instants are ``time.monotonic()`` seconds. A sample's instant is taken when its
answer arrived; every event also keeps the instant of the previous sample that
saw the opposite state, so the change happened in ``(previous_at_s, at_s]``.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute

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

    def describe(self, origin_s: float) -> str:
        tail = " (still going at the end)" if self.unfinished else ""
        return (
            f"+{self.start_s - origin_s:.3f} s .. +{self.end_s - origin_s:.3f} s "
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

    def assert_one_writer(self) -> None:
        if self.double_holders:
            raise AssertionError(
                f"{len(self.double_holders)} double-holder interval(s) of the writer VIP:\n"
                + _lines(self.double_holders, self.started_s)
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
        lines.extend(f"error: {error}" for error in self.errors)
        return "\n".join(lines)

    def timeline(self) -> str:
        """Role and VIP events in time order, relative to the start."""
        rows: list[tuple[float, str]] = []
        for vip in self.vip_events:
            since = (
                ""
                if vip.previous_at_s is None
                else f" (not before +{self._rel(vip.previous_at_s)})"
            )
            rows.append((vip.at_s, f"{vip.host}: VIP {vip.change.value}{since}"))
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


class _AddressReader:
    """One host's netlink socket, opened once; answers "does it hold the VIP?"."""

    def __init__(self, host: Host, ip: IPAddress) -> None:
        self.host = host
        self._ip = ip
        self._family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        # flags=0: a mistyped name must fail, not create a namespace.
        self._ipr: Any = IPRoute(netns=host.netns, flags=0, groups=0)
        try:
            found = self._ipr.link_lookup(ifname=host.ifname)
            if not found:
                raise LookupError(f"no interface {host.ifname} in namespace {host.netns}")
            self._index: int = found[0]
        except BaseException:
            self.close()
            raise

    def holding(self) -> bool:
        for msg in self._ipr.get_addr(index=self._index, family=self._family):
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text is not None and ipaddress.ip_address(text) == self._ip:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ipr.close()


class InvariantMonitor:
    """Samples the writer VIP on every host and the hosts' roles, in daemon threads."""

    def __init__(
        self,
        hosts: Sequence[Host],
        vip: VipSpec,
        role_sources: Mapping[str, Callable[[], Role]] | None = None,
        stable_after_s: float = 1.2,
        period_s: float = 0.003,
        role_period_s: float = 0.01,
    ) -> None:
        names = [host.name for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        sources = dict(role_sources or {})
        stray = set(sources) - set(names)
        if stray:
            raise ValueError(f"role sources for unknown hosts: {sorted(stray)}")
        self._hosts = tuple(hosts)
        self._ip: IPAddress = vip.ip if isinstance(vip, IPInterface) else vip
        self._sources = sources
        self._stable_after_s = stable_after_s
        self._period_s = period_s
        self._role_period_s = role_period_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._readers: list[_AddressReader] = []
        self._ledger: Ledger | None = None
        self._final: MonitorReport | None = None

    def __enter__(self) -> InvariantMonitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Open the sockets (a missing namespace or interface fails here) and start sampling."""
        if self._ledger is not None:
            raise RuntimeError("a monitor starts once")
        try:
            for host in self._hosts:
                self._readers.append(_AddressReader(host, self._ip))
        except BaseException:
            self._close_readers()
            raise
        names = [host.name for host in self._hosts]
        self._ledger = Ledger(names, self._stable_after_s, time.monotonic())
        self._threads.append(
            threading.Thread(target=self._sample_addresses, name="monitor-vip", daemon=True)
        )
        for name, source in self._sources.items():
            self._threads.append(
                threading.Thread(
                    target=self._poll_role,
                    args=(name, source),
                    name=f"monitor-role-{name}",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()

    def stop(self, join_timeout_s: float = 5.0) -> MonitorReport:
        """Stop the threads, close the sockets and return the final report."""
        if self._final is not None:
            return self._final
        ledger = self._require_started()
        self._stop.set()
        for thread in self._threads:
            thread.join(join_timeout_s)
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        with self._lock:
            if stuck:
                ledger.error(f"threads still running {join_timeout_s} s after stop: {stuck}")
            # A socket still in use by the sampler is left to the garbage collector.
            if "monitor-vip" not in stuck:
                self._close_readers()
            self._final = ledger.report(time.monotonic(), stopped=True)
        return self._final

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self._hosts

    def holders(self) -> frozenset[str]:
        """Hosts whose latest sample shows the VIP."""
        ledger = self._require_started()
        with self._lock:
            return ledger.holders()

    def report(self) -> MonitorReport:
        """A snapshot while running; the final report after stop."""
        if self._final is not None:
            return self._final
        ledger = self._require_started()
        with self._lock:
            return ledger.report(time.monotonic())

    def _require_started(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the monitor has not been started")
        return self._ledger

    def _sample_addresses(self) -> None:
        ledger = self._require_started()
        next_s = time.monotonic()
        while not self._stop.is_set():
            for reader in self._readers:
                holding: bool | None
                try:
                    holding = reader.holding()
                    error = None
                except Exception as exc:
                    holding = None
                    error = f"{reader.host.name}: address dump failed: {exc!r}"
                at_s = time.monotonic()
                with self._lock:
                    ledger.address(reader.host.name, at_s, holding)
                    if error is not None:
                        ledger.error(error)
            # Fixed rate; after a stall, resume from now rather than catch up.
            next_s = max(next_s + self._period_s, time.monotonic())
            self._stop.wait(next_s - time.monotonic())

    def _poll_role(self, name: str, source: Callable[[], Role]) -> None:
        ledger = self._require_started()
        while not self._stop.is_set():
            try:
                role = source()
                error = None
            except Exception as exc:
                role = Role.UNKNOWN
                error = f"{name}: role source failed: {exc!r}"
            at_s = time.monotonic()
            with self._lock:
                ledger.role(name, at_s, role)
                if error is not None:
                    ledger.error(error)
            self._stop.wait(self._role_period_s)

    def _close_readers(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()
