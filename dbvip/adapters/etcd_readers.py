"""``ReaderStore`` on etcd: the reader keys of one node of one cluster, its
reader lease, and a watch that wakes the pool.

It shares the node's ``EtcdClient`` with the lease store (one connection
pool, one record of etcd's history). Every method returns by its
``timeout_s`` and maps "could not find out" to ``Unknown``, never to a "no".

Each reader VIP has two keys, put together in one transaction under the
holder's reader lease: ``readers/<address>``, which names the holder, and
``reader-claims/<address>``, which makes a reader key deleted by hand free
nothing until the holder's lease ends (as the writer key's claim does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dbvip.adapters.etcd_client import (
    EtcdClient,
    EtcdUnavailableError,
)
from dbvip.adapters.etcd_pages import MAX_VALUE_BYTES, member_value, read_all
from dbvip.adapters.etcd_watch import Watch, WatchEvent
from dbvip.adapters.etcd_wire import (
    KeyValue,
    compare_lease,
    compare_mod_revision,
    delete_op,
    put_op,
    range_op,
)
from dbvip.boottime import boot_s
from dbvip.identity import Identity
from dbvip.keys import (
    Garbage,
    KeyLayout,
    ReaderValue,
    WriterValue,
    decode_reader,
    decode_writer,
    encode_reader,
    pool_event_matters,
    pool_member,
)
from dbvip.ports import Alive, Clock, Done, Gone, Granted, Refused, Taken, Unknown
from dbvip.reader_model import PoolMember, PoolReading, ReaderKey


def _vip_of(key: str, prefix: str) -> str | None:
    """The address a reader key (or claim) names, or None when its last part
    is not an address spelled as dbvip spells it: such a key guards nothing."""
    name = key[len(prefix) :]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    return name if address.compressed == name else None


def reader_value(kv: KeyValue, vip: str) -> ReaderValue | Garbage:
    if len(kv.value) > MAX_VALUE_BYTES:
        return Garbage(f"over {MAX_VALUE_BYTES} bytes: not a reader value")
    return decode_reader(kv.value, vip)


def reader_entries(keys: KeyLayout, kvs: list[KeyValue]) -> list[tuple[str, KeyValue, bool]]:
    """(address, key, claim only) of each reader key among a cluster's keys,
    by address; a claim whose key is gone stands in for it while its lease
    lives. A claim attached to no lease was put by hand and backs no VIP:
    left out, as are keys whose last part is not an address as dbvip
    spells it."""
    found: dict[str, tuple[str, KeyValue, bool]] = {}
    claims: dict[str, KeyValue] = {}
    for kv in kvs:
        key = kv.key.decode(errors="replace")
        if key.startswith(keys.readers_prefix):
            vip = _vip_of(key, keys.readers_prefix)
            if vip is not None:
                found[vip] = (vip, kv, False)
        elif key.startswith(keys.reader_claims_prefix):
            vip = _vip_of(key, keys.reader_claims_prefix)
            if vip is not None and kv.lease_id != 0:
                claims[vip] = kv
    for vip, kv in claims.items():
        found.setdefault(vip, (vip, kv, True))
    return [found[vip] for vip in sorted(found)]


def reader_keys(keys: KeyLayout, kvs: list[KeyValue]) -> tuple[ReaderKey, ...]:
    """The reader keys among a cluster's keys, as the pool reads them."""
    out = []
    for vip, kv, claim_only in reader_entries(keys, kvs):
        value = reader_value(kv, vip)
        holder, identity = (
            (None, None) if isinstance(value, Garbage) else (value.node, value.identity)
        )
        out.append(ReaderKey(vip, holder, identity, kv.lease_id, kv.mod_revision, claim_only))
    return tuple(out)


def _writer_holder(writer: KeyValue | None, claim: KeyValue | None) -> str | None:
    """The node the writer key names; with the key deleted by hand, the one
    its claim names while the claim's lease lives (it may still have the VIP)."""
    kv = writer if writer is not None else claim
    if kv is None or (writer is None and kv.lease_id == 0):
        return None
    value = decode_writer(kv.value[: MAX_VALUE_BYTES + 1])
    return value.node if isinstance(value, WriterValue) else None


def pool_reading(keys: KeyLayout, node: str, revision: int, kvs: list[KeyValue]) -> PoolReading:
    """The pool as ``node`` reads it from one read of its cluster's keys."""
    members: list[PoolMember] = []
    by_key: dict[str, KeyValue] = {}
    for kv in kvs:
        key = kv.key.decode(errors="replace")
        by_key[key] = kv
        if key.startswith(keys.members_prefix):
            other = key[len(keys.members_prefix) :]
            if other and other != node:
                member = pool_member(other, member_value(kv))
                if member is not None:
                    members.append(member)
    return PoolReading(
        revision,
        reader_keys(keys, kvs),
        tuple(members),
        _writer_holder(by_key.get(keys.writer), by_key.get(keys.claim)),
    )


