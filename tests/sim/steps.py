"""The simulation's vocabulary: the steps a schedule is made of, the
setup it starts from, the timings it runs at and the errors it raises."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from dbvip.model import (
    Timing,
)

NODES = ("n1", "n2", "n3")
INVARIANTS = frozenset({"S1", "S2", "S3", "S4", "S5"})
TIMINGS = {
    "default": Timing(),
    # A tighter configuration, near the edge of what dbvip.config accepts.
    "tight": Timing(
        ttl_s=6,
        probe_interval_s=0.1,
        request_timeout_s=0.5,
        margin_s=1.0,
        renew_interval_s=1.0,
        role_grace_s=0.5,
    ),
}
# The scheduler never sleeps less than this between two ticks of one node, so
# a runner that asks to be woken "now" again and again cannot stall fake time.
MIN_SLEEP_S = 0.01
STALL_TICKS = 2000  # that many ticks without the clock moving: the scheduler is stuck
MAX_LATENESS_S = 1.0  # the kernel's expiry lateness (docs/DESIGN.md, "Facts measured")
NicFault = Literal["ok", "missing", "refuse"]
RoleName = Literal["primary", "replica", "down", "unknown"]
StoreFault = Literal["ok", "refuse", "hang", "lose_reply", "late"]


class InvariantViolationError(AssertionError):
    """A safety invariant broke; ``invariant`` names which one."""

    def __init__(self, invariant: str, detail: str, trace: Iterable[str] = ()) -> None:
        lines = "\n  ".join(trace)
        super().__init__(f"{invariant}: {detail}\nlast events:\n  {lines}")
        self.invariant = invariant


class LivenessFailureError(AssertionError):
    """Safety held, but the healed cluster did not put the VIP on its primary."""


# --------------------------------------------------------------------------
# Steps: plain data, so a shrunk counterexample reads (and replays) as code.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class SetRole:
    """The database's role as its probe will report it (for ``for_s`` seconds,
    then back to what it was, unless changed meanwhile; None: for good)."""

    node: str
    role: RoleName
    for_s: float | None = None


@dataclass(frozen=True)
class ProbeHang:
    node: str
    hang: bool
    for_s: float | None = None


@dataclass(frozen=True)
class EtcdFault:
    node: str
    fault: StoreFault
    for_s: float | None = None


@dataclass(frozen=True)
class NetlinkFault:
    node: str
    fault: NicFault
    for_s: float | None = None


@dataclass(frozen=True)
class NetlinkDelay:
    """Every netlink add/remove of this node takes this long (within budget)."""

    node: str
    seconds: float


@dataclass(frozen=True)
class Crash:
    node: str


@dataclass(frozen=True)
class Restart:
    """Start a fresh Runner (fresh NodeState) for a crashed sidecar."""

    node: str


@dataclass(frozen=True)
class Freeze:
    """Stop ticking the sidecar for a while, then resume the same Runner."""

    node: str
    seconds: float


@dataclass(frozen=True)
class Sigterm:
    node: str


@dataclass(frozen=True)
class DeliverLate:
    """Requests that timed out under the ``late`` fault take effect now."""


@dataclass(frozen=True)
class WriteGarbage:
    """An operator writes a value that is no writer value (no lease)."""


@dataclass(frozen=True)
class DeleteKey:
    """An operator deletes the writer key by hand."""


@dataclass(frozen=True)
class SnapshotEtcd:
    """``etcdctl snapshot save``: kept for a later ``RestoreEtcd``."""


@dataclass(frozen=True)
class RestoreEtcd:
    """etcd restored from the last snapshot: its keys, revision and leases
    (each with its whole TTL again)."""


@dataclass(frozen=True)
class WipeEtcd:
    """etcd's data deleted: empty, revisions from 1, lease ids granted again."""


Step: TypeAlias = (
    Advance
    | SetRole
    | ProbeHang
    | EtcdFault
    | NetlinkFault
    | NetlinkDelay
    | Crash
    | Restart
    | Freeze
    | Sigterm
    | DeliverLate
    | WriteGarbage
    | DeleteKey
    | SnapshotEtcd
    | RestoreEtcd
    | WipeEtcd
)


@dataclass(frozen=True)
class Setup:
    lateness_s: float = 1.0
    timing: str = "default"
    order: tuple[str, ...] = NODES  # tick order of nodes due at the same instant
    watch: bool = True  # nodes are woken when the writer key changes
    # Sidecar -> its configured node name, where not its own: a twin.
    names: dict[str, str] = field(default_factory=dict)
