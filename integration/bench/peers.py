"""The sidecars under test, each started beside every database of a lab.

``Sidecars`` is what the orchestrator talks to: start them, tell them about a
promotion or a clean demotion (only vip-manager listens: the orchestrator
plays Patroni's part and moves its trigger key), list their PIDs for the
footprint, stop them. Every process runs inside its node's namespace, so the
lab's cleanup kills whatever is left.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from dbvip.adapters.arp import call_in_netns
from integration.bench.setups import Setup
from integration.lab.lab import ETCD_ADDRESSES, Lab, node_v4
from integration.lab.postgres import PG_BIN, SUPERUSER

VIP_MANAGER = "/usr/bin/vip-manager"
KEEPALIVED = "/usr/sbin/keepalived"
_STOP_TIMEOUT_S = 10.0


class Sidecars(Protocol):
    def start(self, primary: str) -> None:
        """Start one sidecar per node; ``primary`` is the node that is primary now."""

    def pids(self) -> dict[str, int]:
        """node -> PID of its sidecar's top process."""

    def promoting(self, node: str) -> None:
        """Called right before ``node``'s promotion is signalled."""

    def demoted(self, node: str) -> None:
        """Called right after ``node``'s database stopped for a clean demotion."""

    def stop(self) -> None: ...


def _popen(lab: Lab, node: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # ip netns exec execs the command: the PID is the sidecar's own.
        return subprocess.Popen(
            ["ip", "netns", "exec", lab.netns(node), *argv], stdout=out, stderr=subprocess.STDOUT
        )


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_TIMEOUT_S)


class DbvipSidecars:
    """The lab's own ``dbvip run`` beside each database (settings in the LabSpec)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def start(self, primary: str) -> None:
        for node in self.lab.spec.nodes:
            self.lab.start_sidecar(node)

    def pids(self) -> dict[str, int]:
        return {node: s.proc.pid for node, s in self.lab.sidecars.items()}

    def promoting(self, node: str) -> None:
        pass

    def demoted(self, node: str) -> None:
        pass

    def stop(self) -> None:
        for sidecar in self.lab.sidecars.values():
            sidecar.kill()


class EtcdV2:
    """The few etcd v2 key operations Patroni makes for vip-manager, sent from
    inside the etcd host's namespace on a fresh connection each (~1 ms)."""

    def __init__(self, netns: str, host: str, port: int = 2379, timeout_s: float = 2.0) -> None:
        self.netns = netns
        self.host = host
        self.port = port
        self.timeout_s = timeout_s

    def _request(self, method: str, key: str, query: dict[str, str], body: str = "") -> int:
        sock = call_in_netns(
            self.netns, lambda: socket.create_connection((self.host, self.port), self.timeout_s)
        )
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        conn.sock = sock
        try:
            path = "/v2/keys" + quote(key) + (f"?{urlencode(query)}" if query else "")
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def put(self, key: str, value: str) -> None:
        status = self._request("PUT", key, {}, urlencode({"value": value}))
        if status not in (200, 201):
            raise RuntimeError(f"etcd v2 PUT {key}={value}: HTTP {status}")

    def delete_if(self, key: str, value: str) -> None:
        """Delete ``key`` only if it still holds ``value`` (Patroni deletes its own key)."""
        status = self._request("DELETE", key, {"prevValue": value})
        if status not in (200, 404, 412):  # 404: gone; 412: someone else's by now
            raise RuntimeError(f"etcd v2 DELETE {key}: HTTP {status}")


