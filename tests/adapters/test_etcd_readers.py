"""The etcd ReaderStore and the pool watcher against real etcd 3.4 on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from dbvip.adapters.etcd_client import EtcdClient
from dbvip.adapters.etcd_readers import EtcdPoolWatcher, EtcdReaderStore
from dbvip.adapters.etcd_status import ClusterStatus
from dbvip.adapters.etcd_store import EtcdLeaseStore
from dbvip.adapters.etcd_watch import WatchEvent
from dbvip.identity import Identity
from dbvip.keys import Garbage, KeyLayout, WriterValue
from dbvip.model import KeyHeld, Role
from dbvip.ports import (
    Alive,
    Done,
    Gone,
    Granted,
    MemberReport,
    MembersReading,
    Refused,
    Taken,
    Unknown,
)
from dbvip.reader_model import PoolMember, PoolReading, ReaderKey
from integration.lab.etcd import EtcdCluster, free_port
from integration.lab.eventually import eventually

pytestmark = pytest.mark.real

T = TypeVar("T")
TIMEOUT_S = 1.0
SLACK = 3  # "returned in time" means within SLACK x the timeout: speed is not asserted
WRITER_VIP = "198.51.100.10/24"
R1, R2 = "198.51.100.21", "198.51.100.22"


class WallClock:
    def monotonic_s(self) -> float:
        return time.monotonic()

    def wall_iso(self) -> str:
        return datetime.now(UTC).isoformat(timespec="seconds")


def within(timeout_s: float, call: Callable[[], T]) -> T:
    started = time.monotonic()
    try:
        return call()
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < SLACK * timeout_s, f"took {elapsed:.2f} s for a {timeout_s} s timeout"


class Node:
    """One node's two stores, sharing one client as the sidecar's do."""

    def __init__(self, endpoints: list[str], cluster: str, name: str) -> None:
        self.identity = Identity.fresh(name, f"host-{name}", "eth0")
        self.leases = EtcdLeaseStore(
            endpoints, cluster, name, WRITER_VIP, WallClock(), identity=self.identity
        )
        self.readers = EtcdReaderStore(
            self.leases.client, self.leases.keys, self.identity, WallClock()
        )

    def lease(self, ttl_s: int = 10) -> int:
        granted = self.readers.grant_reader_lease(ttl_s, TIMEOUT_S)
        assert isinstance(granted, Granted) and granted.revision > 0
        return granted.lease_id

    def pool(self) -> PoolReading:
        reading = self.readers.read_pool(TIMEOUT_S)
        assert isinstance(reading, PoolReading), reading
        return reading

    def key(self, vip: str) -> ReaderKey | None:
        return next((k for k in self.pool().keys if k.vip == vip), None)


NodeFactory = Callable[..., Node]


@pytest.fixture
def nodes(etcd_cluster_name: str) -> Iterator[NodeFactory]:
    made: list[Node] = []

    def make(cluster: EtcdCluster | list[str], name: str) -> Node:
        endpoints = cluster if isinstance(cluster, list) else cluster.endpoints
        made.append(Node(endpoints, etcd_cluster_name, name))
        return made[-1]

    yield make
    for node in made:
        node.leases.close()


def etcd_json(cluster: EtcdCluster, key: str) -> dict[str, Any] | None:
    raw = cluster.etcdctl("get", "--print-value-only", key).strip()
    return json.loads(raw) if raw else None


def test_take_refuse_give_back_and_take_again(etcd_single: EtcdCluster, nodes: NodeFactory) -> None:
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    keys = n1.leases.keys
    assert n1.pool().keys == ()
    lease1, lease2 = n1.lease(), n2.lease()

    taken = n1.readers.take_reader(R1, lease1, 0, TIMEOUT_S)
    assert isinstance(taken, Taken)
    # Readable with plain etcdctl: the key and its claim name the holder.
    for key in (keys.reader(R1), keys.reader_claim(R1)):
        value = etcd_json(etcd_single, key)
        assert value is not None
        assert (value["node"], value["vip"], value["lease"]) == ("n1", R1, f"{lease1:x}")
        assert value["instance"] == n1.identity.instance
    seen = n2.key(R1)
    assert seen == ReaderKey(R1, "n1", n1.identity, lease1, taken.revision)

    assert n2.readers.take_reader(R1, lease2, 0, TIMEOUT_S) == Refused("n1", taken.revision)
    # A stale revision is refused too, even by the holder's own store with another lease.
    assert isinstance(n2.readers.take_reader(R1, lease2, taken.revision, TIMEOUT_S), Refused)

    # n2's give-back of a VIP it does not hold deletes nothing.
    assert n2.readers.give_back_reader(R1, lease2, TIMEOUT_S) == Done()
    assert n2.key(R1) == seen
    assert n1.readers.give_back_reader(R1, lease1, TIMEOUT_S) == Done()
    assert n2.key(R1) is None
    assert etcd_json(etcd_single, keys.reader_claim(R1)) is None

    again = n2.readers.take_reader(R1, lease2, 0, TIMEOUT_S)
    assert isinstance(again, Taken) and again.revision > taken.revision
    assert n1.key(R1) == ReaderKey(R1, "n2", n2.identity, lease2, again.revision)


def test_taking_a_key_already_held_under_the_same_lease_is_taken(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    # A retried take whose first try went through: the key is ours already.
    n1 = nodes(etcd_single, "n1")
    lease = n1.lease()
    first = n1.readers.take_reader(R1, lease, 0, TIMEOUT_S)
    assert isinstance(first, Taken)
    assert n1.readers.take_reader(R1, lease, 0, TIMEOUT_S) == Taken(first.revision)


def test_a_reader_key_deleted_by_hand_is_still_claimed_until_the_lease_ends(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    lease1, lease2 = n1.lease(), n2.lease()
    assert isinstance(n1.readers.take_reader(R1, lease1, 0, TIMEOUT_S), Taken)
    etcd_single.etcdctl("del", n1.leases.keys.reader(R1))

    claimed = n2.key(R1)
    assert claimed is not None and claimed.claim_only
    assert (claimed.holder, claimed.lease_id) == ("n1", lease1)
    refused = n2.readers.take_reader(R1, lease2, 0, TIMEOUT_S)
    assert isinstance(refused, Refused) and refused.holder == "n1"
    # Once the holder's lease is gone, so is the claim, and the VIP is free.
    assert n1.readers.revoke(lease1, TIMEOUT_S) == Done()
    assert n2.key(R1) is None
    assert isinstance(n2.readers.take_reader(R1, lease2, 0, TIMEOUT_S), Taken)


def test_garbage_is_reported_with_no_holder_and_only_a_bare_key_may_be_replaced(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    keys = n1.leases.keys
    etcd_single.etcdctl("put", keys.reader(R1), "junk")  # by hand, no lease
    junk = n1.key(R1)
    assert junk is not None and (junk.holder, junk.identity, junk.lease_id) == (None, None, 0)
    lease1 = n1.lease()
    # Unchanged since it was read: replaced. Read as absent: refused, no holder named.
    refused = n1.readers.take_reader(R1, lease1, 0, TIMEOUT_S)
    assert isinstance(refused, Refused) and refused.holder is None
    taken = n1.readers.take_reader(R1, lease1, junk.mod_revision, TIMEOUT_S)
    assert isinstance(taken, Taken)
    assert n1.key(R1) == ReaderKey(R1, "n1", n1.identity, lease1, taken.revision)

    # A claim put by hand without a lease backs no VIP: not shown, no obstacle.
    etcd_single.etcdctl("put", keys.reader_claim(R2), '{"node":"ghost"}')
    assert n2.key(R2) is None
    assert isinstance(n2.readers.take_reader(R2, n2.lease(), 0, TIMEOUT_S), Taken)

    # Keys that name no address as dbvip spells it guard nothing: left out.
    etcd_single.etcdctl("put", keys.readers_prefix + "not-an-address", "x")
    etcd_single.etcdctl("put", keys.readers_prefix + "2001:db8:0::7", "x")
    assert sorted(k.vip for k in n2.pool().keys) == [R1, R2]


def test_lease_expiry_deletes_the_key_and_its_claim(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1 = nodes(etcd_single, "n1")
    lease = n1.lease(ttl_s=2)
    assert isinstance(n1.readers.take_reader(R1, lease, 0, TIMEOUT_S), Taken)
    assert isinstance(n1.readers.keepalive(lease, TIMEOUT_S), Alive)
    eventually(lambda: n1.pool().keys == (), timeout_s=15)
    assert etcd_json(etcd_single, n1.leases.keys.reader_claim(R1)) is None
    assert n1.readers.keepalive(lease, TIMEOUT_S) == Gone()
    # Taking under a lease that is gone is not a refusal: nothing was decided.
    assert isinstance(n1.readers.take_reader(R1, lease, 0, TIMEOUT_S), Unknown)


def test_read_pool_gives_the_other_members_and_the_writer_holder(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1, n2, n3 = (nodes(etcd_single, n) for n in ("n1", "n2", "n3"))
    assert n1.pool().writer_holder is None
    reports = {
        n1: MemberReport("replica", 2, "0/3000000", (), "replica", "in_pool", 0),
        n2: MemberReport("replica", 2, "0/2000000", (), "replica", "lagging", 1 << 24),
        n3: MemberReport("primary", 2, "0/3000060", (WRITER_VIP,), "holding"),
    }
    for node, report in reports.items():
        assert node.leases.publish_member(report, TIMEOUT_S) == Done()
    granted = n3.leases.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    etcd_single.etcdctl("put", n1.leases.keys.member("junk"), "not a report")

    reading = n1.pool()
    assert reading.members == (
        PoolMember("n2", Role.REPLICA, False, "0/2000000"),
        PoolMember("n3", Role.PRIMARY, False, "0/3000060"),
    )
    assert reading.writer_holder == "n3"
    assert PoolMember("n1", Role.REPLICA, True, "0/3000000") in n2.pool().members
    # The writer key deleted by hand: its claim still names the holder.
    etcd_single.etcdctl("del", n1.leases.keys.writer)
    assert n1.pool().writer_holder == "n3"


def test_the_members_read_finds_the_writer_key_and_the_pool_as_their_own_reads_do(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    """One request serves the periodic looks at the members, the writer key
    and the pool: it must see each as its own read does."""
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    for node, role in ((n1, "primary"), (n2, "replica")):
        report = MemberReport(role, 2, "0/3000000", (), role, "in_pool", 0)
        assert node.leases.publish_member(report, TIMEOUT_S) == Done()
    assert isinstance(n1.leases.acquire(10, TIMEOUT_S), Granted)
    lease = n2.lease()
    for vip in (R1, "198.51.100.22", "198.51.100.23", "198.51.100.24"):  # 12 keys in all
        assert isinstance(n2.readers.take_reader(vip, lease, 0, TIMEOUT_S), Taken)
    for reader in (n1, n2):
        both = reader.leases.read_members(TIMEOUT_S)
        assert isinstance(both, MembersReading), both
        assert both.writer == reader.leases.read_writer(TIMEOUT_S)
        assert both.pool == reader.pool()
    assert isinstance(both, MembersReading)  # as checked in the loop (for mypy)
    assert isinstance(both.writer, KeyHeld) and both.writer.holder == "n1"
    assert both.pool is not None and len(both.pool.keys) == 4


def test_keeping_the_member_lease_alive_writes_nothing(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1 = nodes(etcd_single, "n1")
    assert n1.leases.keep_member(TIMEOUT_S) == Gone()  # nothing published yet
    report = MemberReport("replica", 2, "0/3000000", (), "replica")
    assert n1.leases.publish_member(report, TIMEOUT_S) == Done()
    key = n1.leases.keys.member("n1")
    before = n1.leases.client.range(key, TIMEOUT_S)
    assert isinstance(n1.leases.keep_member(TIMEOUT_S), Alive)
    after = n1.leases.client.range(key, TIMEOUT_S)
    assert after.kvs == before.kvs and after.revision == before.revision  # no write
    lease_id = before.kvs[0].lease_id
    n1.leases.client.revoke(lease_id, TIMEOUT_S)  # by hand: the report goes with it
    assert n1.leases.keep_member(TIMEOUT_S) == Gone()
    assert n1.leases.publish_member(report, TIMEOUT_S) == Done()  # under a new lease
    assert n1.leases.client.range(key, TIMEOUT_S).kvs[0].lease_id != lease_id


def test_every_call_is_unknown_in_time_when_etcd_hangs(
    etcd_private: EtcdCluster, nodes: NodeFactory
) -> None:
    n1 = nodes([etcd_private.endpoints[0], f"http://127.0.0.1:{free_port()}"], "n1")
    lease = n1.lease()
    etcd_private.freeze(0)
    try:
        for call in (
            lambda: n1.readers.read_pool(TIMEOUT_S),
            lambda: n1.readers.grant_reader_lease(10, TIMEOUT_S),
            lambda: n1.readers.keepalive(lease, TIMEOUT_S),
            lambda: n1.readers.take_reader(R1, lease, 0, TIMEOUT_S),
            lambda: n1.readers.give_back_reader(R1, lease, TIMEOUT_S),
            lambda: n1.readers.revoke(lease, TIMEOUT_S),
        ):
            result = within(TIMEOUT_S, call)
            assert isinstance(result, Unknown) and result.cause
    finally:
        etcd_private.thaw(0)


def test_the_reader_stores_answers_count_in_the_nodes_history(
    etcd_private: EtcdCluster, nodes: NodeFactory
) -> None:
    # One client per node: a reset seen by a pool read is the loop's to hear.
    n1 = nodes(etcd_private, "n1")
    lease = n1.lease()
    for _ in range(5):
        assert isinstance(n1.readers.take_reader(R1, lease, 0, TIMEOUT_S), Taken)
        assert n1.readers.give_back_reader(R1, lease, TIMEOUT_S) == Done()
    assert n1.leases.history_reset() is None
    etcd_private.wipe()
    eventually(lambda: isinstance(n1.readers.read_pool(TIMEOUT_S), PoolReading))
    reset = n1.leases.history_reset()
    assert reset is not None and "revision" in reset


class RecordingWatcher(EtcdPoolWatcher):
    """The pool watcher, noting what it was asked about and what it said."""

    def __init__(self, client: EtcdClient, keys: KeyLayout) -> None:
        super().__init__(client, keys)
        self.judged: list[tuple[WatchEvent, bool]] = []
        self.lock = threading.Lock()

    def matters(self, event: WatchEvent) -> bool:
        verdict = super().matters(event)
        with self.lock:
            self.judged.append((event, verdict))
        return verdict


def test_the_pool_watcher_wakes_for_the_pool_but_not_for_an_lsn_refresh(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    keys = n1.leases.keys
    watcher = RecordingWatcher(n1.leases.client, keys)
    assert isinstance(n1.readers.pool_watcher(), EtcdPoolWatcher)
    wakes: list[float] = []

    def wake() -> None:
        with watcher.lock:
            wakes.append(time.monotonic())

    def judged(key: str) -> list[tuple[WatchEvent, bool]]:
        with watcher.lock:
            return [(e, v) for e, v in watcher.judged if e.key == key.encode()]

    def count() -> int:
        with watcher.lock:
            return len(wakes)

    watcher.start(wake)
    try:
        eventually(lambda: count() >= 1)  # connected: re-read now
        pooled = MemberReport("replica", 2, "0/3000000", (), "replica", "in_pool", 0)
        assert n2.leases.publish_member(pooled, TIMEOUT_S) == Done()
        eventually(lambda: len(judged(keys.member("n2"))) == 1)
        eventually(lambda: count() >= 2)
        before = count()

        refreshed = MemberReport("replica", 2, "0/3000100", (), "replica", "in_pool", 256)
        assert n2.leases.publish_member(refreshed, TIMEOUT_S) == Done()
        lease = n1.lease()
        assert isinstance(n1.readers.take_reader(R1, lease, 0, TIMEOUT_S), Taken)
        # Key and claim change in one transaction: one batch, judged until one matters.
        eventually(lambda: len(judged(keys.reader(R1))) == 1)
        eventually(lambda: count() > before)

        (created, yes), (refresh, no) = judged(keys.member("n2"))
        assert yes and created.prev is None and created.value is not None
        assert not no and refresh.prev is not None and b"0/3000000" in refresh.prev
        # The refresh woke nobody: the one wake since is the reader key's.
        assert count() == before + 1

        assert n1.readers.give_back_reader(R1, lease, TIMEOUT_S) == Done()
        eventually(lambda: any(e.value is None for e, _ in judged(keys.reader(R1))))
        assert all(v for e, v in judged(keys.reader(R1)))
        eventually(lambda: count() > before + 1)
    finally:
        watcher.stop()


def test_status_reads_every_reader_key_with_its_lease_ttl(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    keys = n1.leases.keys
    lease1, lease2 = n1.lease(ttl_s=30), n2.lease(ttl_s=30)
    assert isinstance(n1.readers.take_reader(R1, lease1, 0, TIMEOUT_S), Taken)
    assert isinstance(n2.readers.take_reader(R2, lease2, 0, TIMEOUT_S), Taken)
    etcd_single.etcdctl("del", keys.reader(R2))  # its claim lives on
    etcd_single.etcdctl("put", keys.reader("198.51.100.23"), "junk")

    status = n1.leases.read_cluster(TIMEOUT_S * 3)
    assert isinstance(status, ClusterStatus), status
    by_vip = {r.vip: r for r in status.readers}
    assert list(by_vip) == [R1, R2, "198.51.100.23"]
    held = by_vip[R1]
    assert isinstance(held.value, WriterValue) and held.value.node == "n1"
    assert held.lease_id == lease1 and held.ttl_s is not None and 0 < held.ttl_s <= 30
    assert not held.claim_only
    claimed = by_vip[R2]
    assert claimed.claim_only and isinstance(claimed.value, WriterValue)
    assert claimed.value.node == "n2" and claimed.lease_id == lease2
    junk = by_vip["198.51.100.23"]
    assert isinstance(junk.value, Garbage) and (junk.lease_id, junk.ttl_s) == (0, None)


def test_give_back_clears_what_is_left_of_a_pair_edited_by_hand(
    etcd_single: EtcdCluster, nodes: NodeFactory
) -> None:
    n1, n2 = nodes(etcd_single, "n1"), nodes(etcd_single, "n2")
    keys = n1.leases.keys
    lease1 = n1.lease()
    for vip in (R1, R2):
        assert isinstance(n1.readers.take_reader(vip, lease1, 0, TIMEOUT_S), Taken)
    etcd_single.etcdctl("del", keys.reader(R1))  # its claim is left
    etcd_single.etcdctl("del", keys.reader_claim(R2))  # its key is left
    for vip in (R1, R2):
        assert n1.readers.give_back_reader(vip, lease1, TIMEOUT_S) == Done()
    assert n2.pool().keys == ()
    assert etcd_json(etcd_single, keys.reader_claim(R1)) is None
    # Both free: anyone may take them.
    lease2 = n2.lease()
    assert all(isinstance(n2.readers.take_reader(v, lease2, 0, TIMEOUT_S), Taken) for v in (R1, R2))
