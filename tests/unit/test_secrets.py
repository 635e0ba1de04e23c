"""Passwords never show: the real sidecar wiring (etcd client, PostgreSQL
probe, member reports, watch, HTTP server, logging) runs with passwords from
files and from the DSN, and nothing it says carries them.

Only the VIP driver and announcer are fakes (they would touch this machine's
interfaces). PostgreSQL is a closed loopback port, so every probe fails and
its error text flows into facts, logs and ``/status``; etcd is either a real
member with auth on (the password is in use) or a closed port.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbvip import cli
from dbvip.config import load
from dbvip.wiring import Sidecar, SystemClock
from integration.lab.etcd import ETCD, EtcdCluster
from integration.lab.eventually import eventually
from tests.fakes import FakeAnnouncer, FakeClock, FakeKernel, FakeVipDriver
from tests.observed import Capture, get

ETCD_SECRET = f"etcd-pw-{secrets.token_hex(8)}"
PG_SECRET = f"pg-pw-{secrets.token_hex(8)}"
DSN_SECRET = f"dsn-pw-{secrets.token_hex(8)}"
SECRETS = (ETCD_SECRET, PG_SECRET, DSN_SECRET)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def capture() -> Iterator[Capture]:
    c = Capture()
    try:
        yield c
    finally:
        c.restore()


def environment(
    tmp_path: Path, endpoint: str, pg_port: int, log_format: str, pg_password_in: str
) -> dict[str, str]:
    """``pg_password_in``: "dsn" (a URI-form DSN with the password in it) or
    "file" (pg_password_file); dbvip refuses both at once."""
    etcd_file, pg_file = tmp_path / "etcd-password", tmp_path / "pg-password"
    etcd_file.write_text(ETCD_SECRET + "\n")
    pg_file.write_text(PG_SECRET + "\n")
    pg = (
        {"DBVIP_PG_DSN": f"postgresql://postgres:{DSN_SECRET}@127.0.0.1:{pg_port}/postgres"}
        if pg_password_in == "dsn"
        else {
            "DBVIP_PG_DSN": f"host=127.0.0.1 port={pg_port} user=postgres",
            "DBVIP_PG_PASSWORD_FILE": str(pg_file),
        }
    )
    return {
        "DBVIP_CLUSTER": f"s{secrets.token_hex(4)}",
        "DBVIP_NODE": "n1",
        "DBVIP_VIP": "198.51.100.10",
        "DBVIP_INTERFACE": "dbvt-fake0",
        "DBVIP_ETCD_ENDPOINTS": endpoint,
        "DBVIP_ETCD_USERNAME": "dbvip",
        "DBVIP_ETCD_PASSWORD_FILE": str(etcd_file),
        **pg,
        "DBVIP_HTTP_LISTEN": "127.0.0.1:0",
        # A refused etcd request is retried until its timeout: keep the test short.
        "DBVIP_REQUEST_TIMEOUT_S": "0.3",
        "DBVIP_LOG_LEVEL": "debug",
        "DBVIP_LOG_FORMAT": log_format,
    }


def run_sidecar(env: dict[str, str], capture: Capture, ready: Callable[[], bool]) -> list[str]:
    """Run the sidecar until ``ready``; return what it said: /metrics, /status,
    /healthz, /readyz, then its whole log."""
    config = load({}, env)
    capture.start(config["log_format"])
    kernel = FakeKernel(FakeClock())
    sidecar = Sidecar(
        config,
        SystemClock(),
        vip_driver=FakeVipDriver(kernel, "n1"),
        announcer=FakeAnnouncer(kernel, "n1"),
    )
    assert sidecar.http is not None
    port = sidecar.http.port
    thread = threading.Thread(target=sidecar.run, daemon=True)
    thread.start()
    try:
        eventually(ready, timeout_s=20)
        said = [
            get(port, path)[2].decode() for path in ("/metrics", "/status", "/healthz", "/readyz")
        ]
    finally:
        sidecar.runner.stop()
        thread.join(timeout=30)
        sidecar.close()
    assert not thread.is_alive()
    said.append(capture.text())
    return said


def check_config_output(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["check-config"], environ=env) == 0
    return capsys.readouterr().out


def assert_no_secret(said: list[str]) -> None:
    for text in said:
        for secret in SECRETS:
            assert secret not in text, f"a password shows in:\n{text}"


def test_no_password_shows_with_etcd_and_postgres_unreachable(
    tmp_path: Path, closed_port: int, capture: Capture, capsys: pytest.CaptureFixture[str]
) -> None:
    env = environment(tmp_path, f"http://127.0.0.1:{closed_port}", closed_port, "text", "dsn")
    said = run_sidecar(
        env, capture, lambda: "member report not published" in capture.stream.getvalue()
    )
    status = json.loads(said[1])
    assert status["role"] == "down"
    assert "role_cause" in status["loop"]["facts"]  # the probe's error text got here
    assert "etcd unreachable" in said[3]
    log = said[-1]
    assert "reason=database_down" in log
    assert "GET /status" in log  # the access log too (debug)
    said.append(check_config_output(env, capsys))
    assert_no_secret(said)


@pytest.mark.real
def test_no_password_shows_with_etcd_auth_in_use(
    tmp_path: Path, closed_port: int, capture: Capture, capsys: pytest.CaptureFixture[str]
) -> None:
    if not os.path.exists(ETCD) or not shutil.which("etcdctl"):
        pytest.fail("etcd and etcdctl are needed (Debian etcd-server, etcd-client)")
    with EtcdCluster(size=1) as etcd:
        etcd.enable_auth("dbvip", ETCD_SECRET, prefix="/dbvip/")
        env = environment(tmp_path, etcd.endpoints[0], closed_port, "json", "file")
        members = f"/dbvip/{env['DBVIP_CLUSTER']}/members/n1"
        # Ready once the member report went in: the password was in use.
        said = run_sidecar(
            env, capture, lambda: bool(etcd.etcdctl("get", members, "--print-value-only"))
        )
        report = etcd.etcdctl("get", members, "--print-value-only")
        assert json.loads(report)["role"] == "down"
    status = json.loads(said[1])
    assert status["role"] == "down"
    assert "etcd" not in json.loads(said[3])["why"]  # etcd answered: only the role is missing
    for line in said[-1].splitlines():
        json.loads(line)
    said.append(check_config_output(env, capsys))
    assert_no_secret(said)
