"""Publishes this member's report under ``/members/<node>``, off the loop.

The safety loop hands over its latest snapshot and never waits: a slow or
dead etcd delays only this thread. A report is put when it changes, and
only then: every ``period_s`` its lease is kept alive, which is what keeps
the report alive (liveness rides on the lease, not on rewriting the same
value: an idle cluster costs etcd no write). A moved LSN or lag alone is
put with the next keepalive, at most once a period (the primary's
position is what replicas measure their lag against).
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
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="dbvip-members", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, snapshot: Snapshot) -> None:
        report = replace(report_of(snapshot, self._vip), failsafe=self._failsafe)
        with self._changed:
            # A replica's LSN moves on every look (every 10 ms while eager):
            # it rides along with the periodic report, only other changes are
            # sent at once.
            news = not _same(report, self._latest)
            self._latest = report
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
        touched_s = float("-inf")  # when the lease was last kept alive (or the report put)
        last_cause = ""
        while True:
            with self._changed:
                if _same(sent, self._latest) and not self._stopped:
                    self._changed.wait(max(0.0, touched_s + self._period_s - boot_s()))
                if self._stopped:
                    return
                report = self._latest
            if report is None:
                continue
            due = boot_s() - touched_s >= self._period_s
            result: Done | Alive | Unknown
            if not _same(sent, report) or (due and report != sent):
                started = boot_s()
                result = self._store.publish_member(report, self._timeout_s)
            elif due:
                started = boot_s()
                kept = self._store.keep_member(self._timeout_s)
                if isinstance(kept, Gone):
                    # The lease ended (etcd unreachable past its TTL, or revoked
                    # by hand): the report went with it; put it again at once.
                    sent = None
                    continue
                result = kept
            else:
                continue  # woken early with nothing new: wait out the period
            if isinstance(result, Unknown):
                if result.cause != last_cause:
                    log.warning("member report not published cause=%r", result.cause)
                last_cause = result.cause
                with self._changed:  # retry after a pause, not in a tight loop
                    self._changed.wait(min(self._period_s, 1.0))
                continue
            last_cause = ""
            touched_s = started
            sent = report


def _same(a: MemberReport | None, b: MemberReport | None) -> bool:
    """Equal but for the LSN and the lag (both move on every look)."""
    if a is None or b is None:
        return a is b
    return replace(a, lsn=None, lag_bytes=None) == replace(b, lsn=None, lag_bytes=None)
