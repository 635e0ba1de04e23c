"""The lab's invariant monitor: its bookkeeping on hand-made samples, then the
real thing on network namespaces, including a deliberately duplicated VIP."""

from __future__ import annotations

import functools
import ipaddress
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbvip.model import Role
from integration.lab.eventually import eventually
from integration.lab.lab import RoleSource
from integration.lab.monitor import (
    Host,
    Interval,
    InvariantMonitor,
    Ledger,
    MonitorReport,
    VipChange,
)
from integration.lab.netns import NetLab, Node

HOSTS = ("n1", "n2", "n3")
VIP = ipaddress.IPv4Interface("198.51.100.100/32")
N1_V4 = ipaddress.IPv4Interface("198.51.100.11/24")
N2_V4 = ipaddress.IPv4Interface("198.51.100.12/24")


def sweep(ledger: Ledger, at_s: float, holding: dict[str, bool | None]) -> None:
    """Sample the hosts one after the other, as the monitor does.

    Hand-made instants are whole seconds plus binary fractions, so they compare exactly.
    """
    for offset, (host, state) in enumerate(holding.items()):
        ledger.address(host, at_s + offset * 0.125, state)


def held_by(*names: str) -> dict[str, bool | None]:
    return {host: host in names for host in HOSTS}


# ---------------------------------------------------------------- bookkeeping


def test_double_holder_is_recorded_from_overlap_to_first_single_holder() -> None:
    ledger = Ledger(HOSTS, stable_after_s=1.0, started_s=0.0)
    sweep(ledger, 0, held_by("n1"))
    sweep(ledger, 1, held_by("n1", "n2"))
    assert ledger.report(1.5).double_holders == ()  # not proven before n1's next sample
    sweep(ledger, 2, held_by("n1", "n2"))
    sweep(ledger, 3, held_by("n2"))
    sweep(ledger, 4, held_by("n2"))
    report = ledger.report(5)

    assert report.double_holders == (Interval(1.125, 3, frozenset({"n1", "n2"})),)
    with pytest.raises(AssertionError, match=r"n1, n2"):
        report.assert_one_writer()
    assert [(e.host, e.change, e.at_s, e.previous_at_s) for e in report.vip_events] == [
        ("n1", VipChange.ADDED, 0, None),
        ("n2", VipChange.ADDED, 1.125, 0.125),
        ("n1", VipChange.REMOVED, 3, 2),
    ]


def test_hand_over_between_two_samples_of_one_sweep_is_not_a_double_holder() -> None:
    # n1 sampled holding just before its remove, n2 just after its add: both
    # look held in one sweep, but no instant is proven to have two holders.
    ledger = Ledger(HOSTS, stable_after_s=1.0, started_s=0.0)
    sweep(ledger, 0, held_by("n1"))
    sweep(ledger, 1, held_by("n1", "n2"))
    sweep(ledger, 2, held_by("n2"))
    report = ledger.report(3)

    assert ledger.holders() == {"n2"}
    assert report.double_holders == ()
    report.assert_one_writer()


def test_unknown_host_neither_ends_nor_starts_a_double_holder() -> None:
    ledger = Ledger(HOSTS, stable_after_s=1.0, started_s=0.0)
    sweep(ledger, 0, {"n1": True, "n2": None, "n3": False})
    sweep(ledger, 1, {"n1": True, "n2": None, "n3": False})
    assert ledger.report(2).double_holders == ()

    sweep(ledger, 2, held_by("n1", "n2"))
    sweep(ledger, 3, held_by("n1", "n2"))
    sweep(ledger, 4, {"n1": True, "n2": None, "n3": False})
    sweep(ledger, 5, {"n1": True, "n2": None, "n3": False})
    (open_interval,) = ledger.report(6).double_holders
    assert open_interval.unfinished

    sweep(ledger, 6, held_by("n1"))
    assert ledger.report(7).double_holders == (Interval(2.125, 6.125, frozenset({"n1", "n2"})),)


