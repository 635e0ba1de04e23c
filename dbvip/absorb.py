"""What one action's outcome does to a node's state: the other half of the
decision core (``dbvip.core.decide`` chooses actions; ``absorb`` folds each
outcome back, before ``decide`` is asked again). Pure, like the core.

Also here: ``back_off``, which sets the back-off that keeps a failed action
from being retried within the same tick (``guard.backing_off`` reads it).
"""

from __future__ import annotations

from dataclasses import replace

from dbvip.actions import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    Announced,
    AskPeers,
    Failed,
    LeaseGone,
    LeaseGranted,
    LeaseRefused,
    LeaseReleased,
    LeaseRenewed,
    Outcome,
    PeersAcked,
    ReleaseLease,
    RemoveVip,
    RenewLease,
    VipAdded,
    VipRemoved,
)
from dbvip.failsafe import window_end_s
from dbvip.guard import lease_deadline_s
from dbvip.identity import Identity
from dbvip.model import (
    KeyHeld,
    KeyInvalid,
    KeyUnknown,
    Lease,
    NodeState,
    Observation,
    Timing,
    VipPresence,
    WriterView,
)
from dbvip.reader_model import ReaderOnlyAction


def absorb(
    state: NodeState, obs: Observation, outcome: Outcome, timing: Timing, me: Identity
) -> tuple[NodeState, Observation]:
    """Fold one action's outcome into the state and the (now stale) view."""
    now = obs.now_s
    match outcome:
        case LeaseGranted(lease_id, ttl_s, sent_s, revision):
            lease = Lease(lease_id, lease_deadline_s(sent_s, ttl_s, timing), sent_s, revision)
            view = KeyHeld(me.node, lease_id, revision, revision, me)
            return (replace(state, lease=lease, adopt_failed_lease=None), replace(obs, writer=view))
        case LeaseRenewed(lease_id, ttl_s, sent_s) if (
            state.lease is not None and state.lease.lease_id == lease_id
        ):
            deadline = max(state.lease.deadline_s, lease_deadline_s(sent_s, ttl_s, timing))
            return replace(
                state, lease=replace(state.lease, deadline_s=deadline, renewed_s=sent_s)
            ), obs
        case LeaseRenewed():
            return state, obs
        case LeaseGone(lease_id):
            kept = state.lease if state.lease and state.lease.lease_id != lease_id else None
            gone = replace(state, lease=kept, adopt_failed_lease=lease_id)
            return gone, replace(obs, writer=KeyUnknown("lease gone; re-read next tick"))
        case LeaseRefused(holder, revision):
            refused: WriterView = (
                KeyHeld(holder, -1, revision, revision)
                if holder is not None
                else KeyInvalid("writer key holds an invalid value", 0, revision)
            )
            return back_off(state, "acquire", now, timing), replace(obs, writer=refused)
        case LeaseReleased():
            return state, replace(obs, writer=KeyUnknown("released; re-read next tick"))
        case VipAdded(lifetime_s, done_s, was_present):
            added = replace(state, vip_valid_until_s=done_s + lifetime_s)
            if not was_present:
                added = replace(added, announces_left=timing.announce_count, next_announce_s=done_s)
            return added, replace(obs, vip=VipPresence.PRESENT)
        case VipRemoved():
            # Never announce a VIP this node no longer has.
            return (
                replace(state, vip_valid_until_s=None, announces_left=0),
                replace(obs, vip=VipPresence.ABSENT),
            )
        case Announced(done_s):
            return replace(
                state,
                announces_left=max(0, state.announces_left - 1),
                next_announce_s=done_s + timing.announce_interval_s,
                last_announce_s=done_s,
            ), obs
        case PeersAcked(sent_s, window_s, _):
            until = max(state.failsafe_until_s or sent_s, window_end_s(sent_s, window_s))
            return replace(state, failsafe_until_s=until), obs
        case Failed(action, cause):
            failed = replace(state, last_failure=f"{type(action).__name__}: {cause}")
            if isinstance(action, Announce):
                return replace(
                    failed,
                    announces_left=max(0, state.announces_left - 1),
                    next_announce_s=now + timing.announce_interval_s,
                ), obs
            return back_off(failed, backoff_kind(action), now, timing), obs
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


def backoff_kind(action: Action | ReaderOnlyAction) -> str:
    match action:
        case AcquireLease():
            return "acquire"
        case AdoptLease():
            return "adopt"
        case RenewLease():
            return "renew"
        case ReleaseLease():
            return "release"
        case AddVip() | RemoveVip():
            return "vip"
        case AskPeers():
            return "failsafe"
    return "announce"


def back_off(state: NodeState, kind: str, now_s: float, timing: Timing) -> NodeState:
    """A failed action is not retried before the next tick."""
    return replace(state, backoff={**state.backoff, kind: now_s + timing.probe_interval_s})
