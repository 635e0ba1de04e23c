"""The lab's invariant monitor: watches every host's addresses and roles while a
scenario runs, and reports double holders of the writer VIP (S1) and vacancies
(a stable primary, yet no host holds the VIP), with a timeline of events; given
reader VIPs, it reports double holders of each of them too (S1 per VIP), from
the same address samples.

Two layers: ``Ledger`` turns timestamped samples into intervals and events with
no I/O and no clock; ``InvariantMonitor`` feeds it in a process of its own
(nothing in the caller's process, its garbage collector above all, can stall
the sampling there) from one address-sampling thread (one netlink socket per
namespace) and one role-polling thread per host, so that a frozen database
never slows the address sampling either. The caller asks that process for
holders and reports over a pipe; the process ends when told to stop, when the
pipe closes or when the caller dies.

Instants are ``time.monotonic()`` seconds. A sample's instant is taken when its
answer arrived; every event also keeps the instant of the previous sample that
saw the opposite state, so the change happened in ``(previous_at_s, at_s]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import ipaddress
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
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


class _AddressReader:
    """One host's netlink socket, opened once; answers "which of these
    addresses does it have?"."""

    def __init__(self, host: Host, ips: Sequence[IPAddress]) -> None:
        self.host = host
        self._ips = frozenset(ips)
        self._families = sorted(
            {socket.AF_INET if ip.version == 4 else socket.AF_INET6 for ip in ips}
        )
        try:
            # flags=0: a mistyped name must fail, not create a namespace.
            self._ipr: Any = IPRoute(netns=host.netns, flags=0, groups=0)
        except FileNotFoundError as exc:  # pyroute2's own names neither host nor file
            raise FileNotFoundError(
                exc.errno, f"host {host.name}: no network namespace {host.netns}"
            ) from exc
        try:
            found = self._ipr.link_lookup(ifname=host.ifname)
            if not found:
                raise LookupError(f"no interface {host.ifname} in namespace {host.netns}")
            self._index: int = found[0]
        except BaseException:
            self.close()
            raise

    def present(self) -> frozenset[IPAddress]:
        found: set[IPAddress] = set()
        for family in self._families:
            for msg in self._ipr.get_addr(index=self._index, family=family):
                text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if text is not None:
                    found.add(ipaddress.ip_address(text))
        return frozenset(found & self._ips)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ipr.close()


@dataclass(frozen=True)
class _Settings:
    """What the monitor's process needs; sent to it pickled."""

    hosts: tuple[Host, ...]
    ip: IPAddress
    sources: Mapping[str, Callable[[], Role]]
    stable_after_s: float
    period_s: float
    role_period_s: float
    reader_vips: tuple[IPAddress, ...] = ()


