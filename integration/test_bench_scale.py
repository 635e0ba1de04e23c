"""The ``scale`` benchmark part end to end, once, on the real lab (about a
minute and a half): one cluster, then two, each with an idle window, timed
reads and one switchover.

It checks that the harness still fits the lab (a three-member etcd with
``--metrics=extensive``, extra clusters' sidecars in the node namespaces,
the failover benchmark's orchestrator), not any figure: numbers are the
benchmark's to report.
"""

from __future__ import annotations

import os
import secrets

import pytest

from integration.bench.scale_run import RANGE_READS, run_all
from integration.lab import cleanup

pytestmark = pytest.mark.real


def test_two_clusters_share_the_lab_and_are_measured() -> None:
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    name = f"t{os.getpid() % 100000}{secrets.token_hex(2)}"
    lines: list[str] = []
    try:
        measured = run_all(name, [1, 2], 5.0, 1, seed=1, say=lines.append, quiet_s=3.0)
    finally:
        left = cleanup.find(name)
        assert left.empty(), f"lab {name} left {left.describe()}"
    print("\n".join(lines))
    assert measured["errors"] == []
    one, two = measured["steps"]
    assert (one["clusters"], one["sidecars"], two["clusters"], two["sidecars"]) == (1, 3, 2, 6)
    for step in (one, two):
        assert step["cost"]["requests_per_s"] > 0, step["cost"]
        assert set(step["etcd"]["members"]) == {"m0", "m1", "m2"}
        assert all(m["rss_mib"] > 0 for m in step["etcd"]["members"].values())
        assert step["etcd"]["core_percent"] > 0
        assert "Range" in step["histogram"], "etcd runs without --metrics=extensive?"
        # A switchover writes: the new holder's lease and writer key, at least.
        assert {"LeaseGrant", "Txn"} <= set(step["handoff_histogram"]), step["handoff_histogram"]
        assert step["reads"]["count"] == RANGE_READS
        assert step["etcd_connections"] >= step["sidecars"]
        # Every sidecar of every cluster holds a session on the primary's database.
        assert step["database_sessions"] >= step["clusters"]
        (handoff,) = step["handoffs"]
        assert handoff["error"] == "" and handoff["ordinary_write_ms"] is not None, handoff
        assert handoff["double_holders"] == [] and handoff["misdirected"] == [], handoff
    # The second step's switchover started where the first one left the primary.
    assert two["handoffs"][0]["old"] == one["handoffs"][0]["new"]
