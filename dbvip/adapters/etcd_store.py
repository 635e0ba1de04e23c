"""``LeaseStore`` and ``KeyWatcher`` on etcd, for one node of one cluster.

Every method returns by its ``timeout_s`` (the client guarantees it) and maps
"could not find out" to ``Unknown``/``KeyUnknown``, never to a "no".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from dbvip.adapters.etcd_client import (
    EtcdClient,
    EtcdUnavailableError,
)
from dbvip.adapters.etcd_pages import (
    member_value,
    read_all,
    revoke_quietly,
)
from dbvip.adapters.etcd_readers import pool_reading
from dbvip.adapters.etcd_status import ClusterStatus, read_cluster, writer_view
from dbvip.adapters.etcd_watch import Watch, WatchEvent
from dbvip.adapters.etcd_wire import (
    compare_lease,
    compare_mod_revision,
    delete_op,
    put_op,
    range_op,
)
from dbvip.boottime import boot_s
from dbvip.identity import Identity, Whose, whose
from dbvip.keys import (
    DEFAULT_PREFIX,
    KeyLayout,
    WriterValue,
    decode_failsafe_record,
    decode_member,
    decode_writer,
    encode_failsafe_record,
    encode_maintenance,
    encode_member,
    encode_writer,
    member_identity,
    peer_view,
    writer_event_matters,
)
from dbvip.model import (
    FailsafeRecord,
    KeyUnknown,
    Seat,
    WriterView,
)
from dbvip.ports import (
    Alive,
    Clock,
    Done,
    Gone,
    Granted,
    MemberReport,
    MembersReading,
    Refused,
    Unknown,
)

# What a failsafe record that is not one stands for: no seat is its holder,
# none is listed, so nobody takes the writer key past it.
GARBLED_RECORD = FailsafeRecord(Seat("", "", ""), ())


class EtcdLeaseStore:
    def __init__(
        self,
        endpoints: Sequence[str],
        cluster: str,
        node: str,
        vip: str,
        clock: Clock,
        *,
        prefix: str = DEFAULT_PREFIX,
        member_ttl_s: int = 10,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        identity: Identity | None = None,
    ) -> None:
        self._keys = KeyLayout(cluster, prefix)
        self._member_key = self._keys.member(node)  # also checks the node name
        self._node, self._vip, self._clock = node, vip, clock
        # A store that only reads (``dbvip status``) writes no identity: any will do.
        self._identity = identity or Identity.fresh(node, "-", "-")
        self._member_ttl_s = member_ttl_s
        self._member_lease: int | None = None
        self._client = EtcdClient(
            endpoints,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
        )

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def keys(self) -> KeyLayout:
        return self._keys

    @property
    def client(self) -> EtcdClient:
        """For the reader store of the same node: one client, one history."""
        return self._client

    def close(self) -> None:
        self._client.close()

    def read_writer(self, timeout_s: float) -> WriterView:
        keys = self._keys
        try:
            # One transaction: the writer key and the claim at one revision.
            reads = [range_op(keys.writer), range_op(keys.claim)]
            result = self._client.txn([], reads, [], timeout_s)
        except EtcdUnavailableError as exc:
            return KeyUnknown(exc.cause)
        found = {kv.key.decode(errors="replace"): kv for kv in result.kvs}
        return writer_view(found.get(keys.writer), result.revision, found.get(keys.claim))

    def history_reset(self) -> str | None:
        return self._client.history.take()

    def acquire(self, ttl_s: int, timeout_s: float) -> Granted | Refused | Unknown:
        # "Attached to no lease" is true of an absent key too (etcd compares a
        # missing key as a zero one): a key put by hand without a lease backs
        # no VIP and is replaced; a live holder's claim, even with its writer
        # key deleted by hand, refuses.
        keys = self._keys
        return self._claim(
            [compare_lease(keys.writer, 0), compare_lease(keys.claim, 0)], ttl_s, timeout_s
        )

    def adopt(
        self, lease_id: int, mod_revision: int, ttl_s: int, timeout_s: float
    ) -> Granted | Refused | Unknown:
        """Move our writer key, unchanged since ``mod_revision``, onto a fresh
        lease. Keeping the old lease alive instead would leave the VIP at the
        mercy of a release of that lease still in flight from before."""
        deadline = boot_s() + timeout_s
        key = self._keys.writer
        claimed = self._claim(
            [compare_mod_revision(key, mod_revision), compare_lease(key, lease_id)],
            ttl_s,
            timeout_s,
        )
        if isinstance(claimed, Granted):
            self._revoke_quietly(lease_id, deadline)  # it carries nothing now
        return claimed

    def _claim(
        self, compare: list[Any], ttl_s: int, timeout_s: float
    ) -> Granted | Refused | Unknown:
        """Grant a lease and put the writer key under it if ``compare`` holds."""
        deadline = boot_s() + timeout_s
        key = self._keys.writer
        try:
            grant = self._client.grant(ttl_s, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"lease grant: {exc.cause}")
        lease_id = grant.lease_id
        value = encode_writer(self._identity, self._vip, lease_id, self._clock.wall_iso())
        claim = self._keys.claim
        try:
            txn = self._client.txn(
                compare,
                [put_op(key, value, lease_id), put_op(claim, value, lease_id)],
                [range_op(key), range_op(claim)],
                deadline - boot_s(),
            )
        except EtcdUnavailableError as exc:
            # The put may have happened: revoking takes the key down with the lease.
            self._revoke_quietly(lease_id, deadline)
            return Unknown(f"writer txn: {exc.cause}")
        if txn.succeeded:
            return Granted(lease_id, grant.ttl_s, txn.revision)
        for kv in txn.kvs:
            if kv.lease_id == lease_id:
                # A retried txn found the key its own lost first try had written.
                return Granted(lease_id, grant.ttl_s, kv.mod_revision)
        self._revoke_quietly(lease_id, deadline)
        holder = None
        for kv in txn.kvs:  # the writer key first, then the claim
            value_now = decode_writer(kv.value)
            if isinstance(value_now, WriterValue):
                holder = value_now.node
                break
        return Refused(holder, txn.revision)

    def _revoke_quietly(self, lease_id: int, deadline: float) -> None:
        revoke_quietly(self._client, lease_id, deadline)

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown:
        try:
            ttl_s = self._client.keepalive(lease_id, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"lease keepalive: {exc.cause}")
        return Alive(ttl_s) if ttl_s > 0 else Gone()

    def release(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        deadline = boot_s() + timeout_s
        key = self._keys.writer
        # At most half the budget, so that the revoke always gets its turn; if the
        # txn's fate is unknown, the revoke deletes a key still attached all the same.
        with contextlib.suppress(EtcdUnavailableError):
            self._client.txn(
                [compare_lease(key, lease_id)],
                [delete_op(key), delete_op(self._keys.claim)],  # the claim was put with it
                [],
                timeout_s / 2,
            )
        try:
            self._client.revoke(lease_id, deadline - boot_s())
        except EtcdUnavailableError as exc:
            return Unknown(f"lease revoke: {exc.cause}")
        return Done()  # revoked now, or gone already: either way nothing is left

    def publish_member(
        self, report: MemberReport, timeout_s: float, lease_id: int | None = None
    ) -> Done | Unknown:
        deadline = boot_s() + timeout_s

        def remaining_s() -> float:
            return deadline - boot_s()

        value = encode_member(report, self._clock.wall_iso(), self._identity)
        try:
            if lease_id is not None:
                # The node's reader lease, kept alive by the loop: the member
                # lease is left to lapse (nothing is under it any more).
                self._member_lease = None
                return self._put_report(value, lease_id, remaining_s)
            lease_id = self._member_lease
            if lease_id is not None and self._client.keepalive(lease_id, remaining_s()) <= 0:
                lease_id = None
            if lease_id is None:
                grant = self._client.grant(self._member_ttl_s, remaining_s())
                lease_id = self._member_lease = grant.lease_id
            return self._put_report(value, lease_id, remaining_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"member publish: {exc.cause}")

    def keep_member(self, timeout_s: float) -> Alive | Gone | Unknown:
        lease_id = self._member_lease
        if lease_id is None:
            return Gone()
        try:
            ttl_s = self._client.keepalive(lease_id, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"member lease keepalive: {exc.cause}")
        if ttl_s <= 0:
            self._member_lease = None
            return Gone()
        return Alive(ttl_s)

    def _put_report(
        self, value: bytes, lease_id: int, remaining_s: Callable[[], float]
    ) -> Done | Unknown:
        """Put the report if the key is ours already (under our member lease),
        or free, or left by this sidecar's previous process; never over a
        live report of a twin using the same node name."""
        key = self._member_key
        put = [put_op(key, value, lease_id)]
        txn = self._client.txn([compare_lease(key, lease_id)], put, [range_op(key)], remaining_s())
        if txn.succeeded:
            return Done()
        existing = txn.kvs[0] if txn.kvs else None
        if existing is not None and existing.lease_id != 0:
            theirs = member_identity(self._node, decode_member(existing.value))
            if theirs is None or whose(self._node, theirs, self._identity) is Whose.NAME_TAKEN:
                who = theirs.short() if theirs is not None else "a sidecar of another version"
                return Unknown(f"member report not written: {self._node} is in use by {who}")
        seen = [compare_mod_revision(key, existing.mod_revision if existing else 0)]
        if not self._client.txn(seen, put, [], remaining_s()).succeeded:
            # Changed meanwhile, or our lease expired between keepalive and put.
            self._member_lease = None
            return Unknown("member report changed while publishing; next time anew")
        return Done()

    def read_members(self, timeout_s: float) -> MembersReading | Unknown:
        # One paged range over the cluster's keys: member reports, maintenance
        # flags, and the writer key and the reader pool at the same revision.
        try:
            revision, kvs = read_all(self._client, self._keys, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"members read: {exc.cause}")
        by_key = {kv.key: kv for kv in kvs}
        keys = self._keys
        writer = writer_view(
            by_key.get(keys.writer.encode()), revision, by_key.get(keys.claim.encode())
        )
        members_prefix = self._keys.members_prefix
        mine = self._keys.maintenance(self._node)
        peers = []
        same_name: list[Identity] = []
        maintenance = False
        record: FailsafeRecord | None = None
        for kv in kvs:
            key = kv.key.decode(errors="replace")
            if key == mine:
                maintenance = True
            elif key == self._keys.failsafe:
                found = decode_failsafe_record(kv.value)
                # Garbage lists nobody and names no seat: nobody takes the key
                # until an operator deletes it (safe, and loud in the logs).
                record = found if isinstance(found, FailsafeRecord) else GARBLED_RECORD
            elif key.startswith(members_prefix):
                node = key[len(members_prefix) :]
                value = member_value(kv)
                if node == self._node:
                    identity = member_identity(node, value)
                    if identity is not None and kv.lease_id != 0:
                        same_name.append(identity)
                    continue
                peer = peer_view(node, value)
                if peer is not None:
                    peers.append(peer)
        return MembersReading(
            tuple(peers), maintenance, tuple(same_name), record, writer,
            pool_reading(keys, self._node, revision, kvs),
        )  # fmt: skip

    def write_failsafe_record(self, record: FailsafeRecord, timeout_s: float) -> Done | Unknown:
        """Put the failsafe record, without a lease (it must outlive one)."""
        value = encode_failsafe_record(record, self._clock.wall_iso())
        try:
            self._client.put(self._keys.failsafe, value, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"failsafe record: {exc.cause}")
        return Done()

    def set_maintenance(self, node: str, on: bool, timeout_s: float) -> Done | Unknown:
        """Put (no lease: it stays until removed) or delete ``node``'s flag."""
        key = self._keys.maintenance(node)
        try:
            if on:
                self._client.put(key, encode_maintenance(self._clock.wall_iso()), timeout_s)
            else:
                self._client.txn([], [delete_op(key)], [], timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"maintenance {'on' if on else 'off'}: {exc.cause}")
        return Done()

    def read_cluster(self, timeout_s: float) -> ClusterStatus | Unknown:
        return read_cluster(self._client, self._keys, timeout_s)

    def writer_watcher(self) -> EtcdKeyWatcher:
        keys, node = self._keys, self._node
        return EtcdKeyWatcher(
            self._client, keys.base + "/", lambda e: writer_event_matters(keys, node, e.key)
        )


class EtcdKeyWatcher:
    """``KeyWatcher`` over a client watch of the cluster's keys, waking the
    loop for the changes ``wants`` says yes to; a wake-up, never the state."""

    def __init__(
        self, client: EtcdClient, prefix: str, wants: Callable[[WatchEvent], bool]
    ) -> None:
        self._client, self._prefix, self._wants = client, prefix, wants
        self._watch: Watch | None = None

    def start(self, wake: Callable[[], None]) -> None:
        self.stop()
        self._watch = Watch(self._client, self._prefix, wake, prefix=True, wants=self._wants)
        self._watch.start()

    def stop(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
