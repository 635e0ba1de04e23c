"""What ``dbvip status`` reads from etcd: every key of a cluster in one
consistent read (paged), each with its lease's remaining TTL, decoded
without trusting any of it (garbage is shown as garbage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbvip.adapters.etcd_client import (
    EtcdClient,
    EtcdUnavailableError,
)
from dbvip.adapters.etcd_pages import member_value, read_all
from dbvip.adapters.etcd_readers import reader_entries, reader_value
from dbvip.adapters.etcd_wire import (
    KeyValue,
)
from dbvip.boottime import boot_s
from dbvip.keys import Garbage, KeyLayout, WriterValue, decode_writer
from dbvip.model import KeyAbsent, KeyHeld, KeyInvalid, WriterView
from dbvip.ports import Unknown


@dataclass(frozen=True)
class MemberStatus:
    node: str
    value: dict[str, Any] | Garbage
    lease_id: int
    ttl_s: int | None  # remaining TTL of its lease; -1 gone, None unknown or no lease


@dataclass(frozen=True)
class ReaderStatus:
    """One reader key (or its claim alone) as ``dbvip status`` shows it."""

    vip: str  # the address, from the key
    value: WriterValue | Garbage
    lease_id: int
    ttl_s: int | None  # as MemberStatus.ttl_s
    claim_only: bool = False


@dataclass(frozen=True)
class ClusterStatus:
    """What ``dbvip status`` shows: one consistent read plus lease TTLs."""

    writer: WriterView
    writer_ttl_s: int | None  # as MemberStatus.ttl_s, for the writer key's lease
    members: tuple[MemberStatus, ...]
    maintenance: tuple[str, ...] = ()  # nodes asked to stay away from the VIP
    writer_value: WriterValue | Garbage | None = None  # the writer key's value, decoded
    readers: tuple[ReaderStatus, ...] = ()  # every reader key, by address


def writer_view(kv: KeyValue | None, revision: int, claim: KeyValue | None = None) -> WriterView:
    if kv is None:
        if claim is None or claim.lease_id == 0:
            return KeyAbsent(revision)  # a claim without a lease backs no VIP
        value = decode_writer(claim.value)
        holder = value.node if isinstance(value, WriterValue) else f"lease {claim.lease_id:x}"
        return KeyAbsent(revision, claimed_by=holder)
    value = decode_writer(kv.value)
    if isinstance(value, Garbage):
        return KeyInvalid(value.detail, kv.lease_id, revision)
    return KeyHeld(value.node, kv.lease_id, revision, kv.mod_revision, value.identity)


def read_cluster(client: EtcdClient, keys: KeyLayout, timeout_s: float) -> ClusterStatus | Unknown:
    """What ``dbvip status`` shows, in one consistent read plus the leases' TTLs."""
    deadline = boot_s() + timeout_s
    try:
        revision, kvs = read_all(client, keys, timeout_s)
    except EtcdUnavailableError as exc:
        return Unknown(exc.cause)
    by_key = {kv.key.decode(errors="replace"): kv for kv in kvs}
    writer_kv = by_key.get(keys.writer)

    ttls: dict[int, int | None] = {}  # a node's reader keys share one lease

    def ttl_s(lease_id: int) -> int | None:
        if lease_id == 0 or deadline <= boot_s():
            return None
        if lease_id not in ttls:
            try:
                ttls[lease_id] = client.time_to_live(lease_id, deadline - boot_s()).ttl_s
            except EtcdUnavailableError:
                return None
        return ttls[lease_id]

    members_prefix = keys.members_prefix
    members = tuple(
        MemberStatus(name, member_value(kv), kv.lease_id, ttl_s(kv.lease_id))
        for key, kv in sorted(by_key.items())
        if key.startswith(members_prefix) and (name := key[len(members_prefix) :])
    )
    writer = writer_view(writer_kv, revision, by_key.get(keys.claim))
    maintenance_prefix = keys.maintenance_prefix
    maintenance = tuple(
        key[len(maintenance_prefix) :]
        for key in sorted(by_key)
        if key.startswith(maintenance_prefix) and key != maintenance_prefix
    )
    readers = tuple(
        ReaderStatus(vip, reader_value(kv, vip), kv.lease_id, ttl_s(kv.lease_id), claim_only)
        for vip, kv, claim_only in reader_entries(keys, kvs)
    )
    return ClusterStatus(
        writer,
        ttl_s(writer_kv.lease_id) if writer_kv else None,
        members,
        maintenance,
        decode_writer(writer_kv.value) if writer_kv else None,
        readers,
    )
