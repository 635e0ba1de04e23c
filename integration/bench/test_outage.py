"""The outage part's arithmetic and report, on synthetic attempts and results
(fast; the benchmark itself is never run here)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbvip.model import Role
from integration.bench import outage_report
from integration.bench.measure import Reign
from integration.bench.outage_measure import (
    Outage,
    Phase,
    acks,
    available,
    gaps,
    longest_gap,
    reigns,
    slots,
    summary,
)
from integration.bench.outage_systems import KEYS, SYSTEMS, system
from integration.lab.monitor import Interval, RoleEvent
from integration.lab.writer import Attempt


def ok(at_s: float, node: str = "n1") -> Attempt:
    return Attempt(at_s - 0.01, at_s, True, node, "", "query")


def failed(at_s: float, took_s: float = 3.0) -> Attempt:
    return Attempt(
        at_s - took_s,
        at_s,
        False,
        None,
        'connection failed: connection to server at "198.51.100.100", port 5432 '
        "failed: No route to host",
        "connect",
    )


def every(start_s: float, end_s: float, step_s: float = 0.02, node: str = "n1") -> list[Attempt]:
    n = round((end_s - start_s) / step_s)
    return [ok(start_s + i * step_s, node) for i in range(n)]


# -- availability and gaps ------------------------------------------------------------


def test_writes_all_along_are_available_throughout() -> None:
    phase = Phase("during", 100.0, 110.0)
    instants = acks(every(99.0, 112.0))
    assert available(instants, phase) == 1.0
    gap = longest_gap(instants, phase)
    assert gap is not None and gap.length_s == pytest.approx(0.02, abs=1e-6)


def test_a_stop_midway_is_unavailable_from_the_last_write() -> None:
    """Writes until 103.5, none after: down from the last one (103.48) to the end."""
    phase = Phase("during", 100.0, 110.0)
    instants = acks(every(99.0, 103.5))
    assert slots(instants, phase)[:5] == [50, 50, 50, 25, 0]
    assert available(instants, phase) == pytest.approx(0.348, abs=1e-6)
    gap = longest_gap(instants, phase)
    assert gap is not None
    assert gap.end_s == 110.0  # the phase's edge ends the gap
    assert gap.length_s == pytest.approx(6.52, abs=0.01)


def test_no_write_at_all_is_one_gap_the_whole_phase() -> None:
    phase = Phase("during", 0.0, 30.0)
    instants = acks([failed(10.0), failed(20.0)])
    assert available(instants, phase) == 0.0
    assert [(g.start_s, g.end_s) for g in gaps(instants, phase)] == [(0.0, 30.0)]


def test_only_gaps_over_a_second_count_as_unavailable() -> None:
    """A write every 0.9 s is available throughout; one at 2.2 s of 2.5 is
    down for the 2.2 s before it, up for the 0.3 s after."""
    assert available([0.9 * i for i in range(1, 12)], Phase("p", 0.0, 10.0)) == 1.0
    phase = Phase("p", 0.0, 2.5)
    assert slots([2.2], phase) == [0, 0, 1]
    assert available([2.2], phase) == pytest.approx(0.12)
    assert available([1.1, 1.9], phase) == pytest.approx(1 - 1.1 / 2.5)


def test_an_empty_phase_has_no_figures() -> None:
    phase = Phase("p", 5.0, 5.0)
    assert available([5.0], phase) is None
    assert longest_gap([5.0], phase) is None


def test_only_acknowledgements_count_and_at_their_end() -> None:
    attempts = [failed(1.5), ok(2.5), Attempt(0.5, 3.2, True, "n1", "", "query")]
    assert acks(attempts) == [2.5, 3.2]


def test_gaps_are_longest_first_and_inside_the_phase() -> None:
    phase = Phase("p", 0.0, 10.0)
    found = gaps([-1.0, 1.0, 2.0, 7.0, 11.0], phase)
    assert [(g.start_s, g.end_s) for g in found] == [(2.0, 7.0), (7.0, 10.0), (0.0, 1.0),
                                                     (1.0, 2.0)]  # fmt: skip


def test_an_outage_has_before_during_after_and_the_window() -> None:
    phases = {p.name: p for p in Outage(100.0, 131.0, 10.0, 30.0).phases()}
    assert (phases["before"].start_s, phases["before"].end_s) == (90.0, 100.0)
    assert (phases["during"].start_s, phases["during"].end_s) == (100.0, 131.0)
    assert (phases["after"].start_s, phases["after"].end_s) == (131.0, 161.0)
    assert (phases["window"].start_s, phases["window"].end_s) == (90.0, 161.0)


# -- who was primary ------------------------------------------------------------------


def role(host: str, new: Role, at_s: float, previous_at_s: float | None) -> RoleEvent:
    return RoleEvent(host, None, new, at_s, previous_at_s)


def test_reigns_start_at_the_earliest_possible_instant_and_end_when_seen() -> None:
    events = [
        role("n1", Role.PRIMARY, 1.0, None),
        role("n2", Role.REPLICA, 1.0, None),
        role("n1", Role.UNKNOWN, 5.0, 4.9),  # a poll that timed out: maybe still primary
        role("n1", Role.PRIMARY, 5.2, 5.0),
        role("n1", Role.DOWN, 8.0, 7.95),
        role("n2", Role.PRIMARY, 9.0, 8.95),
    ]
    assert reigns(events, 20.0) == [Reign("n1", 1.0, 8.0), Reign("n2", 8.95, 20.0)]


# -- one outage's summary -------------------------------------------------------------


def test_summary_of_an_outage_that_stops_writes_for_a_while() -> None:
    """Writes until +8 s into the outage, back at +22 s (etcd back at +20 s);
    one double holder in the window, one before it; n2 acknowledged a write
    while only n1 was ever primary."""
    outage = Outage(stop_s=100.0, back_s=120.0, before_s=10.0, after_s=10.0)
    attempts = [*every(90.0, 108.0), failed(111.0), failed(114.0), *every(122.0, 130.0),
                ok(125.001, "n2")]  # fmt: skip
    doubles = [
        Interval(50.0, 50.1, frozenset({"n1", "n2"})),
        Interval(121.0, 121.2, frozenset({"n1", "n2"})),
    ]
    result: dict[str, Any] = summary(outage, attempts, doubles, [Reign("n1", 0.0)])
    during = result["phases"]["during"]
    assert during["available"] == pytest.approx(1 - 12.02 / 20, abs=1e-4)
    assert during["longest_gap_s"] == pytest.approx(12.02, abs=0.01)
    assert during["longest_gap_from_s"] == pytest.approx(7.98, abs=0.01)
    assert during["attempts"] == 400 + 2
    assert result["phases"]["before"]["available"] == 1.0
    assert result["phases"]["after"]["available"] == pytest.approx(0.8)
    # down from the last write (107.98) to the next (122.0), 14.02 s of 40
    assert result["phases"]["window"]["available"] == pytest.approx(1 - 14.02 / 40, abs=1e-4)
    assert [g["from_s"] for g in result["gaps_over_1s"]] == [pytest.approx(7.98, abs=0.01)]
    assert result["double_holders"] == [
        {"from_s": 21.0, "length_s": pytest.approx(0.2), "hosts": ["n1", "n2"]}
    ]
    assert result["misdirected"] == [{"at_s": pytest.approx(25.001), "node": "n2"}]
    assert result["acked_by"] == {"n1": 900 + 400, "n2": 1}
    assert result["errors"] == {"No route to host": 2}
    assert len(result["window_slots"]) == 40


# -- the systems and the report -------------------------------------------------------


def test_every_system_is_stated_and_the_database_side_is_the_same_without_patroni() -> None:
    assert len(set(KEYS)) == len(SYSTEMS) == 6
    assert system("dbvip/failsafe-off").setup.params == ()
    assert system("dbvip/failsafe-on").failsafe
    paired = system("dbvip/patroni-failsafe")
    assert paired.patroni and paired.patroni_settings()["failsafe_mode"] is True
    assert system("dbvip/patroni-no-failsafe").patroni_settings()["failsafe_mode"] is False
    assert not any(s.patroni for s in SYSTEMS if s.setup.system != "dbvip")
    with pytest.raises(ValueError, match="unknown system"):
        system("dbvip/fast")


def _results() -> dict[str, Any]:
    outage = Outage(stop_s=100.0, back_s=120.0, before_s=10.0, after_s=10.0)
    attempts = [*every(90.0, 108.0), *every(121.5, 130.0)]
    one = summary(outage, attempts, [], [Reign("n1", 0.0)])
    entry = {
        "key": "dbvip/failsafe-off",
        "setup": {"params": [], "note": "defaults"},
        "patroni": None,
        "outages": [{"outage_s": 20.0, "repetition": 1, **one}],
        "error": "",
        "monitor": {"period_s": 0.01, "role_period_s": 0.05},
    }
    patroni = {
        "key": "dbvip/patroni-failsafe",
        "setup": {"params": [["DBVIP_FAILSAFE", "on"]], "note": "failsafe"},
        "patroni": {"ttl": 20, "failsafe_mode": True},
        "outages": [],
        "error": "RuntimeError: boom",
    }
    return {
        "date": "2026-12-05T06:00:00+00:00",
        "duration_s": 300.0,
        "commit": {"sha": "0123456789abcdef", "subject": "test", "dirty": False},
        "machine": {
            "cores": 2,
            "cpu": "cpu",
            "memory_gib": 4.0,
            "os": "os",
            "kernel": "k",
            "load_before": [1.0, 1.0, 1.0],
        },
        "load_after": [2.0, 2.0, 2.0],
        "versions": {"etcd": "3.5"},
        "options": {
            "quick": True,
            "outages_s": [20.0],
            "repetitions": 1,
            "before_s": 10.0,
            "after_s": 10.0,
            "parallel": 2,
        },
        "systems": [entry, patroni],
    }


def test_the_report_names_the_client_and_states_every_figure_and_setting() -> None:
    text = outage_report.markdown(_results(), None)
    assert "ordinary client: one connection attempt at a time" in text
    row = next(line for line in text.splitlines() if line.startswith("| dbvip/failsafe-off"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # down from 107.98 to 121.5: during 1 - 12.02 / 20, after 1 - 1.5 / 10, window
    # 1 - 13.52 / 40; longest gap 12.0 s; 400 acknowledged during
    assert cells[:8] == ["dbvip/failsafe-off", "20 s", "39.9%", "100.0%", "85.0%", "66.2%",
                         "12.0", "400"]  # fmt: skip
    assert "| dbvip/patroni-failsafe | failed: RuntimeError: boom |" in text
    assert "`DBVIP_FAILSAFE=on`" in text and "`failsafe_mode: true`" in text
    assert "--quick" in text and "2 lab(s) side by side" in text


def test_the_readme_block_is_replaced_and_only_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n<!-- generated: bench-outage -->\nstale body\n<!-- end: bench-outage -->\ntail\n"
    )
    outage_report.update_readme(readme, _results(), "results.png")
    text = readme.read_text()
    assert "stale body" not in text and text.endswith("<!-- end: bench-outage -->\ntail\n")
    assert "![acknowledged writes per second" in text
    readme.write_text("# no block\n")
    with pytest.raises(ValueError, match="bench-outage"):
        outage_report.update_readme(readme, _results(), None)


def test_the_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = outage_report.write(_results(), tmp_path)
    assert [p.name for p in written] == ["results.png", "results.md"]
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_bad_options_are_refused_without_a_traceback() -> None:
    for bad in (["--systems", "dbvip/nope"], ["--outages-s", "0"], ["--outages-s", "x"]):
        done = subprocess.run(
            [sys.executable, "-m", "integration.bench", "--part", "outage", *bad],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "error:" in done.stderr


def test_gap_math_agrees_with_slot_math_on_a_regular_grid() -> None:
    """A write every 0.5 s: every slot has one, and no gap exceeds 0.5 s."""
    phase = Phase("p", 0.0, 60.0)
    instants = [0.25 + 0.5 * i for i in range(120)]
    assert available(instants, phase) == 1.0
    gap = longest_gap(instants, phase)
    assert gap is not None and math.isclose(gap.length_s, 0.5)
