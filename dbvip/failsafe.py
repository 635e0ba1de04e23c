"""Failsafe: the rules that let a holder keep the writer VIP through an etcd
outage, and that keep every peer from taking it meanwhile (S1).

Pure, like the core it serves: instants in, answers out.

The argument, in three parts:

- **Promise.** A peer acknowledges a holder's ask only while it holds
  nothing (no writer lease, no VIP, no take in progress, its database not
  primary). Acknowledging, it promises not to acquire or adopt the writer
  key, nor add the VIP, for ``window_s`` from the ask's *receipt*. The check
  and the promise are one step under the lock the loop takes before every
  take (``dbvip.promises``), so an ask never races a take.
- **Window.** The holder measures the window from *before it sent* the first
  ask, so its use of the window ends before any peer's promise does; it
  keeps the VIP only while every peer it asked acknowledged, and refreshes
  the kernel lifetime only up to that end (minus the expiry slack): a frozen
  or killed holder loses the VIP by then too.
- **Who is asked.** A node that was not reporting when the holder last read
  etcd is not asked, so it must not take either: the holder first writes a
  record (``/failsafe``, no lease) listing the peers it asks, and a node the
  record does not list takes no writer key while the record names another
  holder. The holder asks every peer the record lists (and every one it has
  seen since); without a record of its own it does not go into failsafe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from dbvip.actions import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    AskPeers,
)
from dbvip.guard import backing_off
from dbvip.identity import Identity
from dbvip.model import (
    KERNEL_EXPIRY_SLACK_S,
    Decision,
    FailsafeRecord,
    KeyAbsent,
    KeyHeld,
    KeyUnknown,
    Lease,
    NodeState,
    Observation,
    Reason,
    Role,
    Seat,
    Timing,
    VipPresence,
)
from dbvip.ownership import left_over

# Monotonic clocks of two machines run at rates a little apart (NTP slews
# them by at most 500 ppm): the holder uses its window shortened by this
# fraction, so it ends before the peer's promise on the peer's clock.
CLOCK_RATE_SLACK = 0.001


@dataclass(frozen=True)
class PeerLocal:
    """What a peer knows of itself when an ask arrives (from its last tick)."""

    role: Role
    holds_lease: bool
    vip: VipPresence
    taking: bool  # an acquire, adopt or add is under way


@dataclass(frozen=True)
class Acked:
    until_s: float  # the promise runs until then, on this peer's clock
    window_s: float  # the window granted, from receipt


@dataclass(frozen=True)
class Declined:
    reason: str


def answer(
    local: PeerLocal, window_s: float, now_s: float, max_window_s: float
) -> Acked | Declined:
    """A peer's answer to a holder's ask for ``window_s`` seconds."""
    if max_window_s <= 0:
        return Declined("failsafe is off here")
    if window_s <= 0:
        return Declined(f"window {window_s} s is not positive")
    if local.taking:
        return Declined("taking the writer VIP")
    if local.holds_lease:
        return Declined("holds the writer lease")
    if local.vip is not VipPresence.ABSENT:
        return Declined(f"writer VIP {local.vip.value} here")
    if local.role is Role.PRIMARY:
        return Declined("database is primary")
    granted = min(window_s, max_window_s)
    return Acked(now_s + granted, granted)


def promised(promised_until_s: float | None, now_s: float) -> bool:
    """Is a promise this node gave still running?"""
    return promised_until_s is not None and now_s < promised_until_s


def record_blocks(record: FailsafeRecord | None, me: Identity) -> str | None:
    """Why the failsafe record forbids this node to take the writer key, or
    None: it names this node's seat as holder, or lists it."""
    if record is None:
        return None
    seat = Seat.of(me)
    if record.holder == seat or seat in record.members:
        return None
    return (
        f"failsafe record names {record.holder.node} as holder and does not list this node "
        "(it may hold the VIP on its peers' promises; delete the record by hand if it is stale)"
    )


def record_for(me: Identity, peers: tuple[Seat, ...]) -> FailsafeRecord:
    return FailsafeRecord(Seat.of(me), tuple(sorted(set(peers), key=_order)))


def record_may_change(state: NodeState, now_s: float) -> bool:
    """May the holder rewrite its record now? Not while a window its peers
    acknowledged runs: the record is what keeps a node it did not ask from
    taking, so listing a late joiner then would free a node that promised
    nothing for that window (the simulation found it: n3 joined while n1
    ran on n2's promise, was listed, and could take before n1's window
    ended). Dropping a node is held back too, for the same window: a node
    that stays listed was asked."""
    until = state.failsafe_until_s
    return until is None or now_s >= until


def ask_set(
    confirmed: FailsafeRecord | None,
    read: FailsafeRecord | None,
    seen: tuple[Seat, ...],
    me: Identity,
) -> tuple[Seat, ...] | None:
    """The peers a holder must ask: every one its confirmed record lists,
    every one the record last read lists (another holder's, written late),
    every one seen since; None when it has no record of its own (then a node
    it does not know of could take: no failsafe)."""
    mine = Seat.of(me)
    if confirmed is None or confirmed.holder != mine:
        return None
    others: set[Seat] = {*confirmed.members, *seen}
    if read is not None:
        others |= {read.holder, *read.members}
    return tuple(sorted(others - {mine}, key=_order))


def window_end_s(sent_s: float, window_s: float) -> float:
    """The end of the window a holder may use, on its own clock."""
    return sent_s + window_s * (1 - CLOCK_RATE_SLACK)


