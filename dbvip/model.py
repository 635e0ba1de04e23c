"""Value types shared by the decision core, the ports and the shell.

Everything here is immutable data. Instants are seconds on the monotonic clock
(``*_s`` names); nothing in this module reads a clock or does I/O.

Results of the ports separate "definitely not mine" from "don't know": every
port result that can fail has an ``Unknown`` variant carrying the cause, and
the core treats ``Unknown`` as "might be either", never as "no".
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dbvip.identity import Identity

if TYPE_CHECKING:
    from dbvip.actions import Action

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# The kernel expires an address whose valid lifetime ran out from a periodic
# worker rounded up to whole seconds; seen here up to about one second late.
# The VIP's lifetime is cut short by this much so that the kernel removes it
# by the deadline even when this process is frozen or killed.
KERNEL_EXPIRY_SLACK_S = 1.25


class Role(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    # Definitely not serving writes: nothing listens where the database
    # should, or it says it is starting up, shutting down or recovering.
    # Unlike UNKNOWN (a timeout, an auth error: maybe still a primary) this
    # needs no grace before the VIP comes down.
    DOWN = "down"
    UNKNOWN = "unknown"


# --------------------------------------------------------------------------
# Observations: what the shell saw this tick.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleReading:
    """The local database's answer to one probe."""

    role: Role
    timeline: int | None = None
    lsn: str | None = None
    cause: str | None = None  # why the role is unknown or down; None when known
    # A replica's WAL receiver is streaming; None: not a replica, or unknown.
    streaming: bool | None = None
    # A replica's WAL received so far (written to disk); None: not a replica,
    # or nothing received since it started.
    received_lsn: str | None = None


@dataclass(frozen=True)
class KeyAbsent:
    """The writer key does not exist (as of store revision ``revision``).

    ``claimed_by`` names the holder whose claim key still lives under its
    lease: the writer key was deleted by hand while that lease (and maybe
    that node's VIP) lives on; nobody may take the key before it ends.
    """

    revision: int
    claimed_by: str | None = None


@dataclass(frozen=True)
class KeyHeld:
    """The writer key names ``holder`` and is attached to ``lease_id``."""

    holder: str
    lease_id: int  # 0 when the key is attached to no lease at all
    revision: int  # store revision of the read
    mod_revision: int  # revision at which the key was last written
    # Who wrote it; None for a value without one this version can read
    # (format 1 from an older dbvip, or a newer format): never ours.
    identity: Identity | None = None


@dataclass(frozen=True)
class KeyInvalid:
    """The writer key exists but its value is not ours to parse (garbage)."""

    detail: str
    lease_id: int
    revision: int


@dataclass(frozen=True)
class KeyUnknown:
    """The writer key could not be read: etcd unreachable, timeout, auth ..."""

    cause: str


WriterView = KeyAbsent | KeyHeld | KeyInvalid | KeyUnknown


