"""The real ``dbvip run`` process inside a throwaway network namespace, with a
real etcd (in that namespace), a real PostgreSQL and the real kernel."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.model import VipPresence
from integration.lab.etcd import EtcdCluster
from integration.lab.eventually import eventually
from integration.lab.netns import NetLab, Node
from integration.lab.postgres import PgServer
from integration.lab.sidecar import SidecarProcess, dbvip

pytestmark = pytest.mark.real

VIP = ipaddress.ip_interface("198.51.100.100/32")
NODE_ADDRESS = ipaddress.IPv4Interface("198.51.100.11/24")
# Fast but valid timings keep the suite short; the rules are the same.
FAST = {
    "DBVIP_TTL_S": "6",
    "DBVIP_MARGIN_S": "1.5",
    "DBVIP_RENEW_INTERVAL_S": "1",
    "DBVIP_REQUEST_TIMEOUT_S": "0.5",
    "DBVIP_PROBE_INTERVAL_S": "0.1",
    "DBVIP_PROBE_TIMEOUT_S": "0.3",
    "DBVIP_VIP_OP_TIMEOUT_S": "0.2",
    "DBVIP_ROLE_GRACE_S": "0.5",
}


class Cluster:
    def __init__(self, netlab: NetLab, node: Node, etcd: EtcdCluster, pg: PgServer,
                 tmp_path: Path) -> None:  # fmt: skip
        self.netlab, self.node, self.etcd, self.pg = netlab, node, etcd, pg
        self.tmp_path = tmp_path
        self.vip = NetlinkVipDriver(node.ifname, VIP, netns=node.netns)
        self.sidecars: list[SidecarProcess] = []
        self.env = {
            "PATH": os.environ["PATH"],
            "DBVIP_CLUSTER": "e2e",
            "DBVIP_NODE": "n1",
            "DBVIP_VIP": str(VIP.ip),
            "DBVIP_INTERFACE": node.ifname,
            "DBVIP_ETCD_ENDPOINTS": etcd.endpoints[0],
            "DBVIP_PG_DSN": pg.conninfo(),
            "DBVIP_LOG_LEVEL": "debug",
            **FAST,
        }

    def start(self) -> SidecarProcess:
        sidecar = SidecarProcess(
            self.node.netns, self.env, self.tmp_path / f"dbvip-{len(self.sidecars)}.log"
        )
        self.sidecars.append(sidecar)
        return sidecar

    def vip_present(self) -> bool:
        return self.vip.observe().presence is VipPresence.PRESENT

    def writer(self) -> dict[str, str] | None:
        out = self.etcd.etcdctl("get", "/dbvip/e2e/writer", "--print-value-only").strip()
        return json.loads(out) if out else None

    def status(self) -> dict[str, object]:
        done = dbvip(self.node.netns, self.env, "status", "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout)
        return result

    def close(self) -> None:
        for sidecar in self.sidecars:
            sidecar.kill()
        self.vip.close()


@pytest.fixture(name="cluster")
def cluster_fixture(netlab: NetLab, pg_primary: PgServer, tmp_path: Path) -> Iterator[Cluster]:
    """n1 with its own etcd, beside a PostgreSQL primary (test_hooks_process uses it too)."""
    node = netlab.add_node("n1", v4=NODE_ADDRESS)
    with EtcdCluster(size=1, netns=node.netns) as etcd:
        c = Cluster(netlab, node, etcd, pg_primary, tmp_path)
        try:
            yield c
        finally:
            c.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_holds_the_vip_then_releases_everything_on_signal(cluster: Cluster, signum: int) -> None:
    sidecar = cluster.start()
    eventually(cluster.vip_present, timeout_s=15)
    writer = eventually(cluster.writer)
    assert writer["node"] == "n1"
    assert writer["vip"] == str(VIP)
    lease_id = int(writer["lease"], 16)
    # The kernel holds the VIP with a finite lifetime that ends before the lease can.
    info = cluster.netlab.address_info(cluster.node, VIP)
    cache = info.get_attr("IFA_CACHEINFO")
    assert 0 < cache["ifa_valid"] < int(FAST["DBVIP_TTL_S"])
    status = eventually(lambda: (s := cluster.status())["members"] and s)
    assert status["writer"]["node"] == "n1"  # type: ignore[index]
    assert status["members"][0]["role"] == "primary"  # type: ignore[index]

    sidecar.signal(signum)
    assert sidecar.wait(10) == 0, sidecar.log()
    assert not cluster.vip_present()
    assert cluster.writer() is None
    assert lease_id not in cluster.etcd.lease_ids()
    assert "reason=stopping" in sidecar.log()


def test_demotion_drops_the_vip_and_frees_the_key_at_once(cluster: Cluster) -> None:
    sidecar = cluster.start()
    eventually(cluster.vip_present, timeout_s=15)
    cluster.pg.stop("fast")
    eventually(lambda: not cluster.vip_present(), timeout_s=10)
    eventually(lambda: cluster.writer() is None, timeout_s=5)
    assert sidecar.proc.poll() is None, "a lost database must not stop the sidecar"
    assert "reason=database_down" in sidecar.log()
    cluster.pg.start()
    eventually(cluster.vip_present, timeout_s=15)


def test_sigkill_leaves_a_vip_that_the_kernel_expires_before_the_lease(cluster: Cluster) -> None:
    sidecar = cluster.start()
    eventually(cluster.vip_present, timeout_s=15)
    lease_id = int(eventually(cluster.writer)["lease"], 16)
    sidecar.signal(signal.SIGKILL)
    sidecar.wait()
    assert cluster.vip_present(), "SIGKILL cannot remove anything; the kernel must"
    eventually(lambda: not cluster.vip_present(), timeout_s=int(FAST["DBVIP_TTL_S"]) + 2)
    # At the instant the kernel dropped the VIP, the lease still lived in etcd.
    assert lease_id in cluster.etcd.lease_ids()


def test_restart_adopts_the_lease_without_a_blink(cluster: Cluster) -> None:
    first = cluster.start()
    eventually(cluster.vip_present, timeout_s=15)
    lease_before = eventually(cluster.writer)["lease"]
    gaps: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not cluster.vip_present():
                gaps.append(time.monotonic())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        first.signal(signal.SIGKILL)
        first.wait()
        second = cluster.start()
        eventually(lambda: "reason=adopting" in second.log(), timeout_s=15)
        eventually(lambda: "reason=holding" in second.log().split("reason=adopting")[-1])
        time.sleep(1.0)  # keep sampling across a couple of renewals
    finally:
        stop.set()
        watcher.join()
    assert gaps == [], f"VIP blinked at {len(gaps)} samples"
    writer = cluster.writer()
    assert writer is not None
    assert writer["node"] == "n1"
    # Adopted onto a fresh lease; the old one, which a release from before the
    # restart might still be aimed at, is revoked and carries nothing.
    assert writer["lease"] != lease_before
    assert int(lease_before, 16) not in cluster.etcd.lease_ids()


def test_bad_setting_fails_at_start_naming_it(cluster: Cluster) -> None:
    env = {**cluster.env, "DBVIP_PROBE_INTERVAL_S": "-1"}
    done = dbvip(cluster.node.netns, env, "run")
    assert done.returncode == 2
    assert "probe_interval_s = '-1' from environment DBVIP_PROBE_INTERVAL_S" in done.stderr
    assert not cluster.vip_present()
