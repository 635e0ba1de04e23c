"""Freezing a process for a test: SIGSTOP, then wait until it really stopped.

``kill(SIGSTOP)`` returns before every thread of the target has stopped: a
thread busy on another core may still answer one more request. A test that
freezes a process and then expects silence must wait for each thread's state
to read "stopped" in /proc.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _all_stopped(pid: int) -> bool:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return True  # gone: it answers nothing either
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # Z: a child that exited after its frozen parent stopped reaping (a
        # PostgreSQL backend ending while the postmaster is stopped) stays a
        # zombie until the thaw; X: gone. Neither can answer anything.
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def freeze(pid: int, timeout_s: float = 10.0) -> None:
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while not _all_stopped(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {timeout_s} s")
        time.sleep(0.001)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
