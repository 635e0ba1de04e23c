"""What applications see during a hand-off, on the real lab: an ordinary client
(one connection attempt at a time, retried at once) and a pooled one, beside
the invariant monitor.

The behaviour under test is that no connection attempt is swallowed: a SYN
sent while the VIP moves is refused at once by the node that gave it away
(or answered by the new holder), never dropped, so no attempt waits for the
kernel's retransmission timeout (1 s on Linux). Each attempt here takes a few
ms; an attempt of a second or more is one that lost a packet.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence

import pytest

from dbvip.adapters.refusal import table_name
from integration.conftest import MakeLab
from integration.lab.eventually import eventually
from integration.lab.lab import FAST_TIMING, Lab
from integration.lab.monitor import VipChange
from integration.lab.writer import TCP_USER_TIMEOUT_MS, Attempt, ClientWriter

pytestmark = pytest.mark.real
RETRANSMISSION_S = 1.0  # Linux's initial TCP retransmission timeout
FAST = tuple(FAST_TIMING.items())
TTL_S = float(FAST_TIMING["DBVIP_TTL_S"])
TCP_USER_TIMEOUT_S = TCP_USER_TIMEOUT_MS / 1000


def first_ack(attempts: Sequence[Attempt], node: str, after_s: float) -> Attempt | None:
    done = [a for a in attempts if a.ok and a.node == node and a.ended_s >= after_s]
    return min(done, key=lambda a: a.ended_s, default=None)


def wait_ack(client: ClientWriter, node: str, after_s: float) -> Attempt:
    found: Attempt = eventually(lambda: first_ack(client.attempts(), node, after_s), timeout_s=30)
    return found


def swallowed(attempts: Sequence[Attempt], start_s: float, end_s: float) -> list[Attempt]:
    """Attempts in ``[start_s, end_s]`` that waited a retransmission timeout or more."""
    return [
        a
        for a in attempts
        if a.ended_s >= start_s and a.started_s <= end_s
        and a.ended_s - a.started_s >= RETRANSMISSION_S
    ]  # fmt: skip


def nft(lab: Lab, node: str, *args: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", lab.netns(node), "nft", *args],
                          capture_output=True, text=True, check=True, timeout=10)  # fmt: skip
    return done.stdout


def ready(lab: Lab, *modes: str) -> list[ClientWriter]:
    lab.wait_holder("n1")
    clients = [lab.start_client(mode) for mode in modes]
    for client in clients:
        wait_ack(client, "n1", 0)
    return clients


@pytest.mark.parametrize("how", ["switchover", "crash"])
def test_an_ordinary_client_never_waits_for_a_retransmission(make_lab: MakeLab, how: str) -> None:
    lab = make_lab()
    (ordinary,) = ready(lab, "ordinary")
    with lab.watched() as monitor:
        fault_s = time.monotonic()
        if how == "switchover":
            lab.demote("n1")
        else:
            lab.crash_db("n1")
            lab.wait_holder(None, timeout_s=10)
        lab.promote("n2")
        promoted_s = lab.wait_primary("n2")
        lab.wait_holder("n2")
        first = wait_ack(ordinary, "n2", promoted_s)
    attempts = ordinary.stop()
    assert swallowed(attempts, fault_s, first.ended_s) == []
    # While no node had the VIP, the client's attempts reached n1 (its
    # neighbour entry still named n1) and were refused there, not dropped.
    events = monitor.report().vip_events
    gone_s = min(e.at_s for e in events if e.host == "n1" and e.change is VipChange.REMOVED)
    back_s = min(e.at_s for e in events if e.host == "n2" and e.change is VipChange.ADDED)
    between = [a for a in attempts if gone_s <= a.started_s and a.ended_s <= back_s]
    assert between, "the client made no attempt while the VIP moved"
    assert all(not a.ok and "refused" in a.error for a in between), {a.error for a in between}


def test_a_pooled_client_writes_to_the_new_primary_after_a_switchover(make_lab: MakeLab) -> None:
    lab = make_lab()
    (pooled,) = ready(lab, "pooled")
    with lab.watched():
        fault_s = time.monotonic()
        lab.demote("n1")
        lab.promote("n2")
        promoted_s = lab.wait_primary("n2")
        first = wait_ack(pooled, "n2", promoted_s)
    attempts = pooled.stop()
    # The pool's old connections failed at their next use, with an answer, not
    # a hang (a write may wait for the pool's own reconnection delay, 1 s).
    failed = [a for a in attempts if not a.ok and a.started_s >= fault_s]
    assert failed and swallowed(failed, fault_s, first.ended_s) == []


@pytest.mark.parametrize("next_holder", ["n1", "n2"], ids=["same-node", "other-node"])
def test_a_sidecar_killed_mid_handoff_leaves_nothing_that_keeps_clients_out(
    make_lab: MakeLab, next_holder: str
) -> None:
    """SIGKILL while the old holder gives the VIP away: what it armed (the
    refusal, the closing) runs out by itself or is inert where the VIP is, and
    a restart clears it; clients write through the VIP on whichever node
    holds it next."""
    lab = make_lab(sidecar_settings=FAST)
    (ordinary,) = ready(lab, "ordinary")
    table = table_name(lab.name, "eth0", lab.vip.ip)
    with lab.watched():
        lab.crash_db("n1")
        lab.wait_holder(None, timeout_s=10)  # the removal is done or under way
        lab.kill_sidecar("n1", signal.SIGKILL)
        # Killed in the middle of a removal, at its worst: the VIP closed (its
        # element timeout is 1 s; here it would outlive the restart).
        nft(lab, "n1", "add", "element", "inet", table, "closing4",
            f"{{ {lab.vip.ip} timeout 60s }}")  # fmt: skip
        if next_holder == "n1":
            lab.start_db("n1")  # primary again, on the same node
            lab.wait_primary("n1")
            lab.start_sidecar("n1")
        else:
            lab.promote("n2")
            lab.wait_primary("n2")
        back_s = lab.wait_holder(next_holder, timeout_s=6 * TTL_S)
        first = wait_ack(ordinary, next_holder, back_s)
        time.sleep(1.0)  # and it keeps writing there
        if next_holder == "n1":
            # The refusal it armed is still there, yet inert while n1 holds the VIP.
            assert str(lab.vip.ip) in nft(lab, "n1", "list", "set", "inet", table, "refuse4")
    attempts = ordinary.stop()
    since = [a for a in attempts if a.started_s >= back_s]
    assert swallowed(since, back_s, time.monotonic()) == []
    later = [a for a in attempts if a.started_s >= first.ended_s]
    assert later and all(a.ok and a.node == next_holder for a in later), later[:5]


def test_a_killed_holder_is_refused_not_silent_once_the_kernel_expired_its_vip(
    make_lab: MakeLab,
) -> None:
    """The holder's refusal is armed past its VIP's kernel lifetime: a holder
    frozen or killed, whose VIP the kernel removed, answers with resets."""
    lab = make_lab(sidecar_settings=FAST)
    (ordinary,) = ready(lab, "ordinary")
    with lab.watched():
        lab.kill_sidecar("n1", signal.SIGKILL)
        lab.wait_holder(None, timeout_s=30)  # the kernel lifetime ran out
        expired_s = time.monotonic()
        eventually(
            lambda: any(
                not a.ok and "refused" in a.error and a.started_s >= expired_s
                for a in ordinary.attempts()
            ),
            timeout_s=10,
        )
    attempts = ordinary.stop()
    assert swallowed(attempts, expired_s, time.monotonic()) == []


def test_a_dead_holders_pooled_connections_are_reset_by_the_new_holder(
    make_lab: MakeLab,
) -> None:
    """The old holder is cut off (no refusal can come from it): the pool's
    connections to it are retransmitting into the void until the new holder
    announces the VIP; their next retransmission reaches the new holder,
    which has no such connection and answers with a reset. None waits for
    its own tcp_user_timeout (10 s here)."""
    lab = make_lab(sidecar_settings=FAST)
    (pooled,) = ready(lab, "pooled")
    with lab.watched():
        lab.isolate("n1")
        try:
            lab.promote("n2")
            lab.wait_primary("n2")
            moved_s = lab.wait_holder("n2", timeout_s=6 * TTL_S)
            wait_ack(pooled, "n2", moved_s)
        finally:
            lab.heal("n1")
            lab.crash_db("n1")  # the old primary must not take writes again
    attempts = pooled.stop()
    waited = [a for a in attempts if a.ended_s - a.started_s >= TCP_USER_TIMEOUT_S]
    assert waited == [], waited
    assert any(not a.ok and a.ended_s >= moved_s for a in attempts), "no connection was reset"
