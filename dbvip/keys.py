"""Where dbvip keeps its state in etcd, and what the values look like.

Pure: no I/O. Values are compact JSON so that plain ``etcdctl get`` shows them
readably. Decoding the writer value is strict: anything that does not name a
holder unambiguously is garbage, reported with a detail, never guessed at.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from dbvip.identity import FORMAT, OLDEST_FORMAT, Identity
from dbvip.model import FailsafeRecord, PeerView, Role, Seat
from dbvip.ports import MemberReport
from dbvip.reader_model import IN_POOL, IN_POOL_NOT_STREAMING, PoolMember

DEFAULT_PREFIX = "/dbvip"
_LSN_RE = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")


def _check_name(what: str, name: str) -> str:
    if not name or "/" in name or name != name.strip() or not name.isprintable():
        raise ValueError(f"{what} {name!r} must be a non-empty printable name without '/'")
    return name


@dataclass(frozen=True)
class KeyLayout:
    """``/<prefix>/<cluster>/{writer, claim, readers/<vip>, reader-claims/<vip>,
    members/<node>, maintenance/<node>}``."""

    cluster: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        _check_name("cluster", self.cluster)
        parts = self.prefix.strip("/").split("/")
        if not self.prefix.startswith("/") or any(not p or p != p.strip() for p in parts):
            raise ValueError(f"prefix {self.prefix!r} must look like /name or /name/name")
        # One canonical spelling, so that "/dbvip/" and "/dbvip" share keys.
        object.__setattr__(self, "prefix", "/" + "/".join(parts))

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.cluster}"

    @property
    def writer(self) -> str:
        return f"{self.base}/writer"

    @property
    def claim(self) -> str:
        """Written with the writer key, under the same lease: a writer key
        deleted by hand frees nothing until the holder's lease ends."""
        return f"{self.base}/claim"

    @property
    def failsafe(self) -> str:
        """The failsafe record (no lease): see ``dbvip.failsafe``."""
        return f"{self.base}/failsafe"

    @property
    def members_prefix(self) -> str:
        return f"{self.base}/members/"

    def member(self, node: str) -> str:
        return self.members_prefix + _check_name("node", node)

    @property
    def maintenance_prefix(self) -> str:
        return f"{self.base}/maintenance/"

    def maintenance(self, node: str) -> str:
        """Present (any value, no lease): ``node`` stays away from the VIP."""
        return self.maintenance_prefix + _check_name("node", node)

    @property
    def readers_prefix(self) -> str:
        return f"{self.base}/readers/"

    def reader(self, vip: str) -> str:
        # The address alone names the key: "198.51.100.7/24" and "198.51.100.7"
        # are the same VIP, and IPv6 is spelled one way only.
        return self.readers_prefix + _address(vip)

    @property
    def reader_claims_prefix(self) -> str:
        return f"{self.base}/reader-claims/"

    def reader_claim(self, vip: str) -> str:
        """Written with the reader key, under the same lease: a reader key
        deleted by hand frees nothing until the holder's lease ends."""
        return self.reader_claims_prefix + _address(vip)


def _address(vip: str) -> str:
    return ipaddress.ip_interface(vip).ip.compressed


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _identity_fields(identity: Identity) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "instance": identity.instance,
        "host": identity.host,
        "interface": identity.interface,
    }


def encode_writer(identity: Identity, vip: str, lease_id: int, since: str) -> bytes:
    """The writer value (and the claim's); the lease id in hex, as ``etcdctl
    lease list`` prints it."""
    fields = {"node": identity.node, **_identity_fields(identity)}
    return _compact({**fields, "vip": vip, "lease": format(lease_id, "x"), "since": since})


def encode_reader(identity: Identity, vip: str, lease_id: int, since: str) -> bytes:
    """A reader value (and its claim's): the writer value's fields."""
    return encode_writer(identity, vip, lease_id, since)


def member_value(
    report: MemberReport, updated: str, identity: Identity | None = None
) -> dict[str, Any]:
    """A member value as data: what ``/members/<node>`` holds. The pool
    fields are left out when no reader VIPs are configured: a value without
    them is what every earlier version wrote and reads."""
    pool: dict[str, Any] = {}
    if report.pool:
        pool["pool"] = report.pool
    if report.lag_bytes is not None:
        pool["lag_bytes"] = report.lag_bytes
    return {
        **(_identity_fields(identity) if identity is not None else {}),
        "role": report.role,
        "timeline": report.timeline,
        "lsn": report.lsn,
        "vip": list(report.vips),
        "reason": report.reason,
        **pool,
        "updated": updated,
        **({"failsafe": report.failsafe} if report.failsafe else {}),
    }


