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
    decode_reader,
    decode_writer,
    encode_member,
    encode_reader,
    encode_writer,
    member_identity,
    pool_event_matters,
    pool_member,
)
from dbvip.model import Role
from dbvip.ports import MemberReport
from dbvip.reader_model import PoolMember


def test_layout_defaults_to_the_dbvip_prefix() -> None:
    keys = KeyLayout("main")
    assert keys.writer == "/dbvip/main/writer"
    assert keys.member("n1") == "/dbvip/main/members/n1"
    assert keys.members_prefix == "/dbvip/main/members/"
    assert keys.reader("198.51.100.7") == "/dbvip/main/readers/198.51.100.7"


@pytest.mark.parametrize("prefix", ["/x/y", "/x/y/"])
def test_prefix_is_spelled_one_way(prefix: str) -> None:
    assert KeyLayout("c", prefix).writer == "/x/y/c/writer"


def test_reader_key_names_the_address_alone() -> None:
    keys = KeyLayout("c")
    assert keys.reader("198.51.100.7/24") == keys.reader("198.51.100.7")
    assert keys.reader("2001:db8:0::10/64") == "/dbvip/c/readers/2001:db8::10"
    with pytest.raises(ValueError):
        keys.reader("not-an-address")
    assert keys.reader_claim("2001:db8:0::10/64") == "/dbvip/c/reader-claims/2001:db8::10"
    assert keys.reader("198.51.100.7").startswith(keys.readers_prefix)
    assert keys.reader_claim("198.51.100.7").startswith(keys.reader_claims_prefix)
    # Neither prefix is a prefix of the other: one range cannot mix them up.
    assert not keys.reader_claims_prefix.startswith(keys.readers_prefix)


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


def test_a_reader_value_has_the_writer_fields_and_reads_back() -> None:
    raw = encode_reader(ME, "198.51.100.21/32", 0x1A2B, "2026-01-02T03:04:05Z")
    assert json.loads(raw) == json.loads(
        encode_writer(ME, "198.51.100.21/32", 0x1A2B, "2026-01-02T03:04:05Z")
    )
    value = decode_reader(raw, "198.51.100.21")
    assert isinstance(value, WriterValue)
    assert (value.node, value.lease, value.identity) == ("n1", "1a2b", ME)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"junk", "not JSON"),
        (b'{"vip":"198.51.100.21/32"}', "'node' is missing"),
        (b'{"node":"n1","vip":"198.51.100.22/32"}', "198.51.100.22 is not the key's 198.51.100.21"),
        (b'{"node":"n1","vip":"nowhere"}', "is not an address"),
        (b'{"node":"n1","format":2,"vip":"198.51.100.21"}', "'instance' is missing"),
    ],
)
def test_garbage_reader_values_are_reported_not_guessed(raw: bytes, detail: str) -> None:
    value = decode_reader(raw, "198.51.100.21/32")
    assert isinstance(value, Garbage) and detail in value.detail


def test_a_reader_value_without_a_vip_or_of_a_newer_format_names_its_holder() -> None:
    assert decode_reader(b'{"node":"n2"}', "198.51.100.21") == WriterValue("n2")
    newer = decode_reader(b'{"node":"n2","format":99,"vip":"x"}', "198.51.100.21")
    assert isinstance(newer, WriterValue) and newer.node == "n2" and newer.format == 99


def test_member_value_carries_pool_and_lag_only_when_set() -> None:
    report = MemberReport("replica", 3, "0/3000060", ("198.51.100.21/32",), "replica")
    plain = json.loads(encode_member(report, "T"))
    assert "pool" not in plain and "lag_bytes" not in plain
    pooled = MemberReport("replica", 3, "0/3000060", (), "replica", "in_pool", 0)
    value = json.loads(encode_member(pooled, "T"))
    assert (value["pool"], value["lag_bytes"]) == ("in_pool", 0)
    lagging = json.loads(encode_member(MemberReport("replica", 3, None, (), "r", "lagging"), "T"))
    assert lagging["pool"] == "lagging" and "lag_bytes" not in lagging


def test_pool_member_reads_role_pool_flag_and_lsn() -> None:
    pooled = MemberReport("replica", 3, "0/3000060", (), "replica", "in_pool", 0)
    assert pool_member("n2", decode_member(encode_member(pooled, "T"))) == PoolMember(
        "n2", Role.REPLICA, True, "0/3000060"
    )
    lagging = MemberReport("replica", 3, "0/3000060", (), "replica", "lagging", 1 << 30)
    assert pool_member("n2", decode_member(encode_member(lagging, "T"))) == PoolMember(
        "n2", Role.REPLICA, False, "0/3000060"
    )
    old = pool_member("n3", decode_member(b'{"role":"primary","lsn":"0/3 junk"}'))
    assert old == PoolMember("n3", Role.PRIMARY, False, None)
    assert pool_member("n4", decode_member(b'{"role":"boss"}')) is None
    assert pool_member("n4", decode_member(b"junk")) is None


KEYS = KeyLayout("c")


def member(role: str, pool: str, lsn: str) -> bytes:
    return encode_member(MemberReport(role, 3, lsn, (), role, pool, 0), "T")


@pytest.mark.parametrize(
    ("key", "value", "prev", "matters"),
    [
        (KEYS.reader("198.51.100.21"), b"v", None, True),
        (KEYS.reader("198.51.100.21"), None, b"v", True),
        (KEYS.reader("198.51.100.21"), b"v", b"v", True),
        (KEYS.reader_claim("198.51.100.21"), None, b"v", True),
        (KEYS.writer, b"v", b"w", True),
        (KEYS.claim, None, b"v", True),
        (KEYS.maintenance("n2"), b"v", None, True),
        (KEYS.member("n2"), member("replica", "in_pool", "0/1"), None, True),
        (KEYS.member("n2"), None, member("replica", "in_pool", "0/1"), True),
        (
            KEYS.member("n2"),
            member("replica", "lagging", "0/1"),
            member("replica", "in_pool", "0/1"),
            True,
        ),
        (KEYS.member("n2"), member("primary", "", "0/2"), member("replica", "", "0/1"), True),
        (KEYS.member("n2"), b"junk", member("replica", "in_pool", "0/1"), True),
        # The periodic refresh: only the LSN (and lag, updated time) moved.
        (
            KEYS.member("n2"),
            member("replica", "in_pool", "0/2"),
            member("replica", "in_pool", "0/1"),
            False,
        ),
        (KEYS.member("n2"), b"junk", b"other junk", False),
        ("/dbvip/other/readers/198.51.100.21", b"v", None, False),
        ("/dbvip/c/something-else", b"v", None, False),
    ],
)
def test_the_pool_wakes_only_for_what_can_change_its_reading(
    key: str, value: bytes | None, prev: bytes | None, matters: bool
) -> None:
    assert pool_event_matters(KEYS, key.encode(), value, prev) is matters
