"""The benchmark's arithmetic and report, on synthetic results (fast; the
benchmark itself is never run here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from integration.bench import report
from integration.bench.client import AttemptTail
from integration.bench.measure import Reign, first_ack, misdirected, percentile
from integration.bench.setups import SETTINGS, SYSTEMS, setup
from integration.lab.writer import Attempt


def _sample(key: str, scenario: str, rep: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "setup": key,
        "scenario": scenario,
        "repetition": rep,
        "old": "n1",
        "new": "n2",
        "error": "",
        "vip_ms": None,
        "write_ms": None,
        "write_after_fault_ms": None,
        "attempts": 100,
        "acked": 90,
        "double_holders": [],
        "misdirected": [],
    }
    base.update(fields)
    return base


def synthetic() -> dict[str, Any]:
    """dbvip/default: writes 10..50 ms after the promotion (p50 30), one failed
    crash run; keepalived/default: one double holder after the heal and one
    misdirected write."""
    samples = []
    for rep, write_ms in enumerate([10.0, 20.0, 30.0, 40.0, 50.0], start=1):
        samples.append(
            _sample("dbvip/default", "switchover", rep, vip_ms=write_ms - 5, write_ms=write_ms)
        )
    samples.append(_sample("dbvip/default", "crash", 1, error="RepetitionError: boom"))
    samples.append(
        _sample(
            "keepalived/default",
            "dead-holder",
            1,
            write_ms=4000.0,
            write_after_fault_ms=5000.0,
            double_holders=[
                {"start_ms": 2000.0, "end_ms": 2100.0, "hosts": ["n1", "n2"], "after_heal": True}
            ],
            misdirected=[{"node": "n1", "started_ms": 1.0, "ended_ms": 2.0}],
        )
    )
    footprints = [
        {
            "setup": "dbvip/default",
            "node": "n1",
            "holder": True,
            "window_s": 30.0,
            "cpu_s": 0.1,
            "rss_mib_max": 30.0,
            "rss_mib_end": 29.0,
            "processes": 1,
            "cpu_s_per_hour": 12.0,
            "core_percent": 0.33,
        },
        {
            "setup": "keepalived/default",
            "node": "n1",
            "holder": True,
            "window_s": 30.0,
            "cpu_s": 0.2,
            "rss_mib_max": 13.0,
            "rss_mib_end": 13.0,
            "processes": 2,
            "cpu_s_per_hour": 24.0,
            "core_percent": 0.67,
        },
    ]
    return {
        "date": "2026-01-02T03:04:05+00:00",
        "duration_s": 600.0,
        "commit": {"sha": "0123456789abcdef", "subject": "a commit", "dirty": False},
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "memory_gib": 4.0,
            "os": "Debian",
            "kernel": "6.1",
            "load_before": [0.5, 0.4, 0.3],
        },
        "load_after": [1.0, 0.9, 0.8],
        "versions": {"keepalived": "Keepalived v2.2.7"},
        "options": {"repetitions": 5, "quick": False},
        "setups": [
            {
                "system": "dbvip",
                "setting": "default",
                "params": [],
                "note": "defaults",
                "key": "dbvip/default",
            },
            {
                "system": "keepalived",
                "setting": "default",
                "params": [["advert_int", "1"]],
                "note": "track script",
                "key": "keepalived/default",
            },
        ],
        "samples": samples,
        "footprints": footprints,
    }


def test_percentile_interpolates_between_ranks() -> None:
    values = [50.0, 10.0, 40.0, 20.0, 30.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 90) == pytest.approx(46.0)
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 50.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_a_write_is_misdirected_only_if_its_node_never_reigned_during_it() -> None:
    reigns = [Reign("n1", 0.0, 10.0), Reign("n2", 11.0)]
    ok_old = Attempt(9.9, 10.05, True, "n1", "", "query")  # began within n1's reign
    late_old = Attempt(10.2, 10.3, True, "n1", "", "query")  # n1 no longer primary
    before_new = Attempt(10.5, 10.6, True, "n2", "", "query")  # n2 not primary yet
    ok_new = Attempt(10.9, 11.1, True, "n2", "", "query")  # ended within n2's reign
    failed = Attempt(10.2, 10.3, False, None, "timed out connecting", "connect")
    found = misdirected([ok_old, late_old, before_new, ok_new, failed], reigns)
    assert found == [late_old, before_new]
    assert first_ack([ok_old, ok_new], "n2", 11.0) == 11.1


def test_latency_table_has_percentiles_per_setup_scenario_and_metric() -> None:
    table = report.latency_table(synthetic())
    row = next(
        line
        for line in table.splitlines()
        if "dbvip | default | switchover | promotion seen -> first write" in line
    )
    # n, p50, p90, p99, max, failed
    assert row.endswith("| 5 | 30 | 46 | 50 | 50 | 0 |"), row
    crash = [line for line in table.splitlines() if "| crash |" in line]
    assert crash and all(line.endswith("| 0 | - | - | - | - | 1 |") for line in crash), crash
    assert "holder isolated -> first write acknowledged | 1 | 5000 |" in table


def test_safety_tally_counts_double_holders_and_misdirected_writes() -> None:
    rows = report.safety_table(synthetic()).splitlines()
    assert "| dbvip | default | 6 | 0 | 0 | 0 | 540 | 0 |" in rows
    assert "| keepalived | default | 1 | 1 | 1 | 100 | 90 | 1 |" in rows


def test_goals_say_met_and_not_met_from_the_numbers() -> None:
    results = synthetic()
    text = report.goals(results)
    assert "| 30 ms | met |" in text  # p50 30 <= 60
    assert "| 50 ms | met |" in text  # p99 49.6 -> 50 <= 150
    assert "**not met**" not in text
    results["samples"][0]["write_ms"] = 500.0
    results["samples"][1]["write_ms"] = 500.0
    results["samples"][2]["write_ms"] = 500.0
    assert "| 500 ms | **not met** |" in report.goals(results)


def test_the_ordinary_client_has_its_rows_and_goals() -> None:
    results = synthetic()
    for sample in results["samples"]:
        if sample["setup"] == "dbvip/default" and sample["write_ms"] is not None:
            sample["ordinary_write_ms"] = 2 * sample["write_ms"]  # 20..100 ms
            sample["ordinary_acked"] = 10
    table = report.latency_table(results)
    row = next(line for line in table.splitlines() if "(ordinary client)" in line)
    assert row.endswith("| 5 | 60 | 92 | 99 | 100 | 0 |"), row
    text = report.goals(results)
    assert "p50 <= 100 ms, ordinary client (switchover + crash) | 60 ms | met |" in text
    assert "p99 <= 250 ms, ordinary client (switchover + crash) | 99 ms | met |" in text
    results["samples"][0]["ordinary_write_ms"] = 9800.0  # a login left hanging
    # 40, 60, 80, 100, 9800: p99 = 100 + 0.96 * 9700
    assert "ordinary client (switchover + crash) | 9412 ms | **not met** |" in report.goals(results)
    # Both clients' writes count in the safety tally.
    assert "| dbvip | default | 6 | 0 | 0 | 0 | 590 | 0 |" in report.safety_table(results)


def test_report_files_and_readme_block(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = synthetic()
    written = report.write(results, tmp_path)
    png = tmp_path / "results.png"
    assert png in written and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    md = (tmp_path / "results.md").read_text()
    assert "commit `0123456789ab`" in md and "2 cores (Test CPU)" in md
    assert "![latency distributions](results.png)" in md
    assert "`advert_int=1`" in md
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- generated: bench -->\nstale table\n<!-- end: bench -->\ntail\n")
    report.update_readme(readme, results, "bench/results.png")
    text = readme.read_text()
    assert "stale table" not in text and text.endswith("<!-- end: bench -->\ntail\n")
    assert "![latency distributions](bench/results.png)" in text
    with pytest.raises(ValueError):
        report.update_readme(tmp_path / "results.md", results, None)


def test_report_command_remakes_the_tables_from_results_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(synthetic()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "integration.bench.report", str(path), "--no-plot"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "| keepalived | default |" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "results.png").exists()


def test_attempt_tail_reads_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "writer.jsonl"
    line = (
        '{"seq": %d, "started": 1.0, "ended": 1.01, "ok": true, "node": "n1", '
        '"error": "", "phase": "query"}'
    )
    tail = AttemptTail(path)
    assert tail.read() == []
    path.write_text(line % 0 + "\n" + (line % 1)[:20])
    assert len(tail.read()) == 1
    path.write_text(line % 0 + "\n" + line % 1 + "\n")
    assert [a.node for a in tail.read()] == ["n1", "n1"]
    assert len(tail.since(1)) == 1


def test_every_setup_states_its_settings_and_dbvip_fast_passes_the_timing_check() -> None:
    for system in SYSTEMS:
        for setting in SETTINGS:
            made = setup(system, setting)
            assert made.key == f"{system}/{setting}" and made.note
    fast = dict(setup("dbvip", "fast").params)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DBVIP_")},
        **fast,
        "DBVIP_CLUSTER": "bench",
        "DBVIP_NODE": "n1",
        "DBVIP_VIP": "198.51.100.100",
        "DBVIP_INTERFACE": "eth0",
        "DBVIP_ETCD_ENDPOINTS": "http://198.51.100.2:2379",
        "DBVIP_PG_DSN": "host=/nonexistent",
    }
    done = subprocess.run(
        [sys.executable, "-m", "dbvip.cli", "check-config"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^probe_interval_s +0\.05 ", done.stdout, re.MULTILINE), done.stdout
    with pytest.raises(ValueError):
        setup("patroni", "default")
