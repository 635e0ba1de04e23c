"""Resident memory and CPU time of a sidecar, read from /proc.

A sidecar is a process tree (keepalived is a parent and a VRRP child that
runs the track scripts): memory is the sum of VmRSS over the live tree, CPU
the sum of utime + stime + cutime + cstime over it, so the CPU of children
already reaped (each run of a check script) counts for the one that reaped it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    return stat.rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_s(pids: list[int]) -> float:
    """utime + stime + cutime + cstime over ``pids``, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # After ')': state is field 3 of stat(5), so utime (14) is index 11.
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / TICKS_PER_S


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = (PROC / str(pid) / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class Footprint:
    node: str
    window_s: float
    cpu_s: float  # over the window
    rss_mib_max: float  # largest sum seen over the window
    rss_mib_end: float
    processes: int  # in the tree at the end

    @property
    def cpu_s_per_hour(self) -> float:
        return self.cpu_s / self.window_s * 3600.0

    @property
    def core_percent(self) -> float:
        return self.cpu_s / self.window_s * 100.0


def measure(
    pids: Mapping[str, int],
    window_s: float,
    sample_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Footprint]:
    """Watch every sidecar (node -> top PID) for ``window_s`` seconds."""
    start = {node: cpu_s(tree(pid)) for node, pid in pids.items()}
    began_s = time.monotonic()
    peak = {node: rss_kib(tree(pid)) for node, pid in pids.items()}
    while (left_s := began_s + window_s - time.monotonic()) > 0:
        sleep(min(sample_s, left_s))
        for node, pid in pids.items():
            peak[node] = max(peak[node], rss_kib(tree(pid)))
    elapsed_s = time.monotonic() - began_s
    found = []
    for node, pid in pids.items():
        pids_now = tree(pid)
        end_kib = rss_kib(pids_now)
        found.append(
            Footprint(
                node=node,
                window_s=round(elapsed_s, 3),
                cpu_s=round(cpu_s(pids_now) - start[node], 3),
                rss_mib_max=round(max(peak[node], end_kib) / 1024, 2),
                rss_mib_end=round(end_kib / 1024, 2),
                processes=len(pids_now),
            )
        )
    return found
