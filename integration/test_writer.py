"""The lab's client writer against a real PostgreSQL on loopback (and one namespace)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from integration.lab.eventually import eventually
from integration.lab.netns import NetLab
from integration.lab.postgres import SUPERUSER, SUPERUSER_PASSWORD, PgServer, free_port
from integration.lab.writer import (
    Attempt,
    ClientWriter,
    first_ok_after,
    outages,
    read_attempts,
    write_once,
)

NODE = "n1"
TABLE_DDL = (
    "CREATE TABLE dbvip_lab_writes (id bigserial primary key, writer text not null,"
    " at timestamptz not null default clock_timestamp())"
)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(SUPERUSER_PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def primary(pg_primary: PgServer) -> PgServer:
    """``pg_primary`` with the writes table and ``cluster_name`` = NODE."""
    pg_primary.sql(TABLE_DDL)
    pg_primary.sql(f"ALTER SYSTEM SET cluster_name = '{NODE}'")
    pg_primary.stop()  # cluster_name takes a restart
    pg_primary.start()
    assert pg_primary.sql("SHOW cluster_name") == NODE
    return pg_primary


def once(port: int, password_file: Path, timeout_s: float = 5.0) -> Attempt:
    return write_once(None, "127.0.0.1", port, SUPERUSER, "postgres", password_file, timeout_s)


def command(port: int, password_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "integration.lab.writer", "--host", "127.0.0.1",
            "--port", str(port), "--user", SUPERUSER, "--dbname", "postgres",
            "--password-file", str(password_file), *args]  # fmt: skip


def rows(pg: PgServer) -> int:
    return int(pg.sql("SELECT count(*) FROM dbvip_lab_writes"))


# --- against the real server -------------------------------------------------------------


@pytest.mark.real
def test_a_write_to_the_primary_is_stored_and_names_the_node(
    primary: PgServer, password_file: Path
) -> None:
    attempt = once(primary.port, password_file)

    assert attempt == Attempt(attempt.started_s, attempt.ended_s, True, NODE, "", "query")
    assert attempt.started_s <= attempt.ended_s
    assert primary.sql("SELECT writer FROM dbvip_lab_writes") == "once"


@pytest.mark.real
def test_the_command_stops_by_itself_after_count(primary: PgServer, password_file: Path) -> None:
    done = subprocess.run(
        command(primary.port, password_file, "--count", "5", "--timeout-s", "5"),
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [0, 1, 2, 3, 4]
    assert all(line["ok"] and line["node"] == NODE for line in lines), lines
    assert rows(primary) == 5
    assert primary.sql("SELECT string_agg(writer, ',' ORDER BY id) FROM dbvip_lab_writes") == (
        "client:0,client:1,client:2,client:3,client:4"
    )
    assert SUPERUSER_PASSWORD not in done.stdout + done.stderr


@pytest.mark.real
def test_a_write_to_a_standby_fails_in_the_query_phase(
    pg_primary: PgServer, pg_standby: PgServer, password_file: Path
) -> None:
    pg_primary.sql(TABLE_DDL)
    eventually(lambda: pg_standby.sql("SELECT to_regclass('dbvip_lab_writes')"), timeout_s=30)

    attempt = once(pg_standby.port, password_file)

    assert not attempt.ok
    assert attempt.node is None
    assert attempt.phase == "query"
    assert "read-only" in attempt.error, attempt.error
    assert "\n" not in attempt.error


def test_a_closed_port_fails_in_the_connect_phase_without_waiting(password_file: Path) -> None:
    attempt = once(free_port(), password_file, timeout_s=30)

    assert not attempt.ok
    assert attempt.phase == "connect"
    assert "refused" in attempt.error, attempt.error
    assert "timed out" not in attempt.error


@pytest.mark.real
def test_a_frozen_server_cannot_hold_an_attempt_past_its_timeout(
    primary: PgServer, password_file: Path
) -> None:
    timeout_s = 0.5
    primary.freeze()
    try:
        attempts = [once(primary.port, password_file, timeout_s) for _ in range(2)]
    finally:
        primary.thaw()

    for attempt in attempts:
        assert not attempt.ok
        assert attempt.phase == "connect"
        assert "timed out" in attempt.error, attempt.error
        assert attempt.ended_s - attempt.started_s < timeout_s + 1
    # Thawed, the server serves again: the timeouts were the freeze's doing.
    assert eventually(lambda: once(primary.port, password_file).ok, timeout_s=30)


@pytest.mark.real
def test_a_write_stuck_on_the_server_ends_by_its_timeout_in_the_query_phase(
    primary: PgServer, password_file: Path
) -> None:
    timeout_s = 0.5
    with psycopg.connect(primary.conninfo()) as locker:
        locker.execute("LOCK TABLE dbvip_lab_writes IN ACCESS EXCLUSIVE MODE")
        attempt = once(primary.port, password_file, timeout_s)
        locker.rollback()

    assert not attempt.ok
    assert attempt.phase == "query"
    assert "timed out" in attempt.error, attempt.error
    assert attempt.ended_s - attempt.started_s < timeout_s + 1


@pytest.mark.real
def test_the_client_writer_measures_the_outage_of_a_restart(
    primary: PgServer, password_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "writes.jsonl"
    # A timeout far above a loaded machine's connect time: only the restart may fail writes.
    writer = ClientWriter(None, "127.0.0.1", primary.port, SUPERUSER, "postgres", password_file,
                          out, interval_s=0.02, timeout_s=2.0, duration_s=120)  # fmt: skip
    writer.start()
    try:
        eventually(lambda: sum(a.ok for a in writer.attempts()) >= 3, timeout_s=30)
        primary.stop()
        down_s = time.monotonic()
        eventually(lambda: any(not a.ok and a.started_s > down_s for a in writer.attempts()),
                   timeout_s=30)  # fmt: skip
        up_s = time.monotonic()
        primary.start()
        eventually(lambda: first_ok_after(writer.attempts(), up_s), timeout_s=30)
    finally:
        attempts = writer.stop()

    assert writer.returncode == 0
    assert writer.pid is not None
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(writer.pid, 0)
    assert read_attempts(out) == attempts  # nothing written after stop()
    covering = [(s, e) for s, e in outages(attempts) if s <= down_s and e >= up_s]
    assert len(covering) == 1, outages(attempts)
    recovered = first_ok_after(attempts, up_s)
    assert recovered is not None
    assert recovered.node == NODE
    assert recovered.ended_s == covering[0][1]
    # Every acknowledged write is in the table.
    assert rows(primary) >= sum(a.ok for a in attempts)


@pytest.mark.real
def test_the_client_writer_runs_inside_a_namespace(
    netlab: NetLab, primary: PgServer, password_file: Path, tmp_path: Path
) -> None:
    netns = netlab.create_netns(f"{netlab.prefix}-w")
    # The server listens on the root namespace's loopback: not the namespace's own.
    assert once(primary.port, password_file).ok
    inside = write_once(netns, "127.0.0.1", primary.port, SUPERUSER, "postgres", password_file)
    assert not inside.ok
    assert inside.phase == "connect"
    assert "refused" in inside.error, inside.error

    writer = ClientWriter(netns, "127.0.0.1", primary.port, SUPERUSER, "postgres",
                          password_file, tmp_path / "writes.jsonl")  # fmt: skip
    writer.start()
    try:
        eventually(lambda: len(writer.attempts()) >= 3, timeout_s=30)
    finally:
        attempts = writer.stop()
    assert writer.returncode == 0
    assert attempts
    assert not any(a.ok for a in attempts)


def test_a_long_attempt_is_not_followed_by_a_burst(password_file: Path, tmp_path: Path) -> None:
    interval_s, timeout_s = 0.05, 0.4
    # Completes handshakes and never answers: every attempt runs to its timeout.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = int(listener.getsockname()[1])
    writer = ClientWriter(None, "127.0.0.1", port, SUPERUSER, "postgres", password_file,
                          tmp_path / "writes.jsonl", interval_s=interval_s,
                          timeout_s=timeout_s)  # fmt: skip
    writer.start()
    try:
        try:
            eventually(lambda: len(writer.attempts()) >= 2, timeout_s=30)
        finally:
            listener.close()  # from now on every attempt is refused at once
        eventually(lambda: sum("refused" in a.error for a in writer.attempts()) >= 6,
                   timeout_s=30)  # fmt: skip
    finally:
        attempts = writer.stop()

    assert any("timed out" in a.error for a in attempts), attempts
    # Each attempt after the first has a slot of its own, strictly after the
    # previous one's end: a window two intervals long holds at most three
    # starts however late the machine runs. Catching up on the slots a timed
    # out attempt overran would start about eight at once.
    starts = sorted(a.started_s for a in attempts)
    for first in starts:
        assert sum(first <= s < first + 2 * interval_s for s in starts) <= 3, starts


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_command_exits_cleanly_on_a_signal(
    signum: int, password_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "writes.jsonl"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            command(free_port(), password_file, "--duration-s", "120"),
            stdout=sink, stderr=subprocess.PIPE, cwd=REPO_ROOT,
        )  # fmt: skip
    try:
        eventually(lambda: len(read_attempts(out)) >= 2, timeout_s=30)
        proc.send_signal(signum)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.stderr is not None
    assert proc.stderr.read() == b""
    text = out.read_text()
    assert text.endswith("\n")
    assert all(json.loads(line)["phase"] == "connect" for line in text.splitlines())


# --- reading attempts (pure) -------------------------------------------------------------


def at(started_s: float, ok: bool, length_s: float = 0.1) -> Attempt:
    return Attempt(started_s, started_s + length_s, ok, "n1" if ok else None,
                   "" if ok else "boom", "query" if ok else "connect")  # fmt: skip


def test_first_ok_after_skips_failures_and_earlier_starts() -> None:
    attempts = [at(3.0, True), at(1.0, True), at(2.0, False), at(2.5, True)]

    assert first_ok_after(attempts, 1.5) == at(2.5, True)
    assert first_ok_after(attempts, 1.0) == at(1.0, True)  # an attempt starting at the instant
    assert first_ok_after(attempts, 2.6) == at(3.0, True)
    assert first_ok_after(attempts, 3.1) is None
    assert first_ok_after([], 0.0) is None


def test_outages_run_from_the_first_failure_to_the_next_success_end() -> None:
    attempts = [at(0.0, True), at(1.0, False), at(2.0, False), at(3.0, True, length_s=0.5),
                at(4.0, True), at(6.0, False), at(5.0, False), at(7.0, True)]  # fmt: skip

    assert outages(attempts) == [(1.0, 3.5), (5.0, 7.1)]


def test_outages_of_only_successes_or_unrecovered_failures() -> None:
    assert outages([at(0.0, True), at(1.0, True)]) == []
    assert outages([]) == []
    assert outages([at(0.0, True), at(1.0, False), at(2.0, False)]) == [(1.0, math.inf)]


def test_attempts_leave_out_a_line_still_being_written(tmp_path: Path) -> None:
    out = tmp_path / "writes.jsonl"
    line = json.dumps({"seq": 0, "started": 1.0, "ended": 1.5, "ok": False, "node": None,
                       "error": "timed out connecting", "phase": "connect"})  # fmt: skip
    out.write_text(line + "\n" + line[:20])

    assert read_attempts(out) == [Attempt(1.0, 1.5, False, None, "timed out connecting", "connect")]
    assert read_attempts(tmp_path / "missing.jsonl") == []
