"""The loop's eyes: what the ports say this tick, as an ``Observation``.

Every look is bounded: the role probe by ``probe_timeout_s``, each etcd read
by the deadline the core's state allows (so the VIP can still come down in
time). A settled replica reads the writer key only now and then; the watch
marks it dirty when it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbvip.identity import Identity
from dbvip.model import (
    FailsafeRecord,
    KeyHeld,
    KeyUnknown,
    NodeState,
    Observation,
    PeerView,
    Role,
    RoleReading,
    Timing,
    VipPresence,
    WriterView,
)
from dbvip.ports import Clock, Unknown, VipReading
from dbvip.reader_model import PoolReading
from dbvip.schedule import request_deadline_s
from dbvip.shell import MIN_REQUEST_S, Ports, ReaderPorts, Telemetry, guarded

log = logging.getLogger("dbvip")


class Looker:
    def __init__(self, node: str, timing: Timing, ports: Ports, telemetry: Telemetry) -> None:
        self.node = node
        self.timing = timing
        self.ports = ports
        self.telemetry = telemetry
        self.key_dirty = True  # read the writer key at least once at start
        # The watch saw a maintenance flag, the failsafe record or this node's
        # own report change: read the members at once.
        self.members_dirty = False
        self._key_read_s = float("-inf")
        self._last_view: WriterView = KeyUnknown("not read yet")
        self._peers: tuple[PeerView, ...] = ()
        self._same_name: tuple[Identity, ...] = ()
        self._peers_read_s = float("-inf")
        self._maintenance: bool | None = None  # not read yet
        self.failsafe_record: FailsafeRecord | None = None  # as last read
        self.members_read_s = float("-inf")  # when the members read last got an answer
        # The reader pool as the last members read found it, and when.
        self.pool_seen: tuple[float, PoolReading] | None = None

    def observe(self, state: NodeState, stopping: bool = False) -> Observation:
        clock = self.ports.clock
        vip = guarded(self.ports.vip.observe, lambda c: VipReading(VipPresence.UNKNOWN, c))
        started = clock.monotonic_s()
        role = guarded(
            lambda: self.ports.probe.probe(self.timing.probe_timeout_s),
            lambda c: RoleReading(Role.UNKNOWN, cause=c),
        )
        now = clock.monotonic_s()
        self.telemetry.tell(lambda o: o.probe_done(role.role, now - started))
        every_s = self._backstop_s(state, role.role, vip.presence)
        # With failsafe on, the members are read every renew interval, never
        # an extra read on a wake-up in the tick that must read the key.
        woken = self.members_dirty and self.timing.failsafe_window_s <= 0
        self.members_dirty = False

        def members_due(at_s: float) -> bool:
            return not stopping and (woken or at_s - self._peers_read_s >= every_s)

        read_members = True
        if self._needs_key(state, role.role, vip.presence, stopping, now):
            self.key_dirty = False
            view: WriterView | None = None
            # Not with failsafe on: its holder must learn of a failed key read
            # first thing in the tick (it asks its peers then), not a request
            # timeout later, behind a members read (the failsafe simulation
            # finds a VIP outliving a peer's promise that way).
            combine = self.timing.failsafe_window_s <= 0
            if combine and members_due(now):
                # Both due: the members read finds the key too, at the same
                # revision, in one request instead of two.
                read_members = False
                view = self._read_peers(state, now, vip.presence)
                now = clock.monotonic_s()
            if view is None:
                timeout = request_deadline_s(state, now, vip.presence, self.timing) - now
                if timeout < MIN_REQUEST_S:
                    view = KeyUnknown("no time left before the lease deadline")
                else:
                    view = self.telemetry.etcd(
                        "read_writer",
                        lambda: guarded(lambda: self.ports.store.read_writer(timeout), KeyUnknown),
                    )
            if isinstance(view, KeyUnknown):
                self.key_dirty = True
            else:
                self._key_read_s = now
            self._last_view = view
            now = clock.monotonic_s()
        if read_members and members_due(now):  # as of now, after the key read
            view = self._read_peers(state, now, vip.presence)
            if view is not None and not self.key_dirty and self.timing.failsafe_window_s <= 0:
                # A fresh look at the key for free: the periodic read is not due
                # for another renew interval (a change the watch reported since
                # the read began stays dirty and is read at once next tick).
                self._last_view, self._key_read_s = view, now
            now = clock.monotonic_s()
        reset = guarded(self.ports.store.history_reset, lambda c: None)
        return Observation(
            etcd_reset=reset,
            now_s=now,
            role=role,
            writer=self._last_view,
            vip=vip.presence,
            stopping=stopping,
            vip_cause=vip.cause,
            peers=self._peers if role.role is Role.PRIMARY else (),
            maintenance=self._maintenance,
            same_name=self._same_name,
            failsafe_record=self.failsafe_record,
        )

    def _read_peers(self, state: NodeState, now: float, vip: VipPresence) -> WriterView | None:
        """Other members' reports (is another primary newer?) and this node's
        maintenance flag, every renew interval: both are slow evidence anyway
        (a report is published after its node's own probe; an operator's
        flag is confirmed by this node's report, see ``dbvip maintenance``).
        The same read finds the writer key (returned, None if not read) and
        the reader pool (kept for the reader looker: ``pool_seen``)."""
        timeout = request_deadline_s(state, now, vip, self.timing) - now
        if timeout < MIN_REQUEST_S:
            return None
        reading = self.telemetry.etcd(
            "read_members",
            lambda: guarded(lambda: self.ports.store.read_members(timeout), Unknown),
        )
        if isinstance(reading, Unknown):
            # Keep the last known reports: no news is not evidence either way.
            # Until the first answer (the maintenance flag unknown), ask again
            # next tick rather than a renew interval later.
            log.debug("members not read cause=%r", reading.cause)
            if self._maintenance is not None:
                self._peers_read_s = now
            return None
        self._peers_read_s = now
        self._peers, self._maintenance = reading.peers, reading.maintenance
        self._same_name = reading.same_name
        self.failsafe_record = reading.failsafe_record
        self.members_read_s = now
        if reading.pool is not None:
            self.pool_seen = (now, reading.pool)
        return reading.writer

    @property
    def peers_seen(self) -> tuple[PeerView, ...]:
        """Every other member reporting when etcd was last read."""
        return self._peers

    def _needs_key(
        self, state: NodeState, role: Role, vip: VipPresence, stopping: bool, now: float
    ) -> bool:
        """A settled replica only re-reads the key now and then; anything that
        may act on the key reads it every tick."""
        if self.key_dirty or stopping:
            return True
        if role is Role.UNKNOWN and now - self._key_read_s < self.timing.probe_interval_s / 2:
            # A holder looking again and again at a database that stopped
            # answering: the key was just read, the watch reports changes.
            return False
        settled = state.lease is not None and role is Role.PRIMARY and vip is VipPresence.PRESENT
        # Not with failsafe on: its holder asks its peers on a failed read of
        # the key, and must learn etcd is gone on the tick it goes (found in
        # the lab: with reads every renew interval it asked too late).
        if settled and self.timing.failsafe_window_s <= 0:
            # A settled holder: its keepalives prove the lease alive, the
            # claim keeps the key from anyone else while it lives, and the
            # watch marks the key dirty when it changes (or reconnects). A
            # read every renew interval is the safety net, not every tick.
            return now - self._key_read_s >= self.timing.renew_interval_s
        if role is not Role.REPLICA and role is not Role.DOWN:
            return True
        if state.lease is not None or vip is not VipPresence.ABSENT:
            return True
        mine = isinstance(self._last_view, KeyHeld) and self._last_view.holder == self.node
        return mine or now - self._key_read_s >= self._backstop_s(state, role, vip)

    def _backstop_s(self, state: NodeState, role: Role, vip: VipPresence) -> float:
        """How often the cluster's keys are read when nothing woke the loop.

        Every renew interval, but for a replica that has nothing and sees the
        key held by another node, when no reader VIPs are configured: every
        ``ttl_s``. Such a replica acts on nothing until the key is free, and
        the watch (resumed by revision: it misses nothing) wakes it when the
        key changes; this read is only the backstop for a watch stuck on a
        frozen member (left after 60 s idle), so a hand-off may come up to a
        TTL later only then. Safety does not rest on it: taking the key is a
        transaction that fails while another node's lease lives. On the way
        to acting (promoted, or the key free or its own) the node reads
        every renew interval again, members and maintenance flag first. Not
        with reader VIPs: the pool's periodic read brings the primary's
        moving LSN that a replica's lag is measured against. Not with
        failsafe on: a replica's promises to the holder rest on its members
        reads (the failsafe record, who is listed) being recent."""
        quiet = (
            self.ports.readers is None
            and self.timing.failsafe_window_s <= 0
            and role in (Role.REPLICA, Role.DOWN)
            and state.lease is None
            and vip is VipPresence.ABSENT
            and isinstance(self._last_view, KeyHeld)
            and self._last_view.holder != self.node
        )
        return float(self.timing.ttl_s) if quiet else self.timing.renew_interval_s


class ReaderLooker:
    """What the reader policy sees: each reader VIP on this node, and the pool
    as etcd shows it (read when the watch says it changed, after this node's
    own moves, and every renew interval)."""

    def __init__(self, timing: Timing, ports: ReaderPorts, clock: Clock, telemetry: Telemetry):
        self.timing = timing
        self.ports = ports
        self.clock = clock
        self.telemetry = telemetry
        self.dirty = True
        self._read_s = float("-inf")
        self._reading: PoolReading | None = None
        self._cause = "not read yet"
        # The pool as another read of the same keys found it, and when (the
        # runner hands over the writer looker's members read).
        self.shared: Callable[[], tuple[float, PoolReading] | None] = lambda: None

    def presence(self) -> dict[str, VipPresence]:
        look = self.ports.look
        if look is not None:
            seen = guarded(
                look, lambda c: {v: VipReading(VipPresence.UNKNOWN, c) for v in self.ports.drivers}
            )
            return {
                v: seen[v].presence if v in seen else VipPresence.UNKNOWN
                for v in self.ports.drivers
            }
        return {
            vip: guarded(driver.observe, lambda c: VipReading(VipPresence.UNKNOWN, c)).presence
            for vip, driver in self.ports.drivers.items()
        }

    def pool(self, limit_s: float, stopping: bool) -> tuple[PoolReading | None, str]:
        now = self.clock.monotonic_s()
        if not (self.dirty or stopping or now - self._read_s >= self.timing.renew_interval_s):
            return self._reading, self._cause
        seen = self.shared()
        if seen is not None and not (self.dirty or stopping):
            # The periodic look is due and the writer's members read, this
            # tick or lately, read the same keys: no second request.
            read_s, shared = seen
            if read_s > self._read_s and now - read_s < self.timing.renew_interval_s:
                self._read_s, self._reading, self._cause = read_s, shared, ""
                return self._reading, self._cause
        timeout = limit_s - now
        if timeout < MIN_REQUEST_S:
            return None, "no time left before the lease deadline"
        self.dirty = False
        reading = self.telemetry.etcd(
            "read_pool", lambda: guarded(lambda: self.ports.store.read_pool(timeout), Unknown)
        )
        self._read_s = now
        if isinstance(reading, Unknown):
            self.dirty = True
            self._reading, self._cause = None, reading.cause
        else:
            self._reading, self._cause = reading, ""
        return self._reading, self._cause
