"""Publishes this member's report under ``/members/<node>``, off the loop.

The safety loop hands over its latest snapshot and never waits: a slow or
dead etcd delays only this thread. A report goes out when it changes and
at least every ``period_s`` (which also keeps its lease alive).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from dbvip.ports import LeaseStore, MemberReport, Unknown
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
    def __init__(self, store: LeaseStore, vip: str, period_s: float, timeout_s: float) -> None:
        self._store = store
        self._vip = vip
        self._period_s = period_s
        self._timeout_s = timeout_s
        self._latest: MemberReport | None = None
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="dbvip-members", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, snapshot: Snapshot) -> None:
        report = report_of(snapshot, self._vip)
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
        last_cause = ""
        while True:
            with self._changed:
                if _same(sent, self._latest) and not self._stopped:
                    self._changed.wait(self._period_s)
                if self._stopped:
                    return
                report = self._latest
            if report is None:
                continue
            result = self._store.publish_member(report, self._timeout_s)
            if isinstance(result, Unknown):
                if result.cause != last_cause:
                    log.warning("member report not published cause=%r", result.cause)
                last_cause = result.cause
                with self._changed:  # retry after a pause, not in a tight loop
                    self._changed.wait(min(self._period_s, 1.0))
                continue
            last_cause = ""
            sent = report


def _same(a: MemberReport | None, b: MemberReport | None) -> bool:
    """Equal but for the LSN and the lag (both move on every look)."""
    if a is None or b is None:
        return a is b
    return replace(a, lsn=None, lag_bytes=None) == replace(b, lsn=None, lag_bytes=None)