def test_vacancy_only_after_one_primary_was_stable_long_enough() -> None:
    ledger = Ledger(HOSTS, stable_after_s=10, started_s=0)
    for at_s in range(20):
        ledger.role("n1", at_s, Role.PRIMARY)
        ledger.role("n2", at_s, Role.REPLICA)
        sweep(ledger, at_s + 0.5, held_by())
    report = ledger.report(20)

    assert report.vacancies == (Interval(10.5, 20, frozenset({"n1"}), unfinished=True),)
    with pytest.raises(AssertionError, match="vacancy"):
        report.assert_no_vacancy()


def test_no_vacancy_with_two_primaries_or_an_unknown_host() -> None:
    ledger = Ledger(HOSTS, stable_after_s=10, started_s=0)
    for at_s in range(30):
        ledger.role("n1", at_s, Role.PRIMARY)
        ledger.role("n2", at_s, Role.PRIMARY if at_s < 15 else Role.UNKNOWN)
        # From 15 s on n1 is the only primary, but n3's addresses are unknown.
        sweep(ledger, at_s + 0.5, {"n1": False, "n2": False, "n3": None})
    assert ledger.report(30).vacancies == ()


def test_a_role_change_resets_stability_and_ends_a_vacancy() -> None:
    ledger = Ledger(HOSTS, stable_after_s=10, started_s=0)
    roles = {0: Role.PRIMARY, 5: Role.UNKNOWN, 6: Role.PRIMARY, 20: Role.REPLICA}
    for at_s in range(25):
        if at_s in roles:
            ledger.role("n1", at_s, roles[at_s])
        sweep(ledger, at_s + 0.5, held_by())
    report = ledger.report(25)

    # Primary again from 6 s, stable after 16 s: the first sample after that is at 16.5.
    assert report.vacancies == (Interval(16.5, 20, frozenset({"n1"})),)
    assert [(e.old, e.new) for e in report.role_events] == [
        (None, Role.PRIMARY),
        (Role.PRIMARY, Role.UNKNOWN),
        (Role.UNKNOWN, Role.PRIMARY),
        (Role.PRIMARY, Role.REPLICA),
    ]


def test_a_vip_ends_a_vacancy() -> None:
    ledger = Ledger(HOSTS, stable_after_s=1, started_s=0)
    ledger.role("n1", 0, Role.PRIMARY)
    sweep(ledger, 2, held_by())  # opens once every host was seen without the VIP
    sweep(ledger, 3, held_by("n1"))
    assert ledger.report(4).vacancies == (Interval(2.25, 3, frozenset({"n1"})),)


def test_intervals_still_going_are_cut_at_the_end_and_marked() -> None:
    ledger = Ledger(HOSTS, stable_after_s=1, started_s=0)
    sweep(ledger, 0, held_by("n1", "n2"))
    sweep(ledger, 1, held_by("n1", "n2"))
    report = ledger.report(5, stopped=True)

    assert report.double_holders == (Interval(0.125, 5, frozenset({"n1", "n2"}), True),)
    with pytest.raises(AssertionError, match="still going"):
        report.assert_one_writer()


def test_sampling_health_is_reported() -> None:
    ledger = Ledger(("n1",), stable_after_s=1.0, started_s=0.0)
    for at_s in (0.0, 0.003, 0.006, 0.02):
        ledger.address("n1", at_s, False)
    ledger.error("n1: boom")
    ledger.error("n1: boom")
    report = ledger.report(0.02)

    assert report.samples == 4
    assert report.max_gap_s == pytest.approx(0.014)
    assert report.mean_gap_s == pytest.approx(0.02 / 3)
    assert report.errors == ("n1: boom",)
    assert "4 address samples" in report.summary()


# ---------------------------------------------------------------- real netlink


def constant_role(role: Role) -> Role:
    return role


def frozen_database() -> Role:
    raise ConnectionError("database frozen")


@pytest.fixture(name="two_nodes")
def two_nodes_fixture(netlab: NetLab) -> tuple[Node, Node]:
    return netlab.add_node("n1", v4=N1_V4), netlab.add_node("n2", v4=N2_V4)


@pytest.fixture(name="hosts")
def hosts_fixture(two_nodes: tuple[Node, Node]) -> list[Host]:
    return [Host(node.name, node.netns, node.ifname) for node in two_nodes]


