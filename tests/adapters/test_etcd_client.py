"""The etcd JSON-gateway client against real etcd 3.4 members on loopback."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from dbvip.adapters.etcd_client import (
    EtcdClient,
    EtcdUnavailableError,
)
from dbvip.adapters.etcd_watch import Watch
from dbvip.adapters.etcd_wire import (
    compare_create_revision,
    compare_lease,
    put_op,
    range_op,
)
from integration.lab.etcd import EtcdCluster, refusing_url
from integration.lab.eventually import eventually
from tests.adapters.conftest import ETCD_USER

pytestmark = pytest.mark.real

T = TypeVar("T")
TIMEOUT_S = 1.0
SLACK = 3  # "returned in time" means within SLACK x the timeout: speed is not asserted


def within(timeout_s: float, call: Callable[[], T]) -> T:
    """Run ``call`` and fail if it took longer than the generous bound."""
    started = time.monotonic()
    try:
        return call()
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < SLACK * timeout_s, f"took {elapsed:.2f} s for a {timeout_s} s timeout"


@pytest.fixture
def key() -> str:
    return f"/dbvip/test-{uuid.uuid4().hex[:10]}/k"


def test_put_range_txn_delete(
    etcd_single: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    client = clients(etcd_single.endpoints)
    absent = client.range(key, TIMEOUT_S)
    assert absent.kvs == () and absent.revision > 0

    created = client.txn(
        [compare_create_revision(key, 0)], [put_op(key, b"one")], [range_op(key)], TIMEOUT_S
    )
    assert created.succeeded and created.kvs == ()
    refused = client.txn(
        [compare_create_revision(key, 0)], [put_op(key, b"two")], [range_op(key)], TIMEOUT_S
    )
    assert not refused.succeeded
    [kv] = refused.kvs
    assert (kv.key, kv.value, kv.lease_id) == (key.encode(), b"one", 0)
    assert kv.create_revision == kv.mod_revision == created.revision

    revision = client.put(key + "/child", b"\x00\xffbinary", TIMEOUT_S)
    assert revision is not None and revision > created.revision
    both = client.range(key, TIMEOUT_S, prefix=True)
    assert [kv.value for kv in both.kvs] == [b"one", b"\x00\xffbinary"]
    assert both.revision == revision
    assert client.delete(key, TIMEOUT_S, prefix=True) == 2
    assert client.range(key, TIMEOUT_S, prefix=True).kvs == ()
    assert etcd_single.etcdctl("get", "--prefix", key) == ""


def test_lease_grant_keepalive_timetolive_revoke(
    etcd_single: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    client = clients(etcd_single.endpoints)
    lease = client.grant(30, TIMEOUT_S)
    assert lease.ttl_s == 30 and lease.lease_id in etcd_single.lease_ids()
    assert client.put(key, b"v", TIMEOUT_S, lease_id=lease.lease_id) is not None
    assert client.keepalive(lease.lease_id, TIMEOUT_S) == 30
    info = client.time_to_live(lease.lease_id, TIMEOUT_S, keys=True)
    assert 0 < info.ttl_s <= 30 and info.keys == (key.encode(),)

    # The key is attached to the lease: a txn comparing the lease sees it.
    attached = client.txn([compare_lease(key, lease.lease_id)], [], [], TIMEOUT_S)
    other = client.txn([compare_lease(key, lease.lease_id + 1)], [], [], TIMEOUT_S)
    assert attached.succeeded and not other.succeeded

    assert client.revoke(lease.lease_id, TIMEOUT_S) is True
    assert client.range(key, TIMEOUT_S).kvs == ()  # gone with its lease
    assert lease.lease_id not in etcd_single.lease_ids()
    # Definite "no such lease" answers are values, not errors.
    assert client.revoke(lease.lease_id, TIMEOUT_S) is False
    assert client.keepalive(lease.lease_id, TIMEOUT_S) == 0
    assert client.time_to_live(lease.lease_id, TIMEOUT_S).ttl_s == -1
    assert client.put(key, b"v", TIMEOUT_S, lease_id=lease.lease_id) is None


def test_keepalive_of_an_expired_lease_reads_zero(
    etcd_single: EtcdCluster, clients: Callable[..., EtcdClient]
) -> None:
    client = clients(etcd_single.endpoints)
    lease = client.grant(1, TIMEOUT_S)
    # Poll with timetolive, which (unlike keepalive) does not renew the lease.
    eventually(lambda: client.time_to_live(lease.lease_id, TIMEOUT_S).ttl_s == -1, timeout_s=10)
    assert client.keepalive(lease.lease_id, TIMEOUT_S) == 0


def test_gateway_errors_that_are_not_lease_not_found_are_unknown(
    etcd_single: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    client = clients(etcd_single.endpoints)
    # A txn naming a lease that does not exist is refused by etcd: not a "no".
    with pytest.raises(EtcdUnavailableError, match="lease not found"):
        client.txn([], [put_op(key, b"v", lease_id=12345)], [], TIMEOUT_S)


def test_every_endpoint_down_is_unknown_in_time(
    etcd_private: EtcdCluster, clients: Callable[..., EtcdClient]
) -> None:
    etcd_private.freeze(0)  # accepts connections (kernel backlog), never answers
    try:
        # A bound port that does not listen refuses; no other process can take it meanwhile.
        with refusing_url() as closed:
            client = clients([etcd_private.endpoints[0], closed])
            for call in (
                lambda: client.range("/dbvip/x", TIMEOUT_S),
                lambda: client.grant(10, TIMEOUT_S),
                lambda: client.keepalive(1, TIMEOUT_S),
                lambda: client.revoke(1, TIMEOUT_S),
            ):
                with pytest.raises(EtcdUnavailableError) as caught:
                    within(TIMEOUT_S, call)
                assert "Connection refused" in caught.value.cause
    finally:
        etcd_private.thaw(0)


def test_a_refused_endpoint_then_a_good_one_answers(
    etcd_single: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    with refusing_url() as closed:
        client = clients([closed, etcd_single.endpoints[0]])
        assert within(TIMEOUT_S, lambda: client.put(key, b"v", TIMEOUT_S)) is not None
        # Refused costs no time, and the member that answered goes first from now on.
        assert client.endpoint_order()[0] == etcd_single.endpoints[0]
        assert [kv.value for kv in client.range(key, TIMEOUT_S).kvs] == [b"v"]


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
def test_three_members_with_the_first_endpoint_down_still_answer(
    etcd_cluster3: EtcdCluster, clients: Callable[..., EtcdClient], key: str, fault: str
) -> None:
    client = clients(etcd_cluster3.endpoints)
    assert client.put(key, b"before", TIMEOUT_S) is not None
    assert client.endpoint_order()[0] == etcd_cluster3.endpoints[0]
    if fault == "stopped":
        etcd_cluster3.stop(0)
    else:
        etcd_cluster3.freeze(0)
    try:
        # Two members keep a quorum. If the lost member led, they elect anew
        # (election timeout 200 ms) within the budget.
        timeout_s = 2.0
        got = within(timeout_s, lambda: client.range(key, timeout_s))
        assert [kv.value for kv in got.kvs] == [b"before"]
        # The next request starts with the member that answered.
        assert client.endpoint_order()[0] != etcd_cluster3.endpoints[0]
        assert within(timeout_s, lambda: client.put(key, b"after", timeout_s)) is not None
        lease = within(timeout_s, lambda: client.grant(5, timeout_s))
        assert within(timeout_s, lambda: client.keepalive(lease.lease_id, timeout_s)) == 5
    finally:
        if fault == "frozen":
            etcd_cluster3.thaw(0)


def test_tls_with_a_client_certificate(
    etcd_tls: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    files = etcd_tls.tls_files
    assert files is not None and etcd_tls.endpoints[0].startswith("https://")
    client = clients(
        etcd_tls.endpoints,
        ca_file=str(files.ca),
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    assert client.put(key, b"secure", TIMEOUT_S) is not None
    assert [kv.value for kv in client.range(key, TIMEOUT_S).kvs] == [b"secure"]

    # Without the client certificate the member refuses the handshake: unknown, in time.
    anonymous = clients(etcd_tls.endpoints, ca_file=str(files.ca))
    with pytest.raises(EtcdUnavailableError):
        within(TIMEOUT_S, lambda: anonymous.range(key, TIMEOUT_S))
    # Without the CA the server is not trusted.
    untrusting = clients(etcd_tls.endpoints)
    with pytest.raises(EtcdUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        within(TIMEOUT_S, lambda: untrusting.range(key, TIMEOUT_S))


def _raw_range(cluster: EtcdCluster, token: str) -> tuple[int, str]:
    """A range request with ``token``, past the client: HTTP status and body."""
    status, body = cluster.request(
        cluster.members[0],
        "POST",
        "/v3/kv/range",
        json.dumps({"key": "L2RidmlwL3g="}).encode(),
        {"Authorization": token},
    )
    return status, body.decode()


@pytest.mark.parametrize("invalidate", ["restart", "auth disable and enable"])
def test_auth_token_that_became_invalid_is_refreshed(
    etcd_auth: EtcdCluster, clients: Callable[..., EtcdClient], key: str, invalidate: str
) -> None:
    user, password = ETCD_USER
    client = clients(etcd_auth.endpoints, username=user, password=password)
    assert client.put(key, b"v1", TIMEOUT_S) is not None
    old_token = client.token(etcd_auth.endpoints[0], time.monotonic() + TIMEOUT_S)
    assert old_token is not None and _raw_range(etcd_auth, old_token)[0] == 200

    if invalidate == "restart":
        # Simple tokens live in memory; the put above keeps etcd from replaying
        # this token's grant from its log at restart.
        etcd_auth.restart(0)
    else:
        etcd_auth.etcdctl("auth", "disable")
        etcd_auth.etcdctl("auth", "enable")
    assert "invalid auth token" in _raw_range(etcd_auth, old_token)[1]

    assert client.put(key, b"v2", TIMEOUT_S) is not None
    assert [kv.value for kv in client.range(key, TIMEOUT_S).kvs] == [b"v2"]
    assert client.token(etcd_auth.endpoints[0], time.monotonic() + TIMEOUT_S) != old_token


def test_auth_refusals_are_unknown(
    etcd_auth: EtcdCluster, clients: Callable[..., EtcdClient]
) -> None:
    user, _ = ETCD_USER
    wrong = clients(etcd_auth.endpoints, username=user, password="wrong")
    with pytest.raises(EtcdUnavailableError, match="authentication failed"):
        wrong.range("/dbvip/x", TIMEOUT_S)
    anonymous = clients(etcd_auth.endpoints)
    with pytest.raises(EtcdUnavailableError, match="user name is empty"):
        anonymous.range("/dbvip/x", TIMEOUT_S)
    outside = clients(etcd_auth.endpoints, username=user, password=ETCD_USER[1])
    with pytest.raises(EtcdUnavailableError, match="permission denied"):
        outside.range("/elsewhere", TIMEOUT_S)


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1

    def after(self, count: int) -> Callable[[], bool]:
        return lambda: self.count > count


def test_watch_wakes_on_connect_put_delete_and_after_a_reconnect(
    etcd_private: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    client = clients(etcd_private.endpoints)
    wakes = Wakes()
    watch = Watch(client, key, wakes)
    watch.start()
    try:
        eventually(wakes.after(0))  # connected
        seen = wakes.count
        client.put(key + "-other", b"x", TIMEOUT_S)  # not the watched key
        client.put(key, b"x", TIMEOUT_S)
        eventually(wakes.after(seen))
        assert wakes.count == seen + 1, "only the watched key wakes"
        seen = wakes.count
        client.delete(key, TIMEOUT_S)
        eventually(wakes.after(seen))

        etcd_private.stop(0)
        seen = wakes.count
        etcd_private.start(0)
        # Reconnected and resumed where it left off: the reconnect alone is
        # no news, a change after it is.
        client.put(key, b"y", TIMEOUT_S)
        eventually(wakes.after(seen), timeout_s=15)
    finally:
        stopping = time.monotonic()
        watch.stop()
    assert not watch.running
    # Prompt even though the stream was idle: its read timeout is much longer.
    assert time.monotonic() - stopping < 2.0


def test_watch_with_auth_survives_a_token_that_became_invalid(
    etcd_auth: EtcdCluster, clients: Callable[..., EtcdClient], key: str
) -> None:
    user, password = ETCD_USER
    client = clients(etcd_auth.endpoints, username=user, password=password)
    wakes = Wakes()
    watch = Watch(client, key, wakes)
    watch.start()
    try:
        eventually(wakes.after(0))
        old_token = client.token(etcd_auth.endpoints[0], time.monotonic() + TIMEOUT_S)
        assert old_token is not None
        # etcd 3.4 replays a token's grant from its log at restart unless a later
        # write was persisted: write, so that the restart really forgets it.
        assert client.put(key + "-other", b"x", TIMEOUT_S) is not None
        seen = wakes.count
        etcd_auth.restart(0)
        assert "invalid auth token" in _raw_range(etcd_auth, old_token)[1]
        # Reconnected with a fresh token, resumed where it left off: the
        # change is seen (whether made before or after the reconnect).
        etcd_auth.etcdctl("put", key, "x")
        eventually(wakes.after(seen), timeout_s=15)
    finally:
        watch.stop()
    assert not watch.running
