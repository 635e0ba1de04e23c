"""Publishes this member's report under ``/members/<node>``, off the loop.

The safety loop hands over its latest snapshot and never waits: a slow or
dead etcd delays only this thread. A report is put when it changes, and
only then: liveness rides on the lease, not on rewriting the same value
(an idle cluster costs etcd no write). A moved LSN or lag alone is put
with the next keepalive, at most once a period (the primary's position is
what replicas measure their lag against).

One lease per node for its report and its reader keys: while the node
holds a reader lease (kept alive by its loop every renew interval), the
report is put under it and needs no keepalive of its own; without one, it
is put under a member lease of its own that this thread keeps alive every
``period_s``. Moving between the two is a put (something changed). The
writer key keeps its own lease: releasing the VIP revokes that lease, and
the core's deadline is computed from its keepalives alone.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from dbvip.boottime import boot_s
from dbvip.ports import Alive, Done, Gone, LeaseStore, MemberReport, Unknown
from dbvip.reporting import Snapshot

log = logging.getLogger("dbvip.members")


def report_of(snapshot: Snapshot, vip: str) -> MemberReport:
    return MemberReport(
        role=snapshot.role.value,
        timeline=snapshot.timeline,
        lsn=snapshot.lsn,
        vips=((vip,) if snapshot.vip_present else ()) + snapshot.reader_vips,
        reason=snapshot.reason,
        pool=snapshot.pool,
        lag_bytes=snapshot.lag_bytes,
    )


class MemberPublisher:
    def __init__(
        self, store: LeaseStore, vip: str, period_s: float, timeout_s: float, failsafe: str = ""
    ) -> None:
        self._store = store
        self._vip = vip
        self._failsafe = failsafe  # the failsafe endpoint peers ask this node at
        self._period_s = period_s
        self._timeout_s = timeout_s
        self._latest: MemberReport | None = None
        self._lease: int | None = None  # the node's reader lease, as last offered
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="dbvip-members", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, snapshot: Snapshot) -> None:
        report = replace(report_of(snapshot, self._vip), failsafe=self._failsafe)
        with self._changed:
            # A replica's LSN moves on every look (every 10 ms while eager):
            # it rides along with the periodic keepalive, only other changes
            # (a reader lease granted or gone among them) are sent at once.
            news = not _same(report, self._latest) or snapshot.reader_lease_id != self._lease
            self._latest, self._lease = report, snapshot.reader_lease_id
            if news:
                self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        if self._thread.ident is not None:  # started (a sidecar may close unstarted)
            self._thread.join(timeout=self._timeout_s + 1)

    def _loop(self) -> None:
        sent: MemberReport | None = None
        sent_lease: int | None = None  # the reader lease it was put under (None: its own)
        touched_s = float("-inf")  # when its own lease was last kept alive (or the report put)
        last_cause = ""
        while True:
            with self._changed:
                current = _same(sent, self._latest) and sent_lease == self._lease
                if current and not self._stopped:
                    self._changed.wait(max(0.0, touched_s + self._period_s - boot_s()))
                if self._stopped:
                    return
                report, lease = self._latest, self._lease
            if report is None:
                continue
            # Under the reader lease, the loop's keepalives keep the report.
            due = lease is None and boot_s() - touched_s >= self._period_s
            moved = report != sent and (due or lease is not None)
            result: Done | Alive | Unknown
            started = boot_s()
            if not _same(sent, report) or lease != sent_lease or moved:
                result = self._store.publish_member(report, self._timeout_s, lease)
            elif due:
                kept = self._store.keep_member(self._timeout_s)
                if isinstance(kept, Gone):
                    # The lease ended (etcd unreachable past its TTL, or revoked
                    # by hand): the report went with it; put it again at once.
                    sent = None
                    continue
                result = kept
            else:
                # Woken early with nothing new: wait out the period. Under the
                # reader lease, nothing to keep alive: a period from now, look
                # whether the LSN moved.
                if lease is not None:
                    touched_s = started
                continue
            if isinstance(result, Unknown):
                if result.cause != last_cause:
                    log.warning("member report not published cause=%r", result.cause)
                last_cause = result.cause
                with self._changed:  # retry after a pause, not in a tight loop
                    self._changed.wait(min(self._period_s, 1.0))
                continue
            last_cause = ""
            touched_s = started
            sent, sent_lease = report, lease


def _same(a: MemberReport | None, b: MemberReport | None) -> bool:
    """Equal but for the LSN and the lag (both move on every look)."""
    if a is None or b is None:
        return a is b
    return replace(a, lsn=None, lag_bytes=None) == replace(b, lsn=None, lag_bytes=None)
