"""The lab's reading client: reads through HAProxy (the reader VIPs behind it)
on a fixed schedule and logs every attempt.

Two modes, as applications read:

* ``per-read``: a new connection for every read, one attempt at a time (as a
  script or a per-request connection does); after a failure it tries again
  after a short pause (``RETRY_PAUSE_S``: a load balancer with no server up
  answers at once, and a loop with no pause would burn a core).
* ``long-lived``: one connection kept open and used for every read; on an
  error it is closed and the next read connects again.

Each read runs ``SELECT current_setting('cluster_name'), host(inet_server_addr()),
pg_is_in_recovery()``: the node that answered (the lab sets ``cluster_name``
to the node's name), the reader VIP the connection reached, and whether that
node is a replica. One JSON line per attempt; ``started``/``ended`` are
``time.monotonic()`` readings, comparable with the lab's own instants.

Command: ``python -m integration.lab.reader --host H --port P --user U --dbname D
--password-file F [--mode per-read|long-lived] (--count N | --duration-s S)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

from integration.lab.writer import (
    CONNECT_TIMEOUT_S,
    TCP_USER_TIMEOUT_MS,
    StopSignal,
    Target,
    read_password,
    short_error,
)

MODES = ("per-read", "long-lived")
SELECT = "SELECT current_setting('cluster_name'), host(inet_server_addr()), pg_is_in_recovery()"
RETRY_PAUSE_S = 0.01
_REPO_ROOT = Path(__file__).resolve().parents[2]
_STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class Read:
    """One read: ``phase`` is where it ended (``connect`` or ``query``; ``query`` when ok).

    ``node``: who answered; ``server``: the address it was reached on (a
    reader VIP); ``recovery``: its ``pg_is_in_recovery()`` (True: a replica).
    """

    started_s: float
    ended_s: float
    ok: bool
    node: str | None
    server: str | None
    recovery: bool | None
    error: str
    phase: str

    def to_json(self, seq: int) -> str:
        return json.dumps({"seq": seq, **asdict(self)})

    @classmethod
    def from_json(cls, line: str) -> Read:
        d = json.loads(line)
        d.pop("seq", None)
        return cls(**d)


def _answer(conn: psycopg.Connection[Any], started_s: float) -> Read:
    row = conn.execute(SELECT).fetchone()
    if row is None:
        raise psycopg.DataError("the SELECT returned no row")
    return Read(started_s, time.monotonic(), True, str(row[0]), row[1], bool(row[2]), "", "query")


class Reader:
    """Makes reads in one of the ``MODES``; ``read()`` never raises."""

    def __init__(self, target: Target, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self._password = target.password
        # A peer that vanished without FIN or RST must not hang a read forever.
        self._dsn = target.conninfo(f"dbvip-lab-reader-{mode}", connect_timeout=CONNECT_TIMEOUT_S,
                                    tcp_user_timeout=TCP_USER_TIMEOUT_MS, keepalives=1,
                                    keepalives_idle=1, keepalives_interval=1,
                                    keepalives_count=2)  # fmt: skip
        self._conn: psycopg.Connection[Any] | None = None

    def read(self) -> Read:
        started_s = time.monotonic()
        phase = "connect"
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._dsn, autocommit=True)
            phase = "query"
            return _answer(self._conn, started_s)
        except (psycopg.Error, OSError) as e:
            self.close()  # the next read connects again
            return Read(started_s, time.monotonic(), False, None, None, None,
                        short_error(str(e), self._password), phase)  # fmt: skip
        finally:
            if self.mode == "per-read":
                self.close()

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()


def run(
    target: Target,
    mode: str,
    interval_s: float,
    count: int | None,
    duration_s: float | None,
    out: IO[str],
) -> None:
    """Read every ``interval_s`` (one read at a time) until ``count``,
    ``duration_s`` or a signal; after a failure, again after ``RETRY_PAUSE_S``."""
    stop = StopSignal()
    reader = Reader(target, mode)
    try:
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
            result = reader.read()
            out.write(result.to_json(seq) + "\n")
            out.flush()
            seq += 1
            # Paced after a success; after a failure, again after a short pause.
            next_s = (result.started_s + interval_s if result.ok
                      else time.monotonic() + RETRY_PAUSE_S)  # fmt: skip
    finally:
        reader.close()
        stop.close()


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.lab.reader",
        description="Read through the load balancer on a fixed schedule; one JSON line per read.",
    )
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--user", required=True)
    p.add_argument("--dbname", required=True)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("--mode", choices=MODES, default="per-read")
    p.add_argument("--interval-s", type=_positive, default=0.02)
    until = p.add_mutually_exclusive_group(required=True)
    until.add_argument("--count", type=int)
    until.add_argument("--duration-s", type=_positive)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        password = read_password(args.password_file)
    except OSError as e:
        print(f"cannot read the password file: {e.strerror}", file=sys.stderr)
        return 2
    target = Target(args.host, args.port, args.user, args.dbname, password)
    run(target, args.mode, args.interval_s, args.count, args.duration_s, sys.stdout)
    return 0


# --- the lab's side ------------------------------------------------------------------------


def read_reads(path: Path) -> list[Read]:
    """Every complete line of a reader's output; a line still being written is left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [Read.from_json(line) for line in complete.splitlines() if line.strip()]


