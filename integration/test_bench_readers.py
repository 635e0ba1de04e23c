"""The ``readers`` benchmark part end to end, once, on the real lab (about a
minute): one crashed replica seen by the three load balancers side by side.

It checks that the harness still fits the lab (Patroni mode, reader VIPs, the
HAProxy host, the clients, patronictl), not any figure: numbers are the
benchmark's to report.
"""

from __future__ import annotations

import os
import secrets

import pytest

from integration.bench.readers_lb import SYSTEMS
from integration.bench.readers_run import run_all
from integration.lab import cleanup

pytestmark = pytest.mark.real


def test_one_crash_is_measured_by_every_load_balancer() -> None:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    name = f"t{os.getpid() % 100000}{secrets.token_hex(2)}"
    lines: list[str] = []
    try:
        measured = run_all(name, ("crash",), 1, seed=1, say=lines.append, interference_s=2.0)
    finally:
        left = cleanup.find(name)
        assert left.empty(), f"lab {name} left {left.describe()}"
    print("\n".join(lines))
    assert measured["errors"] == []
    (fault,) = measured["faults"]
    assert fault["scenario"] == "crash" and fault["node"] != fault["primary"]
    # Held until every system had the crashed replica out, then healthy again.
    assert fault["all_out"] and fault["end_s"] > fault["fault_s"] + fault["held_s"]
    rows = {row["system"]: row for row in measured["samples"]}
    assert set(rows) == {s.key for s in SYSTEMS}
    for row in rows.values():
        assert row["reads"] > 0, row
        assert row["lagging"] == 0 and row["stop_receiving_ms"] is None, row
    assert set(measured["reads"]) == {s.key for s in SYSTEMS}
    assert all(count > 0 for count in measured["reads"].values())
