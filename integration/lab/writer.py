"""The lab's client: writes through the writer VIP on a fixed schedule and logs every attempt.

Each attempt is a new connection (a client that keeps one would measure TCP
retransmission, not the VIP) running one INSERT that returns the acknowledging
node's ``cluster_name``. Every attempt ends within its timeout even if the
target never answers (no ARP reply, SYN dropped, server frozen): psycopg will
not wait less than 2 s to connect and has no client-side query timeout, so the
writer drives libpq's non-blocking API itself with ``poll`` against a monotonic
deadline.

Command: ``python -m integration.lab.writer --host H --port P --user U --dbname D
--password-file F (--count N | --duration-s S)`` prints one JSON line per
attempt. ``started``/``ended`` are ``time.monotonic()`` readings: CLOCK_MONOTONIC
is system-wide, so the lab compares them with its own instants.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

INSERT = (
    b"INSERT INTO dbvip_lab_writes(writer) VALUES ($1) RETURNING current_setting('cluster_name')"
)
CONNECT = "connect"
QUERY = "query"
_ERROR_MAX_CHARS = 200
# `python -m integration.lab.writer` must resolve whatever the lab's cwd is.
_REPO_ROOT = Path(__file__).resolve().parents[2]
_STOP_WAIT_S = 10.0
# The ordinary and pooled clients (integration.lab.clients): what an
# application typically sets (libpq's default is to wait forever), and a bound
# on what a connection lost without FIN or RST can cost (the lab must end).
CONNECT_TIMEOUT_S = 10
TCP_USER_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Attempt:
    """One write: ``phase`` is where it ended (``connect`` or ``query``; ``query`` when ok)."""

    started_s: float
    ended_s: float
    ok: bool
    node: str | None
    error: str
    phase: str


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    dbname: str
    password: str = field(repr=False)

    def conninfo(self, application: str, **options: Any) -> str:
        """libpq's connection string for this target, as the lab's clients use it."""
        return make_conninfo(
            "",
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=self.dbname,
            password=self.password or None,
            application_name=application,
            # No TLS or GSS negotiation: one round trip less, and the lab has neither.
            sslmode="disable",
            gssencmode="disable",
            **options,
        )


class _AttemptError(Exception):
    """The attempt failed; ``args[0]`` is the cause, already one short line."""


# --- one attempt -------------------------------------------------------------------------


def attempt_write(target: Target, writer: str, timeout_s: float) -> Attempt:
    """Connect, INSERT, close: never longer than ``timeout_s``."""
    started_s = time.monotonic()
    deadline_s = started_s + timeout_s
    phase = CONNECT
    pgconn: pq.abc.PGconn | None = None
    try:
        pgconn = _connect_start(target, timeout_s)
        _connect_finish(pgconn, deadline_s)
        phase = QUERY
        node = _insert(pgconn, writer, deadline_s)
        return Attempt(started_s, time.monotonic(), True, node, "", phase)
    except (_AttemptError, psycopg.Error, OSError) as e:
        error = short_error(str(e), target.password)
        return Attempt(started_s, time.monotonic(), False, None, error, phase)
    finally:
        if pgconn is not None:
            # Non-blocking: sends Terminate if it can and closes, never waits.
            pgconn.finish()


def _connect_start(target: Target, timeout_s: float) -> pq.abc.PGconn:
    # The server ends what the client abandoned (a write stuck on a lock),
    # later than the client gives up, so what a client sees is its own deadline.
    statement_timeout_ms = math.ceil(timeout_s * 1000) + 1000
    conninfo = target.conninfo(
        "dbvip-lab-writer",
        # A peer that vanished never sends FIN or RST: let the kernel give up on it.
        keepalives=1,
        keepalives_idle=1,
        keepalives_interval=1,
        keepalives_count=2,
        tcp_user_timeout=max(1, math.ceil(timeout_s * 1000)),
        options=f"-c statement_timeout={statement_timeout_ms}",
    )
    return pq.PGconn.connect_start(conninfo.encode())


def _connect_finish(pgconn: pq.abc.PGconn, deadline_s: float) -> None:
    while (status := pgconn.connect_poll()) != pq.PollingStatus.OK:
        if status == pq.PollingStatus.FAILED:
            raise _AttemptError(pgconn.get_error_message())
        # The socket may change between polls (next address of the host).
        events = select.POLLOUT if status == pq.PollingStatus.WRITING else select.POLLIN
        _wait(pgconn.socket, events, deadline_s, "connecting")
    pgconn.nonblocking = 1


def _insert(pgconn: pq.abc.PGconn, writer: str, deadline_s: float) -> str:
    pgconn.send_query_params(INSERT, [writer.encode()])
    while pgconn.flush():
        _wait(pgconn.socket, select.POLLIN | select.POLLOUT, deadline_s, "sending")
        pgconn.consume_input()
    node: str | None = None
    error = ""
    while True:
        while pgconn.is_busy():
            _wait(pgconn.socket, select.POLLIN, deadline_s, "awaiting the answer")
            pgconn.consume_input()
        if (result := pgconn.get_result()) is None:
            break
        if result.status == pq.ExecStatus.TUPLES_OK and result.ntuples == 1:
            value = result.get_value(0, 0)
            node = "" if value is None else value.decode()
        elif result.status != pq.ExecStatus.TUPLES_OK:
            error = error or result.get_error_message()
    if error or node is None:
        raise _AttemptError(error or "the INSERT returned no row")
    return node


def _wait(fd: int, events: int, deadline_s: float, doing: str) -> None:
    poller = select.poll()
    poller.register(fd, events)
    while not poller.poll(max(0, math.ceil((deadline_s - time.monotonic()) * 1000))):
        if time.monotonic() >= deadline_s:
            raise _AttemptError(f"timed out {doing}")


def short_error(message: str, password: str) -> str:
    """The first line, whitespace squeezed, password masked, bounded in length."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    if password:
        text = text.replace(password, "***")
    return text[:_ERROR_MAX_CHARS]