def tally(reads: Sequence[Read]) -> str:
    """``120 reads, 118 ok, 2 failed; answered by n2 60, n3 58 (all replicas)``."""
    ok = [r for r in reads if r.ok]
    by_node = Counter(r.node for r in ok)
    nodes = ", ".join(f"{node} {n}" for node, n in sorted(by_node.items()))
    primaries = sum(1 for r in ok if r.recovery is False)
    kinds = "all replicas" if not primaries else f"{primaries} by a primary"
    return (f"{len(reads)} reads, {len(ok)} ok, {len(reads) - len(ok)} failed; "
            f"answered by {nodes or 'nobody'} ({kinds})")  # fmt: skip


def read_through(netns: str, target_args: Sequence[str], count: int, mode: str) -> list[Read]:
    """``count`` reads made by the command inside ``netns``, one after the other."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "integration.lab.reader",
         *target_args, "--count", str(count), "--mode", mode],
        capture_output=True, text=True, timeout=60 + count, check=False, cwd=_REPO_ROOT,
    )  # fmt: skip
    reads = [Read.from_json(line) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(reads) != count:
        raise RuntimeError(f"the reader exited with {done.returncode}: {done.stderr[-2000:]}")
    return reads


def longest_outage_s(reads: Sequence[Read], after_s: float = float("-inf")) -> float:
    """The longest run of failed reads begun after ``after_s``: from its first
    failure to the end of the next good read, in seconds (0: none)."""
    longest, began = 0.0, None
    for r in sorted(reads, key=lambda r: r.started_s):
        if r.started_s < after_s:
            continue
        if not r.ok and began is None:
            began = r.started_s
        elif r.ok and began is not None:
            longest, began = max(longest, r.ended_s - began), None
    return longest


class ClientReader:
    """The command as a subprocess inside ``netns``, its reads kept in ``out_path``
    (its errors in ``out_path`` + ``.stderr``)."""

    def __init__(self, netns: str, target_args: Sequence[str], out_path: Path, mode: str,
                 interval_s: float = 0.02, duration_s: float = 4 * 3600.0) -> None:  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.out_path = out_path
        self.stderr_path = out_path.with_name(out_path.name + ".stderr")
        self._argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "integration.lab.reader",
                      *target_args, "--mode", mode, "--interval-s", repr(interval_s),
                      "--duration-s", repr(duration_s)]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("this reader was already started")
        with self.out_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(self._argv, stdout=out, stderr=err, cwd=_REPO_ROOT)

    def stop(self) -> list[Read]:
        """SIGTERM this process only, reap it, and return every read it made."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("this reader was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(CONNECT_TIMEOUT_S + TCP_USER_TIMEOUT_MS / 1000 + _STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_WAIT_S)
        if proc.returncode not in (0, -signal.SIGTERM):
            tail = self.stderr_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the reader exited with {proc.returncode}: {tail}")
        return self.reads()

    def reads(self) -> list[Read]:
        return read_reads(self.out_path)


if __name__ == "__main__":
    sys.exit(main())
