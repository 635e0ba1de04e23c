"""The core's actions (what it asks the shell to do, in order) and their
outcomes (what came of each, fed back through ``dbvip.absorb``): immutable
data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbvip.reader_model import ReaderOnlyAction


# --------------------------------------------------------------------------
# Actions: what the core asks the shell to do, in order.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AcquireLease:
    """Grant a lease and put the writer key and the claim under it, only if
    neither is attached to a live lease (absent, or put by hand)."""

    ttl_s: int


@dataclass(frozen=True)
class AdoptLease:
    """Take over our own writer key found under ``lease_id`` (after a restart,
    or after a release whose fate is unknown) by moving it onto a new lease."""

    lease_id: int
    mod_revision: int  # the key must be unchanged since this revision
    ttl_s: int


@dataclass(frozen=True)
class RenewLease:
    lease_id: int


@dataclass(frozen=True)
class ReleaseLease:
    """Delete the writer key if it still names this node, then revoke."""

    lease_id: int


# The VIP actions and outcomes name the VIP they are about: "" is the writer
# VIP, anything else a reader VIP (its address, as in its key).
WRITER_VIP = ""


@dataclass(frozen=True)
class AddVip:
    """Add the VIP, or refresh it, with a kernel-enforced valid lifetime."""

    lifetime_s: int
    vip: str = WRITER_VIP


@dataclass(frozen=True)
class RemoveVip:
    vip: str = WRITER_VIP


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6)."""

    vip: str = WRITER_VIP


@dataclass(frozen=True)
class AskPeers:
    """Failsafe: ask every last-known peer to promise, for ``window_s``, not
    to take the writer VIP (etcd is unreachable and this node holds it)."""

    window_s: float


Action = (
    AcquireLease | AdoptLease | RenewLease | ReleaseLease | AddVip | RemoveVip | Announce | AskPeers
)


# --------------------------------------------------------------------------
# Outcomes: what came of an action, fed back into the core.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseGranted:
    """AcquireLease or AdoptLease succeeded: this node holds the writer key.

    ``sent_s`` is the monotonic instant read *before* the request was sent;
    the deadline is computed from it, never from the reply's arrival.
    """

    lease_id: int
    ttl_s: int
    sent_s: float
    revision: int


@dataclass(frozen=True)
class LeaseRefused:
    """The writer key exists already (held by ``holder``, or garbage)."""

    holder: str | None
    revision: int


@dataclass(frozen=True)
class LeaseRenewed:
    lease_id: int
    ttl_s: int
    sent_s: float


@dataclass(frozen=True)
class LeaseGone:
    """etcd says the lease no longer exists (expired or revoked)."""

    lease_id: int


@dataclass(frozen=True)
class LeaseReleased:
    lease_id: int


@dataclass(frozen=True)
class VipAdded:
    lifetime_s: int
    done_s: float  # instant read before the netlink call; lifetime counts from it
    was_present: bool
    vip: str = WRITER_VIP


@dataclass(frozen=True)
class VipRemoved:
    was_present: bool
    vip: str = WRITER_VIP


@dataclass(frozen=True)
class Announced:
    done_s: float
    vip: str = WRITER_VIP


@dataclass(frozen=True)
class PeersAcked:
    """Every peer asked promised; this node may keep the VIP until
    ``sent_s + window_s`` (``sent_s`` read before the first request left)."""

    sent_s: float
    window_s: float
    peers: int


@dataclass(frozen=True)
class Failed:
    """The action's result is unknown or it failed; nothing is assumed."""

    action: Action | ReaderOnlyAction
    cause: str


Outcome = (
    LeaseGranted
    | LeaseRefused
    | LeaseRenewed
    | LeaseGone
    | LeaseReleased
    | VipAdded
    | VipRemoved
    | Announced
    | PeersAcked
    | Failed
)
