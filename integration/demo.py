"""The README's demo: watch the writer VIP follow the primary.

Builds a throwaway lab: a switch namespace with a bridge, an etcd host, two
database hosts (n1, n2) each with a dbvip sidecar, and a client host. The
PostgreSQL primary and its streaming standby run on this machine and the
sidecars reach them over their Unix sockets. Then: n1 takes the VIP; a
switchover (n1's database stopped, n2's promoted) moves it to n2, and the
client's neighbour entry follows by gratuitous ARP; n2's sidecar gets
SIGTERM and releases it. Everything is removed at the end, also on Ctrl-C.

Run as root after scripts/setup.sh: ``.venv/bin/python -m integration.demo``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.model import VipPresence
from integration.lab.etcd import EtcdCluster
from integration.lab.netns import NetLab, Node
from integration.lab.postgres import PgLab
from integration.lab.sidecar import SidecarProcess, dbvip

VIP = ipaddress.ip_interface("198.51.100.100/32")
ETCD_HOST = ipaddress.ip_interface("198.51.100.2/24")
HOSTS = {
    "n1": ipaddress.IPv4Interface("198.51.100.11/24"),
    "n2": ipaddress.IPv4Interface("198.51.100.12/24"),
    "client": ipaddress.IPv4Interface("198.51.100.21/24"),
}
START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:7.3f} s] {text}", flush=True)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30) -> float:
    """Poll every 5 ms; return the instant the check first held."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for: {what}")
        time.sleep(0.005)
    return time.monotonic()


def mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else "none"


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C through the finally
    # blocks, in this process only (pyroute2 forks helpers that inherit handlers).
    main_pid = os.getpid()

    def interrupt(*_: object) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="dbvip-demo-"))
    print(f"logs of the sidecars: {workdir}")
    return run(workdir)


def run(workdir: Path) -> int:
    pg = PgLab()
    sidecars: dict[str, SidecarProcess] = {}
    drivers: list[NetlinkVipDriver] = []
    try:
        with NetLab() as net:
            say(f"lab {net.prefix}: namespaces on a private bridge, addresses in 198.51.100.0/24")
            etcd_node = net.add_node("etcd", v4=ETCD_HOST)
            nodes = {name: net.add_node(name, v4=address) for name, address in HOSTS.items()}
            client = nodes.pop("client")
            with EtcdCluster(size=1, netns=etcd_node.netns, host=str(ETCD_HOST.ip)) as etcd:
                say(f"etcd serving at {etcd.endpoints[0]}")
                primary = pg.primary("pg-n1")
                standby = pg.standby(primary, "pg-n2")
                say("PostgreSQL primary (n1) and streaming standby (n2) running")
                servers = {"n1": primary, "n2": standby}
                envs = {name: sidecar_env(name, etcd.endpoints[0], servers[name].conninfo())
                        for name in nodes}  # fmt: skip
                vips = {name: NetlinkVipDriver(n.ifname, VIP, netns=n.netns)
                        for name, n in nodes.items()}  # fmt: skip
                drivers.extend(vips.values())

                def has_vip(name: str) -> bool:
                    return vips[name].observe().presence is VipPresence.PRESENT

                for name, node in nodes.items():
                    sidecars[name] = SidecarProcess(node, envs[name], workdir / f"{name}.log")
                say("dbvip started beside each database")
                t = wait_for("VIP on n1", lambda: has_vip("n1"))
                say(f"VIP {VIP} is on n1 ({time.monotonic() - t:.3f} s ago)")
                show_client_view(net, client, nodes)
                show_status(nodes["n1"], envs["n1"])

                say("switchover: stopping n1's database, promoting n2's")
                primary.stop("fast")
                t_removed = wait_for("VIP off n1", lambda: not has_vip("n1"))
                say("  n1's sidecar removed the VIP and released the writer key")
                t_promote = time.monotonic()
                standby.promote()
                wait_for("n2 promoted", lambda: standby.sql("SELECT pg_is_in_recovery()") == "f")
                t_promoted = time.monotonic()
                t_added = wait_for("VIP on n2", lambda: has_vip("n2"))
                say(f"  pg_ctl promote at +{t_promote - t_removed:.3f} s after removal; "
                    f"n2 primary at +{t_promoted - t_promote:.3f} s; "
                    f"VIP on n2 at +{t_added - t_promote:.3f} s")  # fmt: skip
                assert not has_vip("n1"), "two holders"
                show_client_view(net, client, nodes)
                show_status(nodes["n2"], envs["n2"])

                say("SIGTERM to n2's sidecar: it removes the VIP and releases the key")
                sidecars["n2"].signal(signal.SIGTERM)
                code = sidecars["n2"].wait(10)
                say(f"  exit code {code}; VIP on n2: {has_vip('n2')}")
                show_status(nodes["n2"], envs["n2"])
                say("done; tearing the lab down")
        return 0
    except BaseException:
        for name, sidecar in sidecars.items():
            print(f"--- {name} sidecar log (tail) ---\n{sidecar.log()[-3000:]}", file=sys.stderr)
        raise
    finally:
        for sidecar in sidecars.values():
            sidecar.kill()
        for driver in drivers:
            driver.close()
        pg.close()


def sidecar_env(node: str, endpoint: str, dsn: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DBVIP_CLUSTER": "demo",
        "DBVIP_NODE": node,
        "DBVIP_VIP": str(VIP.ip),
        "DBVIP_INTERFACE": "eth0",
        "DBVIP_ETCD_ENDPOINTS": endpoint,
        "DBVIP_PG_DSN": dsn,
    }


def show_client_view(net: NetLab, client: Node, nodes: dict[str, Node]) -> None:
    # One TCP connection attempt to the VIP resolves its neighbour entry (the
    # answer, a reset or a welcome, does not matter here).
    probe = (f"import socket; s = socket.socket(); s.settimeout(1)\n"
             f"try: s.connect(({str(VIP.ip)!r}, 5432))\nexcept OSError: pass")  # fmt: skip
    subprocess.run(["ip", "netns", "exec", client.netns, sys.executable, "-c", probe],
                   capture_output=True, check=False, timeout=10)  # fmt: skip
    seen = net.neighbour_mac(client, VIP.ip)
    owner = next((n for n, node in nodes.items() if node.mac == seen), "nobody")
    say(f"  the client's neighbour entry for {VIP.ip}: {mac(seen)} ({owner})")


def show_status(node: Node, env: dict[str, str]) -> None:
    done = dbvip(node, env, "status", "--json")
    if done.returncode != 0:
        say(f"  dbvip status failed: {done.stderr.strip()}")
        return
    view = json.loads(done.stdout)
    writer = view["writer"].get("node", "none")
    members = ", ".join(f"{m['node']}={m.get('role')}" for m in view["members"])
    say(f"  dbvip status: writer={writer}; members: {members}")


if __name__ == "__main__":
    sys.exit(main())