# --- the command ---------------------------------------------------------------------------


class StopSignal:
    """SIGTERM/SIGINT set a flag and wake the sleep between attempts at once.

    An attempt in flight is left to finish (it is bounded by its timeout) so
    its line is written whole.
    """

    def __init__(self) -> None:
        self.requested = False
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def sleep_until(self, instant_s: float) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while not self.requested and (remaining_s := instant_s - time.monotonic()) > 0:
            if poller.poll(math.ceil(remaining_s * 1000)):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._read_fd, 512)

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)


def run(
    target: Target,
    writer: str,
    interval_s: float,
    timeout_s: float,
    count: int | None,
    duration_s: float | None,
    out: IO[str],
) -> None:
    """Start an attempt on the grid ``t0 + k * interval_s`` until ``count``,
    ``duration_s`` or a signal.

    Attempts overlap: a client whose connection hangs (an old MAC, a VIP on
    nobody) must not hide that the next one, 20 ms later, would get through.
    At most ``ceil(timeout / interval) + 1`` are in flight (no more can be,
    each ends by its timeout); a slot that finds them all busy is skipped.
    """
    stop = StopSignal()
    lock = threading.Lock()
    in_flight: list[threading.Thread] = []
    limit = math.ceil(timeout_s / interval_s) + 1

    def attempt(seq: int) -> None:
        result = attempt_write(target, f"{writer}:{seq}", timeout_s)
        with lock:
            out.write(json.dumps(attempt_json(result, seq)) + "\n")
            out.flush()

    try:
        t0_s = time.monotonic()
        slot, started = 0, 0
        while not stop.requested:
            start_s = t0_s + slot * interval_s
            if (count is not None and started >= count) or (
                duration_s is not None and start_s - t0_s >= duration_s
            ):
                break
            stop.sleep_until(start_s)
            if stop.requested:
                break
            in_flight = [t for t in in_flight if t.is_alive()]
            if len(in_flight) < limit:
                thread = threading.Thread(target=attempt, args=(started,), daemon=True)
                thread.start()
                in_flight.append(thread)
                started += 1
            # Slots already past (a stalled process) are skipped, not caught up in a burst.
            slot = max(slot + 1, math.floor((time.monotonic() - t0_s) / interval_s) + 1)
    finally:
        for thread in in_flight:
            thread.join(timeout_s + 1.0)  # each attempt is bounded: its line is written whole
        stop.close()


def attempt_json(attempt: Attempt, seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "started": attempt.started_s,
        "ended": attempt.ended_s,
        "ok": attempt.ok,
        "node": attempt.node,
        "error": attempt.error,
        "phase": attempt.phase,
    }


def attempt_from_json(line: str) -> Attempt:
    d = json.loads(line)
    return Attempt(
        started_s=float(d["started"]),
        ended_s=float(d["ended"]),
        ok=bool(d["ok"]),
        node=d["node"],
        error=str(d["error"]),
        phase=str(d["phase"]),
    )


def read_password(path: Path) -> str:
    """The file's first line without its line ending."""
    text = path.read_text()
    return text.splitlines()[0] if text else ""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _ip(text: str) -> str:
    # A host name would be resolved by a blocking lookup no deadline can cut short.
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an IP address, not {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m integration.lab.writer",
        description="Write through the VIP on a fixed schedule; one JSON line per attempt.",
    )
    p.add_argument("--host", type=_ip, required=True)
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--user", required=True)
    p.add_argument("--dbname", required=True)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("--writer", default="client", help="tag stored with each row (tag:seq)")
    p.add_argument(
        "--mode",
        choices=("overlapping", "ordinary", "pooled"),
        default="overlapping",
        help="overlapping: a new bounded attempt every interval (when writing becomes possible); "
        "ordinary: one connection attempt at a time, retried at once on error; pooled: a "
        "connection pool (integration.lab.clients)",
    )
    p.add_argument("--interval-s", type=_positive, default=0.02)
    p.add_argument("--timeout-s", type=_positive, default=0.25, help="overlapping mode only")
    until = p.add_mutually_exclusive_group(required=True)
    until.add_argument("--count", type=_count)
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
    if args.mode != "overlapping":
        from integration.lab.clients import run_clients  # noqa: PLC0415  (imports this module)

        run_clients(args.mode, target, args.writer, args.interval_s, args.count,
                    args.duration_s, sys.stdout)  # fmt: skip
        return 0
    run(target, args.writer, args.interval_s, args.timeout_s, args.count, args.duration_s,
        sys.stdout)  # fmt: skip
    return 0


