"""The lab: a PostgreSQL cluster with etcd, a client and a dbvip sidecar beside
every database, each host a network namespace on one machine.

Hosts: ``n1``..``nN`` (PostgreSQL 15: a primary and streaming replicas made
with ``pg_basebackup -R``, each with its sidecar), ``etcd`` (one member, or
three on three addresses), ``client``, and ``lb`` (HAProxy in front of the
reader VIPs, when the sidecars are given a pool; integration/lab/haproxy.py);
the bridge sits in a namespace of its own (``sw``). Every replica streams from
the writer VIP, so after a failover the others follow the new primary by
themselves, as many real setups do.

``Lab.create(spec)`` builds it and owns every process; ``Lab.attach(name)``
reopens a lab that ``dbvip-lab up`` left running (database, VIP and etcd
operations; process faults need the owner). ``close()`` (or
``cleanup.down(name)`` from anywhere) removes all of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.adapters.postgres import PostgresRoleProbe
from dbvip.model import Role, VipPresence
from integration.lab import cleanup, procs
from integration.lab.etcd import ETCDCTL, EtcdCluster
from integration.lab.eventually import eventually
from integration.lab.haproxy import LB_V4, LB_V6, READ_PORT, HAProxy
from integration.lab.monitor import Host, InvariantMonitor
from integration.lab.names import check_name, lab_dir, netns_name, netns_prefix
from integration.lab.netns import LAB_V4, LAB_V6, NetLab, Node
from integration.lab.patroni import PatroniCluster, PatroniMember
from integration.lab.postgres import SUPERUSER, SUPERUSER_PASSWORD, PgLab, PgServer
from integration.lab.reader import ClientReader, Read, read_through
from integration.lab.readers import (
    IPAddress,
    KernelView,
    ReaderKey,
    parse_reader_keys,
    parse_reader_vips,
    readers_prefix,
)
from integration.lab.sidecar import SidecarProcess, dbvip, unprivileged
from integration.lab.writer import Attempt, ClientWriter, write_once

ETCD_ADDRESSES = ("198.51.100.2", "198.51.100.3", "198.51.100.4")
CLIENT_V4 = ipaddress.IPv4Interface("198.51.100.21/24")
CLIENT_V6 = ipaddress.IPv6Interface("2001:db8::21/64")
DEFAULT_VIP = "198.51.100.100/32"
FAILSAFE_PORT = 8009  # each node's failsafe peer endpoint, on its own address
SIDECAR_USER = "dbvip"
HBA_REFUSE = f"local all {SIDECAR_USER} reject  # dbvip-lab: refuse the sidecar\n"
SIDECAR_GRANTS = (f"CREATE ROLE {SIDECAR_USER} LOGIN", f"GRANT pg_monitor TO {SIDECAR_USER}")
WRITES_TABLE = """CREATE TABLE dbvip_lab_writes (
  id bigserial PRIMARY KEY, writer text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""
# Fast enough that lab faults resolve in seconds, and accepted by dbvip's
# timing check; scenarios that test the defaults pass no timing at all.
FAST_TIMING = {
    "DBVIP_TTL_S": "5",
    "DBVIP_MARGIN_S": "1",
    "DBVIP_RENEW_INTERVAL_S": "1",
    "DBVIP_REQUEST_TIMEOUT_S": "0.5",
    "DBVIP_PROBE_TIMEOUT_S": "0.3",
    "DBVIP_VIP_OP_TIMEOUT_S": "0.25",
}


def node_v4(i: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"198.51.100.{10 + i}/24")


def node_v6(i: int) -> ipaddress.IPv6Interface:
    return ipaddress.IPv6Interface(f"2001:db8::{10 + i}/64")


@dataclass(frozen=True)
class LabSpec:
    name: str
    db_nodes: int = 3
    etcd_members: int = 1
    vip: str = DEFAULT_VIP
    sidecar_settings: tuple[tuple[str, str], ...] = ()  # DBVIP_* overrides
    sidecars: bool = True
    pg_template: str | None = None  # a data dir made by initdb, copied instead of initdb
    patroni: bool = False  # Patroni (integration/lab/patroni.py) runs the databases
    etcd_args: tuple[str, ...] = ()  # extra etcd flags, e.g. --enable-v2=true for a peer
    haproxy: bool = False  # HAProxy on host lb even without reader VIPs (no reader backend)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not 1 <= self.db_nodes <= 9:
            raise ValueError(f"db_nodes must be 1..9, not {self.db_nodes}")
        if self.etcd_members not in (1, 3):
            raise ValueError(f"etcd_members must be 1 or 3, not {self.etcd_members}")
        parse_reader_vips(dict(self.sidecar_settings))  # a typo fails here, not in a sidecar

    @property
    def nodes(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.db_nodes + 1)]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"http://{a}:2379" for a in ETCD_ADDRESSES[: self.etcd_members]]


