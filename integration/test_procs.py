"""The lab's freeze helper, on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

from integration.lab import procs

# A parent that forks a child which exits at once and is never reaped: the
# child stays a zombie, as a PostgreSQL backend that ends while its
# postmaster is frozen does.
PARENT = (
    "import os, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os._exit(0)\n"
    "print(pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_freezing_a_frozen_parent_and_its_zombie_child_returns() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        # The child may not have run yet (CI saw it stopped, "T", not a
        # zombie): wait until it has exited unreaped, as the story needs.
        deadline = time.monotonic() + 10.0
        while _state(child) != "Z":
            assert time.monotonic() < deadline, f"child {child} never became a zombie"
            time.sleep(0.01)
        procs.freeze(parent.pid)
        assert _state(parent.pid) in ("T", "t")
        procs.freeze(child, timeout_s=2.0)  # a zombie answers nothing: counts as stopped
        assert _state(child) == "Z"
    finally:
        procs.thaw(parent.pid)
        parent.kill()
        parent.wait(timeout=10)
