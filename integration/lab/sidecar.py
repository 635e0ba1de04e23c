"""A real ``dbvip run`` process inside a node's network namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DBVIP = [sys.executable, "-m", "dbvip.cli"]


class SidecarProcess:
    """One ``dbvip run`` in namespace ``netns``, its output kept in a log file."""

    def __init__(self, netns: str, env: dict[str, str], log_path: Path) -> None:
        self.netns = netns
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *DBVIP, "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 10) -> int:
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL this process (only this one, by its PID) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def dbvip(netns: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a one-shot dbvip command (status, check-config) in namespace ``netns``."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *DBVIP, *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
