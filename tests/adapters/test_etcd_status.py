"""What ``dbvip status`` and the loop's members read get from a real etcd
that holds what dbvip did not write: large junk, a hand-made writer key."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from dbvip.adapters.etcd_client import EtcdClient
from dbvip.adapters.etcd_pages import PAGE_KEYS
from dbvip.adapters.etcd_status import ClusterStatus
from dbvip.adapters.etcd_store import EtcdLeaseStore
from dbvip.keys import KeyLayout
from dbvip.model import KeyHeld
from dbvip.ports import MembersReading
from dbvip.status_view import render
from dbvip.wiring import cluster_dict
from integration.lab.etcd import EtcdCluster

pytestmark = pytest.mark.real

VIP = "198.51.100.10/32"
MEMBERS = 70
VALUE_BYTES = 1_000_000


class WallClock:
    def monotonic_s(self) -> float:
        return time.monotonic()

    def wall_iso(self) -> str:
        return datetime.now(UTC).isoformat(timespec="seconds")


def test_seventy_one_megabyte_member_values_do_not_break_status_or_the_loop(
    etcd_private: EtcdCluster, clients: Callable[..., EtcdClient]
) -> None:
    # 70 MB of values: 93 MB base64 in one range reply, over the client's
    # 64 MB cap; read a page at a time, each stays far under it.
    keys = KeyLayout("big")
    client = clients(etcd_private.endpoints)
    for i in range(MEMBERS):
        junk = json.dumps({"role": "replica", "timeline": 9, "pad": "x" * VALUE_BYTES})
        client.put(keys.member(f"j{i:02d}"), junk if i % 2 else "j" * VALUE_BYTES, 30)
    real = {"role": "replica", "timeline": 2, "vip": [], "reason": "replica"}
    for node in ("n1", "n2", "n3"):
        client.put(keys.member(node), json.dumps(real), 30)
    assert MEMBERS > 4 * PAGE_KEYS  # several pages, and more than one reply cap's worth
    store = EtcdLeaseStore(etcd_private.endpoints, "big", "n1", VIP, WallClock())
    try:
        status = store.read_cluster(60)
        assert isinstance(status, ClusterStatus), status
        names = [f"j{i:02d}" for i in range(MEMBERS)] + ["n1", "n2", "n3"]
        assert [m.node for m in status.members] == names
        rows = cluster_dict("big", status)["members"]
        assert all("not a member report" in m["error"] for m in rows[:MEMBERS])
        assert all("error" not in m for m in rows[MEMBERS:])
        table = render(cluster_dict("big", status))
        assert max(len(line) for line in table.splitlines()) < 400
        reading = store.read_members(60)
        assert isinstance(reading, MembersReading), reading
        # Junk proves nothing (even junk saying timeline 9); n1 is this node.
        assert sorted(p.node for p in reading.peers) == ["n2", "n3"]
    finally:
        store.close()


def test_a_writer_key_put_by_hand_shows_its_fields_and_that_it_has_no_lease(
    etcd_single: EtcdCluster, etcd_cluster_name: str
) -> None:
    keys = KeyLayout(etcd_cluster_name)
    value = {"node": "n1", "vip": VIP, "lease": "1f", "since": "2026-12-04T10:00:00Z"}
    etcd_single.etcdctl("put", keys.writer, json.dumps(value))
    store = EtcdLeaseStore(etcd_single.endpoints, etcd_cluster_name, "n2", VIP, WallClock())
    try:
        status = store.read_cluster(5)
    finally:
        store.close()
        etcd_single.etcdctl("del", keys.writer)
    assert isinstance(status, ClusterStatus) and isinstance(status.writer, KeyHeld)
    writer = cluster_dict(etcd_cluster_name, status)["writer"]
    assert (writer["node"], writer["vip"], writer["since"]) == ("n1", VIP, value["since"])
    assert writer["lease"] is None  # the "1f" in the value is not a lease etcd knows
    assert "no lease" in writer["error"]
    assert "no lease" in render(cluster_dict(etcd_cluster_name, status))
