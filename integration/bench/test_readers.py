"""The ``readers`` part's arithmetic, report and HAProxy configurations, on
synthetic records (fast; the benchmark itself is never run here). The
configurations go through the real ``haproxy -c``."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest

from integration.bench import readers_measure as rm
from integration.bench import readers_report, report
from integration.bench.readers_lb import (
    DBVIP,
    LAG_BYTES,
    PATRONI_EXAMPLE,
    PATRONI_FAST,
    SYSTEMS,
    render_patroni,
)
from integration.lab.haproxy import HAPROXY, render_config
from integration.lab.reader import Read

MiB = 1 << 20
NODES = [(f"n{i}", ipaddress.ip_address(f"198.51.100.1{i}")) for i in (1, 2, 3)]
LISTEN = [ipaddress.ip_address("198.51.100.30")]


def read(start: float, ok: bool = True, node: str | None = "n2", recovery: bool = True) -> Read:
    end = start + 0.01
    if not ok:
        return Read(start, end, False, None, None, None, "refused", "connect")
    return Read(start, end, True, node, "198.51.100.101", recovery, "", "query")


# -- statistics --------------------------------------------------------------------------


def test_parse_lsn() -> None:
    assert rm.parse_lsn("0/5F0B860") == 0x5F0B860
    assert rm.parse_lsn("1/0") == 1 << 32
    with pytest.raises(ValueError):
        rm.parse_lsn("5F0B860")


def test_lag_at_is_the_latest_sample_before_and_passed_the_first_past_the_threshold() -> None:
    samples = [rm.LagSample(2.0, "n2", 20 * MiB), rm.LagSample(1.0, "n2", 0),
               rm.LagSample(3.0, "n2", None), rm.LagSample(1.5, "n3", 40 * MiB)]  # fmt: skip
    history = rm.LagHistory(samples)
    assert history.at("n2", 0.5) is None
    assert history.at("n2", 1.9) == 0
    assert history.at("n2", 2.0) == 20 * MiB
    assert history.at("n2", 9.0) is None
    assert history.passed("n2", LAG_BYTES, 0.0, 10.0) == 2.0
    assert history.passed("n2", LAG_BYTES, 2.5, 10.0) is None
    assert history.passed("n3", LAG_BYTES, 0.0, 1.0) is None


def test_outcome_counts_failures_bad_reads_and_the_lagging_replica_stop() -> None:
    history = rm.LagHistory([rm.LagSample(0.0, "n2", 0), rm.LagSample(2.0, "n2", 20 * MiB),
                             rm.LagSample(5.0, "n2", 0)])  # fmt: skip
    reads = [
        read(0.5),  # before the fault: not counted
        read(1.0, ok=False),
        read(1.5, ok=False),
        read(2.1),  # n2 past 16 MiB
        read(3.2),  # n2 past 16 MiB: its last lagging read ends at 3.21
        read(3.5, node="n3"),
        read(4.0, node="n1", recovery=False),  # the primary answered
        read(5.5),  # n2 back under the threshold: not a lagging read
        read(9.0, ok=False),  # after the window
    ]
    got = rm.outcome(reads, history, 1.0, 8.0, LAG_BYTES, "n2", 2.0)
    assert got.reads == 7 and got.failed == 2
    assert got.last_failure_ms == pytest.approx(510.0)
    assert got.lagging == 2 and got.non_replica == 1
    assert got.stop_receiving_ms == pytest.approx(1210.0)
    assert got.longest_read_ms == pytest.approx(10.0)
    quiet = rm.outcome([read(1.2, node="n3")], history, 1.0, 8.0, LAG_BYTES, "n2", 2.0)
    assert quiet.failed == 0 and quiet.last_failure_ms is None and quiet.stop_receiving_ms == 0.0
    assert rm.outcome(reads, history, 1.0, 8.0, LAG_BYTES).stop_receiving_ms is None


def test_reads_outside_every_window() -> None:
    reads = [read(0.5), read(1.5), read(3.0, ok=False)]
    assert rm.outside(reads, [(1.0, 2.0)]) == [reads[0], reads[2]]


# -- report -----------------------------------------------------------------------------


def _row(system: str, scenario: str, rep: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"system": system, "scenario": scenario, "rep": rep, "node": "n2",
                            "all_out": True, "lag_passed_ms": None, "reads": 100, "failed": 0,
                            "last_failure_ms": None, "lagging": 0, "non_replica": 0,
                            "stop_receiving_ms": None, "longest_read_ms": 12.0}  # fmt: skip
    base.update(fields)
    return base


def _results() -> dict[str, Any]:
    samples = []
    for rep in (1, 2):
        samples += [
            _row("dbvip-pool", "crash", rep, failed=rep, last_failure_ms=100.0 * rep),
            _row("patroni-example", "crash", rep, failed=3, last_failure_ms=9000.0),
            _row("patroni-fast", "crash", rep),
            *(_row(s.key, "lag", rep, stop_receiving_ms=500.0 * rep, lagging=4) for s in SYSTEMS),
        ]
    return {
        "date": "2026-12-05T06:00:00+00:00", "duration_s": 120.0,
        "commit": {"sha": "0" * 40, "subject": "test", "dirty": False},
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 4.0, "os": "Debian", "kernel": "6",
                    "load_before": [1.0, 1.0, 1.0]},
        "load_after": [1.0, 1.0, 1.0], "versions": {"haproxy": "2.6"},
        "options": {"repetitions": 2, "quick": True, "scenarios": ["crash", "lag"],
                    "client_interval_s": 0.05, "seed": 1},
        "systems": [{"key": s.key, "port": s.port, "note": s.note} for s in SYSTEMS],
        "interference": {"alone": {"reads_per_s": 19.0, "read_ms_median": 11.0,
                                   "read_ms_p95": 40.0}},
        "faults": [{"all_out": True}] * 4, "errors": [], "samples": samples,
        "between_faults": {}, "poller_longest_gap_s": 0.1, "reads": {},
    }  # fmt: skip


def test_main_table_rows_per_scenario_and_system() -> None:
    table = readers_report.main_table(_results())
    rows = [line for line in table.splitlines() if line.startswith("| replica")]
    assert len(rows) == 6
    dbvip_crash = next(r for r in rows if "crashes | dbvip-pool" in r)
    assert "| 3 of 200; 2 |" in dbvip_crash and "| 150 / 195 / 200 |" in dbvip_crash
    assert "| n/a |" in dbvip_crash
    fast_crash = next(r for r in rows if "crashes | patroni-fast" in r)
    assert "| 0 of 200; 0 | - |" in fast_crash
    lag = next(r for r in rows if "16 MiB | patroni-example" in r)
    assert "| 750 / 975 / 1000 | 8 | 0 |" in lag


def test_markdown_plot_and_readme_block(tmp_path: Path) -> None:
    results = _results()
    written = readers_report.write(results, tmp_path)
    assert [p.name for p in written] == ["results.png", "results.md"]
    assert (tmp_path / "results.png").stat().st_size > 1000
    text = (tmp_path / "results.md").read_text()
    assert "(**--quick**: indicative only)" in text and PATRONI_EXAMPLE.note in text
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- generated: bench-readers -->\nold\n<!-- end: bench-readers -->\nb\n")
    report.replace_block(readme, "bench-readers", "new\n")
    assert readme.read_text() == (
        "a\n<!-- generated: bench-readers -->\nnew\n<!-- end: bench-readers -->\nb\n"
    )
    with pytest.raises(ValueError, match="bench-other"):
        report.replace_block(readme, "bench-other", "x")


# -- HAProxy configurations ----------------------------------------------------------------


def _check(config: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.cfg"
    path.write_text(config)
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


@pytest.mark.parametrize("system", [PATRONI_EXAMPLE, PATRONI_FAST], ids=lambda s: s.key)
def test_patroni_configs_pass_haproxy_check(system: Any, tmp_path: Path) -> None:
    config = render_patroni(system, NODES, LISTEN, tmp_path / "x.sock")
    done = _check(config, tmp_path, system.key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "option httpchk GET /replica?lag=16MB" in config
    assert config.count("check port 8008") == 3 and f":{system.port}" in config
    broken = _check(config.replace("inter ", "inter x", 1), tmp_path, "broken")
    assert broken.returncode != 0


def test_patroni_settings_are_the_examples_and_the_fast_ones(tmp_path: Path) -> None:
    example = render_patroni(PATRONI_EXAMPLE, NODES, LISTEN, tmp_path / "x.sock")
    assert "default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions" in example
    assert "timeout check 5s" in example
    fast = render_patroni(PATRONI_FAST, NODES, LISTEN, tmp_path / "x.sock")
    assert "default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions" in fast
    # Same global and defaults as the dbvip pool's (the lab's) configuration.
    lab = render_config([ipaddress.ip_address("198.51.100.101")], None, LISTEN, tmp_path / "x.sock")
    head = lab.split("frontend readers")[0]
    assert example.startswith(head) and fast.startswith(head)
    assert len({s.port for s in SYSTEMS}) == 3 and DBVIP.port == 5432
