"""``dbvip status`` tells the truth (issue 13): each defect found, as a case.

The data goes through the same path as a real status: what the etcd store
read (ClusterStatus) -> ``cluster_dict`` (the JSON) -> ``render`` (the table).
"""

from __future__ import annotations

import json
from typing import Any

from dbvip.adapters.etcd_store import ClusterStatus, MemberStatus
from dbvip.keys import Garbage, WriterValue, decode_member, decode_writer
from dbvip.model import KeyAbsent, KeyHeld, KeyInvalid
from dbvip.status_view import render
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
    assert data["members"][0] == {**GOOD, "node": "n1", "ttl_s": 9}
