"""Role probe of the local PostgreSQL, bounded by a wall-clock deadline.

psycopg's own ``connect`` will not wait less than 2 s and its queries have no
client-side timeout at all (a frozen server that still ACKs at the TCP level
hangs them forever; ``asyncio.wait_for`` around the async API still waits up
to 10 s for psycopg's own cancel-on-interrupt). So the probe drives libpq's
non-blocking API (``psycopg.pq``) itself with ``poll`` against a monotonic
deadline, and throws the connection away on any failure.
"""

from __future__ import annotations

import ipaddress
import math
import select
import socket

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbvip.boottime import boot_s
from dbvip.model import Role, RoleReading

# One round trip. ``in_recovery`` is read once so both branches agree. The
# checkpoint's timeline lags a promotion until the next checkpoint; the WAL
# insert position's file name carries the new timeline as soon as recovery
# ends. A replica reports the timeline it is receiving, or failing that the
# one of its last restartpoint. Its WAL receiver's status says whether it
# streams ("none": no receiver; "hidden": a role without pg_read_all_stats
# sees the receiver's pid only, so whether it streams is unknown). A
# replica's received position, less its replay position, is a lag it can see
# alone (replay paused or slow), without the primary's published position.
QUERY = b"""\
SELECT in_recovery,
  CASE WHEN in_recovery
    THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                  (pg_control_checkpoint()).timeline_id)
    ELSE ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int
  END,
  CASE WHEN in_recovery THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
  CASE WHEN in_recovery
    THEN coalesce((SELECT coalesce(status, 'hidden') FROM pg_stat_wal_receiver), 'none')
  END,
  CASE WHEN in_recovery THEN pg_last_wal_receive_lsn() END
FROM (SELECT pg_is_in_recovery() AS in_recovery) AS s"""

# PostgreSQL's messages for SQLSTATE 57P03 (postmaster.c, canAcceptConnections).
_CANNOT_CONNECT_NOW = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
)

# A peer that vanished never sends FIN or RST: let the kernel give up on it
# instead of keeping a discarded socket around (TCP only; ignored on a socket).
_TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "2",
    "keepalives_interval": "1",
    "keepalives_count": "3",
    "tcp_user_timeout": "3000",
}


class _ProbeError(Exception):
    """The probe failed; ``args[0]`` is the human-readable cause."""


class _StaleConnectionError(_ProbeError):
    """A connection kept from an earlier probe turned out to be dead."""


class _ServerDownError(_ProbeError):
    """Definitely not serving: nothing listens, or the server turned us away
    because it is starting up, shutting down or recovering."""


class _DeadlineError(Exception):
    """The deadline passed; ``args[0]`` says what the probe was waiting for."""


class PostgresRoleProbe:
    """``RoleProbe`` over one persistent libpq connection, remade after any failure.

    ``conninfo`` is a libpq connection string. Use a socket directory or an IP
    address as host: libpq resolves a host name with a blocking lookup that no
    deadline can cut short. No password, given apart or in ``conninfo``, is
    ever put in a cause.
    """

    def __init__(self, conninfo: str, password: str | None = None) -> None:
        try:
            self._params = conninfo_to_dict(conninfo)
        except psycopg.Error as e:
            raise ValueError(
                f"invalid conninfo: {_scrub(_first_lines(str(e)), [password])}"
            ) from None
        self._password = password
        self._secrets = [password, str(self._params.get("password") or "")]
        self._pgconn: pq.abc.PGconn | None = None

    def probe(self, timeout_s: float) -> RoleReading:
        deadline_s = boot_s() + timeout_s
        try:
            try:
                return self._ask(deadline_s, timeout_s)
            except _StaleConnectionError:
                # A connection kept from an earlier probe may have been ended
                # by a server restart: one more try on a fresh one.
                return self._ask(deadline_s, timeout_s)
        except _DeadlineError as e:
            self.close()
            cause = f"probe timed out after {timeout_s:g} s ({e.args[0]})"
            return RoleReading(Role.UNKNOWN, cause=cause)
        except _ServerDownError as e:
            self.close()
            return RoleReading(Role.DOWN, cause=_scrub(_first_lines(e.args[0]), self._secrets))
        except (_ProbeError, psycopg.Error, OSError, ValueError) as e:
            self.close()
            return RoleReading(Role.UNKNOWN, cause=_scrub(_first_lines(str(e)), self._secrets))

    def close(self) -> None:
        if self._pgconn is not None:
            pgconn, self._pgconn = self._pgconn, None
            # Non-blocking mode: finish() sends Terminate without waiting. The
            # server ends an abandoned query itself (statement_timeout,
            # client_connection_check_interval); a cancel request would be a new
            # connection to a server that may be frozen.
            pgconn.finish()

    def _ask(self, deadline_s: float, timeout_s: float) -> RoleReading:
        pgconn = self._pgconn
        reused = pgconn is not None
        if pgconn is None:
            pgconn = self._pgconn = self._connect(deadline_s, timeout_s)
        try:
            return _reading(_query(pgconn, deadline_s))
        except _ProbeError as e:
            self.close()
            if reused:
                raise _StaleConnectionError(*e.args) from None
            raise

    def _connect(self, deadline_s: float, timeout_s: float) -> pq.abc.PGconn:
        params: dict[str, str | int | None] = {**_TCP_DEFAULTS, **self._params}
        params["application_name"] = "dbvip"
        statement_timeout_ms = max(1, math.ceil(timeout_s * 1000))
        params["options"] = (
            f"{params.get('options') or ''} -c statement_timeout={statement_timeout_ms}"
            " -c client_connection_check_interval=1000"
        ).strip()
        if self._password is not None:
            params["password"] = self._password
        pgconn = pq.PGconn.connect_start(make_conninfo("", **params).encode())
        try:
            while (status := pgconn.connect_poll()) != pq.PollingStatus.OK:
                if status == pq.PollingStatus.FAILED:
                    message = pgconn.get_error_message()
                    if _turned_away(message) or _nothing_listens(pgconn, deadline_s):
                        raise _ServerDownError(message)
                    raise _ProbeError(message)
                # The socket may change between polls (next host or address).
                write = status == pq.PollingStatus.WRITING
                events = select.POLLOUT if write else select.POLLIN
                _wait(pgconn.socket, events, deadline_s, "connecting")
            pgconn.nonblocking = 1
        except BaseException:
            pgconn.finish()
            raise
        return pgconn


