"""Patroni (from PyPI, in ``.venv-patroni``) managing the lab's databases.

One Patroni process per database host, inside the host's namespace, as the
``postgres`` OS user, talking to the lab's etcd through its v3 JSON gateway
(``etcd3:``). The first to win etcd's initialize key runs initdb and the
``setup_sql`` (post_bootstrap); the others are cloned by pg_basebackup. Data
directories, sockets and settings are the ones the lab's ``PgServer`` objects
describe, so the lab's probes, the sidecars' DSN and ``cleanup.down`` work as
with the lab's own PostgreSQL setup. Only PIDs started here are signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.lab.eventually import eventually
from integration.lab.postgres import PG_BIN, SUPERUSER, SUPERUSER_PASSWORD, PgServer

REPO_ROOT = Path(__file__).resolve().parents[2]
PATRONI_VENV = REPO_ROOT / ".venv-patroni"  # made by scripts/setup.sh
PATRONI = PATRONI_VENV / "bin" / "patroni"
PATRONICTL = PATRONI_VENV / "bin" / "patronictl"
NAMESPACE = "/service/"  # Patroni's default: its keys are /service/<scope>/...
REPLICATOR = "replicator"
REPLICATOR_PASSWORD = "dbvip-test-Repl-9d2e"
# Patroni refuses a ttl below 20 s; loop_wait + 2 * retry_timeout must fit in it.
TIMING = {"ttl": 20, "loop_wait": 1, "retry_timeout": 5}
MAX_LAG_ON_FAILOVER_BYTES = 1 << 30  # a replica a little behind may still be promoted
_STOP_WAIT_S = 10.0

# Patroni puts cluster_name=<scope> on every postmaster's command line; the
# lab's client tells who acknowledged a write by cluster_name, so this wrapper
# names each instance after its node and runs the real postgres.
_POSTGRES_WRAPPER = """#!/bin/sh
for arg; do
  shift
  case "$arg" in --cluster_name=*) arg="--cluster_name={node}" ;; esac
  set -- "$@" "$arg"
