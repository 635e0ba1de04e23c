"""The instant a promoted database's ``pg_is_in_recovery()`` turns false.

The lab's monitor polls every role about every 10 ms; the handoff goals are
tens of milliseconds, so the benchmark watches the one node it promotes more
closely: one connection over the node's Unix socket, a poll every 2 ms from
just before the promotion is signalled until the first ``false``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class Flip:
    """The first ``false`` answer arrived at ``at_s``; the last ``true`` one at
    ``previous_s``: the change happened in between (or while the last ``true``
    was on its way back)."""

    at_s: float
    previous_s: float
    polls: int


class PromotionWatch:
    def __init__(self, conninfo: str, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
        self._stop = threading.Event()
        self._flip: Future[Flip] = Future()
        self._thread = threading.Thread(target=self._run, name="promotion-watch", daemon=True)
        if not self._in_recovery():
            self._conn.close()
            raise RuntimeError("the database to watch is already a primary")
        self._thread.start()

    def _in_recovery(self) -> bool:
        row = self._conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def _run(self) -> None:
        previous_s = time.monotonic()
        polls = 0
        next_s = previous_s
        try:
            while not self._stop.is_set():
                in_recovery = self._in_recovery()
                at_s = time.monotonic()
                polls += 1
                if not in_recovery:
                    self._flip.set_result(Flip(at_s, previous_s, polls))
                    return
                previous_s = at_s
                next_s = max(next_s + self.period_s, at_s)
                self._stop.wait(next_s - at_s)
            self._flip.set_exception(RuntimeError("stopped before the promotion completed"))
        except Exception as exc:
            self._flip.set_exception(exc)

    def wait(self, timeout_s: float) -> Flip:
        return self._flip.result(timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()
