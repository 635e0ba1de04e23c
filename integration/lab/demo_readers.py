"""The demo's reader part: the reader VIPs spread over the replicas, moving
when a replica's database crashes, with reads through HAProxy going on.

Runs before the demo's writer part (integration/lab/demo.py) on the same lab;
its two reading clients (a new connection per read, and one long-lived
connection that reconnects on error) keep reading through HAProxy until the
demo ends, so the final tally covers the switchover and the crash failover
too (a promoted replica gives its reader VIPs away before it takes the writer
VIP; the old primary, back as a replica, takes its share).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from functools import partial

from integration.lab.eventually import eventually
from integration.lab.haproxy import server_name
from integration.lab.lab import Lab
from integration.lab.reader import ClientReader, Read, longest_outage_s, tally
from integration.lab.readers import balanced

Say = Callable[[str], None]
BOUND_S = 30.0


def spread(lab: Lab) -> str:
    """``n1 -, n2 .101 .102, n3 .103 .104`` (who has which reader VIP in the kernel)."""
    held = lab.reader_holders()
    parts = []
    for node in lab.spec.nodes:
        mine = [str(ip).rsplit(".", 1)[-1] for ip, nodes in held.items() if node in nodes]
        parts.append(f"{node} {' '.join('.' + m for m in mine) or '-'}")
    return ", ".join(parts)


def wait_balanced(lab: Lab, nodes: Collection[str]) -> float:
    """Wait until every reader VIP is on one node and ``nodes`` share them evenly."""

    def done() -> bool:
        held = lab.reader_holders()
        counts = lab.reader_counts()
        return (
            all(len(n) == 1 for n in held.values())
            and balanced([counts[n] for n in nodes], len(held))
            and not any(c for n, c in counts.items() if n not in nodes)
        )

    eventually(done, timeout_s=BOUND_S, interval_s=0.005)
    return time.monotonic()


def wait_reads(reader: ClientReader, node: str, after_s: float) -> Read:
    found: Read = eventually(
        lambda: next((r for r in reader.reads() if r.ok and r.node == node
                      and r.started_s >= after_s), None),
        timeout_s=BOUND_S,
    )  # fmt: skip
    return found


def run_reader_part(lab: Lab, say: Say) -> list[ClientReader]:
    """Spread, a replica crash (n3), its return; returns the readers, still reading."""
    assert lab.haproxy is not None
    vips = ", ".join(str(v.ip) for v in lab.reader_vips)
    wait_balanced(lab, ["n2", "n3"])
    say(f"reader VIPs {vips}: spread over the replicas ({spread(lab)}); the primary n1 holds none")
    lab.haproxy.wait_up({server_name(v.ip) for v in lab.reader_vips})
    readers = [lab.start_reader("per-read"), lab.start_reader("long-lived")]
    for reader in readers:  # the long-lived one reads from one node only, until it breaks
        eventually(partial(_read_ok, reader), timeout_s=BOUND_S)
    say(f"reading through HAProxy at {lab.haproxy.address}:5432 (a new connection per read, "
        "and one long-lived connection)")  # fmt: skip

    say("replica crash: n3's database stopped immediately")
    crash_s = lab.crash_db("n3")
    moved_s = wait_balanced(lab, ["n2"])
    say(f"  n3's reader VIPs on n2 {moved_s - crash_s:.3f} s after the crash ({spread(lab)})")
    for reader in readers:
        first = wait_reads(reader, "n2", moved_s)
        say(f"  {reader.mode} client: reads again {first.ended_s - crash_s:.3f} s after the "
            f"crash; since the crash {tally(since(reader.reads(), crash_s))}")  # fmt: skip
    lab.start_db("n3")
    back_s = time.monotonic()
    balanced_s = wait_balanced(lab, ["n2", "n3"])
    say(f"  n3's database back as a replica: balanced again {balanced_s - back_s:.3f} s later "
        f"({spread(lab)})")  # fmt: skip
    return readers


def _read_ok(reader: ClientReader) -> bool:
    return any(r.ok for r in reader.reads())


def since(reads: list[Read], after_s: float) -> list[Read]:
    return [r for r in reads if r.started_s >= after_s]


def finish_reader_part(lab: Lab, say: Say, readers: list[ClientReader]) -> None:
    """Stop the readers and print what they saw over the whole demo."""
    say(f"reader VIPs at the end: {spread(lab)}")
    for reader in readers:
        made = reader.stop()
        say(f"{reader.mode} reading client, whole demo: {tally(made)}; longest outage "
            f"{longest_outage_s(made):.3f} s")  # fmt: skip
