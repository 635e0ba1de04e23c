"""The etcd key layout and the values stored there."""

from __future__ import annotations

import json

import pytest

from dbvip.identity import Identity
from dbvip.keys import (
    Garbage,
    KeyLayout,
    WriterValue,
    decode_member,
    decode_writer,
    encode_member,
    encode_writer,
    member_identity,
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


ME = Identity("n1", "5f0c2a9e41d7b36a", "0f9e8d7c6b5a/net:4026531840", "eth0")


def test_writer_value_is_compact_json_with_format_identity_and_the_lease_in_hex() -> None:
    raw = encode_writer(ME, "198.51.100.7/24", 0x694D71A8E4B3F00C, "2026-01-02T03:04:05Z")
    assert raw == (
        b'{"node":"n1","format":2,"instance":"5f0c2a9e41d7b36a",'
        b'"host":"0f9e8d7c6b5a/net:4026531840","interface":"eth0",'
        b'"vip":"198.51.100.7/24","lease":"694d71a8e4b3f00c","since":"2026-01-02T03:04:05Z"}'
    )
    assert decode_writer(raw) == WriterValue(
        "n1", "198.51.100.7/24", "694d71a8e4b3f00c", "2026-01-02T03:04:05Z", 2, ME
    )


def test_todays_writer_value_still_reads_as_format_1_without_an_identity() -> None:
    # The exact bytes dbvip wrote before values had a format (a rolling upgrade).
    raw = (
        b'{"node":"n1","vip":"198.51.100.7/24","lease":"694d71a8e4b3f00c",'
        b'"since":"2026-01-02T03:04:05Z"}'
    )
    assert decode_writer(raw) == WriterValue(
        "n1", "198.51.100.7/24", "694d71a8e4b3f00c", "2026-01-02T03:04:05Z", 1, None
    )


def test_a_newer_format_is_held_by_another_identity_never_garbage() -> None:
    newer = decode_writer(b'{"format":3,"node":"n1","owner":{"whatever":1}}')
    assert newer == WriterValue("n1", format=3)
    nameless = decode_writer(b'{"format":7}')
    assert isinstance(nameless, WriterValue) and nameless.identity is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"format":"2","node":"n1"}',
        b'{"format":true,"node":"n1"}',
        b'{"format":0,"node":"n1"}',
        b'{"format":2,"node":"n1","host":"h","interface":"eth0"}',
        b'{"format":2,"node":"n1","instance":"","host":"h","interface":"eth0"}',
    ],
)
def test_a_bad_format_or_a_format_2_value_without_its_identity_is_garbage(raw: bytes) -> None:
    assert isinstance(decode_writer(raw), Garbage)


def test_member_identity_only_from_a_report_of_this_format() -> None:
    report = MemberReport("primary", 3, "0/3000060", ("198.51.100.7/24",), "holding")
    assert member_identity("n1", decode_member(encode_member(report, "T", ME))) == ME
    assert member_identity("n1", decode_member(encode_member(report, "T"))) is None
    assert member_identity("n1", decode_member(b"garbage")) is None


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
