"""The PostgreSQL role probe against real PostgreSQL 15 servers on loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from dbvip.adapters.postgres import PostgresRoleProbe
from dbvip.model import Role, RoleReading
from integration.lab.eventually import eventually
from integration.lab.postgres import SUPERUSER_PASSWORD, PgServer
from tests.support.postgres_fixtures import *  # noqa: F403 (the fixtures)

pytestmark = pytest.mark.real

TIMEOUT_S = 0.5
BOUND_S = 3 * TIMEOUT_S  # generous: the probe itself aims at TIMEOUT_S plus a few ms
LSN = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")

ProbeFactory = Callable[..., PostgresRoleProbe]


@pytest.fixture
def make_probe() -> Iterator[ProbeFactory]:
    made: list[PostgresRoleProbe] = []

    def make(conninfo: str, password: str | None = None) -> PostgresRoleProbe:
        made.append(PostgresRoleProbe(conninfo, password))
        return made[-1]

    try:
        yield make
    finally:
        for probe in made:
            probe.close()


def timed_probe(probe: PostgresRoleProbe) -> tuple[RoleReading, float]:
    start_s = time.monotonic()
    reading = probe.probe(TIMEOUT_S)
    return reading, time.monotonic() - start_s


def role_is(probe: PostgresRoleProbe, role: Role) -> RoleReading | None:
    reading = probe.probe(TIMEOUT_S)
    return reading if reading.role is role else None


def assert_unknown_in_time(probe: PostgresRoleProbe, cause_pattern: str) -> RoleReading:
    return assert_reads_in_time(probe, Role.UNKNOWN, cause_pattern)


def assert_down_in_time(probe: PostgresRoleProbe, cause_pattern: str) -> RoleReading:
    return assert_reads_in_time(probe, Role.DOWN, cause_pattern)


def assert_reads_in_time(probe: PostgresRoleProbe, role: Role, cause_pattern: str) -> RoleReading:
    """``role`` with a cause matching ``cause_pattern``, no timeline or LSN, in time."""
    reading, elapsed_s = timed_probe(probe)
    assert reading.role is role, reading
    assert reading.timeline is None and reading.lsn is None
    assert reading.cause and re.search(cause_pattern, reading.cause), reading.cause
    assert elapsed_s < BOUND_S, f"probe took {elapsed_s:.3f} s"
    return reading


def test_primary_reads_primary_on_timeline_1_with_its_lsn(
    pg_primary: PgServer, make_probe: ProbeFactory
) -> None:
    reading = make_probe(pg_primary.conninfo()).probe(TIMEOUT_S)

    assert reading.role is Role.PRIMARY, reading
    assert reading.timeline == 1 and reading.cause is None
    assert reading.lsn and LSN.match(reading.lsn)
    assert pg_primary.sql(f"SELECT '{reading.lsn}'::pg_lsn <= pg_current_wal_lsn()") == "t"


def test_standby_reads_replica_with_its_replay_lsn(
    pg_standby: PgServer, make_probe: ProbeFactory
) -> None:
    reading = make_probe(pg_standby.conninfo()).probe(TIMEOUT_S)

    assert reading.role is Role.REPLICA, reading
    assert reading.timeline == 1 and reading.cause is None
    assert reading.lsn and LSN.match(reading.lsn)
    assert pg_standby.sql(f"SELECT '{reading.lsn}'::pg_lsn <= pg_last_wal_replay_lsn()") == "t"


def test_standby_with_replay_paused_reads_what_it_received_ahead_of_its_replay(
    pg_primary: PgServer, pg_standby: PgServer, make_probe: ProbeFactory
) -> None:
    probe = make_probe(pg_standby.conninfo())
    eventually(lambda: probe.probe(TIMEOUT_S).received_lsn is not None)
    pg_standby.sql("SELECT pg_wal_replay_pause()")
    pg_primary.sql("SELECT pg_logical_emit_message(false, 'dbvip', repeat('x', 200000))")
    written = pg_primary.sql("SELECT pg_current_wal_lsn()")

    def received_ahead() -> RoleReading | None:
        r = probe.probe(TIMEOUT_S)
        done = pg_standby.sql(f"SELECT '{r.received_lsn}'::pg_lsn >= '{written}'") == "t"
        return r if done else None

    reading = eventually(received_ahead)
    assert reading.role is Role.REPLICA and reading.lsn and reading.received_lsn
    behind = f"SELECT '{reading.received_lsn}'::pg_lsn - '{reading.lsn}'::pg_lsn"
    assert int(float(pg_standby.sql(behind))) >= 100000  # most of the 200 kB: replay stood still


def test_promoted_standby_reads_primary_on_the_new_timeline_at_once(
    pg_primary: PgServer, pg_standby: PgServer, make_probe: ProbeFactory
) -> None:
    # Dirty buffers on the standby make the checkpoint that follows promotion
    # a spread one (tens of seconds): a timeline read from the checkpoint
    # would still say 1 when the probe first sees a primary.
    pg_primary.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 100) FROM generate_series(1, 10000) g"
    )
    written = pg_primary.sql("SELECT pg_current_wal_lsn()")
    eventually(lambda: pg_standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{written}'") == "t")
    probe = make_probe(pg_standby.conninfo())
    assert probe.probe(TIMEOUT_S).role is Role.REPLICA

    pg_standby.promote()
    reading = eventually(lambda: role_is(probe, Role.PRIMARY), timeout_s=10)

    assert reading is not None and reading.timeline == 2, reading
    assert reading.lsn and LSN.match(reading.lsn)
    checkpoint_timeline = pg_standby.sql("SELECT (pg_control_checkpoint()).timeline_id")
    assert checkpoint_timeline == "1", "the checkpoint caught up: this test no longer discriminates"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stopped_server_reads_down_and_the_probe_reconnects(
    pg_primary: PgServer, make_probe: ProbeFactory, mode: str
) -> None:
    over_socket = make_probe(pg_primary.conninfo())
    over_tcp = make_probe(pg_primary.tcp_conninfo(), SUPERUSER_PASSWORD)
    assert over_socket.probe(TIMEOUT_S).role is Role.PRIMARY
    assert over_tcp.probe(TIMEOUT_S).role is Role.PRIMARY

    # Both probes hold a connection the stop breaks: the probe notices, tries
    # a new one, and finds nothing listening.
    pg_primary.stop(mode)
    assert_down_in_time(over_socket, "No such file or directory")
    assert_down_in_time(over_tcp, "Connection refused")

    pg_primary.start()
    eventually(lambda: role_is(over_socket, Role.PRIMARY))
    eventually(lambda: role_is(over_tcp, Role.PRIMARY))


def test_socket_file_left_without_a_server_reads_down(
    tmp_path: Path, make_probe: ProbeFactory
) -> None:
    # What a killed postmaster leaves: the file, and nobody accepting on it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as orphan:
        orphan.bind(str(tmp_path / ".s.PGSQL.5432"))
        probe = make_probe(f"host={tmp_path} port=5432 user=postgres dbname=postgres")
        assert_down_in_time(probe, "Connection refused")


def test_server_shutting_down_reads_down(pg_primary: PgServer, make_probe: ProbeFactory) -> None:
    probe = make_probe(pg_primary.conninfo())
    pid = pg_primary.postmaster_pid()
    assert pid is not None
    # A smart shutdown waits for this session, turning new ones away meanwhile.
    with psycopg.connect(pg_primary.conninfo(), autocommit=True):
        os.kill(pid, signal.SIGTERM)
        eventually(lambda: role_is(probe, Role.DOWN))
        assert_down_in_time(probe, "the database system is shutting down")


def test_several_servers_or_a_host_name_read_unknown_not_down(
    tmp_path: Path, make_probe: ProbeFactory
) -> None:
    # Checking only the last server libpq tried, or resolving a name, could
    # call "not there" what is only unreachable: those stay "don't know".
    several = make_probe(f"host={tmp_path}/a,{tmp_path}/b port=5432 user=x dbname=x")
    assert_unknown_in_time(several, "No such file or directory")
    over_tcp = make_probe("host=127.0.0.1,127.0.0.1 port=1,2 user=x dbname=x")
    assert_unknown_in_time(over_tcp, "Connection refused")
    by_name = make_probe("host=localhost port=1 user=x dbname=x")
    assert_unknown_in_time(by_name, "Connection refused")
    # The same refusal at an address given as such is definite.
    by_address = make_probe("host=localhost hostaddr=127.0.0.1 port=1 user=x dbname=x")
    assert_down_in_time(by_address, "Connection refused")


def test_frozen_server_reads_unknown_timed_out_and_the_probe_recovers_on_thaw(
    pg_primary: PgServer, make_probe: ProbeFactory
) -> None:
    warm = make_probe(pg_primary.conninfo())
    over_tcp = make_probe(pg_primary.tcp_conninfo(), SUPERUSER_PASSWORD)
    assert warm.probe(TIMEOUT_S).role is Role.PRIMARY

    pg_primary.freeze()
    try:
        # The query goes out on a live connection to a frozen backend ...
        assert_unknown_in_time(warm, r"timed out after 0\.5 s \(awaiting the answer\)")
        # ... then a new connection meets a frozen postmaster.
        assert_unknown_in_time(warm, r"timed out after 0\.5 s \(connecting\)")
        assert_unknown_in_time(over_tcp, r"timed out after 0\.5 s \(connecting\)")
    finally:
        pg_primary.thaw()

    eventually(lambda: role_is(warm, Role.PRIMARY))
    eventually(lambda: role_is(over_tcp, Role.PRIMARY))


def test_wrong_password_reads_unknown_with_the_server_message_and_no_password(
    pg_primary: PgServer, make_probe: ProbeFactory
) -> None:
    wrong = "not-the-Pw-93b2"
    reading = assert_unknown_in_time(
        make_probe(pg_primary.tcp_conninfo(), wrong), "password authentication failed"
    )

    assert wrong not in repr(reading)
    right = make_probe(pg_primary.tcp_conninfo(), SUPERUSER_PASSWORD).probe(TIMEOUT_S)
    assert right.role is Role.PRIMARY, right


def test_missing_database_reads_unknown_with_the_server_message(
    pg_primary: PgServer, make_probe: ProbeFactory
) -> None:
    assert_unknown_in_time(
        make_probe(pg_primary.conninfo(dbname="nowhere")), 'database "nowhere" does not exist'
    )


def test_listener_that_never_speaks_reads_unknown_in_time(
    silent_listener: tuple[str, int], make_probe: ProbeFactory
) -> None:
    host, port = silent_listener
    probe = make_probe(f"host={host} port={port} user=postgres dbname=postgres")

    assert_unknown_in_time(probe, r"timed out after 0\.5 s \(connecting\)")
    assert_unknown_in_time(probe, r"timed out after 0\.5 s \(connecting\)")


def test_malformed_conninfo_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid connection option") as raised:
        PostgresRoleProbe("host=/tmp nonsense=1", password="secret-Pw")

    assert "secret-Pw" not in str(raised.value)
