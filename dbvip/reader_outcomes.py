"""What came of a reader action, folded into the reader policy's state.

Pure, like the policy (``dbvip.readers``): a grant's deadline counts from the
instant before the request was sent; a failed action is not retried before
the next tick; a lease revoked or found gone is remembered for a while, as
the look in hand may still show keys under it.
"""

from __future__ import annotations

from dataclasses import replace

from dbvip.actions import (
    Action,
    Announced,
    Failed,
    LeaseGone,
    LeaseRenewed,
    RemoveVip,
    RenewLease,
    VipAdded,
    VipRemoved,
)
from dbvip.guard import lease_deadline_s
from dbvip.model import (
    Lease,
    Timing,
)
from dbvip.reader_model import (
    GiveBackReader,
    GrantReaderLease,
    ReaderGivenBack,
    ReaderLeaseGranted,
    ReaderLeaseRevoked,
    ReaderRefused,
    ReaderState,
    ReaderTaken,
    RevokeReaderLease,
    Slot,
    TakeReader,
)

ReaderAction = Action | GrantReaderLease | TakeReader | GiveBackReader | RevokeReaderLease
ReaderOutcome = (
    ReaderLeaseGranted
    | ReaderTaken
    | ReaderRefused
    | ReaderGivenBack
    | ReaderLeaseRevoked
    | LeaseRenewed
    | LeaseGone
    | VipAdded
    | VipRemoved
    | Announced
    | Failed
)


def absorb_reader(
    state: ReaderState, outcome: ReaderOutcome, now_s: float, timing: Timing
) -> ReaderState:
    """Fold one action's outcome into the state."""
    match outcome:
        case ReaderLeaseGranted(lease_id, ttl_s, sent_s):
            lease = Lease(lease_id, lease_deadline_s(sent_s, ttl_s, timing), sent_s, 0)
            return replace(state, lease=lease, keys={})
        case LeaseRenewed(lease_id, ttl_s, sent_s) if (
            state.lease and state.lease.lease_id == lease_id
        ):
            deadline = max(state.lease.deadline_s, lease_deadline_s(sent_s, ttl_s, timing))
            return replace(state, lease=replace(state.lease, deadline_s=deadline, renewed_s=sent_s))
        case LeaseRenewed():
            return state
        case LeaseGone(lease_id) if state.lease and state.lease.lease_id == lease_id:
            # Its keys are gone with it; the VIPs come down next decision.
            return replace(state, lease=None, keys={}, ended_leases=ended_leases(state, lease_id))
        case LeaseGone():
            return state
        case ReaderTaken(vip, revision):
            return replace(state, keys={**state.keys, vip: revision})
        case ReaderRefused(vip):
            return back_off(state, "take:" + vip, now_s, timing)
        case ReaderGivenBack(vip):
            # Not again before the next look: the reading in hand still shows it.
            given = back_off(state, "give:" + vip, now_s, timing)
            return replace(given, keys={v: r for v, r in state.keys.items() if v != vip})
        case ReaderLeaseRevoked(lease_id):
            ended = replace(state, ended_leases=ended_leases(state, lease_id))
            if state.lease and state.lease.lease_id == lease_id:
                return replace(ended, lease=None, keys={})
            return ended
        case VipAdded(lifetime_s, done_s, was_present, vip):
            slot = state.slots.get(vip, Slot())
            slot = replace(slot, valid_until_s=done_s + lifetime_s)
            if not was_present:
                slot = replace(slot, announces_left=timing.announce_count, next_announce_s=done_s)
            return replace(state, slots={**state.slots, vip: slot})
        case VipRemoved(_, vip):
            return replace(state, slots={v: s for v, s in state.slots.items() if v != vip})
        case Announced(done_s, vip):
            slot = state.slots.get(vip, Slot())
            slot = replace(
                slot,
                announces_left=max(0, slot.announces_left - 1),
                next_announce_s=done_s + timing.announce_interval_s,
            )
            return replace(state, slots={**state.slots, vip: slot})
        case Failed(action, cause):
            failed = replace(state, last_failure=f"{type(action).__name__}: {cause}")
            return back_off(failed, _kind(action), now_s, timing)
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


def ended_leases(state: ReaderState, lease_id: int) -> frozenset[int]:
    """Remember a few ended leases (the last look may predate their end)."""
    return frozenset(sorted(state.ended_leases | {lease_id})[-8:])


def _kind(action: ReaderAction) -> str:
    match action:
        case GrantReaderLease():
            return "grant"
        case RenewLease():
            return "renew"
        case TakeReader(vip):
            return "take:" + vip
        case GiveBackReader(vip):
            return "give:" + vip
        case RevokeReaderLease():
            return "revoke"
        case RemoveVip(vip):
            return "vip:" + vip
    return "vip:" + getattr(action, "vip", "")


def back_off(state: ReaderState, kind: str, now_s: float, timing: Timing) -> ReaderState:
    return replace(state, backoff={**state.backoff, kind: now_s + timing.probe_interval_s})
