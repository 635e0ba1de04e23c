"""The decision core: observations and time in, actions and a reason out.

No I/O, no clock reads, no logging, no sleeping: every instant comes in as
data (``Observation.now_s``), so the same inputs always give the same
decision and every rule can be tested as a table.

The shell calls ``decide`` and executes the returned actions in order,
stopping at the first one that fails (the actions of one decision form a
chain where a later one is only safe after the earlier ones succeeded,
e.g. RemoveVip before ReleaseLease). Each outcome goes through ``absorb``,
then the shell calls ``decide`` again with the updated state, until a
decision has no actions. Rules are evaluated in priority order; the first
rule that applies gives the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from dbvip.guard import keep_vip, lease_deadline_s, release_at_s
from dbvip.identity import Identity
from dbvip.model import (
    WRITER_VIP,
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    Announced,
    Decision,
    Failed,
    KeyAbsent,
    KeyHeld,
    KeyInvalid,
    KeyUnknown,
    Lease,
    LeaseGone,
    LeaseGranted,
    LeaseRefused,
    LeaseReleased,
    LeaseRenewed,
    NodeState,
    Observation,
    Outcome,
    Reason,
    ReleaseLease,
    RemoveVip,
    RenewLease,
    Role,
    Timing,
    VipAdded,
    VipPresence,
    VipRemoved,
    WriterView,
)
from dbvip.ownership import key_lost, left_over, name_conflict, release_chain
from dbvip.reader_model import ReaderOnlyAction
from dbvip.schedule import request_deadline_s, wake_s

_Done = Callable[[tuple[Action, ...], Reason, str, NodeState], Decision]


def decide(state: NodeState, obs: Observation, timing: Timing, me: Identity) -> Decision:
    """Return the next chain of actions for the sidecar ``me`` and why."""
    now = obs.now_s
    state = _track_key(_track_role(state, obs), obs)
    vip_maybe = obs.vip is not VipPresence.ABSENT

    def take_down(then: tuple[Action, ...] = ()) -> tuple[Action, ...]:
        """RemoveVip (when the VIP may be up) followed by ``then``. A removal
        that just failed is retried next tick; until then nothing that must
        follow a removal (ReleaseLease) may run either."""
        if not vip_maybe:
            return then
        return () if _backing_off(state, "vip", now) else (RemoveVip(), *then)

    def done(actions: tuple[Action, ...], reason: Reason, detail: str, st: NodeState) -> Decision:
        st = replace(st, reason=reason, detail=detail)
        return Decision(
            actions=actions,
            reason=reason,
            detail=detail,
            state=st,
            request_deadline_s=request_deadline_s(st, obs.now_s, obs.vip, timing),
            wake_s=wake_s(st, obs, timing),
            facts=_facts(st, obs),
        )

    lease = state.lease
    # A lease past its deadline is lost, whatever etcd may still say: the
    # deadline is the only promise this node can keep while etcd is silent.
    if lease is not None and now >= lease.deadline_s:
        return done(
            take_down(),
            Reason.LEASE_EXPIRED,
            "lease deadline passed unrenewed",
            replace(state, lease=None),
        )

    if obs.etcd_reset is not None:
        # Wiped or restored: a lease id may name another lease now, and an
        # old lease may live again. Treat ours as lost and start afresh. No
        # release by lease id (it may be another's now): a key of ours that a
        # restore brought back is released later, proven ours by a fresh read.
        quiet = replace(state, lease=None, reset_until_s=now + timing.ttl_s)
        return done(
            take_down(),
            Reason.ETCD_RESET,
            f"{obs.etcd_reset}: etcd was wiped or restored; the lease is lost",
            quiet,
        )

    if obs.stopping:
        release = release_chain(state, obs, me)
        return done(
            take_down(release),
            Reason.STOPPING if vip_maybe or release else Reason.STOPPED,
            "shutting down",
            replace(state, lease=None),
        )

    if lease is not None:
        lost = key_lost(lease, obs.writer, me)
        if lost is not None:
            reason, detail = lost
            return done(
                take_down((ReleaseLease(lease.lease_id),)),
                reason,
                detail,
                replace(state, lease=None),
            )

    twin = name_conflict(obs, me)
    if twin is not None:
        # Another live sidecar uses this node's name: hold nothing, touch
        # nothing of its, until it goes away (its lease and report end).
        return done(
            take_down(release_chain(state, obs, me)),
            Reason.NAME_CONFLICT,
            twin,
            replace(state, lease=None),
        )

    if obs.maintenance:
        return done(
            take_down(release_chain(state, obs, me)),
            Reason.MAINTENANCE,
            "in maintenance: stays away from the VIP until `dbvip maintenance off`",
            replace(state, lease=None),
        )

    role = _effective_role(state, obs, timing)
    if role is Role.REPLICA:
        release = release_chain(state, obs, me)
        busy = vip_maybe or bool(release)
        if obs.role.role is Role.DOWN:
            # No grace: a database that is not running takes no writes, and
            # the sooner the key is free the sooner a promoted replica (made
            # eager by the free key) takes over.
            reason = Reason.DATABASE_DOWN
            detail = obs.role.cause or "database not running"
        elif obs.role.role is Role.UNKNOWN:
            reason = Reason.ROLE_UNKNOWN_PAST_GRACE if busy else Reason.ROLE_UNKNOWN
            detail = obs.role.cause or "role unknown"
        else:
            reason = Reason.DEMOTED if busy else Reason.REPLICA
            detail = "database is in recovery"
        return done(take_down(release), reason, detail, replace(state, lease=None))

    # Two primaries: a replica was promoted while this database still thinks
    # it is primary. The one on the newer timeline is the one that was chosen
    # last; this one steps down (and stays away) while that report lives.
    state = _remember_newer_primary(state, obs, me)
    newer = state.newer_primary
    if newer is not None and obs.role.role is Role.PRIMARY:
        return done(
            take_down(release_chain(state, obs, me)),
            Reason.SUPERSEDED,
            f"{newer.node} was seen primary on timeline {newer.timeline}, "
            f"this database is on {obs.role.timeline}",
            replace(state, lease=None),
        )

    if lease is not None:
        return _while_holding(state, lease, obs, timing, role, done)

    # Not holding; the database is primary or was primary within the grace.
    view = obs.writer
    if obs.maintenance is None and role is Role.PRIMARY:
        # Just started and the flag could not be read: it may be set.
        return done(take_down(), Reason.ETCD_UNREACHABLE, "maintenance flag not read yet", state)
    if role is Role.PRIMARY and state.reset_until_s is not None and now < state.reset_until_s:
        # A node that held a lease of before may still have its VIP until
        # that lease's deadline: take nothing until every such lease ran out.
        return done(
            take_down(),
            Reason.ETCD_RESET,
            f"etcd's history went back; taking no lease for {state.reset_until_s - now:.1f} s",
            state,
        )
    mine = left_over(view, me)
    if (
        role is Role.PRIMARY
        and mine is not None
        and mine.lease_id != state.adopt_failed_lease
        and not _backing_off(state, "adopt", now)
    ):
        return done(
            (AdoptLease(mine.lease_id, mine.mod_revision, timing.ttl_s),),
            Reason.ADOPTING,
            f"writer key written by this sidecar under lease {mine.lease_id:x}",
            state,
        )
    if vip_maybe:
        return done(
            take_down(),
            Reason.VIP_WITHOUT_LEASE,
            f"VIP {obs.vip.value} without the writer lease",
            state,
        )
    if role is not Role.PRIMARY:
        return done((), Reason.ROLE_UNKNOWN, obs.role.cause or "role unknown, within grace", state)
    if isinstance(view, KeyAbsent) and view.claimed_by is not None:
        return done(
            (),
            Reason.KEY_DELETED,
            f"writer key deleted by hand while {view.claimed_by}'s lease lives "
            "(its VIP may too): waiting for that lease to end",
            state,
        )
    if isinstance(view, KeyHeld | KeyInvalid) and view.lease_id == 0:
        # dbvip writes the key only under a lease: one without is a hand edit
        # that backs no VIP. The acquire replaces it, if the claim is free.
        if _backing_off(state, "acquire", now):
            return done((), Reason.WRITER_KEY_INVALID, "writer key has no lease", state)
        return done(
            (AcquireLease(timing.ttl_s),),
            Reason.ACQUIRING,
            "writer key has no lease (put by hand): replacing it",
            state,
        )
    if isinstance(view, KeyAbsent):
        if _backing_off(state, "acquire", now):
            return done((), Reason.STANDBY, "acquire failed, retrying next tick", state)
        return done((AcquireLease(timing.ttl_s),), Reason.ACQUIRING, "writer key is free", state)
    if isinstance(view, KeyHeld):
        unread = " (a value of another dbvip version)" if view.identity is None else ""
        return done(
            (),
            Reason.CONFLICT,
            f"database is primary but {view.holder} holds the writer key{unread}",
            state,
        )
    if isinstance(view, KeyInvalid):
        return done((), Reason.WRITER_KEY_INVALID, view.detail, state)
    return done((), Reason.ETCD_UNREACHABLE, view.cause, state)


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
            return _back_off(state, "acquire", now, timing), replace(obs, writer=refused)
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
        case Failed(action, cause):
            failed = replace(state, last_failure=f"{type(action).__name__}: {cause}")
            if isinstance(action, Announce):
                return replace(
                    failed,
                    announces_left=max(0, state.announces_left - 1),
                    next_announce_s=now + timing.announce_interval_s,
                ), obs
            return _back_off(failed, _kind(action), now, timing), obs
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


# --------------------------------------------------------------------------


def _while_holding(
    state: NodeState, lease: Lease, obs: Observation, timing: Timing, role: Role, done: _Done
) -> Decision:
    now = obs.now_s
    release_at = release_at_s(lease, timing)
    renew: tuple[Action, ...] = ()
    if now >= lease.renewed_s + timing.renew_interval_s and not _backing_off(state, "renew", now):
        renew = (RenewLease(lease.lease_id),)
    if now >= release_at:
        # Renewals kept failing: take the VIP down before the deadline, and
        # keep trying to renew (the VIP may come back if one lands in time).
        remove: tuple[Action, ...] = ()
        if obs.vip is not VipPresence.ABSENT and not _backing_off(state, "vip", now):
            remove = (RemoveVip(),)
        return done(
            remove or renew,
            Reason.LEASE_EXPIRING,
            f"lease unrenewed, deadline in {lease.deadline_s - now:.2f} s",
            state,
        )
    if renew:
        return done(renew, Reason.HOLDING, "renewing the lease", state)
    if role is not Role.PRIMARY:
        # Within the grace: keep what we have, add and refresh nothing.
        return done((), Reason.HOLDING_ROLE_UNSURE, obs.role.cause or "role unknown", state)
    step = keep_vip(
        lease,
        obs.vip,
        state.vip_valid_until_s,
        state.announces_left,
        state.next_announce_s,
        now,
        timing,
        WRITER_VIP,
        _backing_off(state, "vip", now),
    )
    if step is not None:
        action, detail = step
        reason = Reason.HOLDING
        if isinstance(action, AddVip) and obs.vip is not VipPresence.PRESENT:
            reason = Reason.TAKING_OVER if state.vip_valid_until_s is None else Reason.VIP_RESTORED
        return done((action,), reason, detail, state)
    if (
        timing.announce_refresh_s > 0
        and state.last_announce_s is not None
        and now >= state.last_announce_s + timing.announce_refresh_s
    ):
        return done((Announce(),), Reason.HOLDING, "refreshing the announcement", state)
    return done((), Reason.HOLDING, "holding the writer lease", state)


def _track_role(state: NodeState, obs: Observation) -> NodeState:
    role = obs.role.role
    if role is Role.PRIMARY:
        return replace(state, last_primary_s=obs.now_s, role_unknown_since_s=None)
    if role is Role.REPLICA or role is Role.DOWN:
        return replace(state, last_primary_s=None, role_unknown_since_s=None)
    if state.role_unknown_since_s is None:
        return replace(state, role_unknown_since_s=obs.now_s)
    return state


def _track_key(state: NodeState, obs: Observation) -> NodeState:
    match obs.writer:
        case KeyAbsent():
            if state.key_free_since_s is None:
                return replace(state, key_free_since_s=obs.now_s)
            return state
        case KeyHeld() | KeyInvalid():
            return replace(state, key_free_since_s=None)
    return state  # unknown: no news


def _effective_role(state: NodeState, obs: Observation, timing: Timing) -> Role:
    """PRIMARY; UNKNOWN while a primary's probe fails within the grace; else
    REPLICA (demoted, down, or unknown too long: treated as not primary)."""
    role = obs.role.role
    if role is Role.DOWN:
        return Role.REPLICA
    if role is not Role.UNKNOWN:
        return role
    since = state.role_unknown_since_s
    within = since is not None and obs.now_s - since < timing.role_grace_s
    return Role.UNKNOWN if within and state.last_primary_s is not None else Role.REPLICA


def _remember_newer_primary(state: NodeState, obs: Observation, me: Identity) -> NodeState:
    """The newest primary on a newer timeline than this database's, from this
    look or remembered from an earlier one. A report that went away or turned
    unknown is no evidence that the newer primary is gone (it may restart, or
    live on unseen), so it is forgotten only when that node reports itself a
    replica, or this database reaches that timeline (promoted again)."""
    own = obs.role.timeline
    if obs.role.role is not Role.PRIMARY or own is None:
        return state  # no comparison possible: keep what we know
    remembered = state.newer_primary
    if remembered is not None and any(
        p.node == remembered.node and p.role is Role.REPLICA for p in obs.peers
    ):
        remembered = None  # that node says it was demoted (rewound, rebuilt)
    candidates = [
        p
        for p in (*obs.peers, remembered)
        if p is not None
        and p.node != me.node
        and p.role is Role.PRIMARY
        and p.timeline is not None
        and p.timeline > own
    ]
    newest = max(candidates, key=lambda p: (p.timeline or 0, p.node), default=None)
    return state if newest == state.newer_primary else replace(state, newer_primary=newest)


def _facts(state: NodeState, obs: Observation) -> dict[str, str]:
    facts = {"role": obs.role.role.value, "vip": obs.vip.value, "writer": _describe(obs.writer)}
    if state.lease is not None:
        facts["lease"] = f"{state.lease.lease_id:x}"
        facts["deadline_in_s"] = f"{state.lease.deadline_s - obs.now_s:.2f}"
    if obs.role.cause:
        facts["role_cause"] = obs.role.cause
    if obs.vip_cause:
        facts["vip_cause"] = obs.vip_cause
    return facts


def _describe(view: WriterView) -> str:
    match view:
        case KeyAbsent(_, claimed_by):
            return "free" if claimed_by is None else f"deleted (claimed by {claimed_by})"
        case KeyHeld(holder, lease_id, _, _):
            return f"{holder}@{lease_id:x}"
        case KeyInvalid(detail, _, _):
            return f"invalid ({detail})"
        case KeyUnknown(cause):
            return f"unknown ({cause})"
    raise AssertionError(view)  # pragma: no cover


def _kind(action: Action | ReaderOnlyAction) -> str:
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
    return "announce"


def _back_off(state: NodeState, kind: str, now_s: float, timing: Timing) -> NodeState:
    """A failed action is not retried before the next tick."""
    return replace(state, backoff={**state.backoff, kind: now_s + timing.probe_interval_s})


def _backing_off(state: NodeState, kind: str, now_s: float) -> bool:
    return now_s < state.backoff.get(kind, float("-inf"))