def set_vip(netlab: NetLab, node: Node, present: bool) -> None:
    netlab.ipr(node.netns).addr(
        "add" if present else "del", index=node.index, address=str(VIP.ip), prefixlen=32
    )


@pytest.fixture(name="running")
def running_fixture() -> Iterator[list[InvariantMonitor]]:
    """Monitors a test starts; stopped in teardown even when the test fails."""
    monitors: list[InvariantMonitor] = []
    yield monitors
    for monitor in monitors:
        monitor.stop()


def started(running: list[InvariantMonitor], monitor: InvariantMonitor) -> InvariantMonitor:
    running.append(monitor)
    monitor.start()
    # Every host sampled once, so what the test does next shows up as a change.
    eventually(lambda: monitor.report().samples >= 2 * len(monitor.hosts), timeout_s=10)
    return monitor


@pytest.mark.real
def test_a_duplicated_vip_is_caught(
    netlab: NetLab,
    two_nodes: tuple[Node, Node],
    hosts: list[Host],
    running: list[InvariantMonitor],
) -> None:
    n1, n2 = two_nodes
    monitor = started(running, InvariantMonitor(hosts, VIP))
    set_vip(netlab, n1, True)
    set_vip(netlab, n2, True)
    eventually(lambda: monitor.report().double_holders, timeout_s=10)
    set_vip(netlab, n2, False)
    eventually(lambda: monitor.holders() == {"n1"}, timeout_s=10)
    report = monitor.stop()

    print(report.summary())
    assert len(report.double_holders) == 1
    (interval,) = report.double_holders
    assert interval.hosts == {"n1", "n2"}
    assert not interval.unfinished
    with pytest.raises(AssertionError, match=r"(?s)1 double-holder interval.*n1, n2"):
        report.assert_one_writer()
    assert report.errors == ()


@pytest.mark.real
def test_a_clean_move_reports_no_double_holder(
    netlab: NetLab,
    two_nodes: tuple[Node, Node],
    hosts: list[Host],
    running: list[InvariantMonitor],
) -> None:
    n1, n2 = two_nodes
    fds_before = len(os.listdir("/proc/self/fd"))
    monitor = started(running, InvariantMonitor(hosts, VIP.ip))
    set_vip(netlab, n1, True)
    eventually(lambda: monitor.holders() == {"n1"}, timeout_s=10)
    set_vip(netlab, n1, False)
    set_vip(netlab, n2, True)
    eventually(lambda: monitor.holders() == {"n2"}, timeout_s=10)
    report = monitor.stop()

    print(report.summary())
    print(report.timeline())
    report.assert_one_writer()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("monitor-")]
    assert len(os.listdir("/proc/self/fd")) == fds_before  # netlink sockets closed
    # Per host only: with the remove and the add back to back, n2 may be sampled
    # holding before n1 is sampled again; that must not count as a double holder.
    changes = {
        name: [e.change for e in report.vip_events if e.host == name] for name in ["n1", "n2"]
    }
    assert changes == {"n1": [VipChange.ADDED, VipChange.REMOVED], "n2": [VipChange.ADDED]}
    assert all(e.previous_at_s is not None for e in report.vip_events)
    assert report.samples > 0
    assert report.errors == ()


@pytest.mark.real
def test_vacancy_follows_the_vip_and_the_role_sources(
    netlab: NetLab,
    two_nodes: tuple[Node, Node],
    hosts: list[Host],
    running: list[InvariantMonitor],
) -> None:
    n1, _ = two_nodes
    stable_after_s = 0.3
    # Called in the monitor's process: picklable, so module-level.
    sources: dict[str, Callable[[], Role]] = {
        "n1": functools.partial(constant_role, Role.PRIMARY),
        "n2": frozen_database,
    }
    set_vip(netlab, n1, True)
    monitor = started(running, InvariantMonitor(hosts, VIP, sources, stable_after_s))

    def primary_stable_for(duration_s: float) -> MonitorReport | None:
        report = monitor.report()
        first = next(e for e in report.role_events if e.host == "n1")
        return report if report.ended_s - first.at_s > duration_s else None

    # With the VIP present there is no vacancy, however long the primary is stable.
    stable = eventually(lambda: primary_stable_for(3 * stable_after_s), timeout_s=10)
    assert stable is not None
    assert stable.vacancies == ()

    set_vip(netlab, n1, False)
    (vacancy,) = eventually(lambda: monitor.report().vacancies, timeout_s=10)
    assert vacancy.hosts == {"n1"}
    with pytest.raises(AssertionError, match="vacancy"):
        monitor.report().assert_no_vacancy()

    set_vip(netlab, n1, True)
    eventually(lambda: not monitor.report().vacancies[-1].unfinished, timeout_s=10)
    report = monitor.stop()

    print(report.summary())
    assert len(report.vacancies) == 1
    assert report.errors == ("n2: role source failed: ConnectionError('database frozen')",)
    assert {(e.host, e.old, e.new) for e in report.role_events} == {
        ("n1", None, Role.PRIMARY),
        ("n2", None, Role.UNKNOWN),
    }


