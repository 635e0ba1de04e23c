"""The arithmetic of ``etcd_cost``: counters in, per-sidecar rates out."""

from __future__ import annotations

import pytest

from integration.bench.etcd_cost import Scrape, cost, parse_metrics, split, table

PAGE = """\
# HELP grpc_server_started_total Total number of RPCs started on the server.
# TYPE grpc_server_started_total counter
grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 10
grpc_server_started_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",\
grpc_type="bidi_stream"} 4
# TYPE grpc_server_msg_received_total counter
grpc_server_msg_received_total{grpc_method="Range",grpc_service="etcdserverpb.KV",\
grpc_type="unary"} 10
# TYPE etcd_server_proposals_committed_total gauge
etcd_server_proposals_committed_total 100
# TYPE etcd_network_client_grpc_received_bytes_total counter
etcd_network_client_grpc_received_bytes_total 1000
# TYPE etcd_debugging_mvcc_watch_stream_total gauge
etcd_debugging_mvcc_watch_stream_total 3
# TYPE etcd_debugging_mvcc_keys_total gauge
etcd_debugging_mvcc_keys_total 7
"""


def scrape(at_s: float, range_: float, keepalive: float, proposals: float) -> Scrape:
    return Scrape(at_s, {
        ("grpc_server_started_total", "Range"): range_,
        ("grpc_server_started_total", "LeaseKeepAlive"): keepalive,
        ("etcd_server_proposals_committed_total", ""): proposals,
        ("etcd_debugging_mvcc_watch_stream_total", ""): 3.0,
    })  # fmt: skip


def test_a_metrics_page_gives_the_counters_by_grpc_method_and_nothing_else() -> None:
    got = parse_metrics(PAGE, 5.0)
    assert got.at_s == 5.0
    assert got.values == {
        ("grpc_server_started_total", "Range"): 10.0,
        ("grpc_server_started_total", "LeaseKeepAlive"): 4.0,
        ("grpc_server_msg_received_total", "Range"): 10.0,
        ("etcd_server_proposals_committed_total", ""): 100.0,
        ("etcd_network_client_grpc_received_bytes_total", ""): 1000.0,
        ("etcd_debugging_mvcc_watch_stream_total", ""): 3.0,
    }


def test_requests_add_up_over_members_and_writes_are_counted_once() -> None:
    # Two members, 10 s, 3 sidecars: member A served 30 Range and 15 keepalives,
    # member B 30 Range; both committed the same 6 proposals.
    before = [scrape(0.0, 100, 10, 50), scrape(0.5, 7, 0, 50)]
    after = [scrape(10.5, 130, 25, 56), scrape(11.0, 37, 0, 56)]
    got = cost(before, after, 3)
    assert got["window_s"] == 10.0  # the part every scrape covers
    assert got["requests"] == pytest.approx({"Range": 2.0, "LeaseKeepAlive": 0.5})
    assert got["requests_per_s"] == pytest.approx(2.5)
    assert got["writes_per_s"] == pytest.approx(0.2)
    assert got["watch_streams"] == pytest.approx(2.0)  # 6 open over 3 sidecars


def test_a_counter_that_went_back_is_an_error_not_a_negative_rate() -> None:
    with pytest.raises(ValueError, match="went back"):
        cost([scrape(0.0, 100, 10, 50)], [scrape(10.0, 5, 10, 50)], 1)
    with pytest.raises(ValueError, match="nothing to divide"):
        cost([scrape(0.0, 1, 1, 1)], [scrape(0.0, 1, 1, 1)], 1)


def test_a_replica_is_everyone_less_the_holder_over_the_replicas() -> None:
    everyone = {"sidecars": 3, "requests": {"Range": 1.0, "LeaseKeepAlive": 2 / 3},
                "messages": {}, "requests_per_s": 5 / 3, "writes_per_s": 0.0,
                "bytes_in_per_s": 300.0, "bytes_out_per_s": 30.0}  # fmt: skip
    holder = {"sidecars": 1, "requests": {"Range": 1.0, "LeaseKeepAlive": 1.0},
              "messages": {}, "requests_per_s": 2.0, "writes_per_s": 0.0,
              "bytes_in_per_s": 100.0, "bytes_out_per_s": 10.0}  # fmt: skip
    replica = split(everyone, holder, 2)
    assert replica["requests"] == pytest.approx({"Range": 1.0, "LeaseKeepAlive": 0.5})
    assert replica["requests_per_s"] == pytest.approx(1.5)
    assert replica["bytes_in_per_s"] == pytest.approx(400.0)
    text = table({"all": everyone, "holder": holder, "replica": replica})
    assert "| LeaseKeepAlive | 0.67 | 1.00 | 0.50 |" in text
    assert "| **requests, all kinds** | **1.67** | **2.00** | **1.50** |" in text
