"""When the core wants to look again, and how long an etcd request may run.

Pure, like the core: instants in, instants out.
"""

from __future__ import annotations

from dbvip.model import NodeState, Observation, Role, Timing, VipPresence


def request_deadline_s(state: NodeState, now_s: float, vip: VipPresence, timing: Timing) -> float:
    """etcd requests must return in time to take the VIP down by the deadline."""
    limit = now_s + timing.request_timeout_s
    # The lease's deadline while there is a lease (renewals must not run past
    # it even when a failsafe window lasts longer: the asks come first), the
    # failsafe window's end after.
    until = state.lease.deadline_s if state.lease is not None else state.failsafe_until_s
    if until is None:
        return limit
    if vip is VipPresence.ABSENT:
        return min(limit, until)
    return min(limit, until - timing.release_lead_s)


def wake_s(state: NodeState, obs: Observation, timing: Timing) -> float:
    """The next instant something falls due; instants already past are not
    wake-ups (what they asked for was done or is backing off), or the loop
    would spin without sleeping."""
    now = obs.now_s
    due = [now + timing.probe_interval_s]
    free_since = state.key_free_since_s
    eager = timing.eager_window_s > 0
    if (
        eager
        and obs.role.role is Role.REPLICA
        and state.lease is None
        and free_since is not None
        and now - free_since < timing.eager_window_s
    ):
        # The key is free and this replica may be promoted any moment: look
        # at the database often (cheap, local); etcd is read only when it
        # says primary (or the watch wakes us), not at this pace.
        due.append(now + timing.eager_probe_interval_s)
    unknown_since = state.role_unknown_since_s
    if (
        eager
        and state.lease is not None
        and unknown_since is not None
        and now - unknown_since < timing.role_grace_s
    ):
        # The holder's database stopped answering (a restart as a replica, a
        # crash): learn which as soon as it can tell, to hand over at once.
        due.append(now + timing.eager_probe_interval_s)
    if state.announces_left > 0:
        due.append(state.next_announce_s)
    if state.lease is not None:
        due.append(state.lease.deadline_s - timing.release_lead_s)
        due.append(state.lease.renewed_s + timing.renew_interval_s)
    return min(t for t in due if t > now)
