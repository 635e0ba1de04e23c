"""The reader policy: which reader VIPs this node takes, keeps and gives back.

Pure, like the writer's core (``dbvip.core``): observations and time in,
actions and a reason out. The safety machinery is the writer's
(``dbvip.guard``): a node adds a reader VIP only while it holds that VIP's
key under its own live reader lease with the deadline ahead, with a kernel
lifetime that ends before the deadline; it removes the VIP before it gives
the key back; the VIP comes down before the deadline when renewals fail.
What differs is only who should hold what: ``dbvip.pool.target``.

The shell executes a decision's actions in order and stops at the first
that fails (a removal before its give-back, a take before its add).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from dbvip.actions import (
    RemoveVip,
    RenewLease,
)
from dbvip.guard import backing_off, keep_vip, release_at_s
from dbvip.identity import Identity, Whose, ours, whose
from dbvip.model import (
    Timing,
    VipPresence,
)
from dbvip.pool import Judgement, judge, target
from dbvip.reader_model import (
    GiveBackReader,
    GrantReaderLease,
    ReaderKey,
    ReaderObservation,
    ReaderSettings,
    ReaderState,
    RevokeReaderLease,
    Slot,
    TakeReader,
)
from dbvip.reader_outcomes import ReaderAction


@dataclass(frozen=True)
class ReaderDecision:
    actions: tuple[ReaderAction, ...]
    reason: str
    detail: str
    state: ReaderState
    request_deadline_s: float  # the latest instant an etcd request issued now may run
    wake_s: float  # when the policy wants to be asked again at the latest


def decide_readers(
    state: ReaderState,
    obs: ReaderObservation,
    settings: ReaderSettings,
    timing: Timing,
    me: Identity,
) -> ReaderDecision:
    now = obs.now_s
    j = judge(obs, settings, _judgement(state))
    state = replace(
        state,
        in_pool=j.in_pool,
        why=j.why,
        lag_bytes=j.lag_bytes,
        lag_high_s=j.lag_high_s,
        lag_low_since_s=j.lag_low_since_s,
        stream_broke_s=j.stream_broke_s,
    )
    maybe = [
        v
        for v in settings.vips
        if obs.presence.get(v, VipPresence.UNKNOWN) is not VipPresence.ABSENT
    ]

    def done(
        actions: tuple[ReaderAction, ...], reason: str, detail: str, st: ReaderState
    ) -> ReaderDecision:
        st = replace(st, reason=reason, detail=detail)
        return ReaderDecision(
            actions,
            reason,
            detail,
            st,
            _request_deadline_s(st, obs, maybe, timing),
            _wake_s(st, obs, timing),
        )

    def remove(
        vips: list[str], then: Callable[[str], tuple[ReaderAction, ...]] = lambda _: ()
    ) -> tuple[ReaderAction, ...]:
        """Remove the first VIP that may be here and is not backing off,
        followed by what may only follow its removal."""
        for v in vips:
            if not backing_off(state.backoff, "vip:" + v, now):
                return (RemoveVip(v), *then(v))
        return ()

    lease = state.lease
    if lease is not None and now >= lease.deadline_s:
        # Past the deadline the lease is lost whatever etcd may say: its keys
        # expire there, and another node may take them.
        state = replace(state, lease=None, keys={}, slots={})
        return done(remove(maybe), "lease_expired", "reader lease deadline passed unrenewed", state)
    renew: tuple[ReaderAction, ...] = ()
    due = lease is not None and now >= lease.renewed_s + timing.renew_interval_s
    if lease is not None and due and not backing_off(state.backoff, "renew", now):
        renew = (RenewLease(lease.lease_id),)
    if lease is not None and now >= release_at_s(lease, timing):
        return done(
            remove(maybe) or renew,
            "lease_expiring",
            f"reader lease unrenewed, deadline in {lease.deadline_s - now:.2f} s",
            state,
        )

    reading = obs.pool
    keys = {k.vip: k for k in reading.keys} if reading is not None else {}
    mine = _mine(state, keys, reading.revision if reading else None, me)
    if reading is not None:
        # A key this node put and no longer sees as its own (deleted or
        # edited by hand, its lease revoked): someone else may take it now.
        lost = [v for v in state.keys if v not in mine and reading.revision >= state.keys[v]]
        if lost:
            state = replace(state, keys={v: r for v, r in state.keys.items() if v not in lost})
            here = [v for v in lost if v in maybe]
            if here:
                return done(
                    remove(here), "key_lost", f"reader key {lost[0]} no longer this node's", state
                )
    resetting = obs.reset_until_s is not None and now < obs.reset_until_s
    if obs.stopping or resetting:
        wanted: set[str] = set()
        why = "stopping" if obs.stopping else "etcd_reset"
    elif reading is None:
        # etcd unreachable: keep what this node holds (the lease bounds it),
        # take nothing, give back nothing (that needs etcd).
        keep = j.in_pool or obs.holds_writer
        wanted = set(state.keys) if keep else set()
        why = "etcd_unreachable" if keep else j.why
    else:
        goal = target(settings, reading, me.node, j.in_pool)
        wanted = {v for v, n in goal.items() if n == me.node}
        why = j.why if not j.in_pool and not (wanted and obs.holds_writer) else "rebalance"
        if wanted and not j.in_pool:
            why = "fallback_to_primary"

    # Give back first: a VIP that is here but not wanted (or not this node's)
    # comes down, then its key goes back; keys of an earlier run of this
    # sidecar are given back once their VIPs are gone.
    unwanted_here = [v for v in maybe if v not in wanted or v not in mine]
    if unwanted_here:

        def give_back(v: str) -> tuple[ReaderAction, ...]:
            if v in state.keys and v not in wanted and lease is not None and reading is not None:
                return (GiveBackReader(v, lease.lease_id),)
            return ()

        detail = f"{why}: removing reader VIP {unwanted_here[0]}"
        return done(
            remove(unwanted_here, give_back),
            _leave_reason(why, unwanted_here[0], mine),
            detail,
            state,
        )
    if reading is not None:
        for v in sorted(state.keys):
            if (
                v not in wanted
                and lease is not None
                and not backing_off(state.backoff, "give:" + v, now)
            ):
                return done(
                    (GiveBackReader(v, lease.lease_id),), why, f"{why}: giving back {v}", state
                )
        for v, k in sorted(keys.items()):
            old = _left_over(k, state, me)
            if (
                k.claim_only
                and k.holder is not None
                and k.lease_id not in state.ended_leases
                and ours(whose(k.holder, k.identity, me))
            ):
                old = k.lease_id  # the key was deleted by hand: free the claim, then retake
            if (
                old is not None
                and v not in maybe
                and not backing_off(state.backoff, "give:" + v, now)
            ):
                return done(
                    (GiveBackReader(v, old),),
                    "left_over",
                    f"reader key {v} of an earlier run",
                    state,
                )
    if renew:
        return done(renew, "holding", "renewing the reader lease", state)

    # Keep what this node holds.
    if lease is not None:
        for v in sorted(mine & wanted):
            slot = state.slots.get(v, Slot())
            step = keep_vip(
                lease,
                obs.presence.get(v, VipPresence.UNKNOWN),
                slot.valid_until_s,
                slot.announces_left,
                slot.next_announce_s,
                now,
                timing,
                v,
                backing_off(state.backoff, "vip:" + v, now),
            )
            if step is not None:
                return done((step[0],), "holding", f"{v}: {step[1]}", state)

    # Take what the target gives this node and is free.
    free = sorted(v for v in wanted - mine if reading is not None and _free(keys.get(v)))
    if free and not resetting:
        if lease is None:
            if backing_off(state.backoff, "grant", now):
                return done((), "waiting", "reader lease grant failed, retrying", state)
            return done((GrantReaderLease(timing.ttl_s),), "taking", f"{free[0]} is free", state)
        for v in free:
            if not backing_off(state.backoff, "take:" + v, now):
                there = keys.get(v)
                return done(
                    (TakeReader(v, lease.lease_id, there.mod_revision if there else 0),),
                    "taking",
                    f"{v} is free and assigned to this node",
                    state,
                )
    idle = lease is not None and not state.keys and not wanted
    if lease is not None and idle and not backing_off(state.backoff, "revoke", now):
        return done((RevokeReaderLease(lease.lease_id),), why, "no reader VIP to hold", state)
    held = sorted(mine & wanted)
    waiting = sorted(wanted - mine)
    if waiting:
        return done((), "waiting", f"assigned {', '.join(waiting)}, not free yet", state)
    if held:
        return done((), "holding", f"holding {', '.join(held)}", state)
    return done(
        (),
        why if not j.in_pool else "idle",
        j.why if not j.in_pool else "no reader VIP assigned",
        state,
    )


# --------------------------------------------------------------------------


def _judgement(state: ReaderState) -> Judgement:
    return Judgement(
        state.in_pool,
        state.why,
        state.lag_bytes,
        state.lag_high_s,
        state.lag_low_since_s,
        state.stream_broke_s,
    )


def _mine(
    state: ReaderState, keys: dict[str, ReaderKey], revision: int | None, me: Identity
) -> set[str]:
    """The reader VIPs whose keys this process holds under its current lease.

    Before a read shows a key this node just put (the read is older than the
    put), the put is trusted: the etcd transaction said so.
    """
    lease = state.lease
    if lease is None:
        return set()
    held = set()
    for v, put_revision in state.keys.items():
        k = keys.get(v)
        if (
            revision is None
            or revision < put_revision
            or (
                k is not None
                and not k.claim_only
                and k.holder is not None
                and k.lease_id == lease.lease_id
                and whose(k.holder, k.identity, me) is Whose.MINE
            )
        ):
            held.add(v)
    return held


def _left_over(k: ReaderKey, state: ReaderState, me: Identity) -> int | None:
    """The lease of a reader key this sidecar (or its predecessor on this host
    and interface) put under another lease than its current one."""
    if k.holder is None or k.lease_id == 0 or k.lease_id in state.ended_leases:
        return None
    if state.lease is not None and k.lease_id == state.lease.lease_id:
        return None
    return k.lease_id if ours(whose(k.holder, k.identity, me)) else None


def _free(k: ReaderKey | None) -> bool:
    """Absent, or a value put by hand without a lease (it backs no VIP)."""
    return k is None or (k.lease_id == 0 and not k.claim_only)


def _leave_reason(why: str, vip: str, mine: set[str]) -> str:
    return why if vip in mine else "vip_without_key"


def _request_deadline_s(
    st: ReaderState, obs: ReaderObservation, maybe: list[str], timing: Timing
) -> float:
    limit = min(obs.now_s + timing.request_timeout_s, obs.writer_limit_s)
    if st.lease is None:
        return limit
    if not maybe:
        return min(limit, st.lease.deadline_s)
    return min(limit, release_at_s(st.lease, timing))


def _wake_s(st: ReaderState, obs: ReaderObservation, timing: Timing) -> float:
    now = obs.now_s
    due = [now + timing.probe_interval_s]
    for slot in st.slots.values():
        if slot.announces_left > 0:
            due.append(slot.next_announce_s)
    if st.lease is not None:
        due.append(release_at_s(st.lease, timing))
        due.append(st.lease.renewed_s + timing.renew_interval_s)
    return min(t for t in due if t > now)
