"""The ports the shell talks to. Adapters implement them; tests fake them.

Every call that can hang takes a ``timeout_s`` and must return by then.
Every result that can fail has an ``Unknown`` variant with a cause: an
adapter never turns "I could not find out" into "no".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dbvip.identity import Identity
from dbvip.model import FailsafeRecord, PeerView, RoleReading, VipPresence, WriterView
from dbvip.reader_model import PoolReading

# --------------------------------------------------------------------------
# Results of adapters.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Unknown:
    """The call failed or timed out; its effect is unknown."""

    cause: str


@dataclass(frozen=True)
class Granted:
    """A new lease was granted and the writer key created under it."""

    lease_id: int
    ttl_s: int
    revision: int  # store revision of the put


@dataclass(frozen=True)
class Refused:
    """The writer key already exists; the lease granted for it was revoked."""

    holder: str | None  # None when the value is not a valid writer value
    revision: int


@dataclass(frozen=True)
class Alive:
    """A keepalive reached etcd and the lease lives on for ``ttl_s``."""

    ttl_s: int


@dataclass(frozen=True)
class Gone:
    """etcd answered that the lease does not exist (expired or revoked)."""


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class VipReading:
    presence: VipPresence
    cause: str | None = None  # set when presence is UNKNOWN


@dataclass(frozen=True)
class VipChanged:
    """The VIP is now as asked; ``was_present`` is how it was before."""

    was_present: bool


@dataclass(frozen=True)
class MembersReading:
    peers: tuple[PeerView, ...]  # every other live member's report
    maintenance: bool  # this node is asked to stay away from the VIP
    # The identity in a live report under this node's name, if it has one
    # this version reads (this process's own, an earlier one's, or a twin's).
    same_name: tuple[Identity, ...] = ()
    # The failsafe record (``dbvip.failsafe``), if there is one.
    failsafe_record: FailsafeRecord | None = None
    # The writer key and the reader pool as the same read found them (one
    # request serves the periodic looks at all three); None when not read.
    writer: WriterView | None = None
    pool: PoolReading | None = None


@dataclass(frozen=True)
class MemberReport:
    """What one member publishes under ``/members/<node>``."""

    role: str
    timeline: int | None
    lsn: str | None
    vips: tuple[str, ...]  # every VIP it has: the writer VIP, reader VIPs
    reason: str
    # Its own judgement of its place in the reader pool ("in_pool", or why
    # not: "lagging", "maintenance", ...) and its lag behind the primary;
    # "" and None when no reader VIPs are configured.
    pool: str = ""
    lag_bytes: int | None = None
    failsafe: str = ""  # host:port of its failsafe peer endpoint ("" if off)


@dataclass(frozen=True)
class Taken:
    """The reader key and its claim were put under the given lease."""

    revision: int


# --------------------------------------------------------------------------
# Ports.
# --------------------------------------------------------------------------


class Clock(Protocol):
    def monotonic_s(self) -> float:
        """Seconds on a clock that never jumps back and keeps counting while the
        machine is suspended (CLOCK_BOOTTIME); every deadline uses it."""
        ...

    def wall_iso(self) -> str:
        """Wall-clock time for humans (``since``/``updated`` in etcd values)."""
        ...


class RoleProbe(Protocol):
    def probe(self, timeout_s: float) -> RoleReading:
        """Ask the local database its role; UNKNOWN with a cause on failure."""
        ...

    def close(self) -> None: ...


class LeaseStore(Protocol):
    """The writer key and its lease in etcd, for one node of one cluster."""

    @property
    def identity(self) -> Identity:
        """Written into every value this store puts (writer key, claim,
        member report)."""
        ...

    def read_writer(self, timeout_s: float) -> WriterView: ...

    def history_reset(self) -> str | None:
        """Why etcd's history went back since the last call (a reply with a
        revision below one already seen, or another cluster id), or None."""
        ...

    def acquire(self, ttl_s: int, timeout_s: float) -> Granted | Refused | Unknown:
        """Grant a lease, then create the writer key under it only if absent.

        On refusal or an unknown result the fresh lease is revoked (best
        effort), so a lost race leaves nothing behind.
        """
        ...

    def adopt(
        self, lease_id: int, mod_revision: int, ttl_s: int, timeout_s: float
    ) -> Granted | Refused | Unknown:
        """Move the writer key, if still attached to ``lease_id`` and unchanged
        since ``mod_revision``, onto a freshly granted lease (after a restart,
        without taking the VIP down); then revoke the old lease."""
        ...

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown: ...

    def release(self, lease_id: int, timeout_s: float) -> Done | Unknown:
        """Delete the writer key if it is still attached to ``lease_id``, then
        revoke the lease."""
        ...

    def read_members(self, timeout_s: float) -> MembersReading | Unknown:
        """Every other live member's role and timeline, as published, and
        whether this node is in maintenance; one request."""
        ...

    def publish_member(
        self, report: MemberReport, timeout_s: float, lease_id: int | None = None
    ) -> Done | Unknown:
        """Write ``/members/<node>`` under ``lease_id`` (the node's reader
        lease, which its loop keeps alive), or else under the member's own
        lease; never over a live report of another sidecar using the same
        node name."""
        ...

    def keep_member(self, timeout_s: float) -> Alive | Gone | Unknown:
        """Keep the member lease alive, with it the report as last published
        (no write); Gone when there is no live member lease to keep."""
        ...

    def close(self) -> None: ...


class ReaderStore(Protocol):
    """The reader keys of one node of one cluster, and its reader lease.

    Keys: ``/<prefix>/<cluster>/readers/<address>`` and, under the same
    lease, ``/<prefix>/<cluster>/reader-claims/<address>``.
    """

    def read_pool(self, timeout_s: float) -> PoolReading | Unknown:
        """The reader keys (with claims), the other live members' reports and
        the writer key's holder, from one read of the cluster's keys."""
        ...

    def grant_reader_lease(self, ttl_s: int, timeout_s: float) -> Granted | Unknown:
        """A fresh lease for reader keys (``revision``: of the grant's reply)."""
        ...

    def keepalive(self, lease_id: int, timeout_s: float) -> Alive | Gone | Unknown: ...

    def take_reader(
        self, vip: str, lease_id: int, mod_revision: int, timeout_s: float
    ) -> Taken | Refused | Unknown:
        """Put the reader key and its claim under ``lease_id`` in one
        transaction, only if the key's mod revision is ``mod_revision`` (0:
        absent) and the claim is absent; else Refused naming the holder."""
        ...

    def give_back_reader(self, vip: str, lease_id: int, timeout_s: float) -> Done | Unknown:
        """Delete the reader key and its claim, each only if under ``lease_id``."""
        ...

    def revoke(self, lease_id: int, timeout_s: float) -> Done | Unknown: ...


class KeyWatcher(Protocol):
    """Wakes the loop when the writer key changes or the watch reconnects.

    A wake-up is only a hint: the loop always re-reads the key itself.
    """

    def start(self, wake: Callable[[], None]) -> None: ...

    def stop(self) -> None: ...


class VipDriver(Protocol):
    """The VIP on one interface; addresses compared as parsed values."""

    def observe(self) -> VipReading: ...

    def add(self, lifetime_s: int) -> VipChanged | Unknown:
        """Add the VIP, or refresh its valid and preferred lifetime."""
        ...

    def remove(self, before_delete: Callable[[], None] | None = None) -> VipChanged | Unknown:
        """Remove the VIP; ``before_delete`` runs once the address is known to be
        the VIP and deletable, just before it is deleted (never when it is not)."""
        ...

    def close(self) -> None: ...


class Announcer(Protocol):
    def announce(self) -> Done | Unknown:
        """Tell neighbours this node now answers for the VIP."""
        ...

    def close(self) -> None: ...
