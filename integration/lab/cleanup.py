"""Find and remove everything a named lab left behind, also after it crashed.

Only what carries the lab's name is touched: namespaces ``dbvip-<name>-*``,
the processes living inside those namespaces (``ip netns pids``: they can only
have been started there by the lab) and the directory ``dbvip-lab-<name>``.
PostgreSQL instances found in that directory are stopped with ``pg_ctl``
first, so their shared memory is released, then any survivor is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration.lab.names import NAME_RE, lab_dir, netns_prefix

NETNS_DIR = Path("/run/netns")
PG_CTL = "/usr/lib/postgresql/15/bin/pg_ctl"


@dataclass
class Leftovers:
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    directory: Path | None = None

    def empty(self) -> bool:
        return not (self.namespaces or self.pids or self.directory)

    def describe(self) -> str:
        parts = []
        if self.namespaces:
            parts.append(f"namespaces {', '.join(self.namespaces)}")
        if self.pids:
            parts.append(f"processes {', '.join(map(str, self.pids))}")
        if self.directory:
            parts.append(f"directory {self.directory}")
        return "; ".join(parts) or "nothing"


def lab_namespaces(name: str) -> list[str]:
    prefix = netns_prefix(name) + "-"
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if e.startswith(prefix))


def pids_in(namespace: str) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False, timeout=30
    )
    return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def find(name: str) -> Leftovers:
    namespaces = lab_namespaces(name)
    pids = sorted({pid for ns in namespaces for pid in pids_in(ns)})
    directory = lab_dir(name)
    return Leftovers(namespaces, pids, directory if directory.exists() else None)


def _stop_postgres(directory: Path) -> None:
    for pid_file in directory.glob("pg/*/postmaster.pid"):
        datadir = pid_file.parent
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["runuser", "-u", "postgres", "--", PG_CTL, "-D", str(datadir),
                 "-m", "immediate", "-w", "-t", "10", "stop"],
                capture_output=True, check=False, timeout=20,
            )  # fmt: skip


def _kill_patroni(directory: Path, pids: list[int]) -> None:
    """A Patroni of the lab (its configuration lives in the lab's directory)
    would start PostgreSQL again behind pg_ctl's back: it goes first."""
    marker = str(directory / "patroni").encode() + b"/"
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(arg.startswith(marker) for arg in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def down(name: str) -> Leftovers:
    """Remove everything of lab ``name``; returns what was found."""
    found = find(name)
    if found.directory is not None:
        _kill_patroni(found.directory, found.pids)
        _stop_postgres(found.directory)
    for namespace in found.namespaces:
        for pid in pids_in(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a frozen process dies only when it runs
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(alive(p) for ns in found.namespaces for p in pids_in(ns)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab {name}: processes survive SIGKILL: {find(name).pids}")
        time.sleep(0.05)
    for namespace in found.namespaces:
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
    if found.directory is not None:
        shutil.rmtree(found.directory, ignore_errors=True)
    left = find(name)
    if not left.empty():
        raise RuntimeError(f"lab {name}: could not remove {left.describe()}")
    return found


def lab_names() -> list[str]:
    """Names of the labs that left a namespace or a directory on this machine."""
    names = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(NETNS_DIR):
            parts = entry.split("-")
            if len(parts) == 3 and parts[0] == "dbvip" and NAME_RE.fullmatch(parts[1]):
                names.add(parts[1])
    for path in lab_dir("x").parent.glob("dbvip-lab-*"):
        name = path.name.removeprefix("dbvip-lab-")
        if NAME_RE.fullmatch(name):
            names.add(name)
    return sorted(names)
