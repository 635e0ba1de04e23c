"""A real ``dbvip run`` process inside a node's network namespace."""

from __future__ import annotations

import pwd
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DBVIP = [sys.executable, "-m", "dbvip.cli"]


class SidecarProcess:
    """One ``dbvip run`` in namespace ``netns``, its output kept in a log file."""

    def __init__(
        self, netns: str, env: dict[str, str], log_path: Path, wrapper: Sequence[str] = ()
    ) -> None:
        """``wrapper``: a command that execs the rest (setpriv, to drop privileges)."""
        self.netns = netns
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *wrapper, *DBVIP, "run"],
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


def unprivileged(user: str, capabilities: Sequence[str]) -> list[str]:
    """setpriv: run as ``user`` with exactly ``capabilities`` (e.g. "net_admin"),
    ambient so they survive the exec, and nothing else in the bounding set."""
    caps = ",".join(["-all", *(f"+{c}" for c in capabilities)])
    gid = pwd.getpwnam(user).pw_gid
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups",
            f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}"]  # fmt: skip


def dbvip(netns: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a one-shot dbvip command (status, check-config) in namespace ``netns``."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *DBVIP, *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
