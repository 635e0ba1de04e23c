"""What ``dbvip status`` shows: the cluster as data, and that data as a table.

Pure: no I/O. Values in etcd can hold anything (an older or newer dbvip, a
hand edit, junk), so nothing read is echoed as is: each row is built from
the fields that parse, a value that does not parse is marked invalid with
the reason, and every string is escaped and shortened before it reaches a
terminal. ``render`` takes the data and returns text, for a one-off
``status`` and for anything that redraws it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from dbvip.keys import Garbage, WriterValue
from dbvip.model import Role
from dbvip.parsers import NAME_RE

MAX_CELL = 40
MAX_VIPS = 128  # the writer VIP and every reader VIP a node may hold
_LSN_RE = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")
_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
# A node's place in the reader pool: "in_pool", or why not, in a few words.
_POOL_RE = re.compile(r"[a-z][a-z0-9_ ]{0,39}")
_ROLES = frozenset(r.value for r in Role)
NO_LEASE = (
    "the writer key has no lease: written by hand, it never expires. Find the node "
    "whose interface has the VIP, then delete the key with etcdctl del"
)


def _role(v: object) -> str | None:
    return v if isinstance(v, str) and v in _ROLES else None


def _timeline(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None


def _lsn(v: object) -> str | None:
    return v if isinstance(v, str) and _LSN_RE.fullmatch(v) else None


def _reason(v: object) -> str | None:
    return v if isinstance(v, str) and _REASON_RE.fullmatch(v) else None


def _pool(v: object) -> str | None:
    return v if isinstance(v, str) and _POOL_RE.fullmatch(v) else None


def _lag_bytes(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _updated(v: object) -> str | None:
    return v if isinstance(v, str) and len(v) <= 40 and v.isprintable() else None


def _vips(v: object) -> list[str] | None:
    if not isinstance(v, list) or len(v) > MAX_VIPS:
        return None
    out = []
    for item in v:
        if not isinstance(item, str) or len(item) > 50:
            return None
        try:
            out.append(str(ipaddress.ip_interface(item)))
        except ValueError:
            return None
    return out


# field -> (parser, may be null): what a member value may say about its node.
MEMBER_FIELDS: dict[str, tuple[Callable[[object], Any], bool]] = {
    "role": (_role, False),
    "timeline": (_timeline, True),
    "lsn": (_lsn, True),
    "vip": (_vips, False),
    "reason": (_reason, True),
    # Written only with reader VIPs configured: absent in other reports.
    "pool": (_pool, True),
    "lag_bytes": (_lag_bytes, True),
    "updated": (_updated, True),
}


def member_row(node: str, value: Mapping[str, Any] | Garbage, ttl_s: int | None) -> dict[str, Any]:
    """One member as ``dbvip status --json`` and ``/status`` show it: the
    fields that parse, and ``error`` naming the first that does not. ``node``
    is the key's (a value cannot rename its node) and ``ttl_s`` etcd's."""
    row: dict[str, Any] = {name: None for name in MEMBER_FIELDS}
    problems = []
    if not NAME_RE.fullmatch(node):
        problems.append("the node name in the key is not a valid name")
    if isinstance(value, Garbage):
        problems.append(value.detail)
    else:
        for name, (parse, nullable) in MEMBER_FIELDS.items():
            given = value.get(name)
            parsed = parse(given)
            if parsed is None and not (nullable and given is None):
                problems.append(f"'{name}' is missing or not valid")
            row[name] = parsed
    row["node"] = node
    row["ttl_s"] = ttl_s
    if problems:
        row["error"] = "; ".join(problems)
    return row


def writer_row(
    value: WriterValue | Garbage | None, lease_id: int | None, ttl_s: int | None
) -> dict[str, Any]:
    """The writer key as ``dbvip status --json`` shows it; {} when it is free."""
    if value is None:
        return {}
    lease = f"{lease_id:x}" if lease_id else None
    if isinstance(value, Garbage):
        return {"error": value.detail, "lease": lease, "ttl_s": ttl_s}
    row: dict[str, Any] = {
        "node": value.node,
        "vip": value.vip if value.vip and _vips([value.vip]) else None,
        "lease": lease,
        "ttl_s": ttl_s,
        "since": _updated(value.since),
    }
    if not lease:
        row["error"] = NO_LEASE
    return row


def reader_row(
    vip: str,
    value: WriterValue | Garbage,
    lease_id: int,
    ttl_s: int | None,
    claim_only: bool = False,
) -> dict[str, Any]:
    """One reader key as ``dbvip status --json`` shows it (``vip`` is the
    key's address: a value cannot move its key). ``claim_only``: the key was
    deleted by hand, its claim still holds the VIP until the lease ends."""
    lease = f"{lease_id:x}" if lease_id else None
    row: dict[str, Any] = {"vip": vip, "lease": lease, "ttl_s": ttl_s, "claim_only": claim_only}
    if isinstance(value, Garbage):
        return {**row, "node": None, "since": None, "error": value.detail}
    row.update(node=value.node, since=_updated(value.since))
    if not lease:
        row["error"] = "the reader key has no lease: written by hand, it never expires"
    return row


def cell(value: object, width: int = MAX_CELL) -> str:
    """A value as one table cell: never a line break, an escape sequence or
    a Python repr; at most ``width`` characters."""
    if value is None or value in ("", []):
        return "-"
    text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _writer_line(writer: Mapping[str, Any]) -> str:
    if not writer:
        return "writer: none (the writer key is free)"
    if writer.get("node") is None:
        return (
            f"writer: INVALID value ({cell(writer.get('error'), 200)}); delete it with etcdctl del"
        )
    line = (
        f"writer: {cell(writer.get('node'))}  vip {cell(writer.get('vip'))}  lease "
        f"{cell(writer.get('lease'))}  ttl {cell(writer.get('ttl_s'))} s  "
        f"since {cell(writer.get('since'))}"
    )
    if writer.get("error"):
        line += f"\nwriter key INVALID: {cell(writer['error'], 200)}"
    return line


COLUMNS = ("node", "role", "timeline", "lsn", "vip", "reason", "ttl_s", "updated")
# Shown once the cluster has a reader pool (reader keys, or members in it).
POOL_COLUMNS = ("pool", "lag_bytes")
READER_COLUMNS = ("vip", "node", "lease", "ttl_s", "since")


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _readers(readers: list[Mapping[str, Any]]) -> list[str]:
    """The reader VIPs, their holders and leases; a claim alone and an
    invalid value said so in the holder's cell, explained below."""
    rows, notes = [], []
    for r in readers:
        row = [cell(r.get(c)) for c in READER_COLUMNS]
        if r.get("node") is None:
            row[1] = "INVALID"
            notes.append(f"INVALID reader key of {row[0]}: {cell(r.get('error'), 200)}")
        elif r.get("claim_only"):
            notes.append(
                f"reader key of {row[0]} deleted by hand: its claim keeps it for {row[1]} "
                "until the lease ends"
            )
            row[1] += " (claim)"
        elif r.get("error"):
            notes.append(f"reader key of {row[0]}: {cell(r['error'], 200)}")
        rows.append(row)
    return ["", "reader VIPs:", *_table(READER_COLUMNS, rows), *notes]


def render(view: Mapping[str, Any]) -> str:
    """``dbvip status``'s table from ``read_cluster``'s data."""
    lines = [f"cluster {cell(view.get('cluster'))}  {_writer_line(view.get('writer') or {})}"]
    if view.get("maintenance"):
        names = ", ".join(cell(n) for n in view["maintenance"])
        lines.append(f"maintenance: {names} (stay away from the VIP)")
    lines.append("")
    members = view.get("members", [])
    readers = view.get("readers") or []
    pooled = bool(readers) or any(m.get("pool") for m in members)
    columns = COLUMNS + POOL_COLUMNS if pooled else COLUMNS
    rows = []
    for m in members:
        row = [cell(m.get(c)) for c in columns]
        if m.get("error"):
            row[columns.index("reason")] = "INVALID"
        rows.append((row, m.get("error")))
    lines.extend(_table(columns, [r for r, _ in rows]))
    if not rows:
        lines.append("(no members reporting)")
    invalid = [(r[0], e) for r, e in rows if e]
    if invalid:
        lines.append("")
        lines.extend(f"INVALID member value of {node}: {cell(e, 200)}" for node, e in invalid)
    if readers:
        lines.extend(_readers(readers))
    return "\n".join(lines)
