"""HAProxy in the lab: a load balancer host of its own in front of the reader VIPs.

The ``lb`` host sits on the lab's bridge like any other. Its HAProxy (Debian
package ``haproxy``) runs in the foreground (``-db``) inside that namespace,
started and stopped by its PID, its configuration, stats socket and log in
the lab's directory. TCP mode: clients connect to ``lb:5432`` for reads and
HAProxy spreads the connections over the reader VIPs (port 5432 on each),
with plain TCP checks fast enough that a VIP on nobody, or on a node whose
database is gone, leaves the rotation in about half a second; the writer VIP
is a second frontend on ``lb:5433``.

Nothing here knows which node holds which VIP: that is dbvip's job, and the
point of the pool is that the load balancer's configuration never changes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from integration.lab.eventually import eventually

HAPROXY = "/usr/sbin/haproxy"
LB_V4 = ipaddress.IPv4Interface("198.51.100.30/24")
LB_V6 = ipaddress.IPv6Interface("2001:db8::30/64")
READ_PORT = 5432
WRITE_PORT = 5433
BACKEND_PORT = 5432
# A dead server is out after `fall` failed checks `inter` apart: ~0.4-0.6 s.
CHECK = "check inter 200ms fall 2 rise 2 on-marked-down shutdown-sessions"
_STOP_WAIT_S = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address(ip: IPAddress, port: int) -> str:
    # HAProxy reads the last colon as the port's: an explicit family prefix
    # keeps an IPv6 address unambiguous.
    return f"{ip}:{port}" if ip.version == 4 else f"ipv6@{ip}:{port}"


def server_name(ip: IPAddress) -> str:
    """The backend server's name for a reader VIP: ``r-198-51-100-101``."""
    return "r-" + ip.compressed.replace(".", "-").replace(":", "-")


def preamble(stats_socket: Path) -> list[str]:
    """The global and defaults sections every lab HAProxy shares (the benchmark's
    too, so that load balancers compared side by side differ only in their backends)."""
    return [
        "# Written by the dbvip lab (integration/lab/haproxy.py).",
        "global",
        # Server state changes (notice) go to the log; one line per connection would not.
        "    log stdout format raw local0 notice",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 1024",
        "defaults",
        "    mode tcp",
        "    log global",
        "    timeout connect 1s",
        "    timeout check 200ms",
        "    timeout client 1h",
        "    timeout server 1h",
        # A connection refused by a server not yet marked down goes to another one.
        "    retries 2",
        "    option redispatch",
    ]


def render_config(
    readers: Sequence[IPAddress],
    writer: IPAddress | None,
    listen: Sequence[IPAddress],
    stats_socket: Path,
) -> str:
    """The lab's haproxy.cfg (examples/haproxy/haproxy.cfg is the commented one);
    with no reader VIPs, the readers backend has no server (reads are refused)."""
    lines = [
        *preamble(stats_socket),
        "frontend readers",
        *(f"    bind {address(ip, READ_PORT)}" for ip in listen),
        "    default_backend readers",
        "backend readers",
        "    balance roundrobin",
        f"    default-server {CHECK}",
        *(f"    server {server_name(ip)} {address(ip, BACKEND_PORT)}" for ip in readers),
    ]
    if writer is not None:
        lines += [
            "frontend writer",
            *(f"    bind {address(ip, WRITE_PORT)}" for ip in listen),
            "    default_backend writer",
            "backend writer",
            f"    server writer {address(writer, BACKEND_PORT)} {CHECK}",
        ]
    return "\n".join(lines) + "\n"


class HAProxy:
    """One HAProxy process in namespace ``netns``, files under ``workdir``."""

    def __init__(
        self,
        netns: str,
        workdir: Path,
        readers: Sequence[IPAddress],
        writer: IPAddress | None,
        listen: Sequence[IPAddress],
        *,
        name: str = "haproxy",
        render: Callable[[Path], str] | None = None,
    ) -> None:
        """``name`` names its files (more than one HAProxy may share a host);
        ``render``: its configuration from its stats socket's path, instead of
        ``render_config``'s (the benchmark's Patroni-checked backends)."""
        self.netns = netns
        self.readers = tuple(readers)
        self.listen = tuple(listen)
        self.config_path = workdir / f"{name}.cfg"
        self.socket_path = workdir / f"{name}.sock"
        self.log_path = workdir / "logs" / f"{name}.log"
        self.config = (
            render_config(self.readers, writer, self.listen, self.socket_path)
            if render is None
            else render(self.socket_path)
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def address(self) -> IPAddress:
        """Where clients connect for reads (port ``READ_PORT``)."""
        return self.listen[0]

    def start(self, timeout_s: float = 30.0) -> None:
        if self._proc is not None:
            raise RuntimeError("this HAProxy was already started")
        self.config_path.write_text(self.config)
        checked = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {self.config_path}: {checked.stderr.strip()}")
        with self.log_path.open("ab") as log:
            # `ip netns exec` execs haproxy: the PID is HAProxy's own.
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, HAPROXY, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        eventually(self._answers, timeout_s=timeout_s, interval_s=0.02)

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                f"haproxy exited with {self._proc.returncode}: "
                + self.log_path.read_text(errors="replace")[-2000:]
            )
        try:
            return "pxname" in self.command("show stat")
        except OSError:
            return False

    def command(self, line: str, timeout_s: float = 5.0) -> str:
        """One command on the stats socket (``show stat``, ``show servers state``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self, backend: str = "readers") -> dict[str, str]:
        """Each server of ``backend`` and its check status (``UP``, ``DOWN``, ``UP 1/2``...)."""
        rows = self.command("show stat").splitlines()
        if not rows or not rows[0].startswith("# "):
            raise RuntimeError(f"unexpected answer to show stat: {rows[:2]}")
        header = rows[0][2:].split(",")
        states: dict[str, str] = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") == backend and fields.get("svname") not in (
                "FRONTEND",
                "BACKEND",
            ):
                states[fields["svname"]] = fields.get("status", "")
        return states

    def up_servers(self, backend: str = "readers") -> set[str]:
        return {name for name, state in self.server_states(backend).items() if state == "UP"}

    def stop(self) -> None:
        """SIGTERM this process only (by its PID) and reap it; SIGKILL if it lingers."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_WAIT_S)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def wait_up(self, names: set[str], timeout_s: float = 30.0) -> float:
        """Wait until exactly ``names`` are UP in the readers backend; returns the instant."""
        eventually(lambda: self.up_servers() == names, timeout_s=timeout_s, interval_s=0.02)
        return time.monotonic()