class VipManagerSidecars:
    """Debian's vip-manager 1.0.2 beside each database; it reads the trigger key
    through etcd's v2 API every ``interval`` ms and holds the VIP while the
    key's value is its node's name."""

    def __init__(self, lab: Lab, setup: Setup) -> None:
        self.lab = lab
        self.setup = setup
        self.key = f"/service/{lab.name}/leader"
        self.etcd = EtcdV2(lab.netns("etcd"), ETCD_ADDRESSES[0])
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def argv(self, node: str) -> list[str]:
        options = dict(self.setup.params)
        return [
            VIP_MANAGER,
            "--ip",
            str(self.lab.vip.ip),
            "--netmask",
            options["netmask"],
            "--interface",
            "eth0",
            "--trigger-key",
            self.key,
            "--trigger-value",
            node,
            "--dcs-type",
            options["dcs-type"],
            "--dcs-endpoints",
            ",".join(self.lab.spec.etcd_endpoints),
            "--interval",
            options["interval"],
        ]

    def start(self, primary: str) -> None:
        self.etcd.put(self.key, primary)  # the key a running Patroni leader holds
        for node in self.lab.spec.nodes:
            log = self.lab.dir / "logs" / f"vip-manager-{node}.log"
            self.procs[node] = _popen(self.lab, node, self.argv(node), log)

    def pids(self) -> dict[str, int]:
        return {node: proc.pid for node, proc in self.procs.items()}

    def promoting(self, node: str) -> None:
        self.etcd.put(self.key, node)

    def demoted(self, node: str) -> None:
        self.etcd.delete_if(self.key, node)

    def stop(self) -> None:
        _stop(self.procs)


class KeepalivedSidecars:
    """Debian's keepalived 2.2.7 beside each database: one VRRP instance per
    node, unicast to the others, equal priority and nopreempt, in FAULT while
    its track script (is the local database primary?) fails."""

    def __init__(self, lab: Lab, setup: Setup) -> None:
        self.lab = lab
        self.setup = setup
        self.dir = lab.dir / "keepalived"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def check_script(self, node: str) -> str:
        sock = self.lab.servers[node].socket_dir
        query = "SELECT pg_is_in_recovery()"
        return (
            "#!/bin/sh\n# passes only when the local database is a primary\n"
            f'[ "$({PG_BIN}/psql -X -At -h {sock} -p 5432 -U {SUPERUSER} -d postgres '
            f"-c '{query}')\" = f ]\n"
        )

    def config(self, node: str, script: Path) -> str:
        p = dict(self.setup.params)
        index = self.lab.spec.nodes.index(node) + 1
        peers = [node_v4(i).ip for i in range(1, len(self.lab.spec.nodes) + 1) if i != index]
        peer_lines = "".join(f"    {ip}\n" for ip in peers)
        return f"""global_defs {{
  router_id {node}
  script_user postgres
  enable_script_security
  vrrp_version {p["vrrp_version"]}
}}
vrrp_script chk_primary {{
  script "{script}"
  interval {p["script interval"]}
  rise {p["script rise"]}
  fall {p["script fall"]}
}}
vrrp_instance writer {{
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority 100
  nopreempt
  advert_int {p["advert_int"]}
  unicast_src_ip {node_v4(index).ip}
  unicast_peer {{
{peer_lines}  }}
  virtual_ipaddress {{
    {self.lab.vip} dev eth0
  }}
  track_script {{
    chk_primary
  }}
}}
"""

    def start(self, primary: str) -> None:
        self.dir.mkdir(mode=0o755, exist_ok=True)
        for node in self.lab.spec.nodes:
            script = self.dir / f"check-{node}.sh"
            script.write_text(self.check_script(node))
            script.chmod(0o755)
            config = self.dir / f"{node}.conf"
            config.write_text(self.config(node, script))
            pid = self.dir / node
            argv = [
                KEEPALIVED,
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
                "-f",
                str(config),
                "-p",
                f"{pid}.pid",
                "-r",
                f"{pid}-vrrp.pid",
                "-c",
                f"{pid}-checkers.pid",
            ]
            self.procs[node] = _popen(self.lab, node, argv, self.dir / f"{node}.log")

    def pids(self) -> dict[str, int]:
        # The parent; its VRRP child (and the scripts that child runs) are
        # found as its descendants.
        return {node: proc.pid for node, proc in self.procs.items()}

    def promoting(self, node: str) -> None:
        pass

    def demoted(self, node: str) -> None:
        pass

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            _stop(self.procs)


def sidecars_for(lab: Lab, setup: Setup) -> Sidecars:
    if setup.system == "dbvip":
        return DbvipSidecars(lab)
    if setup.system == "vip-manager":
        return VipManagerSidecars(lab, setup)
    if setup.system == "keepalived":
        return KeepalivedSidecars(lab, setup)
    raise ValueError(f"unknown system {setup.system!r}")
