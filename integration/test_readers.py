"""The reader VIP pool on the real lab (issue 10): 3 nodes (n1 primary, n2 and
n3 replicas) unless said otherwise, 4 reader VIPs, HAProxy in front of them
and the invariant monitor around every scenario (``lab.watched()`` fails the
test if any reader VIP, or the writer VIP, is ever seen on two nodes).

Balanced means: every VIP on exactly one node, each node in the pool holding
floor(R/H) or ceil(R/H) of them, every other node none. Bounds are generous
(``eventually``); what was measured is printed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Collection

import pytest

from integration.conftest import MakeLab
from integration.lab.eventually import eventually
from integration.lab.haproxy import server_name
from integration.lab.lab import FAST_TIMING, Lab
from integration.lab.monitor import MonitorReport, VipChange
from integration.lab.reader import ClientReader, Read, longest_outage_s, tally
from integration.lab.readers import READER_VIPS, balanced, pool

pytestmark = pytest.mark.real
R = 4
POOL = ((READER_VIPS, pool(R)), *FAST_TIMING.items())
FALLBACK = "DBVIP_READER_FALLBACK_TO_PRIMARY"
BOUND_S = 30.0  # generous: the spec's bound is 1 s (p99) for a crash, 100 ms for a clean stop


def spread(lab: Lab) -> dict[str, int]:
    return lab.reader_counts()


def is_balanced(lab: Lab, replicas: Collection[str]) -> bool:
    """Every VIP on one node, the ``replicas`` balanced, every other node none."""
    holders = lab.reader_holders()
    if any(len(nodes) != 1 for nodes in holders.values()):
        return False
    counts = spread(lab)
    others = [c for n, c in counts.items() if n not in replicas]
    return balanced([counts[n] for n in replicas], R) and not any(others)


def is_on_one_of(lab: Lab, nodes: Collection[str]) -> bool:
    """Every reader VIP on exactly one node, and that node among ``nodes``."""
    return all(len(held) == 1 and held <= set(nodes) for held in lab.reader_holders().values())


def wait_balanced(lab: Lab, replicas: Collection[str], since_s: float | None = None) -> float:
    """Wait until balanced over ``replicas``; returns the seconds since ``since_s``."""
    start_s = time.monotonic() if since_s is None else since_s
    eventually(lambda: is_balanced(lab, replicas), timeout_s=BOUND_S, interval_s=0.01)
    return time.monotonic() - start_s


def keys_follow_the_kernel(lab: Lab) -> bool:
    """Every reader key names the node that has its VIP, under the lease it names."""
    keys = lab.reader_keys()
    held = lab.reader_holders()
    return all(
        addr in keys and keys[addr].under_named_lease and {keys[addr].holder} == nodes
        for addr, nodes in held.items()
    )


def ok_since(reader: ClientReader, after_s: float) -> list[Read]:
    return [r for r in reader.reads() if r.ok and r.started_s >= after_s]


def wait_reads_by(reader: ClientReader, nodes: set[str], after_s: float, count: int = 20) -> None:
    """Wait for ``count`` successful reads after ``after_s``, all answered by ``nodes``."""

    def enough() -> bool:
        done = ok_since(reader, after_s)
        return len(done) >= count and {r.node for r in done[-count:]} <= nodes

    eventually(enough, timeout_s=BOUND_S, interval_s=0.05)


def reader_vips_at(report: MonitorReport, node: str, at_s: float) -> set[str]:
    """The reader VIPs ``node`` had in its address sample taken at ``at_s``."""
    held: set[str] = set()
    for e in sorted(report.reader_vip_events, key=lambda e: e.at_s):
        if e.host == node and e.at_s <= at_s and e.vip is not None:
            (held.add if e.change is VipChange.ADDED else held.discard)(e.vip)
    return held


def first_writer_vip_s(report: MonitorReport, node: str) -> float:
    added = [e.at_s for e in report.vip_events if e.host == node and e.change is VipChange.ADDED]
    # A monitor that missed the hand-off says so with what it saw.
    assert added, f"the monitor saw no VIP added on {node}:\n{report.timeline()}"
    return min(added)


def ready(lab: Lab) -> None:
    """Start-up done: n1 holds the writer VIP, the replicas the pool, HAProxy sees all."""
    lab.wait_holder("n1")
    wait_balanced(lab, ["n2", "n3"])
    assert lab.haproxy is not None
    lab.haproxy.wait_up({server_name(v.ip) for v in lab.reader_vips})


def test_start_up_the_two_replicas_hold_two_each_and_reads_reach_only_replicas(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(sidecar_settings=POOL)
    with lab.watched():
        ready(lab)
        assert spread(lab) == {"n1": 0, "n2": 2, "n3": 2}
        eventually(lambda: keys_follow_the_kernel(lab), timeout_s=BOUND_S)
        reader = lab.start_reader("per-read")
        wait_reads_by(reader, {"n2", "n3"}, 0, count=40)
        reads = reader.stop()
    ok = [r for r in reads if r.ok]
    print(tally(reads))
    assert {r.node for r in ok} == {"n2", "n3"}, tally(reads)
    assert all(r.recovery is True for r in ok)


def test_a_replicas_database_crash_moves_its_vips_to_the_other_replica_and_back(
    make_lab: MakeLab,
) -> None:
    """Its VIPs go to n3 while reads through HAProxy go on; when n2's database
    is back as a replica, the pool is balanced again."""
    lab = make_lab(sidecar_settings=POOL)
    with lab.watched():
        ready(lab)
        per_read, long_lived = lab.start_reader("per-read"), lab.start_reader("long-lived")
        wait_reads_by(per_read, {"n2", "n3"}, 0)
        crash_s = lab.crash_db("n2")
        moved = wait_balanced(lab, ["n3"], since_s=crash_s)
        print(f"n2's 2 reader VIPs on n3 {moved:.3f} s after its database crashed")
        moved_s = time.monotonic()
        for reader in (per_read, long_lived):
            wait_reads_by(reader, {"n3"}, moved_s)
        lab.start_db("n2")  # a replica again
        back_s = time.monotonic()
        back = wait_balanced(lab, ["n2", "n3"], since_s=back_s)
        print(f"balanced again {back:.3f} s after n2's database started")
        wait_reads_by(per_read, {"n2", "n3"}, time.monotonic())
        reads, kept = per_read.stop(), long_lived.stop()
    for name, made in (("per-read", reads), ("long-lived", kept)):
        print(f"{name}: {tally(made)}; longest outage after the crash "
              f"{longest_outage_s(made, crash_s):.3f} s")  # fmt: skip
        # Only replicas ever answered: the primary kept out of the pool throughout.
        assert all(r.recovery is True for r in made if r.ok), tally(made)
        assert any(r.ok and r.node == "n3" and r.started_s >= moved_s for r in made)


def test_sigterm_of_a_replicas_sidecar_frees_its_vips_to_the_other(make_lab: MakeLab) -> None:
    lab = make_lab(sidecar_settings=POOL)
    with lab.watched():
        ready(lab)
        stop_s = time.monotonic()
        lab.kill_sidecar("n2", signal.SIGTERM)
        moved = wait_balanced(lab, ["n3"], since_s=stop_s)
        print(f"n2's reader VIPs on n3 {moved:.3f} s after SIGTERM to n2's sidecar")
        eventually(lambda: keys_follow_the_kernel(lab), timeout_s=BOUND_S)
        assert {k.holder for k in lab.reader_keys().values()} == {"n3"}
        lab.start_sidecar("n2")
        wait_balanced(lab, ["n2", "n3"])


@pytest.mark.parametrize("how", ["switchover", "crash"])
def test_a_promoted_replica_gives_up_its_reader_vips_before_it_takes_the_writer_vip(
    make_lab: MakeLab, how: str
) -> None:
    lab = make_lab(sidecar_settings=POOL)
    with lab.watched() as monitor:
        ready(lab)
        if how == "switchover":
            lab.demote("n1")  # n1 comes back as a replica: a member of the pool
            replicas = ["n1", "n3"]
        else:
            lab.crash_db("n1")
            replicas = ["n3"]
        lab.promote("n2")
        lab.wait_primary("n2")
        lab.wait_holder("n2")
        if how == "crash":
            wait_balanced(lab, replicas)
        else:
            # The pool goes back to the replicas. Not asserted balanced over both:
            # the lab's switchover does not wait for n2 to have n1's last WAL, and
            # an n1 left ahead cannot follow n2's timeline (it never streams again).
            eventually(lambda: is_on_one_of(lab, replicas), timeout_s=BOUND_S)
    # The final report, taken after the block: leaving it lets the monitor's
    # samples catch up with what the lab saw (CI once asked inside the block
    # 10 ms after n2 added the VIP, before the monitor's next sample of n2).
    report = monitor.report()
    # In the sample that first shows n2 with the writer VIP, it has no reader
    # VIP left (removed in an earlier sample, or in the same one). Fallback may
    # give them back to it later, on purpose, while no replica is in the pool.
    assert reader_vips_at(report, "n2", first_writer_vip_s(report, "n2")) == set(), (
        report.timeline()
    )


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback-on", "fallback-off"])
def test_with_no_healthy_replica_the_primary_holds_the_pool_only_with_fallback(
    make_lab: MakeLab, fallback: bool
) -> None:
    settings = POOL if fallback else (*POOL, (FALLBACK, "false"))
    lab = make_lab(sidecar_settings=settings)
    with lab.watched():
        ready(lab)
        reader = lab.start_reader("per-read")
        down_s = lab.crash_db("n2")
        lab.crash_db("n3")
        if fallback:
            wait_balanced(lab, ["n1"], since_s=down_s)
            wait_reads_by(reader, {"n1"}, time.monotonic())  # reads go on, on the primary
        else:
            eventually(lambda: not any(spread(lab).values()), timeout_s=BOUND_S)
            eventually(lambda: not lab.reader_keys(), timeout_s=BOUND_S)
        lab.start_db("n3")  # a replica returns: the pool goes back to it
        back_s = time.monotonic()
        wait_balanced(lab, ["n3"])
        wait_reads_by(reader, {"n3"}, back_s)
        reads = reader.stop()
    after = [r for r in reads if r.ok and r.started_s >= down_s]
    by_primary = [r for r in after if r.recovery is False]
    print(f"fallback {'on' if fallback else 'off'}: {tally(reads)}")
    assert bool(by_primary) is fallback and all(r.node == "n1" for r in by_primary)


def test_a_fourth_node_joining_as_a_replica_takes_its_share(make_lab: MakeLab) -> None:
    lab = make_lab(db_nodes=4, sidecars=False, sidecar_settings=POOL)
    for node in ("n1", "n2", "n3"):
        lab.start_sidecar(node)
    with lab.watched():
        ready(lab)
        assert spread(lab)["n4"] == 0
        join_s = time.monotonic()
        lab.start_sidecar("n4")
        took = wait_balanced(lab, ["n2", "n3", "n4"], since_s=join_s)
        print(f"pool over 3 replicas {sorted(spread(lab).values())} {took:.3f} s after n4 joined")
        eventually(lambda: keys_follow_the_kernel(lab), timeout_s=BOUND_S)
    counts = spread(lab)
    assert counts["n1"] == 0 and sorted([counts["n2"], counts["n3"], counts["n4"]]) == [1, 1, 2]


def test_maintenance_takes_a_replica_out_of_the_pool_until_it_ends(make_lab: MakeLab) -> None:
    lab = make_lab(sidecar_settings=POOL)
    with lab.watched():
        ready(lab)
        on_s = time.monotonic()
        on = lab.dbvip("n2", "maintenance", "on")
        assert on.returncode == 0, on.stderr
        left = wait_balanced(lab, ["n3"], since_s=on_s)
        print(f"n2's reader VIPs on n3 {left:.3f} s after `maintenance on` was run")
        # They stay away while maintenance lasts (several renew intervals).
        stay_s = time.monotonic() + 3 * float(FAST_TIMING["DBVIP_RENEW_INTERVAL_S"])
        while time.monotonic() < stay_s:
            assert spread(lab)["n2"] == 0
            time.sleep(0.05)
        off = lab.dbvip("n2", "maintenance", "off")
        assert off.returncode == 0, off.stderr
        wait_balanced(lab, ["n2", "n3"])


LAG_LIMIT = 1024 * 1024
REJOIN_S = 2.0


def test_a_lagging_replica_leaves_the_pool_and_comes_back_after_the_rejoin_time(
    make_lab: MakeLab,
) -> None:
    """Replay paused on n2 while the primary writes well past the limit: its
    VIPs go to n3; replay resumed: back, balanced, not before ``REJOIN_S``."""
    settings = (*POOL, ("DBVIP_READER_MAX_LAG_BYTES", str(LAG_LIMIT)),
                ("DBVIP_READER_REJOIN_S", str(REJOIN_S)))  # fmt: skip
    lab = make_lab(sidecar_settings=settings)
    with lab.watched():
        ready(lab)
        lab.servers["n2"].sql("SELECT pg_wal_replay_pause()")
        lagging_s = time.monotonic()

        def write_more() -> bool:
            # About 1 MB of WAL per call, until n2 has left the pool.
            lab.servers["n1"].sql("INSERT INTO dbvip_lab_writes(writer) "
                                  "SELECT 'lag' FROM generate_series(1, 10000)")  # fmt: skip
            return is_balanced(lab, ["n3"])

        eventually(write_more, timeout_s=BOUND_S, interval_s=0.1)
        print(f"lagging n2 left the pool {time.monotonic() - lagging_s:.3f} s after its replay "
              "was paused and the writes began")  # fmt: skip
        lab.servers["n2"].sql("SELECT pg_wal_replay_resume()")
        resumed_s = time.monotonic()
        back = wait_balanced(lab, ["n2", "n3"], since_s=resumed_s)
        print(f"n2 back in the pool {back:.3f} s after its replay resumed (rejoin {REJOIN_S} s)")
        assert back >= REJOIN_S


def test_a_frozen_holders_vips_expire_by_their_kernel_lifetime_before_another_takes_them(
    make_lab: MakeLab,
) -> None:
    """SIGSTOP on n2's sidecar: nothing renews its reader lease; its VIPs leave
    its interface by their kernel lifetime, and only then does n3 add them
    (the monitor would fail the test on a VIP seen on both)."""
    lab = make_lab(sidecar_settings=POOL)
    with lab.watched():
        ready(lab)
        lab.freeze_sidecar("n2")
        try:
            eventually(lambda: spread(lab)["n2"] == 0, timeout_s=BOUND_S, interval_s=0.01)
            wait_balanced(lab, ["n3"])
        finally:
            lab.thaw_sidecar("n2")
        wait_balanced(lab, ["n2", "n3"])
