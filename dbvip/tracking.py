"""What the decision core carries from one look to the next: since when
the database's role has been unknown or the writer key free, the role the
rules go by, and the newest primary seen on a newer timeline. Pure.
"""

from __future__ import annotations

from dataclasses import replace

from dbvip.identity import Identity
from dbvip.model import KeyAbsent, KeyHeld, KeyInvalid, NodeState, Observation, Role, Timing


def track_role(state: NodeState, obs: Observation) -> NodeState:
    role = obs.role.role
    if role is Role.PRIMARY:
        return replace(state, last_primary_s=obs.now_s, role_unknown_since_s=None)
    if role is Role.REPLICA or role is Role.DOWN:
        return replace(state, last_primary_s=None, role_unknown_since_s=None)
    if state.role_unknown_since_s is None:
        return replace(state, role_unknown_since_s=obs.now_s)
    return state


def track_key(state: NodeState, obs: Observation) -> NodeState:
    match obs.writer:
        case KeyAbsent():
            if state.key_free_since_s is None:
                return replace(state, key_free_since_s=obs.now_s)
            return state
        case KeyHeld() | KeyInvalid():
            return replace(state, key_free_since_s=None)
    return state  # unknown: no news


def effective_role(state: NodeState, obs: Observation, timing: Timing) -> Role:
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


def remember_newer_primary(state: NodeState, obs: Observation, me: Identity) -> NodeState:
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
