"""The etcd LeaseStore and KeyWatcher against real etcd 3.4 members on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dbvip.adapters.etcd_client import EtcdClient
from dbvip.adapters.etcd_status import ClusterStatus
from dbvip.adapters.etcd_store import EtcdLeaseStore
from dbvip.identity import Identity
from dbvip.keys import Garbage, KeyLayout
from dbvip.model import KeyAbsent, KeyHeld, KeyInvalid, KeyUnknown, PeerView, Role
from dbvip.ports import Alive, Done, Gone, Granted, MemberReport, MembersReading, Refused, Unknown
from integration.lab.etcd import EtcdCluster, free_port
from integration.lab.eventually import eventually
from tests.adapters.conftest import ETCD_USER

pytestmark = pytest.mark.real

T = TypeVar("T")
TIMEOUT_S = 1.0
SLACK = 3  # "returned in time" means within SLACK x the timeout: speed is not asserted
VIP = "198.51.100.10/24"
REPORT = MemberReport("primary", 2, "0/3000060", (VIP,), "holding")


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


StoreFactory = Callable[..., EtcdLeaseStore]


def _members(reading: MembersReading | Unknown) -> MembersReading | Unknown:
    """The members part of a members read (the writer key and the pool it
    finds too are checked in test_etcd_readers)."""
    if isinstance(reading, Unknown):
        return reading
    return replace(reading, writer=None, pool=None)


@pytest.fixture
def stores(etcd_cluster_name: str) -> Iterator[StoreFactory]:
    made: list[EtcdLeaseStore] = []

    def make(cluster: EtcdCluster | list[str], node: str, **kwargs: Any) -> EtcdLeaseStore:
        endpoints = cluster if isinstance(cluster, list) else cluster.endpoints
        made.append(EtcdLeaseStore(endpoints, etcd_cluster_name, node, VIP, WallClock(), **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


def writer_json(cluster: EtcdCluster, store: EtcdLeaseStore) -> dict[str, Any]:
    raw = cluster.etcdctl("get", "--print-value-only", store.keys.writer).strip()
    value: dict[str, Any] = json.loads(raw)
    return value


def test_acquire_keepalive_release(etcd_single: EtcdCluster, stores: StoreFactory) -> None:
    store = stores(etcd_single, "n1")
    absent = store.read_writer(TIMEOUT_S)
    assert isinstance(absent, KeyAbsent) and absent.revision > 0

    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted) and granted.ttl_s == 10
    held = store.read_writer(TIMEOUT_S)
    assert isinstance(held, KeyHeld) and held.revision >= granted.revision
    assert held == KeyHeld("n1", granted.lease_id, held.revision, granted.revision, store.identity)
    value = writer_json(etcd_single, store)
    assert (value["node"], value["vip"], value["lease"]) == ("n1", VIP, f"{granted.lease_id:x}")
    assert datetime.fromisoformat(value["since"]).tzinfo is not None

    assert store.keepalive(granted.lease_id, TIMEOUT_S) == Alive(10)
    assert store.release(granted.lease_id, TIMEOUT_S) == Done()
    assert isinstance(store.read_writer(TIMEOUT_S), KeyAbsent)
    assert granted.lease_id not in etcd_single.lease_ids()
    assert store.keepalive(granted.lease_id, TIMEOUT_S) == Gone()
    assert store.release(granted.lease_id, TIMEOUT_S) == Done()  # already gone counts as done


def test_second_acquirer_is_refused_and_its_lease_revoked(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    first, second = stores(etcd_single, "n1"), stores(etcd_single, "n2")
    granted = first.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    leases_before = etcd_single.lease_ids()

    refused = second.acquire(10, TIMEOUT_S)
    assert isinstance(refused, Refused) and refused.holder == "n1"
    assert refused.revision >= granted.revision
    assert etcd_single.lease_ids() - leases_before == set(), "the loser's lease was left behind"
    held = second.read_writer(TIMEOUT_S)
    assert isinstance(held, KeyHeld) and (held.holder, held.lease_id) == ("n1", granted.lease_id)
    first.release(granted.lease_id, TIMEOUT_S)


def test_release_leaves_a_key_rewritten_under_another_lease(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_single, "n1")
    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    # Someone else's lease now carries the key (as after our lease expired).
    other = EtcdClient(etcd_single.endpoints)
    try:
        lease = other.grant(30, TIMEOUT_S)
        other.put(store.keys.writer, b'{"node":"n2"}', TIMEOUT_S, lease_id=lease.lease_id)
        assert store.release(granted.lease_id, TIMEOUT_S) == Done()
        survivor = store.read_writer(TIMEOUT_S)
        assert isinstance(survivor, KeyHeld)
        assert (survivor.holder, survivor.lease_id) == ("n2", lease.lease_id)
        assert granted.lease_id not in etcd_single.lease_ids()
        other.revoke(lease.lease_id, TIMEOUT_S)
    finally:
        other.close()


def test_garbage_in_the_writer_key_is_invalid_not_absent(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_single, "n1")
    etcd_single.etcdctl("put", store.keys.writer, "n1")  # a holder name, but not our format
    invalid = store.read_writer(TIMEOUT_S)
    assert isinstance(invalid, KeyInvalid) and "not JSON" in invalid.detail
    assert invalid.lease_id == 0
    # Put by hand without a lease, it backs no VIP: an acquire replaces it.
    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    assert writer_json(etcd_single, store)["node"] == "n1"
    store.release(granted.lease_id, TIMEOUT_S)


def test_garbage_under_a_live_lease_refuses_an_acquire(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_single, "n1")
    other = EtcdClient(etcd_single.endpoints)
    try:
        lease = other.grant(30, TIMEOUT_S)
        other.put(store.keys.writer, b"garbage", TIMEOUT_S, lease_id=lease.lease_id)
        refused = store.acquire(10, TIMEOUT_S)
        assert isinstance(refused, Refused) and refused.holder is None
        other.revoke(lease.lease_id, TIMEOUT_S)
    finally:
        other.close()


def test_a_writer_key_deleted_by_hand_is_still_claimed_until_the_lease_ends(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    first, second = stores(etcd_single, "n1"), stores(etcd_single, "n2")
    granted = first.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    etcd_single.etcdctl("del", first.keys.writer)  # the operator's mistake
    claimed = second.read_writer(TIMEOUT_S)
    assert isinstance(claimed, KeyAbsent) and claimed.claimed_by == "n1"
    refused = second.acquire(10, TIMEOUT_S)
    assert isinstance(refused, Refused) and refused.holder == "n1"
    assert first.release(granted.lease_id, TIMEOUT_S) == Done()  # revoked: the claim goes
    free = second.read_writer(TIMEOUT_S)
    assert isinstance(free, KeyAbsent) and free.claimed_by is None
    taken = second.acquire(10, TIMEOUT_S)
    assert isinstance(taken, Granted)
    assert second.release(taken.lease_id, TIMEOUT_S) == Done()
    assert etcd_single.etcdctl("get", "--prefix", "--keys-only", first.keys.base).strip() == ""


def test_keepalive_of_an_expired_lease_is_gone(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_single, "n1")
    granted = store.acquire(1, TIMEOUT_S)
    assert isinstance(granted, Granted)
    eventually(lambda: isinstance(store.read_writer(TIMEOUT_S), KeyAbsent), timeout_s=10)
    assert store.keepalive(granted.lease_id, TIMEOUT_S) == Gone()


def test_every_endpoint_down_is_unknown_in_time(
    etcd_private: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores([etcd_private.endpoints[0], f"http://127.0.0.1:{free_port()}"], "n1")
    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    etcd_private.freeze(0)
    try:
        assert isinstance(within(TIMEOUT_S, lambda: store.read_writer(TIMEOUT_S)), KeyUnknown)
        for call in (
            lambda: store.acquire(10, TIMEOUT_S),
            lambda: store.keepalive(granted.lease_id, TIMEOUT_S),
            lambda: store.release(granted.lease_id, TIMEOUT_S),
            lambda: store.publish_member(REPORT, TIMEOUT_S),
            lambda: store.read_cluster(TIMEOUT_S),
        ):
            assert isinstance(within(TIMEOUT_S, call), Unknown)
    finally:
        etcd_private.thaw(0)


def test_three_members_with_the_first_one_frozen(
    etcd_cluster3: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_cluster3, "n1")
    etcd_cluster3.freeze(0)
    try:
        timeout_s = 2.0
        granted = within(timeout_s, lambda: store.acquire(10, timeout_s))
        assert isinstance(granted, Granted)
        assert isinstance(within(timeout_s, lambda: store.read_writer(timeout_s)), KeyHeld)
        assert within(timeout_s, lambda: store.keepalive(granted.lease_id, timeout_s)) == Alive(10)
        assert within(timeout_s, lambda: store.release(granted.lease_id, timeout_s)) == Done()
    finally:
        etcd_cluster3.thaw(0)


def test_members_publish_under_their_own_lease_and_show_in_status(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    n1, n2 = stores(etcd_single, "n1", member_ttl_s=20), stores(etcd_single, "n2")
    assert n1.publish_member(REPORT, TIMEOUT_S) == Done()
    assert n2.publish_member(MemberReport("replica", 2, None, (), "replica"), TIMEOUT_S) == Done()
    granted = n1.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)

    status = n2.read_cluster(TIMEOUT_S)
    assert isinstance(status, ClusterStatus)
    assert isinstance(status.writer, KeyHeld) and status.writer.holder == "n1"
    assert status.writer_ttl_s is not None and 0 < status.writer_ttl_s <= 10
    assert [m.node for m in status.members] == ["n1", "n2"]
    first = status.members[0]
    assert not isinstance(first.value, Garbage)
    assert (first.value["role"], first.value["vip"]) == ("primary", [VIP])
    assert first.ttl_s is not None and 10 < first.ttl_s <= 20
    assert first.lease_id not in (0, granted.lease_id)

    # The member lease is revoked behind n1's back: the next publish starts anew.
    etcd_single.etcdctl("lease", "revoke", f"{first.lease_id:x}")
    assert n1.publish_member(REPORT, TIMEOUT_S) == Done()
    again = n1.read_cluster(TIMEOUT_S)
    assert isinstance(again, ClusterStatus) and [m.node for m in again.members] == ["n1", "n2"]
    assert again.members[0].lease_id != first.lease_id
    n1.release(granted.lease_id, TIMEOUT_S)


def test_garbage_member_value_shows_as_garbage(
    etcd_single: EtcdCluster, stores: StoreFactory, etcd_cluster_name: str
) -> None:
    store = stores(etcd_single, "n1")
    etcd_single.etcdctl("put", KeyLayout(etcd_cluster_name).member("odd"), "{")
    status = store.read_cluster(TIMEOUT_S)
    assert isinstance(status, ClusterStatus) and isinstance(status.writer, KeyAbsent)
    assert status.writer_ttl_s is None
    [odd] = status.members
    assert odd.node == "odd" and isinstance(odd.value, Garbage)
    assert (odd.lease_id, odd.ttl_s) == (0, None)


def test_watcher_wakes_on_acquire_and_release(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_single, "n1")
    wakes: list[float] = []
    lock = threading.Lock()

    def wake() -> None:
        with lock:
            wakes.append(time.monotonic())

    watcher = store.writer_watcher()
    watcher.start(wake)
    try:
        eventually(lambda: len(wakes) >= 1)  # connected: re-read now
        granted = store.acquire(10, TIMEOUT_S)
        assert isinstance(granted, Granted)
        eventually(lambda: len(wakes) >= 2)
        store.release(granted.lease_id, TIMEOUT_S)
        eventually(lambda: len(wakes) >= 3)
        # Another member's report (its LSN refreshed) is not news for the loop...
        other = stores(etcd_single, "n2")
        assert other.publish_member(REPORT, TIMEOUT_S) == Done()
        # ...a maintenance flag is: the next change, and the only one seen.
        assert other.set_maintenance("n1", True, TIMEOUT_S) == Done()
        eventually(lambda: len(wakes) >= 4)
        time.sleep(0.2)
        assert len(wakes) == 4
    finally:
        watcher.stop()


def test_tls_and_auth_settings_reach_the_client(
    etcd_tls: EtcdCluster, etcd_auth: EtcdCluster, stores: StoreFactory
) -> None:
    files = etcd_tls.tls_files
    assert files is not None
    secure = stores(
        etcd_tls,
        "n1",
        ca_file=str(files.ca),
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    assert isinstance(secure.acquire(10, TIMEOUT_S), Granted)
    user, password = ETCD_USER
    authed = stores(etcd_auth, "n1", username=user, password=password)
    assert isinstance(authed.acquire(10, TIMEOUT_S), Granted)
    anonymous = stores(etcd_auth, "n2")
    unknown = anonymous.read_writer(TIMEOUT_S)
    assert isinstance(unknown, KeyUnknown) and "user name is empty" in unknown.cause


def test_adopt_moves_the_key_onto_a_fresh_lease(etcd_single: EtcdCluster,
                                                stores: StoreFactory) -> None:  # fmt: skip
    before = stores(etcd_single, "n1")
    granted = before.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    view = before.read_writer(TIMEOUT_S)
    assert isinstance(view, KeyHeld)
    after = stores(etcd_single, "n1")  # the restarted sidecar
    adopted = within(TIMEOUT_S, lambda: after.adopt(view.lease_id, view.mod_revision, 10,
                                                    TIMEOUT_S))  # fmt: skip
    assert isinstance(adopted, Granted)
    assert adopted.lease_id != granted.lease_id
    moved = after.read_writer(TIMEOUT_S)
    assert isinstance(moved, KeyHeld)
    assert (moved.holder, moved.lease_id) == ("n1", adopted.lease_id)
    assert writer_json(etcd_single, after)["lease"] == f"{adopted.lease_id:x}"
    assert granted.lease_id not in etcd_single.lease_ids(), "the old lease is revoked"


def test_a_release_landing_after_adoption_leaves_the_key_alone(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    """The race the simulation found: a release of the old lease that was in
    flight at SIGTERM lands after the restarted sidecar took the key again."""
    old = stores(etcd_single, "n1")
    granted = old.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    view = old.read_writer(TIMEOUT_S)
    assert isinstance(view, KeyHeld)
    adopted = stores(etcd_single, "n1").adopt(view.lease_id, view.mod_revision, 10, TIMEOUT_S)
    assert isinstance(adopted, Granted)
    assert isinstance(old.release(granted.lease_id, TIMEOUT_S), Done)  # the late release
    still = old.read_writer(TIMEOUT_S)
    assert isinstance(still, KeyHeld)
    assert still.lease_id == adopted.lease_id
    assert adopted.lease_id in etcd_single.lease_ids()


def test_adopt_is_refused_when_the_key_changed_since_it_was_read(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    n1, n2 = stores(etcd_single, "n1"), stores(etcd_single, "n2")
    granted = n1.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    view = n1.read_writer(TIMEOUT_S)
    assert isinstance(view, KeyHeld)
    assert isinstance(n1.release(granted.lease_id, TIMEOUT_S), Done)
    assert isinstance(n2.acquire(10, TIMEOUT_S), Granted)
    leases_before = etcd_single.lease_ids()
    refused = n1.adopt(view.lease_id, view.mod_revision, 10, TIMEOUT_S)
    assert isinstance(refused, Refused)
    assert refused.holder == "n2"
    held = n1.read_writer(TIMEOUT_S)
    assert isinstance(held, KeyHeld) and held.holder == "n2"
    assert etcd_single.lease_ids() - leases_before == set(), "the loser's lease is revoked"


def test_read_members_gives_the_others_role_and_timeline_and_skips_garbage(
    etcd_private: EtcdCluster, stores: StoreFactory, etcd_cluster_name: str
) -> None:
    n1, n2, n3 = (stores(etcd_private, n) for n in ("n1", "n2", "n3"))
    assert n1.publish_member(REPORT, TIMEOUT_S) == Done()
    assert (
        n2.publish_member(MemberReport("replica", None, None, (), "replica"), TIMEOUT_S) == Done()
    )
    assert n3.publish_member(MemberReport("primary", 3, None, (), "conflict"), TIMEOUT_S) == Done()
    layout = KeyLayout(etcd_cluster_name)
    etcd_private.etcdctl("put", layout.member("odd"), "{")
    etcd_private.etcdctl("put", layout.member("weird"), '{"role": "boss", "timeline": 9}')
    etcd_private.etcdctl("put", layout.member("text"), '{"role": "primary", "timeline": "9"}')

    peers = (
        PeerView("n2", Role.REPLICA, None, n2.identity),
        PeerView("n3", Role.PRIMARY, 3, n3.identity),
        PeerView("text", Role.PRIMARY, None),  # a timeline that is not a number proves nothing
    )
    assert _members(n1.read_members(TIMEOUT_S)) == MembersReading(peers, False, (n1.identity,))
    seen = n3.read_members(TIMEOUT_S)
    assert isinstance(seen, MembersReading)
    assert {p.node for p in seen.peers} == {"n1", "n2", "text"}
    etcd_private.freeze(0)
    try:
        assert isinstance(within(TIMEOUT_S, lambda: n1.read_members(TIMEOUT_S)), Unknown)
    finally:
        etcd_private.thaw(0)


def test_maintenance_flag_is_seen_by_its_node_only_and_shows_in_status(
    etcd_single: EtcdCluster, stores: StoreFactory, etcd_cluster_name: str
) -> None:
    n1, n2 = stores(etcd_single, "n1"), stores(etcd_single, "n2")
    assert n2.set_maintenance("n1", True, TIMEOUT_S) == Done()
    assert _members(n1.read_members(TIMEOUT_S)) == MembersReading((), maintenance=True)
    assert _members(n2.read_members(TIMEOUT_S)) == MembersReading((), maintenance=False)
    key = KeyLayout(etcd_cluster_name).maintenance("n1")
    assert etcd_single.etcdctl("get", key, "--print-value-only").strip().startswith("{")
    status = n2.read_cluster(TIMEOUT_S)
    assert isinstance(status, ClusterStatus) and status.maintenance == ("n1",)
    assert n2.set_maintenance("n1", False, TIMEOUT_S) == Done()
    assert _members(n1.read_members(TIMEOUT_S)) == MembersReading((), maintenance=False)
    assert n2.set_maintenance("n1", False, TIMEOUT_S) == Done()  # idempotent


def test_a_twin_never_writes_over_a_live_report_under_its_name(
    etcd_private: EtcdCluster, stores: StoreFactory
) -> None:
    """One node name, two hosts: the first report stands; the twin's is
    refused and the first one sees the twin nowhere, the twin sees the first."""
    first = stores(etcd_private, "n1", identity=Identity.fresh("n1", "host-a", "eth0"))
    twin = stores(etcd_private, "n1", identity=Identity.fresh("n1", "host-b", "eth0"))
    assert first.publish_member(REPORT, TIMEOUT_S) == Done()
    refused = twin.publish_member(REPORT, TIMEOUT_S)
    assert isinstance(refused, Unknown) and "in use by n1@host-b" not in refused.cause
    assert "in use by n1@host-a" in refused.cause
    seen = twin.read_members(TIMEOUT_S)
    assert isinstance(seen, MembersReading) and seen.same_name == (first.identity,)
    assert first.publish_member(REPORT, TIMEOUT_S) == Done()  # still its own


def test_a_restarted_sidecar_writes_over_its_previous_processes_report(
    etcd_private: EtcdCluster, stores: StoreFactory
) -> None:
    before = Identity.fresh("n1", "host-a", "eth0")
    assert stores(etcd_private, "n1", identity=before).publish_member(REPORT, TIMEOUT_S) == Done()
    after = stores(etcd_private, "n1", identity=before.restarted())
    assert after.publish_member(REPORT, TIMEOUT_S) == Done()
    seen = after.read_members(TIMEOUT_S)
    assert isinstance(seen, MembersReading) and seen.same_name == (after.identity,)


def test_the_writer_key_carries_the_identity_and_format(
    etcd_single: EtcdCluster, stores: StoreFactory
) -> None:
    me = Identity.fresh("n1", "host-a", "eth0")
    store = stores(etcd_single, "n1", identity=me)
    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    value = writer_json(etcd_single, store)
    assert (value["format"], value["instance"], value["host"]) == (2, me.instance, "host-a")
    assert store.release(granted.lease_id, TIMEOUT_S) == Done()


def _answered(store: EtcdLeaseStore) -> KeyAbsent | KeyHeld | KeyInvalid | None:
    view = store.read_writer(TIMEOUT_S)
    return None if isinstance(view, KeyUnknown) else view


def _busy(store: EtcdLeaseStore, writes: int) -> None:
    """Move etcd's revision on, as a running cluster's reports do."""
    for _ in range(writes):
        assert store.publish_member(REPORT, TIMEOUT_S) == Done()


def test_a_wiped_etcd_is_noticed_as_a_history_reset(
    etcd_private: EtcdCluster, stores: StoreFactory
) -> None:
    store = stores(etcd_private, "n1")
    _busy(store, 5)
    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    assert store.history_reset() is None
    etcd_private.wipe()
    # The first answer of the new history: the key is gone, and so is the lease.
    view = eventually(lambda: _answered(store))
    assert isinstance(view, KeyAbsent)
    reset = store.history_reset()
    assert reset is not None and "revision" in reset
    assert store.history_reset() is None  # told once


def test_an_etcd_restored_from_an_older_snapshot_is_noticed(
    etcd_private: EtcdCluster, stores: StoreFactory, tmp_path: Path
) -> None:
    store = stores(etcd_private, "n1")
    granted = store.acquire(10, TIMEOUT_S)
    assert isinstance(granted, Granted)
    snapshot = tmp_path / "etcd.snapshot"
    etcd_private.snapshot_save(snapshot)
    assert store.release(granted.lease_id, TIMEOUT_S) == Done()
    _busy(store, 5)
    assert isinstance(store.read_writer(TIMEOUT_S), KeyAbsent)
    assert store.history_reset() is None
    etcd_private.restore(snapshot)
    view = eventually(lambda: _answered(store))
    # The released key and its revoked lease are back: only the reset tells.
    assert isinstance(view, KeyHeld) and view.lease_id == granted.lease_id
    assert store.history_reset() is not None