def held_lease(state: NodeState) -> Lease | None:
    """The lease the VIP rests on, its deadline moved to the end of an
    acknowledged window when that is later (a stand-in without an id when
    the lease itself has run out): what the VIP's kernel lifetime is cut to."""
    until = hold_until_s(state)
    if until is None:
        return None
    lease = state.lease or Lease(0, until, until, 0)
    return replace(lease, deadline_s=until)


def hold_until_s(state: NodeState) -> float | None:
    """Until when this node may keep the VIP: its lease's deadline, or the
    end of its acknowledged window if later; None when it may not."""
    ends = [state.failsafe_until_s] if state.failsafe_until_s is not None else []
    if state.lease is not None:
        ends.append(state.lease.deadline_s)
    return max(ends) if ends else None


def ask_lead_s(timing: Timing) -> float:
    """How long before the end of what it holds a holder asks again: half a
    window, and never less than one ask and one removal take."""
    return max(timing.failsafe_window_s / 2, timing.request_timeout_s + timing.release_lead_s)


def _order(seat: Seat) -> tuple[str, str, str]:
    return seat.node, seat.host, seat.interface


# --------------------------------------------------------------------------
# The holder's side, called from ``dbvip.core.decide``.
# --------------------------------------------------------------------------

Done = Callable[[tuple[Action, ...], Reason, str, NodeState], Decision]
ASKING = "etcd unreachable: asking every peer for a failsafe acknowledgement"


def holds(state: NodeState, obs: Observation) -> bool:
    """Does an acknowledged window let this node keep its VIP (now without
    a lease)?"""
    until = state.failsafe_until_s
    return until is not None and obs.now_s < until and obs.vip is not VipPresence.ABSENT


def ask(
    state: NodeState, obs: Observation, timing: Timing, hold_until: float
) -> tuple[Action, ...]:
    """Ask the peers when etcd cannot be read, this database is primary, the
    VIP is up, and what this node holds ends within the ask lead."""
    now = obs.now_s
    if (
        timing.failsafe_window_s <= 0
        or obs.vip is not VipPresence.PRESENT
        or obs.role.role is not Role.PRIMARY
        or not isinstance(obs.writer, KeyUnknown)
        or hold_until - now > ask_lead_s(timing)
        or backing_off(state.backoff, "failsafe", now)
    ):
        return ()
    return (AskPeers(timing.failsafe_window_s),)


def hold(
    state: NodeState,
    obs: Observation,
    timing: Timing,
    role: Role,
    me: Identity,
    done: Done,
    take_down: Callable[[], tuple[Action, ...]],
) -> Decision:
    """No lease any more, but every peer promised not to take the VIP until
    ``failsafe_until_s``: keep it to then, ask again before, and take the
    writer key again as soon as etcd answers (no blink)."""
    now = obs.now_s
    until = state.failsafe_until_s
    assert until is not None  # holds() says so
    if now >= until - timing.release_lead_s:
        return done(
            take_down(), Reason.FAILSAFE, f"acknowledged window ends in {until - now:.2f} s", state
        )
    if role is not Role.PRIMARY:
        # Within the grace: keep what we have, add and refresh nothing.
        return done((), Reason.FAILSAFE, obs.role.cause or "role unknown", state)
    view = obs.writer
    mine = left_over(view, me)
    if mine is not None:
        if mine.lease_id == state.adopt_failed_lease or backing_off(state.backoff, "adopt", now):
            return done((), Reason.FAILSAFE, "adopt failed, retrying next tick", state)
        return done(
            (AdoptLease(mine.lease_id, mine.mod_revision, timing.ttl_s),),
            Reason.FAILSAFE,
            "etcd answers again: adopting this sidecar's writer key",
            state,
        )
    if isinstance(view, KeyAbsent) and view.claimed_by is None:
        if backing_off(state.backoff, "acquire", now):
            return done((), Reason.FAILSAFE, "acquire failed, retrying next tick", state)
        return done(
            (AcquireLease(timing.ttl_s),),
            Reason.FAILSAFE,
            "etcd answers again: taking the writer key back within the acknowledged window",
            state,
        )
    if not isinstance(view, KeyUnknown):
        # Another's key, garbage, or a deleted key still claimed: not ours.
        holder = view.holder if isinstance(view, KeyHeld) else type(view).__name__
        return done(
            take_down(),
            Reason.KEY_LOST,
            f"etcd answers again and the writer key is not this node's ({holder})",
            replace(state, failsafe_until_s=None),
        )
    asking = ask(state, obs, timing, until)
    if asking:
        return done(asking, Reason.FAILSAFE, ASKING, state)
    lifetime = vip_lifetime_until_s(until, now, timing)
    if (
        obs.vip is VipPresence.PRESENT
        and lifetime >= 1
        and not backing_off(state.backoff, "vip", now)
        and (state.vip_valid_until_s is None or now + lifetime - state.vip_valid_until_s >= 1)
    ):
        return done((AddVip(lifetime),), Reason.FAILSAFE, "refreshing the VIP to the window", state)
    return done(
        (),
        Reason.FAILSAFE,
        f"etcd unreachable; every peer promised; window ends in {until - now:.1f} s",
        state,
    )


def vip_lifetime_until_s(until_s: float, now_s: float, timing: Timing) -> int:
    """Whole seconds the kernel may keep the VIP so that it is gone by
    ``until_s`` even if this process freezes: cut short by the kernel's
    expiry lateness and the netlink budget."""
    return math.floor(until_s - now_s - KERNEL_EXPIRY_SLACK_S - timing.vip_op_timeout_s)
