"""Value types of the reader VIP pool: what the loop sees of the pool, what
the reader policy asks for, and what came of it.

A reader VIP is guarded like the writer VIP: its key
``/<prefix>/<cluster>/readers/<address>`` (with a claim key beside it, under
the same lease) names the one node allowed to have it, and that node adds it
only under its own live reader lease, with a kernel lifetime that ends
before the lease's deadline. Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from dbvip.identity import Identity
from dbvip.model import Lease, Role, VipPresence

# --------------------------------------------------------------------------
# Observations.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderKey:
    """One reader key as read (or its claim, when the key itself is gone)."""

    vip: str  # the address alone, compressed: the key's last part
    holder: str | None  # the node it names; None when the value is garbage
    identity: Identity | None  # None: garbage, or a format this version cannot read
    lease_id: int  # 0: attached to no lease (put by hand)
    mod_revision: int
    # The key was deleted by hand while its claim (same lease) lives on: the
    # holder may still have the VIP, nobody may take it before the lease ends.
    claim_only: bool = False


@dataclass(frozen=True)
class PoolMember:
    """Another member's published report, as far as the pool cares."""

    node: str
    role: Role
    in_pool: bool  # it says it is a healthy replica willing to serve reads
    lsn: str | None  # a primary's current WAL position; a replica's replay position
    # False: in the pool though its stream is broken (no streaming replica
    # was left to serve); it leaves as soon as another one streams.
    streaming: bool = True


# A member report's "pool" while it serves reads: streaming, or with its
# stream broken while no other replica streams (see ``dbvip.pool.judge``).
IN_POOL: Final = "in_pool"
IN_POOL_NOT_STREAMING: Final = "in_pool_not_streaming"

# Every word ``dbvip.pool.judge`` can give for a node's place in the pool:
# published in its member report ("pool") and as the why of dbvip_in_pool.
PoolWhy = Literal[
    "in_pool",
    "in_pool_not_streaming",
    "not_looked_yet",
    "no_load_balance",
    "stopping",
    "name_conflict",
    "maintenance_unread",
    "maintenance",
    "primary",
    "database_down",
    "role_unknown",
    "etcd_unreachable",
    "lagging",
    "not_streaming",
    "rejoining",
]
POOL_WHYS: tuple[str, ...] = get_args(PoolWhy)


@dataclass(frozen=True)
class PoolReading:
    """Everything the pool needs, from one read of the cluster's keys."""

    revision: int
    keys: tuple[ReaderKey, ...]
    members: tuple[PoolMember, ...]  # every other live member
    writer_holder: str | None  # the node the writer key names, if any


@dataclass(frozen=True)
class ReaderSettings:
    """Validated reader settings (see ``dbvip.config``)."""

    vips: tuple[str, ...] = ()  # the addresses alone, compressed, as in the keys
    max_lag_bytes: int = 16 * 1024 * 1024
    # After leaving the pool for lag, back only once below the limit this long.
    rejoin_s: float = 10.0
    fallback_to_primary: bool = True
    no_load_balance: bool = False  # this node never serves reads through the pool


@dataclass(frozen=True)
class ReaderObservation:
    """One tick's view of the pool, as data."""

    now_s: float
    role: Role  # the local database's, as probed this tick
    lsn: str | None  # its replay position (replica) or current position (primary)
    streaming: bool | None  # a replica's WAL receiver streams; None: unknown
    presence: dict[str, VipPresence]  # each reader VIP on this node
    pool: PoolReading | None  # None: not read (etcd unreachable)
    pool_cause: str = ""  # why pool is None
    stopping: bool = False
    maintenance: bool | None = False  # None: not read yet
    name_conflict: bool = False  # a twin reports under this node's name
    holds_writer: bool = False  # this node holds the writer lease
    # No lease may be taken before this instant (etcd's history went back).
    reset_until_s: float | None = None
    # The latest instant an etcd request issued now may still run, as the
    # writer's lease allows (the reader rounds must not delay the writer's).
    writer_limit_s: float = float("inf")
    # A replica's WAL received so far: replay behind it is lag seen locally.
    received_lsn: str | None = None


# --------------------------------------------------------------------------
# Actions and outcomes (VIP actions are the writer's, with ``vip`` set).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantReaderLease:
    ttl_s: int


@dataclass(frozen=True)
class TakeReader:
    """Put the reader key and its claim under ``lease_id``, only if the key is
    unchanged since ``mod_revision`` (0: absent) and the claim is absent."""

    vip: str
    lease_id: int
    mod_revision: int


@dataclass(frozen=True)
class GiveBackReader:
    """Delete the reader key and its claim if they are under ``lease_id``."""

    vip: str
    lease_id: int


@dataclass(frozen=True)
class RevokeReaderLease:
    lease_id: int


ReaderOnlyAction = GrantReaderLease | TakeReader | GiveBackReader | RevokeReaderLease


@dataclass(frozen=True)
class ReaderLeaseGranted:
    lease_id: int
    ttl_s: int
    sent_s: float  # read before the request was sent: the deadline counts from it


@dataclass(frozen=True)
class ReaderTaken:
    vip: str
    revision: int


@dataclass(frozen=True)
class ReaderRefused:
    vip: str
    holder: str | None


@dataclass(frozen=True)
class ReaderGivenBack:
    vip: str


@dataclass(frozen=True)
class ReaderLeaseRevoked:
    lease_id: int


# --------------------------------------------------------------------------
# State.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One VIP this node has (or may have) in its kernel."""

    valid_until_s: float | None = None  # kernel lifetime we set last
    announces_left: int = 0
    next_announce_s: float = 0.0


@dataclass(frozen=True)
class ReaderState:
    lease: Lease | None = None
    # Reader keys this node put under ``lease``: VIP -> revision of the put.
    keys: dict[str, int] = field(default_factory=dict)
    slots: dict[str, Slot] = field(default_factory=dict)
    # Pool membership, as this node judges itself and publishes it.
    in_pool: bool = False
    why: PoolWhy = "not_looked_yet"
    lag_bytes: int | None = None
    lag_high_s: float | None = None  # when the lag last went over the limit
    lag_low_since_s: float | None = None  # below the limit continuously since
    stream_broke_s: float | None = None  # its stream's latest break began
    # Leases this node revoked or found gone: keys read under them are stale
    # (the reading is older than the revoke), not left-overs to give back.
    ended_leases: frozenset[int] = frozenset()
    backoff: dict[str, float] = field(default_factory=dict)
    last_failure: str = ""
    reason: str = ""
    detail: str = ""
