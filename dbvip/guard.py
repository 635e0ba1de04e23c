"""A VIP and the key that guards it: the safety machinery the writer rules
and the reader rules share.

A lease's deadline counts from the instant *before* its request was sent;
a VIP's kernel lifetime ends before that deadline (less the kernel's expiry
lateness and one netlink call), so the kernel removes it in time even if
this process freezes; the VIP comes down ``release_lead_s`` before the
deadline when renewals keep failing; a fresh VIP is announced. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from dbvip.actions import (
    Action,
    AddVip,
    Announce,
)
from dbvip.model import (
    KERNEL_EXPIRY_SLACK_S,
    Lease,
    Timing,
    VipPresence,
)


def lease_deadline_s(sent_s: float, ttl_s: int, timing: Timing) -> float:
    """After this instant the lease must be assumed lost."""
    return sent_s + ttl_s - timing.margin_s


def release_at_s(lease: Lease, timing: Timing) -> float:
    """From this instant on, an unrenewed lease's VIP comes down."""
    return lease.deadline_s - timing.release_lead_s


def vip_lifetime_s(lease: Lease, now_s: float, timing: Timing) -> int:
    """Whole seconds the kernel may keep the VIP without a refresh.

    Cut short by the kernel's expiry lateness and the netlink budget, so the
    kernel has removed the VIP by the deadline even if this process freezes.
    """
    return math.floor(lease.deadline_s - now_s - KERNEL_EXPIRY_SLACK_S - timing.vip_op_timeout_s)


def keep_vip(
    lease: Lease,
    presence: VipPresence,
    valid_until_s: float | None,
    announces_left: int,
    next_announce_s: float,
    now_s: float,
    timing: Timing,
    vip: str,
    vip_backing_off: bool,
) -> tuple[Action, str] | None:
    """The next step in keeping a VIP this node holds the key of: add it,
    refresh its lifetime (when it would gain a second or more), announce it;
    None when nothing is due."""
    lifetime = vip_lifetime_s(lease, now_s, timing)
    if lifetime >= 1 and not vip_backing_off:
        if presence is not VipPresence.PRESENT:
            return AddVip(lifetime, vip), f"VIP {presence.value}, adding it"
        if valid_until_s is None or now_s + lifetime - valid_until_s >= 1:
            return AddVip(lifetime, vip), "refreshing the VIP lifetime"
    if announces_left > 0 and now_s >= next_announce_s:
        return Announce(vip), "announcing the VIP"
    return None


def backing_off(backoff: Mapping[str, float], kind: str, now_s: float) -> bool:
    """Is an action of ``kind`` that failed still waiting out its back-off
    (until the next tick)? One rule for the writer's and the readers' keys."""
    return now_s < backoff.get(kind, float("-inf"))
