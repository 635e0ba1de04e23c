"""``dbvip status`` tells the truth (issue 13): each defect found, as a case.

The data goes through the same path as a real status: what the etcd store
read (ClusterStatus) -> ``cluster_dict`` (the JSON) -> ``render`` (the table).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dbvip.adapters.etcd_status import ClusterStatus, MemberStatus, ReaderStatus
from dbvip.keys import Garbage, WriterValue, decode_member, decode_reader, decode_writer
from dbvip.model import KeyAbsent, KeyHeld, KeyInvalid
from dbvip.status_view import reader_row, render
from dbvip.wiring import cluster_dict

WRITER = WriterValue("n1", "198.51.100.10/32", "1f", "2026-12-04T10:00:00Z")
GOOD = {
    "role": "primary",
    "timeline": 3,
    "lsn": "0/3000060",
    "vip": ["198.51.100.10/32"],
    "reason": "holding",
    "updated": "2026-12-04T10:00:01Z",
}


def member(node: str, value: dict[str, Any] | Garbage, ttl_s: int | None = 9) -> MemberStatus:
    return MemberStatus(node, value, 0x2A, ttl_s)


def status(*members: MemberStatus, writer_lease: int = 0x1F) -> tuple[dict[str, Any], str]:
    """(``status --json``'s data, ``status``'s table)."""
    cluster = ClusterStatus(KeyHeld("n1", writer_lease, 10, 9), 7, members, writer_value=WRITER)
    data = cluster_dict("c1", cluster)
    json.dumps(data)  # JSON-able as it stands
    return data, render(data)


def test_a_well_formed_writer_key_shows_its_vip_lease_ttl_and_since() -> None:
    data, table = status(member("n1", GOOD))
    assert data["writer"] == {
        "node": "n1",
        "vip": "198.51.100.10/32",
        "lease": "1f",
        "ttl_s": 7,
        "since": "2026-12-04T10:00:00Z",
    }
    assert table.splitlines()[0] == (
        "cluster c1  writer: n1  vip 198.51.100.10/32  lease 1f  ttl 7 s  "
        "since 2026-12-04T10:00:00Z"
    )
    assert "None" not in table


def test_the_vip_column_is_addresses_not_a_python_list() -> None:
    two = {**GOOD, "vip": ["198.51.100.10/32", "2001:db8::10/128"]}
    _, table = status(member("n1", two))
    row = table.splitlines()[3]
    assert "198.51.100.10/32, 2001:db8::10/128" in row
    assert "[" not in table and "'" not in table


def test_an_invalid_member_value_shows_as_invalid_with_its_reason() -> None:
    bad = {**GOOD, "role": "boss", "timeline": "3"}
    garbage = Garbage("not JSON: b'{'")
    data, table = status(member("n1", GOOD), member("n2", bad), member("n3", garbage))
    rows = {m["node"]: m for m in data["members"]}
    assert "error" not in rows["n1"]
    assert "'role' is missing or not valid" in rows["n2"]["error"]
    assert "'timeline' is missing or not valid" in rows["n2"]["error"]
    assert rows["n2"]["role"] is None  # never the raw "boss"
    assert rows["n3"]["error"] == "not JSON: b'{'"
    lines = table.splitlines()
    assert "INVALID" in lines[4] and "INVALID" in lines[5] and "INVALID" not in lines[3]
    assert "INVALID member value of n2: 'role' is missing or not valid" in table
    assert "INVALID member value of n3: not JSON: b'{'" in table
    assert "boss" not in table


def test_a_member_value_cannot_rename_its_node_or_set_its_ttl() -> None:
    forged = {**GOOD, "node": "n1", "ttl_s": 999999}
    data, table = status(member("n1", GOOD), member("n2", forged, ttl_s=5))
    assert [m["node"] for m in data["members"]] == ["n1", "n2"]
    assert data["members"][1]["ttl_s"] == 5
    assert "999999" not in table
    assert sum(line.startswith("n1 ") for line in table.splitlines()) == 1


def test_node_names_with_newlines_or_escapes_cannot_break_the_table() -> None:
    evil = ["n2\nn9     primary  99", "n3\x1b[2J", "n4\r", "x" * 5000]
    data, table = status(member("n1", GOOD), *(member(n, GOOD) for n in evil))
    lines = table.splitlines()
    # Header, blank, columns, five members, blank, four invalid notes: nothing more.
    assert len(lines) == 3 + 5 + 1 + 4, table
    assert "\x1b" not in table and "\r" not in table
    assert "n2\\nn9" in table
    assert all(len(line) < 400 for line in lines)
    assert all("not a valid name" in m["error"] for m in data["members"][1:])


def test_a_writer_key_without_a_lease_is_flagged() -> None:
    data, table = status(member("n1", GOOD), writer_lease=0)
    assert data["writer"]["lease"] is None
    assert "no lease" in data["writer"]["error"]
    assert "writer key INVALID: the writer key has no lease" in table
    assert "etcdctl del" in table


def test_an_invalid_writer_value_shows_the_reason_and_nothing_of_the_value() -> None:
    raw = b'{"node": 7, "vip": "\\u001b[2Jx"}'
    value = decode_writer(raw)
    assert isinstance(value, Garbage)
    cluster = ClusterStatus(KeyInvalid(value.detail, 0x1F, 3), 4, (), writer_value=value)
    table = render(cluster_dict("c1", cluster))
    assert "writer: INVALID value ('node' is not a string)" in table
    assert "\x1b" not in table


def test_no_writer_and_no_members() -> None:
    table = render(cluster_dict("c1", ClusterStatus(KeyAbsent(1), None, ())))
    assert "writer: none (the writer key is free)" in table
    assert "(no members reporting)" in table


def test_a_report_as_dbvip_writes_it_reads_back_whole() -> None:
    raw = json.dumps(GOOD).encode()
    data, _ = status(member("n1", decode_member(raw)))
    assert data["members"][0] == {**GOOD, "node": "n1", "ttl_s": 9, "pool": None, "lag_bytes": None}


def pooled(*readers: ReaderStatus, members: tuple[MemberStatus, ...] = ()) -> dict[str, Any]:
    """``status --json``'s data of a cluster with a reader pool. The readers
    section is built as ``cluster_dict`` is to build it (wiring's, the lead's)."""
    cluster = ClusterStatus(
        KeyHeld("n1", 0x1F, 10, 9), 7, members, writer_value=WRITER, readers=readers
    )
    data = cluster_dict("c1", cluster)
    rows = [reader_row(r.vip, r.value, r.lease_id, r.ttl_s, r.claim_only) for r in readers]
    assert data.setdefault("readers", rows) == rows
    json.dumps(data)
    return data


def test_each_reader_vip_shows_its_holder_lease_and_ttl() -> None:
    value = decode_reader(
        b'{"node":"n2","vip":"198.51.100.21","lease":"2b","since":"2026-12-04T10:00:02Z"}',
        "198.51.100.21",
    )
    data = pooled(
        ReaderStatus("198.51.100.21", value, 0x2B, 8),
        ReaderStatus("198.51.100.22", WriterValue("n3"), 0x3C, 7, claim_only=True),
        ReaderStatus("198.51.100.23", Garbage("not JSON: b'junk'"), 0, None),
    )
    assert data["readers"][0] == {
        "vip": "198.51.100.21",
        "node": "n2",
        "lease": "2b",
        "ttl_s": 8,
        "since": "2026-12-04T10:00:02Z",
        "claim_only": False,
    }
    assert data["readers"][2]["node"] is None and "not JSON" in data["readers"][2]["error"]
    table = render(data)
    assert "reader VIPs:" in table
    line = next(x for x in table.splitlines() if x.startswith("198.51.100.21"))
    assert line.split() == ["198.51.100.21", "n2", "2b", "8", "2026-12-04T10:00:02Z"]
    assert "n3 (claim)" in table
    assert "reader key of 198.51.100.22 deleted by hand: its claim keeps it for n3" in table
    assert "INVALID reader key of 198.51.100.23: not JSON" in table


def test_a_reader_key_put_by_hand_without_a_lease_is_flagged() -> None:
    data = pooled(ReaderStatus("198.51.100.21", WriterValue("n2"), 0, None))
    assert "no lease" in data["readers"][0]["error"]
    assert "reader key of 198.51.100.21: the reader key has no lease" in render(data)


def test_members_show_their_pool_place_and_lag_once_there_is_a_pool() -> None:
    replica = {
        **GOOD,
        "role": "replica",
        "vip": ["198.51.100.21/32", "198.51.100.22/32"],
        "reason": "replica",
        "pool": "in_pool",
        "lag_bytes": 4096,
    }
    lagging = {**replica, "vip": [], "pool": "maintenance_unread", "lag_bytes": None}
    data = pooled(members=(member("n2", replica), member("n3", lagging)))
    assert [(m["pool"], m["lag_bytes"]) for m in data["members"]] == [
        ("in_pool", 4096),
        ("maintenance_unread", None),
    ]
    assert all("error" not in m for m in data["members"])
    table = render(data).splitlines()
    header = next(x for x in table if x.startswith("NODE"))
    assert header.split()[-2:] == ["POOL", "LAG_BYTES"]
    n2 = next(x for x in table if x.startswith("n2"))
    assert "198.51.100.21/32, 198.51.100.22/32" in n2 and n2.split()[-2:] == ["in_pool", "4096"]
    # Without a pool, the table is as it was: no empty columns.
    _, plain = status(member("n1", GOOD))
    assert "POOL" not in plain


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("pool", "IN POOL!"),
        ("pool", 3),
        ("lag_bytes", -1),
        ("lag_bytes", "4096"),
        ("lag_bytes", True),
    ],
)
def test_a_bad_pool_field_is_invalid_not_shown(field: str, bad: object) -> None:
    data, table = status(member("n1", {**GOOD, field: bad}))
    assert data["members"][0][field] is None
    assert "INVALID member value of n1" in table
    assert f"'{field}' is missing or not valid" in data["members"][0]["error"]
