"""The etcd key layout and the values stored there."""

from __future__ import annotations

import json

import pytest

from dbvip.keys import (
    Garbage,
    KeyLayout,
    WriterValue,
    decode_member,
    decode_writer,
    encode_member,
    encode_writer,
)
from dbvip.ports import MemberReport


def test_layout_defaults_to_the_dbvip_prefix() -> None:
    keys = KeyLayout("main")
    assert keys.writer == "/dbvip/main/writer"
    assert keys.member("n1") == "/dbvip/main/members/n1"
    assert keys.members_prefix == "/dbvip/main/members/"
    assert keys.reader("198.51.100.7") == "/dbvip/main/reader/198.51.100.7"


@pytest.mark.parametrize("prefix", ["/x/y", "/x/y/"])
def test_prefix_is_spelled_one_way(prefix: str) -> None:
    assert KeyLayout("c", prefix).writer == "/x/y/c/writer"


def test_reader_key_names_the_address_alone() -> None:
    keys = KeyLayout("c")
    assert keys.reader("198.51.100.7/24") == keys.reader("198.51.100.7")
    assert keys.reader("2001:db8:0::10/64") == "/dbvip/c/reader/2001:db8::10"
    with pytest.raises(ValueError):
        keys.reader("not-an-address")


@pytest.mark.parametrize("name", ["", "a/b", " a", "a\n", "a\tb"])
def test_bad_cluster_and_node_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        KeyLayout(name)
    with pytest.raises(ValueError):
        KeyLayout("c").member(name)


@pytest.mark.parametrize("prefix", ["", "dbvip", "/", "/a//b", "/a/ b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        KeyLayout("c", prefix)


def test_writer_value_is_compact_json_with_the_lease_in_hex() -> None:
    raw = encode_writer("n1", "198.51.100.7/24", 0x694D71A8E4B3F00C, "2026-01-02T03:04:05Z")
    assert raw == (
        b'{"node":"n1","vip":"198.51.100.7/24","lease":"694d71a8e4b3f00c",'
        b'"since":"2026-01-02T03:04:05Z"}'
    )
    assert decode_writer(raw) == WriterValue(
        "n1", "198.51.100.7/24", "694d71a8e4b3f00c", "2026-01-02T03:04:05Z"
    )


def test_member_value_round_trips_as_compact_json() -> None:
    report = MemberReport("primary", 3, "0/3000060", ("198.51.100.7/24",), "holding")
    raw = encode_member(report, "2026-01-02T03:04:05Z")
    assert b" " not in raw
    assert json.loads(raw) == {
        "role": "primary",
        "timeline": 3,
        "lsn": "0/3000060",
        "vip": ["198.51.100.7/24"],
        "reason": "holding",
        "updated": "2026-01-02T03:04:05Z",
    }
    assert decode_member(raw) == json.loads(raw)


def test_a_writer_value_needs_only_the_node() -> None:
    assert decode_writer(b'{"node":"n2"}') == WriterValue("n2")


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"", "not JSON"),
        (b"n1", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'"n1"', "not a JSON object"),
        (b'["n1"]', "not a JSON object"),
        (b"{}", "'node' is missing"),
        (b'{"node":null}', "'node' is missing"),
        (b'{"node":7}', "'node' is not a string"),
        (b'{"node":""}', "empty or padded"),
        (b'{"node":" n1"}', "empty or padded"),
        (b'{"node":"n1","lease":12}', "'lease' is not a string"),
        (b'{"node":"n1","vip":["x"]}', "'vip' is not a string"),
    ],
)
def test_garbage_writer_values_are_reported_not_guessed(raw: bytes, detail: str) -> None:
    decoded = decode_writer(raw)
    assert isinstance(decoded, Garbage)
    assert detail in decoded.detail


def test_garbage_member_value_is_reported() -> None:
    assert isinstance(decode_member(b"[1]"), Garbage)
    assert isinstance(decode_member(b"{"), Garbage)


def test_deeply_nested_json_is_garbage_not_a_crash() -> None:
    """Review finding: json.loads raises RecursionError, not ValueError."""
    assert isinstance(decode_writer(b"[" * 100_000), Garbage)