# --- the lab's side ------------------------------------------------------------------------


def _command(netns: str | None, *args: str) -> list[str]:
    inside = ["ip", "netns", "exec", netns] if netns is not None else []
    return [*inside, sys.executable, "-m", "integration.lab.writer", *args]


def _target_args(host: str, port: int, user: str, dbname: str, password_file: Path) -> list[str]:
    return ["--host", host, "--port", str(port), "--user", user, "--dbname", dbname,
            "--password-file", str(password_file)]  # fmt: skip


def read_attempts(path: Path) -> list[Attempt]:
    """Every complete line of a writer's output; a line still being written is left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [attempt_from_json(line) for line in complete.splitlines() if line.strip()]


class ClientWriter:
    """The command as a subprocess (inside ``netns`` if given), its output kept in ``out_path``.

    Its errors go to ``out_path`` + ``.stderr``. A crashed lab finds the
    process by ``pid`` and the attempts in ``out_path``.
    """

    def __init__(
        self,
        netns: str | None,
        host: str,
        port: int,
        user: str,
        dbname: str,
        password_file: Path,
        out_path: Path,
        interval_s: float = 0.02,
        timeout_s: float = 0.25,
        duration_s: float = 600,
        mode: str = "overlapping",
    ) -> None:
        """``mode``: see ``--mode``; ``timeout_s`` bounds an overlapping attempt only."""
        self.out_path = out_path
        self.stderr_path = out_path.with_name(out_path.name + ".stderr")
        # How long an attempt in flight may take to end after SIGTERM: the other
        # modes wait for libpq's own connect_timeout (integration.lab.clients).
        app_bound_s = CONNECT_TIMEOUT_S + TCP_USER_TIMEOUT_MS / 1000 + 1
        self.timeout_s = timeout_s if mode == "overlapping" else max(timeout_s, app_bound_s)
        self._argv = _command(
            netns,
            *_target_args(host, port, user, dbname, password_file),
            "--interval-s", repr(interval_s), "--timeout-s", repr(timeout_s),
            "--duration-s", repr(duration_s), "--mode", mode,
        )  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("this writer was already started")
        with self.out_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(self._argv, stdout=out, stderr=err, cwd=_REPO_ROOT)

    def stop(self) -> list[Attempt]:
        """SIGTERM this process only, reap it, and return every attempt it wrote."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("this writer was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.timeout_s + _STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_WAIT_S)
        # A SIGTERM that came before the handler was installed: nothing was lost.
        if proc.returncode not in (0, -signal.SIGTERM):
            tail = self.stderr_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the writer exited with {proc.returncode}: {tail}")
        return self.attempts()

    def attempts(self) -> list[Attempt]:
        return read_attempts(self.out_path)

    def __enter__(self) -> ClientWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self.stop()


def write_once(
    netns: str | None,
    host: str,
    port: int,
    user: str,
    dbname: str,
    password_file: Path,
    timeout_s: float = 1.0,
) -> Attempt:
    """One attempt: in this process, or through the command inside ``netns``."""
    if netns is None:
        target = Target(str(ipaddress.ip_address(host)), port, user, dbname,
                        read_password(password_file))  # fmt: skip
        return attempt_write(target, "once", timeout_s)
    argv = _command(
        netns, *_target_args(host, port, user, dbname, password_file),
        "--writer", "once", "--timeout-s", repr(timeout_s), "--count", "1",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=_REPO_ROOT,
                          timeout=timeout_s + 30, check=False)  # fmt: skip
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the writer exited with {done.returncode}: {done.stderr[-2000:]}")
    return attempt_from_json(lines[-1])


# --- reading the attempts ------------------------------------------------------------------


def _by_start(attempts: Sequence[Attempt]) -> Iterator[Attempt]:
    return iter(sorted(attempts, key=lambda a: a.started_s))


def first_ok_after(attempts: Sequence[Attempt], instant_s: float) -> Attempt | None:
    """The first successful attempt that started at or after ``instant_s``.

    One that started earlier may have reached whoever held the VIP before.
    """
    return next((a for a in _by_start(attempts) if a.ok and a.started_s >= instant_s), None)


def outages(attempts: Sequence[Attempt]) -> list[tuple[float, float]]:
    """(first failed attempt's start, next successful attempt's end) for each run of failures.

    A run never followed by a success ends at ``math.inf``: it never recovered.
    """
    found: list[tuple[float, float]] = []
    began_s: float | None = None
    for a in _by_start(attempts):
        if not a.ok and began_s is None:
            began_s = a.started_s
        elif a.ok and began_s is not None:
            found.append((began_s, a.ended_s))
            began_s = None
    if began_s is not None:
        found.append((began_s, math.inf))
    return found


if __name__ == "__main__":
    sys.exit(main())