@pytest.mark.real
def test_a_missing_namespace_fails_at_start(
    two_nodes: tuple[Node, Node], hosts: list[Host]
) -> None:
    absent = hosts[0].netns + "-absent"
    monitor = InvariantMonitor([*hosts, Host("n9", absent)], VIP)
    with pytest.raises(FileNotFoundError, match=f"n9: no network namespace {re.escape(absent)}"):
        monitor.start()

    assert monitor.pid is not None
    assert not alive(monitor.pid)
    with pytest.raises(RuntimeError, match="start failed"):
        monitor.report()


# ---------------------------------------------------------------- the monitor's process


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's reaper may be slow or absent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.real
def test_the_sampler_runs_in_a_process_of_its_own_that_stop_reaps(
    hosts: list[Host], running: list[InvariantMonitor]
) -> None:
    monitor = started(running, InvariantMonitor(hosts, VIP))
    pid = monitor.pid
    assert pid is not None
    assert pid != os.getpid()
    assert parent_of(pid) == os.getpid()
    assert "serve()" in Path(f"/proc/{pid}/cmdline").read_text()
    report = monitor.stop()

    assert not alive(pid)  # reaped, not a zombie
    assert report.samples > 0
    assert monitor.report() is report  # the final one, kept after the process
    assert monitor.holders() == frozenset()


@pytest.mark.real
def test_a_monitor_process_that_died_is_an_error_not_a_report(
    hosts: list[Host], running: list[InvariantMonitor]
) -> None:
    monitor = started(running, InvariantMonitor(hosts, VIP))
    assert monitor.pid is not None
    os.kill(monitor.pid, signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"ended \(exit status -9\)"):
        monitor.report()
    with pytest.raises(RuntimeError, match="is gone"):
        monitor.stop()
    assert not alive(monitor.pid)
    running.remove(monitor)


CALLER = """
import ipaddress, os, signal, sys
from integration.lab.monitor import Host, InvariantMonitor

names = sys.argv[1::2]
monitor = InvariantMonitor([Host(n, ns) for n, ns in zip(names, sys.argv[2::2])],
                           ipaddress.ip_address("198.51.100.100"))
monitor.start()
print(monitor.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.real
def test_the_monitor_process_dies_with_its_caller(hosts: list[Host]) -> None:
    args = [arg for host in hosts for arg in (host.name, host.netns)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    caller = subprocess.run(
        [sys.executable, "-c", CALLER, *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert caller.returncode == -signal.SIGKILL, caller.stderr
    pid = int(caller.stdout)
    try:
        eventually(lambda: not alive(pid), timeout_s=10)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_role_sources_must_be_picklable() -> None:
    with pytest.raises(TypeError, match="picklable"):
        InvariantMonitor([Host("n1", "unused")], VIP, {"n1": lambda: Role.PRIMARY})


def test_the_labs_role_source_travels_without_its_connection(tmp_path: Path) -> None:
    source = RoleSource(f"host={tmp_path} port=5432 user=nobody dbname=postgres")
    assert source() is Role.DOWN  # no server there; the probe now exists
    copy = pickle.loads(pickle.dumps(source))

    assert copy.conninfo == source.conninfo
    assert copy() is Role.DOWN  # makes a probe of its own
