"""The invariant monitor's second layer, run in the monitor's own process:
``Sampler`` feeds a ``Ledger`` from one address-sampling thread (one netlink
socket per namespace) and one role-polling thread per host, and ``serve``
answers the caller (``integration.lab.monitor.InvariantMonitor``) over a pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pyroute2 import IPRoute

from dbvip.model import IPAddress, Role
from integration.lab.ledger import Host, Interval, Ledger, MonitorReport, VipEvent

# How soon an orphaned monitor process notices that its caller is gone.
_ORPHAN_CHECK_S = 0.2


class AddressReader:
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
class Settings:
    """What the monitor's process needs; sent to it pickled."""

    hosts: tuple[Host, ...]
    ip: IPAddress
    sources: Mapping[str, Callable[[], Role]]
    stable_after_s: float
    period_s: float
    role_period_s: float
    reader_vips: tuple[IPAddress, ...] = ()


class Sampler:
    """Feeds a ledger from one address-sampling thread (one netlink socket per
    namespace) and one role-polling thread per host, so that a frozen database
    never slows the address sampling. Runs in the monitor's process."""

    def __init__(self, settings: Settings) -> None:
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
        readers: list[AddressReader] = []
        try:
            for host in self._settings.hosts:
                ips = (self._settings.ip, *self._settings.reader_vips)
                readers.append(AddressReader(host, ips))
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

    def _sweep_until_stopped(self, ledger: Ledger, readers: list[AddressReader]) -> None:
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


def serve() -> None:
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
    sampler = Sampler(settings)
    try:
        sampler.start()
    except Exception as exc:
        conn.send(("failed", transportable(exc)))
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


def transportable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(repr(exc))
    return exc