class Lab:
    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.dir = lab_dir(spec.name)
        self.vip = ipaddress.ip_interface(spec.vip)
        self.net: NetLab | None = None
        self.etcd: EtcdCluster | None = None
        self.servers: dict[str, PgServer] = {}
        self.sidecars: dict[str, SidecarProcess] = {}
        self.writer: ClientWriter | None = None
        self.clients: list[ClientWriter] = []  # more clients beside the writer (start_client)
        self.patroni: PatroniCluster | None = None
        self.haproxy: HAProxy | None = None  # start_haproxy; started by _up for a reader pool
        self.readers: list[ClientReader] = []  # start_reader
        self.reader_vips = parse_reader_vips(dict(spec.sidecar_settings))
        self._kernel = KernelView(self.netns)
        self._drivers: dict[str, NetlinkVipDriver] = {}
        self._probes: dict[str, PostgresRoleProbe] = {}
        self._owned = False
        self._extra_settings: dict[str, str] = {}

    # -- life cycle -----------------------------------------------------------

    @classmethod
    def create(cls, spec: LabSpec) -> Lab:
        lab = cls(spec)
        if cleanup.find(spec.name).namespaces or lab.dir.exists():
            raise RuntimeError(f"lab {spec.name} exists: run `dbvip-lab down --name {spec.name}`")
        lab._owned = True
        try:
            lab._up()
        except BaseException:
            lab.close()
            raise
        return lab

    @classmethod
    def attach(cls, name: str) -> Lab:
        state = lab_dir(name) / "lab.json"
        try:
            spec = LabSpec(**json.loads(state.read_text())["spec"])
        except FileNotFoundError:
            raise RuntimeError(f"no lab named {name} (no {state})") from None
        # JSON made the pairs lists: back to tuples, so the spec stays hashable.
        settings = tuple((str(k), str(v)) for k, v in spec.sidecar_settings)
        spec = dataclasses.replace(
            spec, sidecar_settings=settings, etcd_args=tuple(map(str, spec.etcd_args))
        )
        lab = cls(spec)
        lab.servers = {n: lab._server(n) for n in spec.nodes}
        return lab

    def _up(self) -> None:
        self.dir.mkdir(mode=0o755)
        (self.dir / "logs").mkdir()
        self.net = NetLab(ranges=(LAB_V4, LAB_V6), prefix=netns_prefix(self.name))
        self.net.start()  # refuses to start if the ranges are in use in the root namespace
        etcd_host = self.net.add_node("etcd", v4=ipaddress.IPv4Interface(f"{ETCD_ADDRESSES[0]}/24"))
        for address in ETCD_ADDRESSES[1 : self.spec.etcd_members]:
            self.net.ipr(etcd_host.netns).addr(
                "add", index=etcd_host.index, address=address, prefixlen=24
            )
        for i, node in enumerate(self.spec.nodes, start=1):
            self.net.add_node(node, v4=node_v4(i), v6=node_v6(i))
        self.net.add_node("client", v4=CLIENT_V4, v6=CLIENT_V6)
        if self.reader_vips or self.spec.haproxy:
            self.net.add_node("lb", v4=LB_V4, v6=LB_V6)
        self.etcd = EtcdCluster(
            size=self.spec.etcd_members,
            workdir=self.dir / "etcd",
            netns=etcd_host.netns,
            member_hosts=ETCD_ADDRESSES[: self.spec.etcd_members],
            extra_args=self.spec.etcd_args,
        )
        self.password_file.write_text(SUPERUSER_PASSWORD + "\n")
        self.password_file.chmod(0o600)
        if self.spec.patroni:
            self._start_patroni()
        else:
            self._start_postgres()
        self._save()
        if self.spec.sidecars:
            for node in self.spec.nodes:
                self.start_sidecar(node)
        if self.reader_vips or self.spec.haproxy:
            self.start_haproxy()

    def _start_postgres(self) -> None:
        template = Path(self.spec.pg_template) if self.spec.pg_template else None
        pg = PgLab(template=template, base=self.dir / "pg")  # stopped by cleanup.down
        first, *others = self.spec.nodes
        primary = pg.primary(
            first, self.netns(first), self._pg_settings(first), self._prepare_first
        )
        self.servers[first] = primary
        primary.sql(WRITES_TABLE)
        # The sidecar's own login: the role probe needs no more than pg_monitor.
        primary.sql("; ".join(SIDECAR_GRANTS))
        for node in others:
            self.servers[node] = pg.standby(
                primary, node, self.netns(node), self._pg_settings(node), self._prepare
            )

    def _start_patroni(self) -> None:
        """Patroni runs the databases: n1 is bootstrapped, the others cloned from it."""
        self.servers = {n: self._server(n) for n in self.spec.nodes}
        members = {n: PatroniMember(self.servers[n], str(node_v4(i).ip))
                   for i, n in enumerate(self.spec.nodes, start=1)}  # fmt: skip
        self.patroni = PatroniCluster(
            self.name, self.dir / "patroni", self.dir / "logs", members,
            [u.removeprefix("http://") for u in self.spec.etcd_endpoints],
            [str(LAB_V4), str(LAB_V6)], [WRITES_TABLE, *SIDECAR_GRANTS], self.etcdctl,
            # dbvip's failsafe goes with Patroni's (see the README's Failsafe section).
            failsafe_mode=dict(self.spec.sidecar_settings).get("DBVIP_FAILSAFE") == "on",
        )  # fmt: skip
        self.patroni.bootstrap()

    def close(self) -> None:
        """Stop and remove everything this lab created (idempotent)."""
        try:
            clients: list[ClientWriter | ClientReader] = [*self.clients, *self.readers]
            for client in [*clients, *([self.writer] if self.writer else [])]:
                if client.returncode is None:
                    with contextlib.suppress(Exception):
                        client.stop()
            if self.haproxy is not None:
                with contextlib.suppress(Exception):
                    self.haproxy.stop()
            self._kernel.close()
            for sidecar in self.sidecars.values():
                sidecar.kill()
            if self.patroni is not None:
                self.patroni.close()
            for driver in self._drivers.values():
                with contextlib.suppress(Exception):
                    driver.close()
            for probe in self._probes.values():
                probe.close()
            if self.etcd is not None:
                self.etcd.close()
            if self.net is not None:
                with contextlib.suppress(Exception):
                    self.net.close()
        finally:
            # Whatever the steps above missed (a half-built lab, a crash of an
            # earlier run with this name) is found by name and removed.
            cleanup.down(self.name)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- naming and files -------------------------------------------------------

    def netns(self, host: str) -> str:
        return netns_name(self.name, host)

    @property
    def password_file(self) -> Path:
        return self.dir / "pgpass"

    def _server(self, node: str) -> PgServer:
        base = self.dir / "pg"
        return PgServer(node, base / node, base / f"{node}-sock", 5432, self.netns(node), "*",
                        self._pg_settings(node))  # fmt: skip

    def _pg_settings(self, node: str) -> dict[str, str]:
        return {
            "cluster_name": node,  # the client writer reports who acknowledged
            # A replica whose primary (the VIP) moved retries quickly, and gives
            # up on a primary that vanished without a FIN.
            "wal_retrieve_retry_interval": "200ms",
            "wal_receiver_timeout": "5s",
            "tcp_user_timeout": "3000",
            # A standby made by pg_basebackup starts streaming after the next
            # base backup's checkpoint may have recycled the segment it needs
            # (seen in the benchmark, which rebuilds replicas back to back).
            "wal_keep_size": "256MB",
        }

    def _prepare_first(self, server: PgServer) -> None:
        with (server.datadir / "pg_hba.conf").open("a") as hba:
            for net in (LAB_V4, LAB_V6):
                hba.write(f"host all all {net} scram-sha-256\n")
                hba.write(f"host replication all {net} scram-sha-256\n")
        self._prepare(server)

    def _prepare(self, server: PgServer) -> None:
        conninfo = (
            f"host={self.vip.ip} port=5432 user={SUPERUSER} password={SUPERUSER_PASSWORD} "
            f"application_name={server.name} connect_timeout=2 keepalives_idle=2 "
            "keepalives_interval=1 keepalives_count=3"
        )
        server.set_auto_conf("primary_conninfo", conninfo)

    def _save(self) -> None:
        state = {"spec": dataclasses.asdict(self.spec), "created": time.time()}
        (self.dir / "lab.json").write_text(json.dumps(state, indent=2) + "\n")

    # -- sidecars -------------------------------------------------------------

    def sidecar_env(self, node: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DBVIP_CLUSTER": self.name,
            "DBVIP_NODE": node,
            "DBVIP_VIP": str(self.vip),
            "DBVIP_INTERFACE": "eth0",
            "DBVIP_ETCD_ENDPOINTS": ",".join(self.spec.etcd_endpoints),
            "DBVIP_PG_DSN": self.servers[node].conninfo(user=SIDECAR_USER),
        }
        env.update(dict(self.spec.sidecar_settings))
        env.update(self._extra_settings)
        if env.get("DBVIP_FAILSAFE") == "on":
            # Failsafe needs a peer endpoint and the shared secret: the lab
            # gives each node its own address and one secret for all.
            i = self.spec.nodes.index(node) + 1
            env.setdefault("DBVIP_FAILSAFE_LISTEN", f"{node_v4(i).ip}:{FAILSAFE_PORT}")
            env.setdefault("DBVIP_FAILSAFE_SECRET_FILE", str(self._failsafe_secret()))
        return env

    def _failsafe_secret(self) -> Path:
        path = self.dir / "failsafe.secret"
        if not path.exists():
            path.write_text(os.urandom(16).hex() + "\n")
            path.chmod(0o644)  # a sidecar may run as an unprivileged user
        return path

    def settings_for_sidecars(self, **settings: str) -> None:
        """More DBVIP_* settings for sidecars started from now on."""
        self._extra_settings.update(settings)

    def _node(self, host: str) -> Node:
        if self.net is None:
            raise RuntimeError("process faults need the lab's owner (Lab.create)")
        return self.net.nodes[host]

    def start_sidecar(
        self,
        node: str,
        user: str | None = None,
        capabilities: tuple[str, ...] = (),
        name: str | None = None,
    ) -> SidecarProcess:
        """``dbvip run`` beside ``node``'s database, as root, or as ``user``
        with exactly ``capabilities`` (e.g. ("net_admin", "net_raw")); ``name``:
        the node name it is configured with, if not ``node`` (a copied file)."""
        old = self.sidecars.get(node)
        if old is not None and old.proc.poll() is None:
            raise RuntimeError(f"the sidecar of {node} runs already")
        log = self.dir / "logs" / f"{node}.log"
        self._node(node)  # only the owner starts processes
        wrapper = unprivileged(user, capabilities) if user is not None else []
        env = self.sidecar_env(node)
        if name is not None:
            env["DBVIP_NODE"] = name
        self.sidecars[node] = SidecarProcess(self.netns(node), env, log, wrapper)
        return self.sidecars[node]

    def kill_sidecar(self, node: str, signum: int = signal.SIGKILL, wait: bool = True) -> None:
        sidecar = self.sidecars[node]
        sidecar.signal(signum)
        if wait:
            sidecar.wait(30)

    def freeze_sidecar(self, node: str) -> None:
        procs.freeze(self.sidecars[node].proc.pid)

    def thaw_sidecar(self, node: str) -> None:
        self.sidecars[node].signal(signal.SIGCONT)

    def sidecar_log(self, node: str) -> str:
        path = self.dir / "logs" / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dbvip(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """A one-shot ``dbvip`` command in ``node``'s namespace, with its settings."""
        return dbvip(self.netns(node), self.sidecar_env(node), *args)

    def status(self, node: str) -> dict[str, object]:
        """``dbvip status --json`` run in ``node``'s namespace."""
        done = self.dbvip(node, "status", "--json")
        if done.returncode != 0:
            raise RuntimeError(f"dbvip status on {node} failed: {done.stderr.strip()}")
        view: dict[str, object] = json.loads(done.stdout)
        return view

    # -- databases --------------------------------------------------------------

    def role(self, node: str, timeout_s: float = 1.0) -> Role:
        probe = self._probes.setdefault(node, PostgresRoleProbe(self.servers[node].conninfo()))
        return probe.probe(timeout_s).role

    def primaries(self) -> list[str]:
        return [n for n in self.spec.nodes if self.role(n) is Role.PRIMARY]

    def promote(self, node: str) -> float:
        """Signal ``node``'s promotion; returns the monotonic instant it was sent."""
        sent = time.monotonic()
        self.servers[node].promote()
        return sent

    def wait_primary(self, node: str, timeout_s: float = 30) -> float:
        eventually(lambda: self.role(node) is Role.PRIMARY, timeout_s=timeout_s, interval_s=0.005)
        return time.monotonic()

    def demote(self, node: str) -> None:
        """Stop ``node``'s database cleanly and start it again as a replica
        (streaming from the VIP, i.e. from whichever node is promoted next)."""
        server = self.servers[node]
        server.stop("fast")
        server.make_standby()
        server.start()

    def crash_db(self, node: str) -> float:
        """Stop ``node``'s database at once (``-m immediate``, no shutdown checkpoint)."""
        at = time.monotonic()
        self.servers[node].stop("immediate")
        return at

    def start_db(self, node: str) -> None:
        self.servers[node].start()

    def refuse_sidecar_connections(self, node: str) -> None:
        """``node``'s database rejects the sidecar's logins (pg_hba) and ends
        its session; everyone else still gets in."""
        server = self.servers[node]
        hba = server.datadir / "pg_hba.conf"
        hba.write_text(HBA_REFUSE + hba.read_text())
        server.sql("SELECT pg_reload_conf()")
        server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE usename = '{SIDECAR_USER}'")  # fmt: skip

    def accept_sidecar_connections(self, node: str) -> None:
        server = self.servers[node]
        hba = server.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text().replace(HBA_REFUSE, ""))
        server.sql("SELECT pg_reload_conf()")

    def freeze_db(self, node: str) -> None:
        self.servers[node].freeze()

    def thaw_db(self, node: str) -> None:
        self.servers[node].thaw()

    # -- network faults -------------------------------------------------------

    def cut_from_etcd(self, node: str) -> None:
        """Drop traffic between ``node`` and every etcd member; clients still reach it."""
        members = ", ".join(ETCD_ADDRESSES[: self.spec.etcd_members])
        rules = (
            "table inet dbvip_lab_cut {\n"
            "  chain out {\n    type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {{ {members} }} drop\n  }}\n"
            "  chain in {\n    type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {{ {members} }} drop\n  }}\n"
            "}\n"
        )
        self._nft(node, ["-f", "-"], rules)

    def isolate(self, node: str) -> None:
        """Pull ``node``'s cable at the switch: cut off from everything."""
        self._net().set_port(self._node(node), up=False)

    def heal(self, node: str) -> None:
        """Undo ``cut_from_etcd`` and ``isolate`` for ``node``."""
        self._net().set_port(self._node(node), up=True)
        listed = self._nft(node, ["list", "tables"])
        if "dbvip_lab_cut" in listed:
            self._nft(node, ["delete", "table", "inet", "dbvip_lab_cut"])

    def _net(self) -> NetLab:
        if self.net is None:
            raise RuntimeError("network faults need the lab's owner (Lab.create)")
        return self.net

    def _nft(self, host: str, args: list[str], stdin: str = "") -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns(host), "nft", *args],
            input=stdin, capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} in {host}: {done.stderr.strip()}")
        return done.stdout

    # -- etcd -------------------------------------------------------------------

    def _etcd(self) -> EtcdCluster:
        if self.etcd is None:
            raise RuntimeError("etcd faults need the lab's owner (Lab.create)")
        return self.etcd

    def stop_etcd(self, member: int | None = None) -> None:
        cluster = self._etcd()
        for i in range(len(cluster.members)) if member is None else [member]:
            cluster.stop(i)

    def start_etcd(self, member: int | None = None) -> None:
        cluster = self._etcd()
        for i in range(len(cluster.members)) if member is None else [member]:
            cluster._spawn(cluster.members[i])
        cluster.wait_healthy()

    def freeze_etcd(self) -> None:
        for i in range(len(self._etcd().members)):
            self._etcd().freeze(i)

    def thaw_etcd(self) -> None:
        for i in range(len(self._etcd().members)):
            self._etcd().thaw(i)

    def etcd_members_used_by(self, host: str) -> list[int]:
        """Indexes of the etcd members ``host`` has connections to, busiest first."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns(host), "ss", "-Htn", "state", "established"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        peers = [line.split()[-1] for line in done.stdout.splitlines() if line.strip()]
        counts = {i: 0 for i in range(self.spec.etcd_members)}
        for peer in peers:
            address, _, port = peer.rpartition(":")
            if port == "2379" and address in ETCD_ADDRESSES[: self.spec.etcd_members]:
                counts[ETCD_ADDRESSES.index(address)] += 1
        return [i for i in sorted(counts, key=lambda i: -counts[i]) if counts[i]]

    def etcdctl(self, *args: str, check: bool = True) -> str:
        cmd = ["ip", "netns", "exec", self.netns("etcd"), ETCDCTL,
               f"--endpoints={','.join(self.spec.etcd_endpoints)}", "--dial-timeout=2s",
               "--command-timeout=3s", *args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env,
                              check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    @property
    def writer_key(self) -> str:
        return f"/dbvip/{self.name}/writer"

    def writer_value(self) -> dict[str, object] | None:
        out = self.etcdctl("get", self.writer_key, "--print-value-only").strip()
        if not out:
            return None
        try:
            value: dict[str, object] = json.loads(out)
        except ValueError:
            return {"garbage": out}
        return value

    # -- the VIP ----------------------------------------------------------------

    def _driver(self, node: str) -> NetlinkVipDriver:
        if node not in self._drivers:
            self._drivers[node] = NetlinkVipDriver("eth0", self.vip, netns=self.netns(node))
        return self._drivers[node]

    def has_vip(self, node: str) -> bool | None:
        """True/False from the kernel; None if it could not be read."""
        presence = self._driver(node).observe().presence
        return None if presence is VipPresence.UNKNOWN else presence is VipPresence.PRESENT

    def holders(self) -> set[str]:
        return {n for n in self.spec.nodes if self.has_vip(n)}

    def wait_holder(self, node: str | None, timeout_s: float = 30) -> float:
        """Wait until exactly ``node`` holds the VIP (None: nobody); returns the instant."""
        want = set() if node is None else {node}
        eventually(lambda: self.holders() == want, timeout_s=timeout_s, interval_s=0.005)
        return time.monotonic()

    def mac(self, host: str) -> bytes:
        return self._node(host).mac

    def client_neighbour_mac(self) -> bytes | None:
        """The MAC the client host's neighbour table has for the VIP."""
        return self._net().neighbour_mac(self._node("client"), self.vip.ip)

    def delete_vip(self, node: str) -> None:
        """Remove the VIP from ``node``'s interface behind its sidecar's back."""
        self._driver(node).remove()

    def set_link(self, node: str, up: bool) -> None:
        """``ip link set eth0 down/up`` inside ``node`` (not at the switch)."""
        subprocess.run(
            ["ip", "-n", self.netns(node), "link", "set", "eth0", "up" if up else "down"],
            check=True, timeout=30,
        )  # fmt: skip

    # -- reader VIPs and HAProxy (integration/lab/readers.py, haproxy.py) ---------

    def start_haproxy(self) -> HAProxy:
        """HAProxy on host ``lb``, the reader VIPs its backends (and the writer VIP's frontend)."""
        if self.haproxy is not None:
            raise RuntimeError("HAProxy runs already")
        lb = self._node("lb")  # only the owner starts processes
        listen = [a.ip for a in (lb.v4, lb.v6) if a is not None]
        self.haproxy = HAProxy(self.netns("lb"), self.dir, [v.ip for v in self.reader_vips],
                               self.vip.ip, listen)  # fmt: skip
        self.haproxy.start()
        return self.haproxy

    def reader_holders(self) -> dict[IPAddress, set[str]]:
        """For each reader VIP, the nodes that have it in the kernel (netlink)."""
        return self._kernel.holders(self.spec.nodes, self.reader_vips)

    def reader_counts(self) -> dict[str, int]:
        """How many reader VIPs each database node has in the kernel."""
        held = self.reader_holders()
        return {n: sum(n in nodes for nodes in held.values()) for n in self.spec.nodes}

    def reader_keys(self) -> dict[IPAddress, ReaderKey]:
        """The reader keys in etcd (``<readers prefix><address>``), by VIP address."""
        out = self.etcdctl("get", "--prefix", readers_prefix(self.name), "-w", "json")
        return parse_reader_keys(self.name, out)

    def _read_target(self, port: int) -> list[str]:
        return ["--host", str(LB_V4.ip), "--port", str(port), "--user", SUPERUSER,
                "--dbname", "postgres", "--password-file", str(self.password_file)]  # fmt: skip

    def start_reader(
        self, mode: str = "per-read", interval_s: float = 0.02, port: int = READ_PORT
    ) -> ClientReader:
        """A client on the client host reading through HAProxy: ``per-read`` (a new
        connection per read) or ``long-lived`` (one connection, reconnecting on error);
        ``port``: another frontend on host ``lb`` (the benchmark's)."""
        reader = ClientReader(self.netns("client"), self._read_target(port),
                              self.dir / "logs" / f"reader-{mode}-{time.monotonic_ns()}.jsonl",
                              mode, interval_s=interval_s)  # fmt: skip
        self.readers.append(reader)
        reader.start()
        return reader

    def client_reads(self, count: int = 1, mode: str = "per-read") -> list[Read]:
        """``count`` reads through HAProxy from the client host, one after the other."""
        return read_through(self.netns("client"), self._read_target(READ_PORT), count, mode)

    # -- client and monitor -------------------------------------------------

    def client_write(self, timeout_s: float = 1.0) -> Attempt:
        """One write through the VIP from the client host, on a new connection."""
        return write_once(self.netns("client"), str(self.vip.ip), 5432, SUPERUSER, "postgres",
                          self.password_file, timeout_s=timeout_s)  # fmt: skip

    def written_by(self, node: str, timeout_s: float = 30.0) -> Attempt:
        """Wait for a client write through the VIP acknowledged by ``node``."""

        def attempt() -> Attempt | None:
            result = self.client_write()
            return result if result.ok and result.node == node else None

        found: Attempt = eventually(attempt, timeout_s=timeout_s, interval_s=0.05)
        return found

    def start_writer(self, interval_s: float = 0.02, timeout_s: float = 0.25) -> ClientWriter:
        """A client writing through the VIP on a new connection every ``interval_s``."""
        if self.writer is not None:
            self.writer.stop()
        self.writer = ClientWriter(
            self.netns("client"), str(self.vip.ip), 5432, SUPERUSER, "postgres",
            self.password_file, self.dir / "logs" / f"writer-{time.monotonic_ns()}.jsonl",
            interval_s=interval_s, timeout_s=timeout_s,
        )  # fmt: skip
        self.writer.start()
        return self.writer

    def start_client(self, mode: str, interval_s: float = 0.02) -> ClientWriter:
        """Another client writing through the VIP, beside any other: ``ordinary``
        (one connection attempt at a time, retried at once on error), ``pooled``
        (a connection pool) or ``overlapping`` (see ``start_writer``)."""
        client = ClientWriter(
            self.netns("client"), str(self.vip.ip), 5432, SUPERUSER, "postgres",
            self.password_file, self.dir / "logs" / f"{mode}-{time.monotonic_ns()}.jsonl",
            interval_s=interval_s, mode=mode, duration_s=4 * 3600.0,
        )  # fmt: skip
        self.clients.append(client)
        client.start()
        return client

    def monitor(
        self,
        stable_after_s: float | None = None,
        period_s: float = 0.003,
        role_period_s: float = 0.01,
    ) -> InvariantMonitor:
        """The invariant monitor over every database host (not started):
        addresses sampled every ``period_s``, roles polled every ``role_period_s``."""
        if stable_after_s is None:
            settings = dict(self.spec.sidecar_settings)
            stable_after_s = float(settings.get("DBVIP_PROBE_INTERVAL_S", "0.2")) + 1.0
        sources = {n: self._role_source(n) for n in self.spec.nodes}
        hosts = [Host(n, self.netns(n)) for n in self.spec.nodes]
        return InvariantMonitor(hosts, self.vip, sources, stable_after_s=stable_after_s,
                                readers=[v.ip for v in self.reader_vips], period_s=period_s,
                                role_period_s=role_period_s)  # fmt: skip

    def _role_source(self, node: str) -> RoleSource:
        return RoleSource(self.servers[node].conninfo())

    @contextlib.contextmanager
    def watched(self) -> Iterator[InvariantMonitor]:
        """Run the monitor around a block and assert S1 (one writer) at its end."""
        monitor = self.monitor()
        monitor.start()
        try:
            yield monitor
            # The block may end the instant it saw a change itself; let the
            # monitor's samples catch up, so its events include that change.
            with contextlib.suppress(AssertionError):
                eventually(lambda: monitor.holders() == frozenset(self.holders()), timeout_s=2)
        finally:
            report = monitor.stop()
        report.assert_one_writer()
        report.assert_one_holder_per_reader_vip()


class RoleSource:
    """A monitor's view of one database's role: a probe of its own, so the
    monitor's polls never share a connection with the lab's.

    Picklable: the monitor calls it in a process of its own, so only the
    conninfo travels and the probe (a connection) is made there on first call.
    """

    def __init__(self, conninfo: str) -> None:
        PostgresRoleProbe(conninfo)  # a bad conninfo fails here, not in the monitor
        self.conninfo = conninfo
        self._probe: PostgresRoleProbe | None = None

    def __getstate__(self) -> dict[str, str]:
        return {"conninfo": self.conninfo}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.conninfo = state["conninfo"]
        self._probe = None

    def __call__(self) -> Role:
        if self._probe is None:
            self._probe = PostgresRoleProbe(self.conninfo)
        return self._probe.probe(0.2).role
