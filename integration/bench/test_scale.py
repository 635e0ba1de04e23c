"""The ``scale`` part's arithmetic, parsing and report, on synthetic records
(fast; the benchmark itself is never run here)."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import pytest

from integration.bench import scale_measure as sm
from integration.bench import scale_report
from integration.bench.__main__ import PARTS
from integration.bench.runner import REPO
from integration.bench.scale import steps
from integration.bench.scale_report import BLOCK
from integration.bench.scale_run import MAX_CLUSTERS, cluster_name, cluster_vip


def page(range_le: dict[str, float], watch: float = 0.0) -> str:
    """A /metrics page with etcd's handling-time histogram for Range (unary)
    and Watch (a stream, which must be left out)."""
    lines = ["# TYPE grpc_server_handling_seconds histogram"]
    for le, count in range_le.items():
        lines.append(
            f'grpc_server_handling_seconds_bucket{{grpc_method="Range",'
            f'grpc_service="etcdserverpb.KV",grpc_type="unary",le="{le}"}} {count}'
        )
    lines.append(
        'grpc_server_handling_seconds_bucket{grpc_method="Watch",'
        f'grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream",le="+Inf"}} {watch}'
    )
    return "\n".join(lines) + "\n"


# -- etcd's histogram ----------------------------------------------------------------------


def test_the_histogram_keeps_unary_requests_by_method_and_bound() -> None:
    got = sm.handling_buckets(page({"0.005": 8, "0.01": 9, "+Inf": 10}, watch=4))
    assert got == {"Range": {0.005: 8.0, 0.01: 9.0, math.inf: 10.0}}
    assert sm.handling_buckets("# nothing\n") == {}  # etcd without --metrics=extensive


def test_histogram_deltas_add_up_over_members_and_idle_methods_drop_out() -> None:
    before = [sm.handling_buckets(page({"0.005": 8, "+Inf": 10})),
              sm.handling_buckets(page({"0.005": 1, "+Inf": 1}))]  # fmt: skip
    after = [sm.handling_buckets(page({"0.005": 98, "+Inf": 110})),
             sm.handling_buckets(page({"0.005": 11, "+Inf": 11}))]  # fmt: skip
    delta = sm.bucket_delta(before, after)
    assert delta == {"Range": {0.005: 100.0, math.inf: 110.0}}
    assert sm.share_within(delta["Range"], 0.005) == pytest.approx(100 / 110)
    assert sm.bucket_delta(before, before) == {}
    with pytest.raises(ValueError, match="went back"):
        sm.bucket_delta(after, before)
    with pytest.raises(ValueError, match="not a bucket bound"):
        sm.share_within(delta["Range"], 0.003)


def test_a_bucket_quantile_is_the_bound_that_holds_that_share() -> None:
    buckets = {0.005: 90.0, 0.01: 99.0, 0.025: 100.0, math.inf: 100.0}
    assert sm.bucket_quantile(buckets, 0.5) == 0.005
    assert sm.bucket_quantile(buckets, 0.99) == 0.01
    assert sm.bucket_quantile(buckets, 1.0) == 0.025
    with pytest.raises(ValueError):
        sm.bucket_quantile({math.inf: 0.0}, 0.5)


# -- usage, latency, growth --------------------------------------------------------------


def test_latency_of_timed_reads() -> None:
    got = sm.latency([float(i) for i in range(1, 101)])
    assert got == {"count": 100, "p50_ms": 50.5, "p99_ms": 99.01, "max_ms": 100.0}
    with pytest.raises(ValueError):
        sm.latency([])


def test_etcd_usage_is_per_member_and_summed() -> None:
    got = sm.etcd_usage({"m0": sm.Usage(3.0, 60.0, 40.0), "m1": sm.Usage(1.2, 60.0, 30.0)})
    assert got["members"]["m0"] == {"core_percent": 5.0, "rss_mib": 40.0}
    assert got["core_percent"] == pytest.approx(7.0)
    assert got["rss_mib"] == 70.0


def _step(clusters: int, core: float, rate: float = 0.9, writes: float = 0.0) -> dict[str, Any]:
    return {"clusters": clusters, "sidecars": 3 * clusters,
            "etcd": {"core_percent": core, "rss_mib": 60.0 + clusters},
            "cost": {"requests_per_s": rate, "writes_per_s": writes}}  # fmt: skip


def test_growth_per_cluster_is_the_slope_over_the_steps() -> None:
    got = sm.per_cluster([_step(1, 3.0), _step(10, 4.8), _step(20, 6.8)])
    assert got["core_percent"] == pytest.approx(0.2, abs=0.001)
    assert got["rss_mib"] == pytest.approx(1.0)
    assert got["requests_per_s"] == pytest.approx(2.7)  # 3 sidecars x 0.9
    assert got["writes_per_s"] == pytest.approx(0.0)
    assert sm.per_cluster([_step(1, 3.0)])["core_percent"] is None


def test_capacity_from_the_rate_per_sidecar_and_etcds_tiers() -> None:
    small, medium, large = sm.capacity(0.91)
    # 3 sidecars of 0.91 requests/s: 2.73 per cluster.
    assert (small["by_clients"], small["by_requests"]) == (33, 73)
    assert (small["clusters"], small["bound"]) == (33, "clients")
    assert (medium["clusters"], medium["bound"]) == (166, "clients")
    assert (large["by_requests"], large["clusters"]) == (3663, 500)
    # A chattier sidecar hits the request bound first.
    assert sm.capacity(4.0)[0]["bound"] == "requests"
    with pytest.raises(ValueError):
        sm.capacity(0.0)


def test_handoff_summary_and_ratio_of_medians() -> None:
    assert sm.handoff_summary([]) is None
    assert sm.handoff_summary([100.0, 120.0, 200.0]) == {
        "n": 3, "median_ms": 120.0, "p95_ms": 192.0, "max_ms": 200.0}  # fmt: skip
    assert sm.handoff_ratio([100.0, 120.0, 200.0], [150.0]) == pytest.approx(1.25)
    assert sm.handoff_ratio([], [1.0]) is None and sm.handoff_ratio([0.0], [1.0]) is None


# -- what etcd and the kernel hold ------------------------------------------------------


def _listing(pairs: dict[str, str]) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"kvs": [{"key": b64(k), "value": b64(v)} for k, v in pairs.items()]}


def test_writer_keys_and_member_reports_from_an_etcdctl_listing() -> None:
    listing = _listing({
        "/dbvip/lab/writer": json.dumps({"node": "n1", "lease": "1"}),
        "/dbvip/lab/claim": json.dumps({"node": "n1"}),
        "/dbvip/lab-c01/writer": json.dumps({"node": "n2"}),
        "/dbvip/lab-c02/writer": "garbage",
        "/dbvip/lab/members/n1": "{}", "/dbvip/lab/members/n2": "{}",
        "/dbvip/lab-c01/members/n1": "{}", "/dbvip/lab/maintenance/n3": "{}",
    })  # fmt: skip
    assert sm.writer_nodes(listing) == {"lab": "n1", "lab-c01": "n2"}
    assert sm.member_keys(listing) == 3
    assert sm.writer_nodes({"count": 0}) == {} and sm.member_keys({}) == 0


def test_addresses_of_an_ip_json_answer() -> None:
    addrs = [{"local": "198.51.100.11", "prefixlen": 24}, {"local": "198.51.100.100"}]
    links: list[dict[str, Any]] = [{"ifname": "eth0", "addr_info": addrs}, {"ifname": "lo"}]
    assert sm.addresses(links) == {"198.51.100.11", "198.51.100.100"}


def test_client_connections_leave_out_the_members_own() -> None:
    ss = (
        "0      0      198.51.100.2:2379     198.51.100.11:40000\n"
        "0      0      198.51.100.3:2379     198.51.100.2:41000\n"
        "0      0      198.51.100.2:2379     [2001:db8::12]:42000\n\n"
    )
    assert sm.client_connections(ss, ["198.51.100.2", "198.51.100.3"]) == 2
    assert sm.client_connections("", ["198.51.100.2"]) == 0


def test_cluster_names_vips_and_steps() -> None:
    assert cluster_name("b1xs", 0) == "b1xs" and cluster_name("b1xs", 7) == "b1xs-c07"
    assert cluster_vip(0) == "198.51.100.100/32" and cluster_vip(1) == "198.51.100.141/32"
    vips = {cluster_vip(i) for i in range(MAX_CLUSTERS)}
    assert len(vips) == MAX_CLUSTERS
    # Never the lab's reader pool (.101-.120) or its hosts.
    assert all(not 101 <= int(v.split("/")[0].rsplit(".", 1)[1]) <= 120 for v in vips)
    with pytest.raises(ValueError):
        cluster_vip(MAX_CLUSTERS)
    assert steps(20, quick=False) == [1, 10, 20] and steps(5, quick=True) == [1, 5]
    assert steps(1, quick=False) == [1] and steps(2, quick=False) == [1, 2]


# -- the report --------------------------------------------------------------------------


def _handoff(ordinary_ms: float) -> dict[str, Any]:
    return {"ordinary_write_ms": ordinary_ms, "vip_ms": 50.0, "double_holders": [],
            "misdirected": []}  # fmt: skip


def _results(loaded_ms: float) -> dict[str, Any]:
    def step(k: int, core: float, handoffs: list[dict[str, Any]]) -> dict[str, Any]:
        txn = {"0.005": 3.0 * k, "0.01": 4.0 * k, "inf": 4.0 * k}
        cost = {"requests": {"Range": 0.3, "LeaseKeepAlive": 0.6}, "requests_per_s": 0.9,
                "writes_per_s": 0.0, "bytes_in_per_s": 100.0, "bytes_out_per_s": 200.0,
                "watch_streams": 1.0}  # fmt: skip
        return {"clusters": k, "sidecars": 3 * k, "cost": cost,
                "etcd": {"core_percent": core, "rss_mib": 90.0 + k, "members": {}},
                "histogram": {"Range": {"0.005": 99.0, "inf": 100.0}},
                "reads": {"count": 300, "p50_ms": 0.8, "p99_ms": 2.5, "max_ms": 4.0},
                "etcd_connections": 2 * 3 * k, "sidecar_core_percent": 1.5 * k,
                "sidecar_rss_mib": 30.0 * 3 * k, "database_sessions": k,
                "handoffs": handoffs, "handoff_histogram": {"Txn": txn}}  # fmt: skip

    return {
        "part": "scale", "date": "2026-12-05T09:00:00+00:00", "duration_s": 600.0,
        "commit": {"sha": "0123456789abcdef", "subject": "s", "dirty": False},
        "machine": {"cores": 2, "cpu": "x", "memory_gib": 8, "os": "o", "kernel": "k",
                    "load_before": [0.1, 0.1, 0.1]},
        "load_after": [1.0, 1.0, 1.0],
        "versions": {"python": "3", "etcd": "etcd Version: 3.4.23"},
        "options": {"steps": [1, 20], "window_s": 60.0, "repetitions": 2, "quick": True,
                    "quiet_s": 35.0, "range_reads": 300, "etcd_args": ["--metrics=extensive"],
                    "client_interval_s": 0.02, "seed": 1},
        "steps": [step(1, 3.0, [_handoff(100.0), _handoff(120.0)]),
                  step(20, 6.8, [_handoff(loaded_ms), _handoff(loaded_ms)])],
        "errors": [],
    }  # fmt: skip


def test_tables_verdict_and_capacity() -> None:
    results = _results(loaded_ms=130.0)
    steps_rows = scale_report.steps_table(results).splitlines()[2:]
    assert steps_rows[1].startswith("| 20 | 60 | 6.8 | 110 | 54.0 | 0.90 | 0.00 | 0.80 / 2.50 |")
    assert "| <= 5 / <= 5 ms of 100 |" in steps_rows[1]
    handoff = scale_report.handoff_table(results).splitlines()[2:]
    assert handoff[0].startswith("| 1 | 2 | 110 / 119 / 120 | x1.00 | 50 |")
    assert handoff[0].endswith("| <= 5 / <= 10 ms of 4 | 0 | 0 |")  # 3 of 4 within 5 ms
    assert "| 130 / 130 / 130 | x1.18 |" in handoff[1]
    assert "x1.18, met" in scale_report.verdict(results)
    assert "**not met**" in scale_report.verdict(_results(loaded_ms=140.0))
    capacity = scale_report.capacity_table(results)
    assert "| **33** (clients) |" in capacity and "0.20% of a core" in capacity
    assert "500 clusters per core" in capacity
    kinds = scale_report.kinds_table(results)
    assert "| per second | K = 1: per sidecar | K = 1: all | K = 20: per sidecar |" in kinds
    assert "| LeaseKeepAlive | 0.60 | 1.80 | 0.60 | 36.00 |" in kinds
    assert "| **requests, all kinds** | **0.90** | **2.70** | **0.90** | **54.00** |" in kinds
    assert "| watch streams open (end) | 1.0 | 3.0 | 1.0 | 60.0 |" in kinds


def test_markdown_plot_and_a_run_that_failed(tmp_path: Path) -> None:
    written = scale_report.write(_results(130.0), tmp_path)
    assert [p.name for p in written] == ["results.png", "results.md"]
    assert (tmp_path / "results.png").stat().st_size > 1000
    text = (tmp_path / "results.md").read_text()
    assert "(**--quick**: indicative only)" in text and "![many clusters" in text
    assert "--metrics=extensive" in text and "ordinary client" in text
    failed = _results(130.0) | {"steps": [], "errors": ["RuntimeError: boom"]}
    text = scale_report.markdown(failed, None)
    assert "**Errors:** RuntimeError: boom" in text and "No step completed." in text


def test_the_part_is_wired_and_documented() -> None:
    assert PARTS["scale"] == "integration.bench.scale"
    readme = (REPO / "README.md").read_text()
    assert f"<!-- generated: {BLOCK} -->" in readme and f"<!-- end: {BLOCK} -->" in readme
    assert "--part scale" in (REPO / "scripts" / "bench.sh").read_text().split("set -euo")[0]
