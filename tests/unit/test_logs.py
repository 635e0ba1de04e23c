"""Log lines of a real Runner, through dbvip.logs as ``dbvip run`` sets it up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dbvip.model import Role
from tests.observed import Capture, ObservedNode, run


@pytest.fixture
def capture() -> Iterator[Capture]:
    c = Capture()
    try:
        yield c
    finally:
        c.restore()


def a_story() -> None:
    """Take-over, an etcd that refuses (renewals fail), then a demotion."""
    n1 = ObservedNode()
    run([n1], 1.0)
    n1.store.fault = "refuse"
    run([n1], 3.0)
    n1.store.fault = "ok"
    n1.probe.role = Role.REPLICA
    run([n1], 1.0)


def test_every_json_line_of_a_decision_carries_its_reason_and_facts(capture: Capture) -> None:
    capture.start("json")
    a_story()
    lines = [json.loads(line) for line in capture.text().splitlines()]
    decisions = [line for line in lines if line["msg"].startswith("reason=")]
    actions = [line for line in lines if line["msg"].startswith("action=")]
    reasons = [d["reason"] for d in decisions]
    assert reasons[:2] == ["acquiring", "taking_over"]
    assert "demoted" in reasons
    assert {a["action"] for a in actions} >= {"AcquireLease", "AddVip", "RemoveVip"}
    assert any(a["level"] == "warning" and a["cause"] == "connection refused" for a in actions)
    for line in decisions + actions:
        assert isinstance(line["reason"], str)
        assert line["reason"]
        facts: dict[str, Any] = line["facts"]
        assert {"role", "vip", "writer"} <= set(facts), line
    holding = next(d for d in decisions if d["reason"] == "holding")
    assert {"lease", "deadline_in_s"} <= set(holding["facts"])


def test_text_lines_of_a_decision_carry_reason_and_facts(capture: Capture) -> None:
    capture.start("text")
    a_story()
    decisions = [line for line in capture.text().splitlines() if " reason=" in line]
    assert decisions
    for line in decisions:
        assert " INFO dbvip reason=" in line
        assert " role=" in line
        assert " vip=" in line
        assert " writer=" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(decisions[0])
