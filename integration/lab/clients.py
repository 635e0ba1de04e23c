"""Clients that write the way applications do, for the writer command's ``--mode``.

The overlapping client (``integration.lab.writer``) starts a new bounded
attempt every 20 ms whether or not the last one finished: it measures when
writing through the VIP becomes *possible*. Applications do not behave like
that, and what they see during a hand-off is what matters:

* ``ordinary``: one attempt at a time (a new connection per write, as a
  script or a per-request connection does), psycopg's plain blocking
  ``connect`` with a libpq-style ``connect_timeout``; on any error it tries
  again at once, after a success it waits for the next write's turn. A SYN
  lost in a hand-off costs it the kernel's retransmission timeout (1 s).
* ``pooled``: a psycopg_pool ``ConnectionPool`` of two long-lived
  connections, no validation on checkout (the pool's default); a write that
  fails on a broken connection is tried again at once. Its connections to the
  old primary learn they are dead only when they are next used.

Each write is an INSERT returning the acknowledging node's ``cluster_name``,
logged as one ``Attempt`` line, as the overlapping client does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import IO, Any

import psycopg

from integration.lab.writer import (
    CONNECT_TIMEOUT_S,
    TCP_USER_TIMEOUT_MS,
    Attempt,
    StopSignal,
    Target,
    attempt_json,
    short_error,
)

MODES = ("overlapping", "ordinary", "pooled")
INSERT = (
    "INSERT INTO dbvip_lab_writes(writer) VALUES (%s) RETURNING current_setting('cluster_name')"
)
POOL_SIZE = 2


def _node(row: tuple[Any, ...] | None) -> str:
    if row is None:
        raise psycopg.DataError("the INSERT returned no row")
    return str(row[0])


def ordinary_write(dsn: str, tag: str, *, password: str) -> Attempt:
    """Connect (blocking, one attempt), INSERT, close."""
    started_s = time.monotonic()
    phase = "connect"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            phase = "query"
            node = _node(conn.execute(INSERT, (tag,)).fetchone())
        return Attempt(started_s, time.monotonic(), True, node, "", phase)
    except (psycopg.Error, OSError) as e:
        return Attempt(started_s, time.monotonic(), False, None, short_error(str(e), password),
                       phase)  # fmt: skip


def run_clients(
    mode: str,
    target: Target,
    writer: str,
    interval_s: float,
    count: int | None,
    duration_s: float | None,
    out: IO[str],
) -> None:
    """Write every ``interval_s`` (one write at a time) until ``count``,
    ``duration_s`` or a signal; after a failure, try again at once."""
    dsn = target.conninfo(f"dbvip-lab-{mode}", connect_timeout=CONNECT_TIMEOUT_S,
                          tcp_user_timeout=TCP_USER_TIMEOUT_MS)  # fmt: skip
    stop = StopSignal()
    pool: Any = None
    try:
        if mode == "pooled":
            from psycopg_pool import ConnectionPool  # noqa: PLC0415  (dev extra, this mode only)

            pool = ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE,
                                  kwargs={"autocommit": True}, open=True)  # fmt: skip
            write: Callable[[str], Attempt] = partial(_pooled_write, pool, password=target.password)
        else:
            write = partial(ordinary_write, dsn, password=target.password)
        t0_s = time.monotonic()
        seq = 0
        next_s = t0_s
        while not stop.requested:
            if (count is not None and seq >= count) or (
                duration_s is not None and time.monotonic() - t0_s >= duration_s
            ):
                break
            stop.sleep_until(next_s)
            if stop.requested:
                break
            attempt = write(f"{writer}:{seq}")
            out.write(json.dumps(attempt_json(attempt, seq)) + "\n")
            out.flush()
            seq += 1
            # Paced after a success; at once after a failure, as an application retries.
            next_s = attempt.started_s + interval_s if attempt.ok else time.monotonic()
    finally:
        if pool is not None:
            pool.close(timeout=1.0)
        stop.close()


def _pooled_write(pool: Any, tag: str, *, password: str) -> Attempt:
    started_s = time.monotonic()
    phase = "connect"
    try:
        with pool.connection(timeout=CONNECT_TIMEOUT_S) as conn:
            phase = "query"
            node = _node(conn.execute(INSERT, (tag,)).fetchone())
        return Attempt(started_s, time.monotonic(), True, node, "", phase)
    except Exception as e:  # the pool's own errors (PoolTimeout) are not psycopg.Error
        return Attempt(started_s, time.monotonic(), False, None, short_error(str(e), password),
                       phase)  # fmt: skip
