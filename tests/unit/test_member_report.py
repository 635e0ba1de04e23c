"""What a member publishes about the reader pool, and what counts as news."""

from __future__ import annotations

from dataclasses import replace

from dbvip.board import Board
from dbvip.keys import decode_member, encode_member, pool_member
from dbvip.members import _same, report_of
from dbvip.model import Role, Timing
from dbvip.reader_model import PoolMember
from dbvip.reporting import Snapshot
from tests.fakes import FakeClock

WRITER = "198.51.100.10/32"
BASE = Snapshot("n2", "replica", "", {}, Role.REPLICA, 1, "0/3000000", False, None, None, 0.0, "")
POOLED = replace(BASE, reader_vips=("198.51.100.21", "198.51.100.22"), pool="in_pool", lag_bytes=0)


def test_the_report_lists_the_writer_vip_then_the_reader_vips_and_the_pool_fields() -> None:
    report = report_of(POOLED, WRITER)
    assert report.vips == ("198.51.100.21", "198.51.100.22")
    assert (report.pool, report.lag_bytes) == ("in_pool", 0)
    both = report_of(replace(POOLED, vip_present=True), WRITER)
    assert both.vips == (WRITER, "198.51.100.21", "198.51.100.22")
    # What the others read of it: in the pool, with its replay position.
    assert pool_member("n2", decode_member(encode_member(report, "T"))) == PoolMember(
        "n2", Role.REPLICA, True, "0/3000000"
    )


def test_without_reader_vips_the_report_is_as_before() -> None:
    report = report_of(BASE, WRITER)
    assert (report.vips, report.pool, report.lag_bytes) == ((), "", None)


def test_a_moving_lsn_or_lag_is_not_news_but_a_pool_or_vip_change_is() -> None:
    report = report_of(POOLED, WRITER)
    moved = report_of(replace(POOLED, lsn="0/3000100", lag_bytes=256), WRITER)
    assert _same(report, moved)
    assert not _same(report, report_of(replace(POOLED, pool="lagging"), WRITER))
    assert not _same(report, report_of(replace(POOLED, reader_vips=("198.51.100.21",)), WRITER))
    assert not _same(report, None) and _same(None, None)


def test_the_status_endpoint_row_shows_the_pool_and_the_reader_policy() -> None:
    board = Board(WRITER, Timing(), FakeClock())
    board.offer(replace(POOLED, reader_reason="holding", reader_detail="holding 2"))
    row = board.status()
    assert row is not None and "error" not in row
    assert row["vip"] == ["198.51.100.21/32", "198.51.100.22/32"]
    assert (row["pool"], row["lag_bytes"]) == ("in_pool", 0)
    assert row["loop"]["readers"] == {"reason": "holding", "detail": "holding 2"}
    board.offer(BASE)  # no reader VIPs configured: nothing about them
    plain = board.status()
    assert plain is not None and "readers" not in plain["loop"] and plain["pool"] is None
