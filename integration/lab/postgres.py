"""Real PostgreSQL 15 instances on loopback for tests.

Every instance runs as the ``postgres`` OS user (PostgreSQL refuses root) from
a data directory inside a lab's temp dir, with its own port and its own socket
directory, and listens on 127.0.0.1 only. Signals go only to PIDs read from
the instance's own ``postmaster.pid`` and to that postmaster's children.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from integration.lab import procs

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
# Password of SUPERUSER over TCP (scram); the socket is trusted.
SUPERUSER_PASSWORD = "dbvip-test-Pw-4f1c"
_COMMAND_TIMEOUT_S = 60.0


def _as_postgres(
    *argv: str, timeout_s: float = _COMMAND_TIMEOUT_S, netns: str | None = None
) -> str:
    cmd = ["runuser", "-u", SUPERUSER, "--", *argv]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def _chown_postgres(path: Path) -> None:
    shutil.chown(path, user=SUPERUSER, group=SUPERUSER)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def initdb(datadir: Path) -> None:
    """A new cluster: trust on the socket, scram with a password over TCP."""
    pwfile = datadir.parent / f"{datadir.name}.pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    _chown_postgres(pwfile)
    try:
        _as_postgres(
            str(PG_BIN / "initdb"),
            "--no-sync",
            "-D",
            str(datadir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
    finally:
        pwfile.unlink()
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write("fsync = off\nlisten_addresses = '127.0.0.1'\n")


class PgServer:
    """One instance; per-node settings go on the command line because
    pg_basebackup copies postgresql.conf."""

    def __init__(
        self,
        name: str,
        datadir: Path,
        socket_dir: Path,
        port: int,
        netns: str | None = None,
        listen: str = "127.0.0.1",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.datadir = datadir
        self.socket_dir = socket_dir
        self.port = port
        # Inside a lab host's namespace the instance listens on all of that
        # namespace's addresses ('*'), so a VIP added later is served at once.
        self.netns = netns
        self.listen = listen
        self.settings = dict(settings or {})
        self.logfile = datadir.parent / f"{name}.log"
        self.frozen_pids: list[int] = []

    def conninfo(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """Over the instance's own Unix socket (trusted, no password)."""
        return f"host={self.socket_dir} port={self.port} user={user} dbname={dbname}"

    def tcp_conninfo(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """Over TCP on 127.0.0.1 (needs the password)."""
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname} sslmode=disable"

    def _pg_ctl(self, *args: str) -> str:
        return _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), *args,
                            netns=self.netns)  # fmt: skip

    def start(self) -> None:
        options = (
            f"-c port={self.port} -c unix_socket_directories='{self.socket_dir}'"
            f" -c listen_addresses='{self.listen}' -c fsync=off"
        )
        # pg_ctl hands the options to a shell: quote every value.
        options += "".join(f" -c {k}='{v}'" for k, v in self.settings.items())
        # -w waits until the server accepts connections (read-only ones on a standby).
        self._pg_ctl("-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.thaw()
        self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def promote(self) -> None:
        """Signal the promotion and return at once (no wait for its end)."""
        self._pg_ctl("-W", "promote")

    def make_standby(self) -> None:
        """Mark a stopped instance to start as a standby (it streams from
        whatever its ``primary_conninfo`` names)."""
        signal_file = self.datadir / "standby.signal"
        signal_file.touch()
        _chown_postgres(signal_file)

    def set_auto_conf(self, name: str, value: str) -> None:
        """Append ``name = 'value'`` to postgresql.auto.conf (the last line wins);
        for settings a stopped instance needs at its next start."""
        quoted = value.replace("'", "''")
        with (self.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"{name} = '{quoted}'\n")

    def postmaster_pid(self) -> int | None:
        try:
            first_line = (self.datadir / "postmaster.pid").read_text().splitlines()[0]
        except (FileNotFoundError, IndexError):
            return None
        pid = int(first_line)
        # Only a live postmaster started on this very data directory is ours.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return None
        return pid if str(self.datadir).encode() in cmdline else None

    def children(self) -> list[int]:
        """PIDs whose parent is this instance's postmaster (its backends)."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            # The command name may hold spaces and parentheses; ppid follows the last ')'.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                found.append(int(entry.name))
        return found

    def freeze(self) -> None:
        """SIGSTOP the postmaster first (it can no longer fork), then its children."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            raise RuntimeError(f"{self.name} is not running")
        procs.freeze(postmaster)
        self.frozen_pids.append(postmaster)
        for pid in self.children():
            procs.freeze(pid)
            self.frozen_pids.append(pid)

    def thaw(self) -> None:
        for pid in reversed(self.frozen_pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen_pids.clear()

    def kill(self) -> None:
        """Last resort at teardown: SIGKILL the postmaster and its children."""
        pids = [*self.children(), self.postmaster_pid()]
        for pid in pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def sql(self, query: str) -> str:
        """Run one statement with psql over the socket; returns unaligned output."""
        return _as_postgres(
            str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo(),
            "-c", query,
        ).strip()  # fmt: skip


class PgLab:
    """A directory and the instances made in it; ``close`` tears everything down.

    By default every instance listens on 127.0.0.1 with a port of its own; with
    ``netns`` it runs inside that namespace on port 5432 and all its addresses.
    """

    def __init__(self, template: Path | None = None, base: Path | None = None) -> None:
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="dbvip-pg-"))
        else:
            base.mkdir(parents=True)
        self.base = base
        _chown_postgres(self.base)
        self.template = template
        self.servers: list[PgServer] = []

    def _new(self, name: str, netns: str | None, settings: dict[str, str] | None) -> PgServer:
        socket_dir = self.base / f"{name}-sock"
        socket_dir.mkdir()
        _chown_postgres(socket_dir)
        if netns is None:
            server = PgServer(name, self.base / name, socket_dir, free_port(), settings=settings)
        else:
            server = PgServer(name, self.base / name, socket_dir, 5432, netns, "*", settings)
        self.servers.append(server)
        return server

    def primary(
        self,
        name: str = "primary",
        netns: str | None = None,
        settings: dict[str, str] | None = None,
        prepare: Callable[[PgServer], None] = lambda _: None,
    ) -> PgServer:
        """A new primary; ``prepare`` may edit its files before the first start."""
        server = self._new(name, netns, settings)
        if self.template is None:
            initdb(server.datadir)
        else:
            # cp -a keeps the postgres ownership and 0700 mode initdb gave the template.
            subprocess.run(["cp", "-a", str(self.template), str(server.datadir)], check=True)
        prepare(server)
        server.start()
        return server

    def standby(
        self,
        of: PgServer,
        name: str = "standby",
        netns: str | None = None,
        settings: dict[str, str] | None = None,
        prepare: Callable[[PgServer], None] = lambda _: None,
    ) -> PgServer:
        """A streaming standby of ``of`` (which must be running), copied over
        ``of``'s Unix socket (a file: reachable from any namespace)."""
        server = self._new(name, netns, settings)
        _as_postgres(
            str(PG_BIN / "pg_basebackup"), "-D", str(server.datadir), "-R", "-X", "stream",
            "-c", "fast", "--no-sync", "-h", str(of.socket_dir), "-p", str(of.port),
            "-U", SUPERUSER,
        )  # fmt: skip
        prepare(server)
        server.start()
        return server

    def close(self) -> None:
        try:
            for server in reversed(self.servers):
                if server.postmaster_pid() is None:
                    continue
                try:
                    server.stop("immediate")
                except (RuntimeError, subprocess.TimeoutExpired):
                    server.kill()
                    deadline = time.monotonic() + 10
                    while server.postmaster_pid() is not None and time.monotonic() < deadline:
                        time.sleep(0.05)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def make_template() -> tuple[Path, Path]:
    """initdb once into a temp dir; returns (template datadir, dir to remove)."""
    base = Path(tempfile.mkdtemp(prefix="dbvip-pgtpl-"))
    _chown_postgres(base)
    datadir = base / "template"
    try:
        initdb(datadir)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return datadir, base
