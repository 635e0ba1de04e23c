"""pytest fixtures for real PostgreSQL instances (see ``postgres_server``).

Each test gets its own lab: instances are copied from one ``initdb`` made per
session, started on fresh ports and torn down, by PID, after the test.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.lab.postgres import PG_BIN, PgLab, PgServer, make_template

__all__ = ["pg_lab", "pg_primary", "pg_standby", "pg_template", "silent_listener"]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Path]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
        pytest.skip("needs root and PostgreSQL 15 in " + str(PG_BIN))
    datadir, base = make_template()
    try:
        yield datadir
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_lab(pg_template: Path) -> Iterator[PgLab]:
    lab = PgLab(pg_template)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def pg_primary(pg_lab: PgLab) -> PgServer:
    return pg_lab.primary()


@pytest.fixture
def pg_standby(pg_lab: PgLab, pg_primary: PgServer) -> PgServer:
    return pg_lab.standby(pg_primary)


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """A TCP port on 127.0.0.1 that completes handshakes but never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # never accept(): the kernel alone completes the handshake
        yield "127.0.0.1", int(listener.getsockname()[1])