class VipPresence(enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"  # interface missing, netlink error


@dataclass(frozen=True)
class PeerView:
    """Another member's latest published report (its member key, alive under
    its own lease): evidence of a newer primary elsewhere."""

    node: str
    role: Role
    timeline: int | None
    # Who wrote the report (None: a value this version cannot read): the
    # failsafe asks seats, never names, at the endpoint the report gives.
    identity: Identity | None = None
    failsafe: str = ""


@dataclass(frozen=True)
class Observation:
    """One tick's view of the world, as data."""

    now_s: float
    role: RoleReading
    writer: WriterView
    vip: VipPresence
    stopping: bool = False  # SIGTERM/SIGINT received: release everything
    vip_cause: str | None = None  # why vip is UNKNOWN
    peers: tuple[PeerView, ...] = ()  # read only while the local role is primary
    # An operator asked this node to stay away from the VIP; None: not read
    # yet since start (the flag may be set: do not take the VIP on a guess).
    maintenance: bool | None = False
    # Identities in live member reports under this node's name (read every
    # renew interval): a sidecar of another host or interface there is a
    # twin given the same node name.
    same_name: tuple[Identity, ...] = ()
    # Set when etcd's history went back since the last look (a revision
    # below one already seen, another cluster id): etcd was wiped or
    # restored from a snapshot, and every lease of before is in doubt.
    etcd_reset: str | None = None
    # Failsafe (``dbvip.failsafe``): this node promised a holder not to take
    # the writer VIP until then (None: no promise running).
    promised_until_s: float | None = None
    # The failsafe record as last read (None: none, or not read yet): a node
    # it does not list takes no writer key while it names another holder.
    failsafe_record: FailsafeRecord | None = None


# --------------------------------------------------------------------------
# Decisions.
# --------------------------------------------------------------------------


class Reason(enum.Enum):
    """Why the core decided what it did; one per rule, in priority order."""

    STOPPING = "stopping"
    LEASE_EXPIRED = "lease_expired"
    KEY_LOST = "key_lost"
    ETCD_RESET = "etcd_reset"
    NAME_CONFLICT = "name_conflict"
    MAINTENANCE = "maintenance"
    DEMOTED = "demoted"
    DATABASE_DOWN = "database_down"
    ROLE_UNKNOWN_PAST_GRACE = "role_unknown_past_grace"
    SUPERSEDED = "superseded"
    KEY_DELETED = "key_deleted"
    LEASE_EXPIRING = "lease_expiring"
    VIP_WITHOUT_LEASE = "vip_without_lease"
    ADOPTING = "adopting"
    ACQUIRING = "acquiring"
    TAKING_OVER = "taking_over"
    VIP_RESTORED = "vip_restored"
    HOLDING = "holding"
    HOLDING_ROLE_UNSURE = "holding_role_unsure"
    CONFLICT = "conflict"
    WRITER_KEY_INVALID = "writer_key_invalid"
    ETCD_UNREACHABLE = "etcd_unreachable"
    STANDBY = "standby"
    REPLICA = "replica"
    ROLE_UNKNOWN = "role_unknown"
    STOPPED = "stopped"
    # Failsafe: holding the VIP through an etcd outage on every peer's
    # promise, and (on a peer) keeping such a promise.
    FAILSAFE = "failsafe"
    FAILSAFE_PROMISE = "failsafe_promise"


@dataclass(frozen=True)
class Lease:
    """This node's writer lease, as the core knows it."""

    lease_id: int
    deadline_s: float  # after this instant the lease must be assumed lost
    renewed_s: float  # when the last grant/keepalive was sent
    revision: int  # store revision at which this node wrote the writer key


@dataclass(frozen=True)
class NodeState:
    """What the core remembers between ticks. Start from ``NodeState()``."""

    lease: Lease | None = None
    vip_valid_until_s: float | None = None  # kernel lifetime of the VIP we set
    last_primary_s: float | None = None  # last time the database said primary
    role_unknown_since_s: float | None = None
    announces_left: int = 0
    next_announce_s: float = 0.0
    last_announce_s: float | None = None
    adopt_failed_lease: int | None = None  # do not retry adopting this lease
    key_free_since_s: float | None = None  # the writer key was seen free from then on
    # The newest primary seen on another node on a newer timeline than ours:
    # remembered, so that a report that goes away (that node restarting,
    # dying) does not hand the VIP back to a database on an outdated timeline.
    newer_primary: PeerView | None = None
    # After etcd's history went back: no lease is taken before this instant,
    # when every lease granted before (and any VIP it backs) has run out.
    reset_until_s: float | None = None
    # Kind of action ("acquire", "renew", "vip", ...) -> instant before which a
    # failed action is not retried, so one tick makes one attempt of each.
    backoff: dict[str, float] = field(default_factory=dict)
    last_failure: str = ""
    # Facts of the last decision, kept for status and logging.
    reason: Reason | None = None
    detail: str = ""
    # Failsafe: every last-known peer promised not to take the VIP before
    # this instant (measured from before the asks were sent).
    failsafe_until_s: float | None = None


@dataclass(frozen=True)
class Timing:
    """Validated timing settings (see ``dbvip.config``)."""

    ttl_s: int = 10
    probe_interval_s: float = 0.2
    probe_timeout_s: float = 0.5
    request_timeout_s: float = 1.0
    margin_s: float = 2.0
    renew_interval_s: float = 2.0
    vip_op_timeout_s: float = 0.5
    role_grace_s: float = 1.0
    announce_count: int = 3
    announce_interval_s: float = 0.05
    announce_refresh_s: float = 0.0  # 0: no periodic re-announcement
    # A replica that saw the writer key free probes this often for a while:
    # a free key is the strongest hint that a promotion is coming.
    eager_probe_interval_s: float = 0.01
    eager_window_s: float = 30.0
    # Failsafe window asked of the peers (0: failsafe off).
    failsafe_window_s: float = 0.0

    @property
    def release_lead_s(self) -> float:
        """How long before the deadline the VIP must start coming down: one
        wake-up, one probe that may hang to its timeout, one netlink call."""
        return self.probe_interval_s + self.probe_timeout_s + self.vip_op_timeout_s


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    reason: Reason
    detail: str
    state: NodeState
    # The latest instant an etcd request issued now may still be running.
    request_deadline_s: float
    # When the core wants to be asked again at the latest (announce spacing,
    # renewals, the release point); the runner also wakes on watch events.
    wake_s: float
    facts: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Failsafe record.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Seat:
    """A sidecar across restarts: its node name, host and interface."""

    node: str
    host: str
    interface: str

    @staticmethod
    def of(identity: Identity) -> Seat:
        return Seat(identity.node, identity.host, identity.interface)


@dataclass(frozen=True)
class FailsafeRecord:
    """``/<prefix>/<cluster>/failsafe``, put without a lease by a holder with
    failsafe on: the peers it would ask for a failsafe acknowledgement."""

    holder: Seat
    members: tuple[Seat, ...]
