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

from dbvip import failsafe
from dbvip.actions import (
    WRITER_VIP,
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    ReleaseLease,
    RemoveVip,
    RenewLease,
)
from dbvip.failsafe import promised, record_blocks
from dbvip.guard import backing_off, keep_vip, release_at_s
from dbvip.identity import Identity
from dbvip.model import (
    Decision,
    KeyAbsent,
    KeyHeld,
    KeyInvalid,
    KeyUnknown,
    Lease,
    NodeState,
    Observation,
    Reason,
    Role,
    Timing,
    VipPresence,
    WriterView,
)
from dbvip.ownership import key_lost, left_over, name_conflict, release_chain
from dbvip.schedule import request_deadline_s, wake_s
from dbvip.tracking import effective_role, remember_newer_primary, track_key, track_role

_Done = Callable[[tuple[Action, ...], Reason, str, NodeState], Decision]


def decide(state: NodeState, obs: Observation, timing: Timing, me: Identity) -> Decision:
    """Return the next chain of actions for the sidecar ``me`` and why."""
    now = obs.now_s
    state = track_key(track_role(state, obs), obs)
    vip_maybe = obs.vip is not VipPresence.ABSENT

    def take_down(then: tuple[Action, ...] = ()) -> tuple[Action, ...]:
        """RemoveVip (when the VIP may be up) followed by ``then``. A removal
        that just failed is retried next tick; until then nothing that must
        follow a removal (ReleaseLease) may run either."""
        if not vip_maybe:
            return then
        return () if backing_off(state.backoff, "vip", now) else (RemoveVip(), *then)

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
    # deadline is the only promise this node can keep while etcd is silent
    # (with failsafe, its peers' promises may outlast it: see below).
    if lease is not None and now >= lease.deadline_s:
        state, lease = replace(state, lease=None), None
        if not failsafe.holds(state, obs):
            return done(
                take_down(),
                Reason.LEASE_EXPIRED,
                "lease deadline passed unrenewed",
                _dropped(state),
            )

    if obs.etcd_reset is not None:
        # Wiped or restored: a lease id may name another lease now, and an
        # old lease may live again. Treat ours as lost and start afresh. No
        # release by lease id (it may be another's now): a key of ours that a
        # restore brought back is released later, proven ours by a fresh read.
        quiet = replace(_dropped(state), reset_until_s=now + timing.ttl_s)
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
            _dropped(state),
        )

    if lease is not None:
        lost = key_lost(lease, obs.writer, me)
        if lost is not None:
            reason, detail = lost
            return done(
                take_down((ReleaseLease(lease.lease_id),)),
                reason,
                detail,
                _dropped(state),
            )

    twin = name_conflict(obs, me)
    if twin is not None:
        # Another live sidecar uses this node's name: hold nothing, touch
        # nothing of its, until it goes away (its lease and report end).
        return done(
            take_down(release_chain(state, obs, me)),
            Reason.NAME_CONFLICT,
            twin,
            _dropped(state),
        )

    if obs.maintenance:
        return done(
            take_down(release_chain(state, obs, me)),
            Reason.MAINTENANCE,
            "in maintenance: stays away from the VIP until `dbvip maintenance off`",
            _dropped(state),
        )

    role = effective_role(state, obs, timing)
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
        return done(take_down(release), reason, detail, _dropped(state))

    # Two primaries: a replica was promoted while this database still thinks
    # it is primary. The one on the newer timeline is the one that was chosen
    # last; this one steps down (and stays away) while that report lives.
    state = remember_newer_primary(state, obs, me)
    newer = state.newer_primary
    if newer is not None and obs.role.role is Role.PRIMARY:
        return done(
            take_down(release_chain(state, obs, me)),
            Reason.SUPERSEDED,
            f"{newer.node} was seen primary on timeline {newer.timeline}, "
            f"this database is on {obs.role.timeline}",
            _dropped(state),
        )

    if lease is not None:
        return _while_holding(state, lease, obs, timing, role, done)
    if failsafe.holds(state, obs):
        return failsafe.hold(state, obs, timing, role, me, done, take_down)
    state = replace(state, failsafe_until_s=None)

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
    if role is Role.PRIMARY and promised(obs.promised_until_s, now):
        assert obs.promised_until_s is not None  # promised() says so
        return done(
            take_down(),
            Reason.FAILSAFE_PROMISE,
            f"promised a failsafe holder not to take the writer VIP for "
            f"{obs.promised_until_s - now:.1f} s more",
            state,
        )
    blocked = record_blocks(obs.failsafe_record, me) if role is Role.PRIMARY else None
    if blocked is not None and not isinstance(view, KeyUnknown):
        return done(take_down(), Reason.FAILSAFE, blocked, state)
    mine = left_over(view, me)
    if (
        role is Role.PRIMARY
        and mine is not None
        and mine.lease_id != state.adopt_failed_lease
        and not backing_off(state.backoff, "adopt", now)
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
        if backing_off(state.backoff, "acquire", now):
            return done((), Reason.WRITER_KEY_INVALID, "writer key has no lease", state)
        return done(
            (AcquireLease(timing.ttl_s),),
            Reason.ACQUIRING,
            "writer key has no lease (put by hand): replacing it",
            state,
        )
    if isinstance(view, KeyAbsent):
        if backing_off(state.backoff, "acquire", now):
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


# --------------------------------------------------------------------------


def _while_holding(
    state: NodeState, lease: Lease, obs: Observation, timing: Timing, role: Role, done: _Done
) -> Decision:
    now = obs.now_s
    # With failsafe, the peers' promises may outlast the lease's deadline:
    # the VIP is kept, refreshed and brought down by whichever ends later.
    held = replace(lease, deadline_s=max(lease.deadline_s, state.failsafe_until_s or 0.0))
    release_at = release_at_s(held, timing)
    renew: tuple[Action, ...] = ()
    if now >= lease.renewed_s + timing.renew_interval_s and not backing_off(
        state.backoff, "renew", now
    ):
        renew = (RenewLease(lease.lease_id),)
    if now >= release_at:
        # Renewals kept failing: take the VIP down before the deadline, and
        # keep trying to renew (the VIP may come back if one lands in time).
        remove: tuple[Action, ...] = ()
        if obs.vip is not VipPresence.ABSENT and not backing_off(state.backoff, "vip", now):
            remove = (RemoveVip(),)
        return done(
            remove or renew,
            Reason.LEASE_EXPIRING,
            f"lease unrenewed, deadline in {lease.deadline_s - now:.2f} s",
            state,
        )
    ask = failsafe.ask(state, obs, timing, held.deadline_s)
    if ask:
        return done(ask, Reason.FAILSAFE, failsafe.ASKING, state)
    step = keep_vip(
        held,
        obs.vip,
        state.vip_valid_until_s,
        state.announces_left,
        state.next_announce_s,
        now,
        timing,
        WRITER_VIP,
        backing_off(state.backoff, "vip", now),
    )
    # Within an acknowledged window beyond the deadline, the VIP's lifetime is
    # refreshed before renewals that may hang to their timeout: it must not
    # run out on the way (with a short ttl_s it is only seconds long).
    extended = held.deadline_s > lease.deadline_s and isinstance(step, tuple)
    if renew and not (extended and role is Role.PRIMARY):
        return done(renew, Reason.HOLDING, "renewing the lease", state)
    if role is not Role.PRIMARY:
        # Within the grace: keep what we have, add and refresh nothing.
        return done((), Reason.HOLDING_ROLE_UNSURE, obs.role.cause or "role unknown", state)
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


def _dropped(state: NodeState) -> NodeState:
    """Neither the lease nor a failsafe window: this node holds nothing."""
    return replace(state, lease=None, failsafe_until_s=None)


def _facts(state: NodeState, obs: Observation) -> dict[str, str]:
    facts = {"role": obs.role.role.value, "vip": obs.vip.value, "writer": _describe(obs.writer)}
    if state.lease is not None:
        facts["lease"] = f"{state.lease.lease_id:x}"
        facts["deadline_in_s"] = f"{state.lease.deadline_s - obs.now_s:.2f}"
    if state.failsafe_until_s is not None and state.failsafe_until_s > obs.now_s:
        facts["failsafe_window_in_s"] = f"{state.failsafe_until_s - obs.now_s:.2f}"
    if obs.promised_until_s is not None and obs.promised_until_s > obs.now_s:
        facts["promised_for_s"] = f"{obs.promised_until_s - obs.now_s:.2f}"
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