class _Sampler:
    """Feeds a ledger from one address-sampling thread (one netlink socket per
    namespace) and one role-polling thread per host, so that a frozen database
    never slows the address sampling. Runs in the monitor's process."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ledger: Ledger | None = None
        # One ledger per reader VIP: double holders only (they get no roles).
        self._reader_ledgers: dict[IPAddress, Ledger] = {}
        self._final: MonitorReport | None = None

    def start(self) -> None:
        """Open the sockets (a missing namespace or interface fails here) and start sampling."""
        settings = self._settings
        names = [host.name for host in settings.hosts]
        ledger = Ledger(names, settings.stable_after_s, time.monotonic())
        self._reader_ledgers = {ip: Ledger(names, settings.stable_after_s, time.monotonic())
                                for ip in settings.reader_vips}  # fmt: skip
        opened: Future[None] = Future()
        sampler = threading.Thread(
            target=self._sample_addresses, args=(ledger, opened), name="monitor-vip", daemon=True
        )
        sampler.start()
        try:
            opened.result()
        except BaseException:
            sampler.join()
            raise
        self._ledger = ledger
        self._threads.append(sampler)
        for name, source in settings.sources.items():
            thread = threading.Thread(
                target=self._poll_role,
                args=(ledger, name, source),
                name=f"monitor-role-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, join_timeout_s: float) -> MonitorReport:
        """Stop the threads (the sampler closes its sockets) and return the final report."""
        if self._final is not None:
            return self._final
        ledger = self._started()
        self._stop.set()
        deadline_s = time.monotonic() + join_timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline_s - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        with self._lock:
            if stuck:
                ledger.error(f"threads still running {join_timeout_s} s after stop: {stuck}")
            self._final = self._report(ledger, time.monotonic(), stopped=True)
        return self._final

    def holders(self) -> frozenset[str]:
        ledger = self._started()
        with self._lock:
            return ledger.holders()

    def reader_holders(self) -> dict[str, frozenset[str]]:
        self._started()
        with self._lock:
            return {str(ip): led.holders() for ip, led in self._reader_ledgers.items()}

    def report(self) -> MonitorReport:
        if self._final is not None:
            return self._final
        ledger = self._started()
        with self._lock:
            return self._report(ledger, time.monotonic())

    def _report(self, ledger: Ledger, at_s: float, stopped: bool = False) -> MonitorReport:
        """The writer's report with every reader VIP's double holders and events
        (each named by its VIP); the caller holds the lock."""
        doubles: list[Interval] = []
        events: list[VipEvent] = []
        for ip, reader in self._reader_ledgers.items():
            part = reader.report(at_s, stopped)
            doubles += [dataclasses.replace(i, vip=str(ip)) for i in part.double_holders]
            events += [dataclasses.replace(e, vip=str(ip)) for e in part.vip_events]
        return dataclasses.replace(
            ledger.report(at_s, stopped),
            reader_vips=tuple(map(str, self._reader_ledgers)),
            reader_double_holders=tuple(sorted(doubles, key=lambda i: i.start_s)),
            reader_vip_events=tuple(sorted(events, key=lambda e: e.at_s)),
        )

    def _started(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the sampler has not been started")
        return self._ledger

    def _sample_addresses(self, ledger: Ledger, opened: Future[None]) -> None:
        # pyroute2 keeps a socket per thread: one opened in another thread
        # would be opened again here on first use, by a forked helper (~6 ms).
        readers: list[_AddressReader] = []
        try:
            for host in self._settings.hosts:
                ips = (self._settings.ip, *self._settings.reader_vips)
                readers.append(_AddressReader(host, ips))
        except BaseException as exc:
            for reader in readers:
                reader.close()
            opened.set_exception(exc)
            return
        opened.set_result(None)
        try:
            self._sweep_until_stopped(ledger, readers)
        finally:
            for reader in readers:
                reader.close()

    def _sweep_until_stopped(self, ledger: Ledger, readers: list[_AddressReader]) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            for reader in readers:
                present: frozenset[IPAddress] | None
                try:
                    present = reader.present()
                    error = None
                except Exception as exc:
                    present = None
                    error = f"{reader.host.name}: address dump failed: {exc!r}"
                at_s = time.monotonic()
                name = reader.host.name
                with self._lock:
                    ledger.address(
                        name, at_s, None if present is None else self._settings.ip in present
                    )
                    for ip, reader_ledger in self._reader_ledgers.items():
                        reader_ledger.address(
                            name, at_s, None if present is None else ip in present
                        )
                    if error is not None:
                        ledger.error(error)
            # Fixed rate; after a stall, resume from now rather than catch up.
            next_s = max(next_s + self._settings.period_s, time.monotonic())
            self._stop.wait(next_s - time.monotonic())

    def _poll_role(self, ledger: Ledger, name: str, source: Callable[[], Role]) -> None:
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
            self._stop.wait(self._settings.role_period_s)


# How soon an orphaned monitor process notices that its caller is gone.
_ORPHAN_CHECK_S = 0.2
# A fresh interpreter importing pyroute2 and the role sources' modules, on a
# busy 2-core machine: usually well under a second.
_START_TIMEOUT_S = 60.0
_ANSWER_TIMEOUT_S = 10.0
# Waiting for the process to exit after its last answer, then after SIGTERM.
_EXIT_TIMEOUT_S = 5.0


def _serve() -> None:
    """The monitor's process: ``python -c`` runs this with the pipe's descriptor
    and the caller's PID as arguments, and it answers the caller's requests
    until told to stop, the pipe closes or the caller is gone."""
    conn = Connection(int(sys.argv[1]))
    caller_pid = int(sys.argv[2])
    # Ctrl-C reaches the whole process group; the caller decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        settings = conn.recv()  # unpickling imports the role sources' modules
    except EOFError:
        return
    except Exception as exc:
        conn.send(("failed", RuntimeError(f"role sources not importable here: {exc!r}")))
        return
    sampler = _Sampler(settings)
    try:
        sampler.start()
    except Exception as exc:
        conn.send(("failed", _transportable(exc)))
        return
    # What exists now lives as long as the process: keep it out of every
    # collection, so that a full one walks only what sampling made since
    # (a fraction of a millisecond, where the caller's heap takes 12-18 ms).
    gc.freeze()
    conn.send(("started", None))
    try:
        while True:
            if not conn.poll(_ORPHAN_CHECK_S):
                if os.getppid() != caller_pid:
                    return
                continue
            request, join_timeout_s = conn.recv()
            if request == "stop":
                conn.send((sampler.stop(join_timeout_s), sampler.holders()))
                return
            if request == "holders":
                conn.send(sampler.holders())
            elif request == "reader_holders":
                conn.send(sampler.reader_holders())
            else:
                conn.send(sampler.report())
    except (EOFError, OSError):
        return  # the caller closed the pipe or died
    finally:
        sampler.stop(join_timeout_s=1.0)


def _transportable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(repr(exc))
    return exc


class InvariantMonitor:
    """Samples the writer VIP on every host and the hosts' roles in a process of
    its own, so that nothing in the caller's process (its garbage collector, its
    threads holding the GIL, subprocess spawns) can stall the sampling.

    Role sources are called in that process, so they must be picklable and
    importable there: a function, a ``functools.partial`` of one or an instance
    of a class, defined at module level in a module (not in a script run as
    ``__main__``). A source that raises counts as an unknown role. The instants
    in reports are that process's ``time.monotonic()``, which is the caller's
    clock too (CLOCK_MONOTONIC is system-wide).
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        vip: VipSpec,
        role_sources: Mapping[str, Callable[[], Role]] | None = None,
        stable_after_s: float = 1.2,
        period_s: float = 0.003,
        role_period_s: float = 0.01,
        readers: Sequence[IPAddress] = (),
    ) -> None:
        """``readers``: reader VIPs, each checked for double holders like the writer VIP."""
        names = [host.name for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        sources = dict(role_sources or {})
        stray = set(sources) - set(names)
        if stray:
            raise ValueError(f"role sources for unknown hosts: {sorted(stray)}")
        try:
            pickle.dumps(sources)
        except Exception as exc:
            raise TypeError(
                f"role sources must be picklable (they run in the monitor's process): {exc}"
            ) from exc
        self._hosts = tuple(hosts)
        self._settings = _Settings(
            hosts=self._hosts,
            ip=vip.ip if isinstance(vip, IPInterface) else vip,
            sources=sources,
            stable_after_s=stable_after_s,
            period_s=period_s,
            role_period_s=role_period_s,
            reader_vips=tuple(readers),
        )
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._gone: str | None = None  # why the process is no longer there to ask
        self._final: tuple[MonitorReport, frozenset[str]] | None = None

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
        """Start the monitor's process and wait until it samples; what fails there
        at start (a missing namespace or interface) is raised here."""
        with self._lock:
            if self._process is not None:
                raise RuntimeError("a monitor starts once")
            conn, child_conn = multiprocessing.Pipe()
            # A fresh interpreter (never a fork of this threaded process) that
            # finds the modules this one imported where this one found them.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            code = f"from {__name__} import _serve; _serve()"
            argv = [sys.executable, "-c", code, str(child_conn.fileno()), str(os.getpid())]
            with child_conn:
                try:
                    self._process = subprocess.Popen(
                        argv, env=env, stdin=subprocess.DEVNULL, pass_fds=[child_conn.fileno()]
                    )
                except BaseException:
                    conn.close()
                    raise
            self._conn = conn
            try:
                status, error = self._exchange(self._settings, _START_TIMEOUT_S)
            except BaseException:
                self._end("start failed")
                raise
            if status == "failed":
                self._end(f"start failed: {error!r}")
                error.add_note(f"(raised at start in the monitor's process {self.pid})")
                raise error

    def stop(self, join_timeout_s: float = 5.0) -> MonitorReport:
        """Stop sampling, reap the monitor's process and return the final report."""
        with self._lock:
            if self._final is None:
                try:
                    self._final = self._exchange(
                        ("stop", join_timeout_s), join_timeout_s + _ANSWER_TIMEOUT_S
                    )
                finally:
                    self._end("stopped")
            return self._final[0]

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self._hosts

    @property
    def pid(self) -> int | None:
        """The monitor's process, once started (it is gone after stop)."""
        return None if self._process is None else self._process.pid

    def holders(self) -> frozenset[str]:
        """Hosts whose latest sample shows the VIP."""
        with self._lock:
            if self._final is not None:
                return self._final[1]
            holders: frozenset[str] = self._exchange(("holders", None), _ANSWER_TIMEOUT_S)
            return holders

    def reader_holders(self) -> dict[str, frozenset[str]]:
        """For each reader VIP, the hosts whose latest sample shows it (while running)."""
        with self._lock:
            if self._final is not None:
                raise RuntimeError("the monitor has stopped: ask its report")
            holders: dict[str, frozenset[str]] = self._exchange(
                ("reader_holders", None), _ANSWER_TIMEOUT_S
            )
            return holders

    def report(self) -> MonitorReport:
        """A snapshot while running; the final report after stop."""
        with self._lock:
            if self._final is not None:
                return self._final[0]
            report: MonitorReport = self._exchange(("report", None), _ANSWER_TIMEOUT_S)
            return report

    def _exchange(self, message: object, timeout_s: float) -> Any:
        """Send ``message`` and return the answer; the caller holds the lock."""
        if self._process is None:
            raise RuntimeError("the monitor has not been started")
        if self._conn is None:
            raise RuntimeError(f"the monitor's process {self.pid} is gone: {self._gone}")
        try:
            self._conn.send(message)
            if self._conn.poll(timeout_s):
                return self._conn.recv()
            # A late answer would be taken for the next request's: end it instead.
            why = f"no answer in {timeout_s} s"
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(1.0)
            why = f"it ended (exit status {self._process.returncode})"
        self._end(why)
        raise RuntimeError(f"the monitor's process {self.pid}: {why}")

    def _end(self, why: str) -> None:
        """Close the pipe (the process exits when it sees that) and reap the
        process; SIGTERM, then SIGKILL to its PID only as a last resort."""
        assert self._process is not None
        if self._conn is None:
            return  # ended already
        self._conn.close()
        self._conn = None
        self._gone = why
        process = self._process
        for last_resort in (None, process.terminate, process.kill):
            if last_resort is not None:
                last_resort()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_EXIT_TIMEOUT_S)
                return
