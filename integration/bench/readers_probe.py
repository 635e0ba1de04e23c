"""The ``readers`` part's two helpers on the databases: the lag poller and the
WAL writer. Each is a thread of the benchmark's own process, over the nodes'
Unix sockets (so a node cut off at its switch port is still read).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg

from integration.bench.readers_measure import LagSample, parse_lsn

POLL_S = 0.05
# The primary's current position, or a replica's replayed one, and which it is.
POSITION = (
    "SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() "
    "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text"
)
WAL_CHUNK_BYTES = 1 << 20
WAL_PAUSE_S = 0.1  # about 10 MiB of WAL a second while the lag scenario writes
# A WAL record and nothing else: no table grows, repetition after repetition.
EMIT = f"SELECT pg_logical_emit_message(false, 'dbvip-bench', repeat('x', {WAL_CHUNK_BYTES}))"


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=2)


class LagPoller:
    """Every ``POLL_S``, each node's replay position behind the primary's current
    one; ``samples`` keeps them all (lag None: unknown or not a replica)."""

    def __init__(self, conninfos: Mapping[str, str]) -> None:
        self._conninfos = dict(conninfos)
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self.samples: list[LagSample] = []
        self.latest: dict[str, int | None] = {}
        self.gaps_s = 0.0  # the longest time between two rounds (a stalled poller)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _position(self, node: str) -> tuple[bool, int] | None:
        try:
            conn = self._conns.get(node)
            if conn is None or conn.closed:
                conn = self._conns[node] = _connect(self._conninfos[node])
            row = conn.execute(POSITION).fetchone()
            if row is None or row[1] is None:
                return None
            return bool(row[0]), parse_lsn(str(row[1]))
        except (psycopg.Error, OSError):
            self._drop(node)
            return None

    def _drop(self, node: str) -> None:
        conn = self._conns.pop(node, None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()

    def _run(self) -> None:
        last_s = time.monotonic()
        while not self._stop.is_set():
            seen = {node: self._position(node) for node in self._conninfos}
            now = time.monotonic()
            self.gaps_s = max(self.gaps_s, now - last_s)
            last_s = now
            primaries = [p[1] for p in seen.values() if p is not None and not p[0]]
            head = max(primaries) if primaries else None
            for node, position in seen.items():
                lag = None
                if head is not None and position is not None and position[0]:
                    lag = max(0, head - position[1])
                self.samples.append(LagSample(now, node, lag))
                self.latest[node] = lag
            self._stop.wait(POLL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for node in list(self._conns):
            self._drop(node)


class WalWriter:
    """Writes ``WAL_CHUNK_BYTES`` of WAL on the primary every ``WAL_PAUSE_S``
    until stopped: the writes that go on while a replica's replay is paused."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._stop = threading.Event()
        self.written_bytes = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = _connect(self._conninfo)
                conn.execute(EMIT)
                self.written_bytes += WAL_CHUNK_BYTES
            except (psycopg.Error, OSError):
                self.errors += 1
                conn = None
            self._stop.wait(WAL_PAUSE_S)
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
