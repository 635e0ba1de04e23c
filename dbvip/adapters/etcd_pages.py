"""What the etcd stores share: reading a whole cluster's keys in pages, and
cutting what dbvip did not write down to size.

The lease store (writer key, member reports, ``dbvip status``) and the
reader store (reader keys, the pool) both read every key of a cluster in
one paged range at one revision; both go through here.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from dbvip.adapters.etcd_client import (
    EtcdClient,
    EtcdUnavailableError,
)
from dbvip.adapters.etcd_wire import (
    KeyValue,
)
from dbvip.boottime import boot_s
from dbvip.keys import Garbage, KeyLayout, decode_member

# Keys per range request when reading a whole cluster. etcd keeps a value to
# its --max-request-bytes (1.5 MiB by default), so a page is at most 16 x 1.5
# MiB = 24 MiB (32 MiB base64), under the client's 64 MiB reply cap, for any
# number of members: 70 junk values of 1 MB no longer make the one reply
# exceed it. Paging keeps memory bounded too; reading dbvip's own ~200-byte
# values stays one request for up to 16 keys and ceil(n/16) for more. 16, not
# 8: three members with four reader VIPs are 13 keys (a report each, the
# writer key and its claim, a key and a claim per reader VIP), and every
# page is one more request to etcd on every periodic read of every sidecar.
PAGE_KEYS = 16
# A member report or a reader value dbvip writes is about 200 bytes: one past
# this is not one, and only this much of it is kept while the other pages
# are read.
MAX_VALUE_BYTES = 64 * 1024


def member_value(kv: KeyValue) -> dict[str, Any] | Garbage:
    if len(kv.value) > MAX_VALUE_BYTES:
        return Garbage(f"over {MAX_VALUE_BYTES} bytes: not a member report")
    return decode_member(kv.value)


def read_all(client: EtcdClient, keys: KeyLayout, timeout_s: float) -> tuple[int, list[KeyValue]]:
    """Every key of the cluster as of one revision, PAGE_KEYS at a time, all
    within ``timeout_s``; member reports and reader values cut just past the
    longest one may be, so junk costs one page of memory, not all of it.
    Raises ``EtcdUnavailableError``."""
    deadline = boot_s() + timeout_s
    prefix = keys.base + "/"
    start = prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])  # the first key after the prefix
    cut = tuple(
        p.encode() for p in (keys.members_prefix, keys.readers_prefix, keys.reader_claims_prefix)
    )
    revision = 0
    kvs: list[KeyValue] = []
    while True:
        remaining_s = deadline - boot_s()
        if remaining_s <= 0:
            raise EtcdUnavailableError(f"reading {prefix} took over {timeout_s:g} s")
        page = client.range(start, remaining_s, range_end=end, limit=PAGE_KEYS, revision=revision)
        revision = revision or page.revision
        kvs.extend(
            replace(kv, value=kv.value[: MAX_VALUE_BYTES + 1]) if kv.key.startswith(cut) else kv
            for kv in page.kvs
        )
        if not page.more or not page.kvs:
            return revision, kvs
        start = page.kvs[-1].key + b"\0"  # the next key after the last one read


def revoke_quietly(client: EtcdClient, lease_id: int, deadline: float) -> None:
    """Best effort: a lease left behind carries no key and dies with its TTL."""
    remaining_s = deadline - boot_s()
    if remaining_s > 0:
        with contextlib.suppress(EtcdUnavailableError):
            client.revoke(lease_id, remaining_s)
