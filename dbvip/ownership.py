"""Whose is the writer key: the rules that keep a node to its own keys (S5).

Pure, like the core it serves. A node acts only on a key and a lease that
carry its own identity: it renews and keeps only the lease it was granted,
with the key naming this very process; it adopts or releases a key left
over only when it was written by this host's sidecar for this interface
(an earlier process); a name alone proves nothing.
"""

from __future__ import annotations

from dbvip.actions import (
    Action,
    ReleaseLease,
)
from dbvip.identity import Identity, Whose, ours, whose
from dbvip.model import (
    KeyHeld,
    KeyInvalid,
    KeyUnknown,
    Lease,
    NodeState,
    Observation,
    Reason,
    WriterView,
)


def key_lost(lease: Lease, view: WriterView, me: Identity) -> tuple[Reason, str] | None:
    """Does a fresh view of the writer key contradict our lease?"""
    if isinstance(view, KeyUnknown) or view.revision < lease.revision:
        return None  # can't tell, or read before our own write
    if isinstance(view, KeyHeld):
        if view.lease_id == lease.lease_id and view.identity == me:
            return None
        return Reason.KEY_LOST, f"writer key now names {view.holder} (lease {view.lease_id:x})"
    if isinstance(view, KeyInvalid):
        return Reason.WRITER_KEY_INVALID, view.detail
    return Reason.KEY_LOST, "writer key disappeared"


def left_over(view: WriterView, me: Identity) -> KeyHeld | None:
    """The writer key, if it is this sidecar's own from before (a restart,
    a release whose fate is unknown) under a lease it may adopt or release."""
    if (
        isinstance(view, KeyHeld)
        and view.lease_id > 0
        and ours(whose(view.holder, view.identity, me))
    ):
        return view
    return None


def release_chain(state: NodeState, obs: Observation, me: Identity) -> tuple[Action, ...]:
    if state.lease is not None:
        return (ReleaseLease(state.lease.lease_id),)
    mine = left_over(obs.writer, me)
    return (ReleaseLease(mine.lease_id),) if mine is not None else ()


def name_conflict(obs: Observation, me: Identity) -> str | None:
    """Why this node's name is in use by a live sidecar of another identity
    (the writer key, or a member report under this name), or None."""
    view = obs.writer
    if isinstance(view, KeyHeld) and whose(view.holder, view.identity, me) is Whose.NAME_TAKEN:
        assert view.identity is not None  # NAME_TAKEN has one
        return f"writer key held by another sidecar named {me.node}: {view.identity.short()}"
    for other in obs.same_name:
        if whose(other.node, other, me) is Whose.NAME_TAKEN:
            return f"member report of another sidecar named {me.node}: {other.short()}"
    return None