def _query(pgconn: pq.abc.PGconn, deadline_s: float) -> list[bytes | None]:
    """Send QUERY and return its single row, never waiting past the deadline."""
    try:
        pgconn.send_query(QUERY)
        while pgconn.flush():
            _wait(pgconn.socket, select.POLLIN | select.POLLOUT, deadline_s, "sending")
            pgconn.consume_input()
        row: list[bytes | None] | None = None
        while True:
            while pgconn.is_busy():
                _wait(pgconn.socket, select.POLLIN, deadline_s, "awaiting the answer")
                pgconn.consume_input()
            if (result := pgconn.get_result()) is None:
                break
            if result.status == pq.ExecStatus.TUPLES_OK and result.ntuples == 1:
                row = [result.get_value(0, col) for col in range(result.nfields)]
            elif result.status != pq.ExecStatus.TUPLES_OK:
                raise _ProbeError(result.get_error_message())
    except psycopg.OperationalError as e:
        raise _ProbeError(str(e)) from None
    if row is None:
        raise _ProbeError("the role query returned no row")
    return row


def _reading(row: list[bytes | None]) -> RoleReading:
    in_recovery, timeline, lsn, receiver, received = row
    if in_recovery not in (b"t", b"f"):
        raise ValueError(f"unexpected pg_is_in_recovery() value {in_recovery!r}")
    return RoleReading(
        Role.REPLICA if in_recovery == b"t" else Role.PRIMARY,
        timeline=None if timeline is None else int(timeline),
        lsn=None if lsn is None else lsn.decode(),
        streaming=None if receiver in (None, b"hidden") else receiver == b"streaming",
        received_lsn=None if received is None else received.decode(),
    )


def _turned_away(message: str) -> bool:
    """The server's own "cannot connect now" (SQLSTATE 57P03). libpq gives no
    SQLSTATE for a failed connection, so this reads the English text; with
    translated server messages the answer is "don't know" (the role grace)."""
    return any(phrase in message for phrase in _CANNOT_CONNECT_NOW)


def _nothing_listens(pgconn: pq.abc.PGconn, deadline_s: float) -> bool:
    """Is the single server we tried definitely not there?

    libpq's error text is translated and carries no errno, so ask the kernel
    directly: a socket file that does not exist, or a connection refused by a
    socket file or by an IP address, is "no server". Host names (a lookup no
    deadline can bound) and multi-host connection strings are "don't know".
    """
    try:
        given = {o.keyword.decode(): (o.val or b"").decode() for o in pgconn.info}
        # What was asked for, not what libpq resolved a name to: a name may
        # stand for several addresses and libpq reports only the last one.
        host = given.get("hostaddr") or given.get("host") or pgconn.host.decode()
        port = given.get("port") or pgconn.port.decode()
    except (psycopg.Error, UnicodeDecodeError):
        return False
    if "," in host or "," in port or not port.isdigit():
        return False  # several servers: "none there" would need each one checked
    address: str | tuple[str, int]
    if host.startswith("/"):
        family, address = socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        address = (host, int(port))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.0, deadline_s - boot_s()))
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        return True
    except OSError:
        return False  # a timeout, no route, a full backlog: something may be there
    return False  # it listens now (a restart raced us): let the next probe tell


def _wait(fd: int, events: int, deadline_s: float, doing: str) -> None:
    poller = select.poll()
    poller.register(fd, events)
    while not poller.poll(max(0, math.ceil((deadline_s - boot_s()) * 1000))):
        if boot_s() >= deadline_s:
            raise _DeadlineError(doing)


def _first_lines(message: str) -> str:
    """libpq's message without its indented hints, one line per host tried."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line[:1].strip()]
    return "; ".join(lines) or "unknown error"


def _scrub(text: str, secrets: list[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