def encode_maintenance(since: str) -> bytes:
    return _compact({"since": since, "by": "dbvip maintenance on"})


def encode_member(report: MemberReport, updated: str, identity: Identity | None = None) -> bytes:
    return _compact(member_value(report, updated, identity))


@dataclass(frozen=True)
class WriterValue:
    """A well-formed writer value. Only ``node`` is required (format 1)."""

    node: str
    vip: str | None = None
    lease: str | None = None
    since: str | None = None
    format: int = OLDEST_FORMAT
    identity: Identity | None = None  # from format 2 on


@dataclass(frozen=True)
class Garbage:
    """A value that is not ours to interpret; ``detail`` says why."""

    detail: str


def _json_object(raw: bytes) -> dict[str, Any] | Garbage:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Garbage(f"not UTF-8: {raw[:40]!r}")
    except (ValueError, RecursionError):  # deep nesting is garbage, not a crash
        return Garbage(f"not JSON: {raw[:40]!r}")
    if not isinstance(obj, dict):
        return Garbage(f"not a JSON object but {type(obj).__name__}")
    return obj


def _format(obj: dict[str, Any]) -> int | Garbage:
    version = obj.get("format", OLDEST_FORMAT)  # today's values have none: format 1
    if isinstance(version, bool) or not isinstance(version, int) or version < OLDEST_FORMAT:
        return Garbage(f"'format' {version!r} is not a format version")
    return version


def _identity(node: str, obj: dict[str, Any]) -> Identity | Garbage:
    parts: list[str] = []
    for name in ("instance", "host", "interface"):
        part = obj.get(name)
        if not isinstance(part, str) or not part:
            return Garbage(f"{name!r} is missing or not a name")
        parts.append(part)
    return Identity(node, *parts)