done
exec {postgres} "$@"
"""


@dataclass(frozen=True)
class PatroniMember:
    """A database host as Patroni knows it: its namespace and its own address."""

    server: PgServer
    address: str


class PatroniCluster:
    """Writes each member's configuration under ``workdir``, starts and stops
    the Patroni processes; ``etcdctl`` answers who Patroni made the leader."""

    def __init__(
        self,
        scope: str,
        workdir: Path,
        logdir: Path,
        members: Mapping[str, PatroniMember],
        etcd_hosts: Sequence[str],
        pg_hba_networks: Sequence[str],
        setup_sql: Sequence[str],
        etcdctl: Callable[..., str],
        failsafe_mode: bool = False,
    ) -> None:
        if not os.access(PATRONI, os.X_OK):
            raise RuntimeError(f"no Patroni at {PATRONI}: run scripts/setup.sh")
        self.scope = scope
        self.workdir = workdir
        self.logdir = logdir
        self.members = dict(members)
        self.etcd_hosts = list(etcd_hosts)
        self.pg_hba_networks = list(pg_hba_networks)
        self._etcdctl = etcdctl
        self.failsafe_mode = failsafe_mode
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        workdir.mkdir(mode=0o755)
        shutil.chown(workdir, user=SUPERUSER, group=SUPERUSER)  # Patroni writes its pgpass here
        setup = workdir / "post_bootstrap.sql"
        setup.write_text("".join(f"{statement};\n" for statement in setup_sql))
        setup.chmod(0o644)
        self._setup_sql = setup

    # -- configuration ----------------------------------------------------------

    def config_path(self, node: str) -> Path:
        return self.workdir / f"{node}.yml"

    def log_path(self, node: str) -> Path:
        return self.logdir / f"patroni-{node}.log"

    def _write_config(self, node: str) -> Path:
        member = self.members[node]
        server = member.server
        wrapper = self.workdir / f"postgres-{node}"
        wrapper.write_text(_POSTGRES_WRAPPER.format(node=node, postgres=PG_BIN / "postgres"))
        wrapper.chmod(0o755)
        for directory in (server.datadir.parent, server.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            shutil.chown(directory, user=SUPERUSER, group=SUPERUSER)
        hba = ["local all all trust"]
        for net in self.pg_hba_networks:
            hba += [f"host all all {net} scram-sha-256",
                    f"host replication {REPLICATOR} {net} scram-sha-256"]  # fmt: skip
        api = f"{member.address}:8008"
        config = {
            "scope": self.scope,
            "namespace": NAMESPACE,
            "name": node,
            "log": {"level": "INFO"},
            "restapi": {"listen": api, "connect_address": api},
            "etcd3": {"hosts": self.etcd_hosts, "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    **TIMING,
                    "maximum_lag_on_failover": MAX_LAG_ON_FAILOVER_BYTES,
                    "failsafe_mode": self.failsafe_mode,
                    "postgresql": {"use_pg_rewind": False, "use_slots": True},
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "no-sync"],
                "post_bootstrap": f"{PG_BIN / 'psql'} -X -q -v ON_ERROR_STOP=1 "
                f"-f {self._setup_sql} -d",
            },
            "postgresql": {
                "listen": "*:5432",  # a VIP added later is served at once
                "connect_address": f"{member.address}:5432",
                "data_dir": str(server.datadir),
                "bin_dir": str(PG_BIN),
                "bin_name": {"postgres": str(wrapper)},
                "pgpass": str(self.workdir / f"{node}.pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {"username": REPLICATOR, "password": REPLICATOR_PASSWORD},
                },
                "parameters": {
                    "unix_socket_directories": str(server.socket_dir),
                    "fsync": "off",
                    **server.settings,
                },
                "pg_hba": hba,
                "basebackup": [{"checkpoint": "fast"}, "no-sync"],
            },
        }
        path = self.config_path(node)
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        path.chmod(0o644)
        return path

    # -- processes ---------------------------------------------------------------

    def start(self, node: str) -> None:
        old = self.procs.get(node)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"Patroni on {node} runs already")
        config = self._write_config(node)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir), "LANG": "C.UTF-8"}
        # ip netns exec and setpriv exec: the PID is Patroni's own.
        cmd = ["ip", "netns", "exec", self.members[node].server.netns or "",
               "setpriv", f"--reuid={SUPERUSER}", f"--regid={SUPERUSER}", "--init-groups",
               str(PATRONI), str(config)]  # fmt: skip
        with self.log_path(node).open("ab") as log:
            self.procs[node] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.workdir,
            )  # fmt: skip

    def bootstrap(self, timeout_s: float = 60) -> None:
        """Start the first member alone, so it is the one that runs initdb and
        becomes the leader; once it holds the leader key the others start (they
        wait for its bootstrap, then clone it); return once every replica streams."""
        first, *others = self.members
        self.start(first)
        eventually(lambda: self._alive(first) and self.leader() == first,
                   timeout_s=timeout_s, interval_s=0.05)  # fmt: skip
        for node in others:
            self.start(node)
        eventually(lambda: all(self._alive(n) and self.running(n) for n in self.members),
                   timeout_s=timeout_s, interval_s=0.1)  # fmt: skip

    def _alive(self, node: str) -> bool:
        if self.procs[node].poll() is not None:
            raise RuntimeError(f"Patroni on {node} exited: {self.log(node)[-2000:]}")
        return True

    def kill(self, node: str) -> None:
        """SIGKILL ``node``'s Patroni (its PostgreSQL keeps running) and reap it."""
        proc = self.procs[node]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(_STOP_WAIT_S)

    def close(self) -> None:
        """SIGKILL every Patroni, so none starts PostgreSQL again while the lab
        stops the instances (``cleanup.down``, by their data directories)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(_STOP_WAIT_S)

    def log(self, node: str) -> str:
        path = self.log_path(node)
        return path.read_text(errors="replace") if path.exists() else ""

    # -- what Patroni says -------------------------------------------------------

    def leader(self) -> str | None:
        """The member holding Patroni's leader key in etcd (None: no leader)."""
        key = f"{NAMESPACE}{self.scope}/leader"
        return self._etcdctl("get", key, "--print-value-only").strip() or None

    def states(self) -> dict[str, dict[str, object]]:
        """Each member's key in etcd as Patroni wrote it (role, state, timeline...)."""
        out = self._etcdctl("get", "--prefix", f"{NAMESPACE}{self.scope}/members/")
        lines = out.splitlines()
        found: dict[str, dict[str, object]] = {}
        for key, value in zip(lines[::2], lines[1::2], strict=False):
            with contextlib.suppress(ValueError):
                found[key.rsplit("/", 1)[1]] = json.loads(value)
        return found

    def running(self, node: str) -> bool:
        """Patroni reports ``node``'s PostgreSQL running (a replica: streaming)."""
        state = self.states().get(node, {})
        if state.get("state") != "running":
            return False
        return state.get("role") == "primary" or state.get("replication_state") == "streaming"
