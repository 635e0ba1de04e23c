"""In-memory fakes of the ports, sharing one fake clock.

``FakeEtcd`` keeps real lease semantics (TTL expiry deletes attached keys,
revisions grow with every write) so the fakes can be ground truth for the
invariants: who holds the writer key, whose VIP the "kernel" still has.
Faults are set per node: ``ok``, ``refuse`` (answers at once with an
error), ``hang`` (the call eats its whole timeout, then fails) and
``lose_reply`` (the request takes effect, the reply is lost).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from dbvip.identity import Identity, Whose, whose
from dbvip.keys import (
    Garbage,
    decode_member,
    decode_writer,
    encode_member,
    encode_writer,
    pool_member,
)
from dbvip.model import (
    FailsafeRecord,
    KeyAbsent,
    KeyHeld,
    KeyInvalid,
    KeyUnknown,
    PeerView,
    Role,
    RoleReading,
    VipPresence,
    WriterView,
)
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
    VipChanged,
    VipReading,
)
from dbvip.reader_model import PoolReading, ReaderKey

Fault = Literal["ok", "refuse", "hang", "lose_reply"]
WRITER = "/dbvip/c1/writer"
CLAIM = "/dbvip/c1/claim"  # put with the writer key, under the same lease


class FakeClock:
    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def monotonic_s(self) -> float:
        return self.now_s

    def wall_iso(self) -> str:
        return f"T+{self.now_s:.3f}"

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.now_s += seconds


class FakeWaiter:
    """Sleeping advances the fake clock; wake-ups are counted."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.wakes = 0
        self.on_wait: Callable[[], None] = lambda: None

    def wait(self, timeout_s: float) -> None:
        self.clock.advance(max(0.0, timeout_s))
        self.on_wait()

    def wake(self) -> None:
        self.wakes += 1


@dataclass
class _Entry:
    value: bytes
    lease_id: int
    mod_revision: int


# FakeEtcd.snapshot(): its revision, its keys, and each lease's TTL.
EtcdSnapshot = tuple[int, dict[str, _Entry], dict[int, int]]


class FakeEtcd:
    def __init__(self, clock: FakeClock, min_ttl_s: int = 1) -> None:
        self.clock = clock
        self.revision = 1
        self.kv: dict[str, _Entry] = {}
        self.leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, expiry)
        self._next_lease = 0x1000
        self.min_ttl_s = min_ttl_s
        # Member reports by node (their own leases are not modelled: a report
        # stays until its node publishes another), and who wrote each.
        self.members: dict[str, MemberReport] = {}
        self.member_ids: dict[str, Identity] = {}
        self.lease_owner: dict[int, Identity] = {}  # who put the writer key under each lease
        self.maintenance: set[str] = set()  # nodes an operator put in maintenance
        self.failsafe_record: FailsafeRecord | None = None  # put without a lease
        self.member_at: dict[str, float] = {}  # when each member last reported

    def expire(self) -> None:
        now = self.clock.now_s
        for lease_id, (_, expiry) in list(self.leases.items()):
            if expiry <= now:
                self.revoke(lease_id)

    def grant(self, ttl_s: int) -> tuple[int, int]:
        self.expire()
        ttl_s = max(ttl_s, self.min_ttl_s)
        self._next_lease += 1
        self.leases[self._next_lease] = (ttl_s, self.clock.now_s + ttl_s)
        return self._next_lease, ttl_s

    def keepalive(self, lease_id: int) -> int | None:
        self.expire()
        if lease_id not in self.leases:
            return None
        ttl_s, _ = self.leases[lease_id]
        self.leases[lease_id] = (ttl_s, self.clock.now_s + ttl_s)
        return ttl_s

    def revoke(self, lease_id: int) -> None:
        self.leases.pop(lease_id, None)
        for key in [k for k, e in self.kv.items() if e.lease_id == lease_id]:
            del self.kv[key]
            self.revision += 1

    def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        self.expire()
        self.revision += 1
        self.kv[key] = _Entry(value, lease_id, self.revision)
        return self.revision

    def delete(self, key: str) -> None:
        self.expire()
        if self.kv.pop(key, None) is not None:
            self.revision += 1

    def get(self, key: str) -> _Entry | None:
        self.expire()
        return self.kv.get(key)

    def wipe(self) -> None:
        """etcd's data directory deleted: empty, revisions and lease ids anew."""
        self.kv.clear()
        self.leases.clear()
        self.failsafe_record = None
        self.revision = 1
        self._next_lease = 0x1000  # the same ids will be granted again

    def snapshot(self) -> EtcdSnapshot:
        return self.revision, dict(self.kv), {i: ttl for i, (ttl, _) in self.leases.items()}

    def restore(self, snap: EtcdSnapshot) -> None:
        """Restored from a snapshot: its keys and leases again, each lease with
        its whole TTL (as etcd's new leader extends every lease)."""
        self.revision, kv, leases = snap
        self.kv = dict(kv)
        now = self.clock.now_s
        self.leases = {i: (ttl, now + ttl) for i, ttl in leases.items()}

    def report(self, identity: Identity, report: MemberReport) -> bool:
        """Publish a member report, never over a twin's (same name, other
        host or interface); False when refused."""
        node = identity.node
        there = self.member_ids.get(node)
        if there is not None and whose(node, there, identity) is Whose.NAME_TAKEN:
            return False
        self.members[node], self.member_ids[node] = report, identity
        self.member_at[node] = self.clock.now_s
        return True

    def writer_holder(self) -> tuple[str, int] | None:
        """Ground truth: (holder, lease) of the writer key, if valid."""
        entry = self.get(WRITER)
        if entry is None:
            return None
        try:
            return json.loads(entry.value)["node"], entry.lease_id
        except (ValueError, KeyError, TypeError):
            return None