class EtcdReaderStore:
    def __init__(
        self, client: EtcdClient, keys: KeyLayout, identity: Identity, clock: Clock
    ) -> None:
        self._client, self._keys, self._identity, self._clock = client, keys, identity, clock
        keys.member(identity.node)  # checks the node name

    # -- reading ------------------------------------------------------------

    def read_pool(self, timeout_s: float) -> PoolReading | Unknown:
        try:
            revision, kvs = read_all(self._client, self._keys, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"pool read: {exc.cause}")
        return pool_reading(self._keys, self._identity.node, revision, kvs)

    # -- the reader lease ---------------------------------------------------

    def grant_reader_lease(self, ttl_s: int, timeout_s: float) -> Granted | Unknown:
        try:
            grant = self._client.grant(ttl_s, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"reader lease grant: {exc.cause}")
        return Granted(grant.lease_id, grant.ttl_s, grant.revision)

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown:
        try:
            ttl_s = self._client.keepalive(lease_id, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"reader lease keepalive: {exc.cause}")
        return Alive(ttl_s) if ttl_s > 0 else Gone()

    def revoke(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        try:
            self._client.revoke(lease_id, timeout_s)
        except EtcdUnavailableError as exc:
            return Unknown(f"reader lease revoke: {exc.cause}")
        return Done()  # revoked now, or gone already: its keys are gone either way

    # -- reader keys ----------------------------------------------------------

    def take_reader(
        self, vip: str, lease_id: int, mod_revision: int, timeout_s: float
    ) -> Taken | Refused | Unknown:
        key, claim = self._keys.reader(vip), self._keys.reader_claim(vip)
        value = encode_reader(self._identity, vip, lease_id, self._clock.wall_iso())
        # The claim is compared as the writer's is: "attached to no lease" is
        # true of an absent claim (etcd compares a missing key as a zero
        # one) and of one put by hand, which backs no VIP; a live holder's
        # claim refuses, even with its reader key deleted by hand.
        compare = [compare_mod_revision(key, mod_revision), compare_lease(claim, 0)]
        try:
            txn = self._client.txn(
                compare,
                [put_op(key, value, lease_id), put_op(claim, value, lease_id)],
                [range_op(key), range_op(claim)],
                timeout_s,
            )
        except EtcdUnavailableError as exc:
            # The put may have happened: the policy reads the key again.
            return Unknown(f"reader take {vip}: {exc.cause}")
        if txn.succeeded:
            return Taken(txn.revision)
        found = {kv.key.decode(errors="replace"): kv for kv in txn.kvs}
        mine = found.get(key)
        if mine is not None and mine.lease_id == lease_id:
            # A retried txn found the key its own lost first try had written.
            return Taken(mine.mod_revision)
        return Refused(self._holder(vip, found.get(key), found.get(claim)), txn.revision)

    def _holder(self, vip: str, key: KeyValue | None, claim: KeyValue | None) -> str | None:
        """Who the key names, else who the claim names; None for garbage."""
        for kv in (key, claim):
            if kv is not None:
                value = reader_value(kv, vip)
                if isinstance(value, WriterValue):
                    return value.node
        return None

    def give_back_reader(self, vip: str, lease_id: int, timeout_s: float) -> Done | Unknown:
        deadline = boot_s() + timeout_s
        key, claim = self._keys.reader(vip), self._keys.reader_claim(vip)
        both = [compare_lease(key, lease_id), compare_lease(claim, lease_id)]
        try:
            # Usually both are ours: one round trip, one fsync (a clean hand-off
            # waits for it). Else each goes only if ours, key first: until the
            # claim goes, nobody may take the VIP.
            if self._client.txn(both, [delete_op(key), delete_op(claim)], [], timeout_s).succeeded:
                return Done()
            for one in (key, claim):
                mine = [compare_lease(one, lease_id)]
                self._client.txn(mine, [delete_op(one)], [], deadline - boot_s())
        except EtcdUnavailableError as exc:
            return Unknown(f"reader give back {vip}: {exc.cause}")
        return Done()

    # -- the wake-up ----------------------------------------------------------

    def pool_watcher(self) -> EtcdPoolWatcher:
        return EtcdPoolWatcher(self._client, self._keys)


class EtcdPoolWatcher:
    """``KeyWatcher`` over the cluster's keys, waking the loop only for what
    can change the pool's reading (``keys.pool_event_matters``): never for a
    member's periodic LSN refresh. A wake-up, never the state."""

    def __init__(self, client: EtcdClient, keys: KeyLayout) -> None:
        self._client, self._keys = client, keys
        self._watch: Watch | None = None

    def matters(self, event: WatchEvent) -> bool:
        return pool_event_matters(self._keys, event.key, event.value, event.prev)

    def start(self, wake: Callable[[], None]) -> None:
        self.stop()
        self._watch = Watch(
            self._client, self._keys.base + "/", wake, prefix=True, wants=self.matters
        )
        self._watch.start()

    def stop(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
