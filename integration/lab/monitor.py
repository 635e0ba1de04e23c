"""The lab's invariant monitor: watches every host's addresses and roles while a
scenario runs, and reports double holders of the writer VIP (S1) and vacancies
(a stable primary, yet no host holds the VIP), with a timeline of events; given
reader VIPs, it reports double holders of each of them too (S1 per VIP), from
the same address samples.

Two layers: ``Ledger`` (``integration.lab.ledger``) turns timestamped samples into
intervals and events with no I/O and no clock; ``InvariantMonitor`` feeds it in a
process of its own (``integration.lab.sampler``)
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
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from dbvip.model import IPAddress, IPInterface, Role
from integration.lab.ledger import (
    Host,
    Interval,
    Ledger,
    MonitorReport,
    RoleEvent,
    VipChange,
    VipEvent,
    VipSpec,
)
from integration.lab.sampler import Settings

__all__ = [
    "Host",
    "Interval",
    "InvariantMonitor",
    "Ledger",
    "MonitorReport",
    "RoleEvent",
    "VipChange",
    "VipEvent",
    "VipSpec",
]

# A fresh interpreter importing pyroute2 and the role sources' modules, on a
# busy 2-core machine: usually well under a second.
_START_TIMEOUT_S = 60.0
_ANSWER_TIMEOUT_S = 10.0
# Waiting for the process to exit after its last answer, then after SIGTERM.
_EXIT_TIMEOUT_S = 5.0


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
        self._settings = Settings(
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
            code = "from integration.lab.sampler import serve; serve()"
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