def writer_value(identity: Identity) -> bytes:
    return encode_writer(identity, "198.51.100.10/32", 0, "T")


def parse_writer(entry: _Entry | None, revision: int, claim: _Entry | None = None) -> WriterView:
    if entry is None:
        if claim is None or claim.lease_id == 0:
            return KeyAbsent(revision)
        claimed = parse_writer(claim, revision)
        holder = claimed.holder if isinstance(claimed, KeyHeld) else f"lease {claim.lease_id:x}"
        return KeyAbsent(revision, claimed_by=holder)
    value = decode_writer(entry.value)
    if isinstance(value, Garbage):
        return KeyInvalid(f"not a writer value: {value.detail}", entry.lease_id, revision)
    return KeyHeld(value.node, entry.lease_id, revision, entry.mod_revision, value.identity)


class FakeLeaseStore:
    def __init__(self, etcd: FakeEtcd, node: str, identity: Identity | None = None) -> None:
        self.etcd = etcd
        self.node = node
        # A host per node name unless told: a restart keeps host and interface.
        self.identity = identity or Identity.fresh(node, f"host-{node}", "eth0")
        self._max_revision = 0
        self._reset: str | None = None
        self.fault: Fault = "ok"
        self.calls: list[str] = []
        self.members: list[MemberReport] = []
        self.member_lease = False  # its own member lease, granted by a publish
        self.member_leases: list[int | None] = []  # the lease each report went under

    def _fail(self, timeout_s: float) -> Unknown | None:
        if self.fault == "refuse":
            return Unknown("connection refused")
        if self.fault == "hang":
            self.etcd.clock.advance(timeout_s)
            return Unknown(f"timed out after {timeout_s:.3f} s")
        return None

    def _reply(self) -> Unknown | None:
        if self.fault == "lose_reply":
            return Unknown("reply lost")
        self._saw()
        return None

    def _saw(self) -> None:
        """A reply arrived: its revision, as the real client's History sees it."""
        if self.etcd.revision < self._max_revision:
            self._reset = f"etcd revision {self.etcd.revision} after {self._max_revision}"
            self._max_revision = self.etcd.revision
        self._max_revision = max(self._max_revision, self.etcd.revision)

    def history_reset(self) -> str | None:
        reset, self._reset = self._reset, None
        return reset

    def read_writer(self, timeout_s: float) -> WriterView:
        self.calls.append("read")
        failed = self._fail(timeout_s)
        if failed is not None:
            return KeyUnknown(failed.cause)
        view = parse_writer(self.etcd.get(WRITER), self.etcd.revision, self.etcd.get(CLAIM))
        return KeyUnknown("reply lost") if self._reply() else view

    def acquire(self, ttl_s: int, timeout_s: float) -> Granted | Refused | Unknown:
        self.calls.append("acquire")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        lease_id, granted = self.etcd.grant(ttl_s)
        entry, claim = self.etcd.get(WRITER), self.etcd.get(CLAIM)
        # Like etcd's compare of the lease: absent keys and keys put by hand
        # without a lease alike compare as "attached to no lease".
        if (entry is not None and entry.lease_id) or (claim is not None and claim.lease_id):
            self.etcd.revoke(lease_id)
            holder = None
            for found in (entry, claim):
                view = parse_writer(found, self.etcd.revision)
                if isinstance(view, KeyHeld):
                    holder = view.holder
                    break
            self._saw()
            return Refused(holder, self.etcd.revision)
        revision = self._put_both(lease_id)
        return self._reply() or Granted(lease_id, granted, revision)

    def _put_both(self, lease_id: int) -> int:
        """The writer key and its claim, in one transaction."""
        value = writer_value(self.identity)
        self.etcd.lease_owner[lease_id] = self.identity
        self.etcd.put(CLAIM, value, lease_id)
        revision = self.etcd.put(WRITER, value, lease_id)
        return revision

    def adopt(
        self, lease_id: int, mod_revision: int, ttl_s: int, timeout_s: float
    ) -> Granted | Refused | Unknown:
        self.calls.append("adopt")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        entry = self.etcd.get(WRITER)
        if entry is None or entry.lease_id != lease_id or entry.mod_revision != mod_revision:
            view = parse_writer(entry, self.etcd.revision)
            self._saw()
            return Refused(view.holder if isinstance(view, KeyHeld) else None, self.etcd.revision)
        new_id, granted = self.etcd.grant(ttl_s)
        revision = self._put_both(new_id)
        self.etcd.revoke(lease_id)  # carries nothing any more
        return self._reply() or Granted(new_id, granted, revision)

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown:
        self.calls.append("keepalive")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        ttl_s = self.etcd.keepalive(lease_id)
        if self._reply():
            return Unknown("reply lost")
        return Gone() if ttl_s is None else Alive(ttl_s)

    def release(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        self.calls.append("release")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        entry = self.etcd.get(WRITER)
        if entry is not None and entry.lease_id == lease_id:
            self.etcd.delete(WRITER)
            self.etcd.delete(CLAIM)
        self.etcd.revoke(lease_id)
        return self._reply() or Done()

    def publish_member(
        self, report: MemberReport, timeout_s: float, lease_id: int | None = None
    ) -> Done | Unknown:
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        if not self.etcd.report(self.identity, report):
            return Unknown(f"member report not written: {self.node} is in use by a twin")
        self.members.append(report)
        self.member_leases.append(lease_id)
        self.member_lease = lease_id is None  # its own lease, or the reader lease given
        return Done()

    def keep_member(self, timeout_s: float) -> Alive | Gone | Unknown:
        """The member lease is not modelled beyond "granted by a publish":
        a keepalive is counted, never a write."""
        self.calls.append("keep_member")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        return Alive(self.etcd.min_ttl_s) if self.member_lease else Gone()

    def read_members(self, timeout_s: float) -> MembersReading | Unknown:
        self.calls.append("members")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        peers = tuple(
            PeerView(node, Role(r.role), r.timeline, self.etcd.member_ids.get(node))
            for node, r in sorted(self.etcd.members.items())
            if node != self.node
        )
        there = self.etcd.member_ids.get(self.node)
        same_name = (there,) if there is not None else ()
        maintenance = self.node in self.etcd.maintenance
        # As the real store: the writer key and the pool from the same read.
        writer = parse_writer(self.etcd.get(WRITER), self.etcd.revision, self.etcd.get(CLAIM))
        pool = pool_of(self.etcd, self.node)
        self._saw()  # its reply's revision, as the real client's History sees it
        return MembersReading(
            peers, maintenance, same_name, self.etcd.failsafe_record, writer, pool
        )

    def write_failsafe_record(self, record: FailsafeRecord, timeout_s: float) -> Done | Unknown:
        self.calls.append("failsafe_record")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        self.etcd.failsafe_record = record
        return self._reply() or Done()

    def close(self) -> None:
        pass


@dataclass
class FakeKernel:
    """Every node's VIP, with lifetimes that expire like the kernel's
    (``lateness_s`` late, as the real one is up to about a second)."""

    clock: FakeClock
    lateness_s: float = 0.0
    # node -> expiry instant (inf: no lifetime)
    vips: dict[str, float] = field(default_factory=dict)

    def holders(self) -> set[str]:
        now = self.clock.now_s
        for node, expiry in list(self.vips.items()):
            if expiry + self.lateness_s <= now:
                del self.vips[node]
        return set(self.vips)


class FakeVipDriver:
    def __init__(self, kernel: FakeKernel, node: str) -> None:
        self.kernel = kernel
        self.node = node
        self.fault: Literal["ok", "missing", "refuse"] = "ok"
        self.ops: list[tuple[str, float]] = []

    def _problem(self) -> str | None:
        if self.fault == "missing":
            return "interface eth0 not found"
        if self.fault == "refuse":
            return "operation not permitted (CAP_NET_ADMIN)"
        return None

    def observe(self) -> VipReading:
        problem = self._problem()
        if problem:
            return VipReading(VipPresence.UNKNOWN, problem)
        present = self.node in self.kernel.holders()
        return VipReading(VipPresence.PRESENT if present else VipPresence.ABSENT)

    def add(self, lifetime_s: int) -> VipChanged | Unknown:
        problem = self._problem()
        if problem:
            return Unknown(problem)
        assert lifetime_s >= 1, lifetime_s
        was = self.node in self.kernel.holders()
        self.kernel.vips[self.node] = self.kernel.clock.now_s + lifetime_s
        self.ops.append(("add", self.kernel.clock.now_s))
        return VipChanged(was_present=was)

    def remove(self, before_delete: Callable[[], None] | None = None) -> VipChanged | Unknown:
        problem = self._problem()
        if problem:
            return Unknown(problem)
        if before_delete is not None and self.node in self.kernel.holders():
            before_delete()
        was = self.kernel.vips.pop(self.node, None) is not None
        self.ops.append(("remove", self.kernel.clock.now_s))
        return VipChanged(was_present=was)

    def close(self) -> None:
        pass


class FakeProbe:
    def __init__(self, clock: FakeClock, role: Role = Role.PRIMARY) -> None:
        self.clock = clock
        self.role = role
        self.timeline = 1
        self.hang = False
        self.probes = 0
        self.lsn = "0/3000000"
        self.streaming: bool | None = True  # a replica's WAL receiver

    def probe(self, timeout_s: float) -> RoleReading:
        self.probes += 1
        if self.hang:
            self.clock.advance(timeout_s)
            return RoleReading(Role.UNKNOWN, cause=f"probe timed out after {timeout_s} s")
        if self.role is Role.UNKNOWN:
            return RoleReading(Role.UNKNOWN, cause="connection refused")
        if self.role is Role.DOWN:
            return RoleReading(Role.DOWN, cause="No such file or directory")
        streaming = self.streaming if self.role is Role.REPLICA else None
        return RoleReading(self.role, timeline=self.timeline, lsn=self.lsn, streaming=streaming)

    def close(self) -> None:
        pass


class FakeAnnouncer:
    """Records announcements and whether the node had the VIP at the time."""

    def __init__(self, kernel: FakeKernel, node: str) -> None:
        self.kernel = kernel
        self.node = node
        self.sent: list[tuple[float, bool]] = []

    def announce(self) -> Done | Unknown:
        self.sent.append((self.kernel.clock.now_s, self.node in self.kernel.holders()))
        return Done()

    def close(self) -> None:
        pass


READERS = "/dbvip/c1/readers/"
READER_CLAIMS = "/dbvip/c1/reader-claims/"
# A member report without a refresh for this long is gone (its lease expired).
MEMBER_TTL_S = 10.0


def reader_value(identity: Identity, vip: str, lease_id: int) -> bytes:
    # The same fields as the writer value (node, identity, vip, lease, since).
    return encode_writer(identity, vip, lease_id, "T")


def parse_reader(vip: str, entry: _Entry | None, claim: _Entry | None) -> ReaderKey | None:
    found, claim_only = (entry, False) if entry is not None else (claim, True)
    if found is None or (claim_only and found.lease_id == 0):
        return None
    value = decode_writer(found.value)
    if isinstance(value, Garbage):
        return ReaderKey(vip, None, None, found.lease_id, found.mod_revision, claim_only)
    return ReaderKey(
        vip, value.node, value.identity, found.lease_id, found.mod_revision, claim_only
    )


def pool_of(etcd: FakeEtcd, me: str) -> PoolReading:
    """The reader pool as ``me`` reads it from the cluster's keys."""
    now = etcd.clock.now_s
    etcd.expire()
    vips = {k[len(READERS) :] for k in etcd.kv if k.startswith(READERS)}
    vips |= {k[len(READER_CLAIMS) :] for k in etcd.kv if k.startswith(READER_CLAIMS)}
    keys = tuple(
        k
        for v in sorted(vips)
        if (k := parse_reader(v, etcd.kv.get(READERS + v), etcd.kv.get(READER_CLAIMS + v)))
    )
    # Through the real codec, so the fake reads what the adapter reads.
    members = tuple(
        m
        for node, r in sorted(etcd.members.items())
        if node != me and now - etcd.member_at.get(node, now) < MEMBER_TTL_S
        if (m := pool_member(node, decode_member(encode_member(r, "", etcd.member_ids[node]))))
    )
    holder = etcd.writer_holder()
    return PoolReading(etcd.revision, keys, members, holder[0] if holder else None)


class FakeReaderStore:
    """The reader keys over ``FakeEtcd``; shares its lease store's faults and identity."""

    def __init__(self, lease_store: FakeLeaseStore) -> None:
        self.lease_store = lease_store
        self.etcd = lease_store.etcd
        self.calls: list[str] = []

    @property
    def identity(self) -> Identity:
        return self.lease_store.identity

    def _fail(self, timeout_s: float) -> Unknown | None:
        return self.lease_store._fail(timeout_s)

    def _reply(self) -> Unknown | None:
        return self.lease_store._reply()

    def read_pool(self, timeout_s: float) -> PoolReading | Unknown:
        self.calls.append("read_pool")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        reading = pool_of(self.etcd, self.identity.node)
        return self._reply() or reading

    def grant_reader_lease(self, ttl_s: int, timeout_s: float) -> Granted | Unknown:
        self.calls.append("grant")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        lease_id, granted = self.etcd.grant(ttl_s)
        self.etcd.lease_owner[lease_id] = self.identity
        return self._reply() or Granted(lease_id, granted, self.etcd.revision)

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown:
        return self.lease_store.keepalive(lease_id, timeout_s)

    def take_reader(
        self, vip: str, lease_id: int, mod_revision: int, timeout_s: float
    ) -> Taken | Refused | Unknown:
        self.calls.append("take")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        etcd = self.etcd
        etcd.expire()
        entry, claim = etcd.kv.get(READERS + vip), etcd.kv.get(READER_CLAIMS + vip)
        now_mod = entry.mod_revision if entry is not None else 0
        if now_mod != mod_revision or claim is not None or lease_id not in etcd.leases:
            there = parse_reader(vip, entry, claim)
            self.lease_store._saw()
            return Refused(there.holder if there else None, etcd.revision)
        value = reader_value(self.identity, vip, lease_id)
        etcd.put(READER_CLAIMS + vip, value, lease_id)
        revision = etcd.put(READERS + vip, value, lease_id)
        return self._reply() or Taken(revision)

    def give_back_reader(self, vip: str, lease_id: int, timeout_s: float) -> Done | Unknown:
        self.calls.append("give_back")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        for key in (READERS + vip, READER_CLAIMS + vip):
            entry = self.etcd.get(key)
            if entry is not None and entry.lease_id == lease_id:
                self.etcd.delete(key)
        return self._reply() or Done()

    def revoke(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        self.calls.append("revoke")
        failed = self._fail(timeout_s)
        if failed is not None:
            return failed
        self.etcd.revoke(lease_id)
        return self._reply() or Done()

    def holders(self) -> dict[str, str]:
        """Ground truth: VIP -> the node its reader key names."""
        out = {}
        for key, entry in self.etcd.kv.items():
            if key.startswith(READERS):
                found = parse_reader(key[len(READERS) :], entry, None)
                if found is not None and found.holder is not None:
                    out[found.vip] = found.holder
        return out
