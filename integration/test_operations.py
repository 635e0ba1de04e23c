"""What operators do to a running cluster, on the real lab."""

from __future__ import annotations

import time

import pytest

from integration.conftest import MakeLab

pytestmark = pytest.mark.real


def test_maintenance_steps_down_and_stays_away_until_told(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        on = lab.dbvip("n1", "maintenance", "on")
        assert on.returncode == 0, on.stderr
        assert "sidecar confirms (reason maintenance, VIP on it: none)" in on.stdout
        assert lab.holders() == set()
        assert lab.writer_value() is None  # released, not left to expire
        assert lab.status("n2")["maintenance"] == ["n1"]
        time.sleep(2.0)  # still primary, still away
        assert lab.holders() == set()
        off = lab.dbvip("n1", "maintenance", "off")
        assert off.returncode == 0, off.stderr
        lab.wait_holder("n1")
    assert "reason=maintenance" in lab.sidecar_log("n1")