def decode_writer(raw: bytes) -> WriterValue | Garbage:
    obj = _json_object(raw)
    if isinstance(obj, Garbage):
        return obj
    version = _format(obj)
    if isinstance(version, Garbage):
        return version
    node = obj.get("node")
    if version > FORMAT:
        # Written by a newer dbvip (a rolling upgrade): held by another
        # identity, whatever else it says; never garbage to delete.
        named = node if isinstance(node, str) and node.strip() else f"(format {version})"
        return WriterValue(named, format=version)
    if not isinstance(node, str):
        return Garbage("'node' is missing" if node is None else "'node' is not a string")
    if not node or node != node.strip():
        return Garbage(f"'node' {node!r} is empty or padded")
    optional: dict[str, str | None] = {}
    for name in ("vip", "lease", "since"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            return Garbage(f"{name!r} is not a string")
        optional[name] = value
    identity = None
    if version > OLDEST_FORMAT:
        found = _identity(node, obj)
        if isinstance(found, Garbage):
            return found
        identity = found
    return WriterValue(
        node, optional["vip"], optional["lease"], optional["since"], version, identity
    )


# A reader value holds the writer value's fields.
ReaderValue = WriterValue


def decode_reader(raw: bytes, vip: str) -> ReaderValue | Garbage:
    """The value of the reader key (or claim) of ``vip``. Strict as the
    writer's, and a value naming another VIP than its key is garbage too:
    one of the two was written by hand, and which one is not to be guessed."""
    value = decode_writer(raw)
    if isinstance(value, Garbage) or value.vip is None or value.format > FORMAT:
        return value
    try:
        named = _address(value.vip)
    except ValueError:
        return Garbage(f"'vip' {value.vip[:50]!r} is not an address")
    if named != _address(vip):
        return Garbage(f"'vip' {named} is not the key's {_address(vip)}")
    return value


def member_identity(node: str, value: dict[str, Any] | Garbage) -> Identity | None:
    """The identity in a member report of this format, or None (format 1, a
    newer format, or garbage: no proof of anything)."""
    if isinstance(value, Garbage) or _format(value) != FORMAT:
        return None
    identity = _identity(node, value)
    return None if isinstance(identity, Garbage) else identity


def decode_member(raw: bytes) -> dict[str, Any] | Garbage:
    """A member value as published, for ``dbvip status``; ``peer_view`` takes
    from it the little a decision may use."""
    return _json_object(raw)


def peer_view(node: str, value: dict[str, Any] | Garbage) -> PeerView | None:
    """Role and timeline of a member report, or None if they are not usable
    (garbage proves nothing, so it is left out rather than guessed at)."""
    if isinstance(value, Garbage) or not node:
        return None
    try:
        role = Role(value.get("role"))
    except ValueError:
        return None
    timeline = value.get("timeline")
    if isinstance(timeline, bool) or not isinstance(timeline, int) or timeline < 1:
        timeline = None
    endpoint = value.get("failsafe")
    endpoint = endpoint if isinstance(endpoint, str) else ""
    return PeerView(node, role, timeline, member_identity(node, value), endpoint)


def encode_failsafe_record(record: FailsafeRecord, since: str) -> bytes:
    def seat(s: Seat) -> dict[str, str]:
        return {"node": s.node, "host": s.host, "interface": s.interface}

    return _compact(
        {
            "holder": seat(record.holder),
            "members": [seat(m) for m in record.members],
            "since": since,
        }
    )


def decode_failsafe_record(raw: bytes) -> FailsafeRecord | Garbage:
    """The record, or Garbage (which a reader treats as a record listing
    nobody: only a holder it names may take; see ``dbvip.failsafe``)."""
    obj = _json_object(raw)
    if isinstance(obj, Garbage):
        return obj

    def seat(raw_seat: Any) -> Seat | None:
        if not isinstance(raw_seat, dict):
            return None
        parts = [raw_seat.get(k) for k in ("node", "host", "interface")]
        strings = [p for p in parts if isinstance(p, str) and p]
        return Seat(*strings) if len(strings) == 3 else None

    holder = seat(obj.get("holder"))
    members = obj.get("members")
    seats = [seat(m) for m in members] if isinstance(members, list) else [None]
    listed = [s for s in seats if s is not None]
    if holder is None or len(listed) != len(seats):
        return Garbage("not a failsafe record")
    return FailsafeRecord(holder, tuple(listed))


def pool_member(node: str, value: dict[str, Any] | Garbage) -> PoolMember | None:
    """What the reader pool may use of a member report, or None (garbage,
    or no role: it proves nothing). Only ``"in_pool"`` and
    ``"in_pool_not_streaming"`` put a member in the pool; an LSN that does
    not look like one is left out."""
    peer = peer_view(node, value)
    if peer is None or isinstance(value, Garbage):
        return None
    lsn = value.get("lsn")
    lsn_ok = isinstance(lsn, str) and _LSN_RE.fullmatch(lsn) is not None
    pool = value.get("pool")
    in_pool = pool in (IN_POOL, IN_POOL_NOT_STREAMING)
    streaming = pool != IN_POOL_NOT_STREAMING
    return PoolMember(node, peer.role, in_pool, lsn if lsn_ok else None, streaming)


def _pool_fields(raw: bytes) -> tuple[object, object] | None:
    """What of a member value the pool reads, beside the LSN; None for garbage."""
    value = decode_member(raw)
    return None if isinstance(value, Garbage) else (value.get("role"), value.get("pool"))


def pool_event_matters(
    keys: KeyLayout, key: bytes, value: bytes | None, prev: bytes | None
) -> bool:
    """Whether a change of ``key`` (``value`` None: deleted; ``prev`` None:
    created) can change what the reader pool reads: any change of a reader
    key, a reader claim, the writer key or a maintenance flag; a member
    report created or deleted, or changing its role or pool. Not a member's
    periodic refresh of its LSN or lag, which would wake every sidecar on
    every report of every replica."""
    name = key.decode(errors="replace")
    if not name.startswith(keys.base + "/"):
        return False
    if name.startswith(keys.members_prefix):
        if value is None or prev is None:
            return True
        return _pool_fields(value) != _pool_fields(prev)
    watched = (keys.readers_prefix, keys.reader_claims_prefix, keys.maintenance_prefix)
    return name in (keys.writer, keys.claim) or name.startswith(watched)


def writer_event_matters(keys: KeyLayout, node: str, key: bytes) -> bool:
    """Whether a change of ``key`` is news for ``node``'s writer loop: the
    writer key or its claim, a maintenance flag, the failsafe record, or its
    own member report (a twin's). Not another member's report: its changes
    (an LSN at every refresh) would wake every sidecar; a holder reads them
    every renew interval anyway."""
    name = key.decode(errors="replace")
    return name in (keys.writer, keys.claim, keys.failsafe, keys.member(node)) or name.startswith(
        keys.maintenance_prefix
    )
