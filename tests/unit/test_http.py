"""The HTTP endpoints over a real loopback socket, answering from a real
Runner over the in-memory fakes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dbvip.adapters.etcd_status import ClusterStatus, MemberStatus
from dbvip.config import Listen, load
from dbvip.health import HealthServer
from dbvip.keys import decode_member, encode_member
from dbvip.members import report_of
from dbvip.model import KeyAbsent, Role
from dbvip.wiring import cluster_dict
from tests.observed import ObservedNode, T, get, run


@pytest.fixture
def node() -> ObservedNode:
    return ObservedNode()


@pytest.fixture
def server(node: ObservedNode) -> Iterator[HealthServer]:
    http = HealthServer(Listen("127.0.0.1", 0), node.board, node.metrics)
    http.start()
    try:
        yield http
    finally:
        http.close()


def test_before_the_first_decision_nothing_is_healthy_or_ready(server: HealthServer) -> None:
    for path in ("/healthz", "/readyz"):
        code, kind, body = get(server.port, path)
        assert (code, kind) == (503, "application/json")
        assert json.loads(body) == {"ok": False, "why": "no decision yet"}
    assert get(server.port, "/status")[0] == 503


def test_a_holding_primary_is_healthy_ready_and_says_so(
    node: ObservedNode, server: HealthServer
) -> None:
    run([node], 1.0)
    code, _, body = get(server.port, "/healthz")
    assert code == 200
    assert json.loads(body)["ok"] is True
    code, _, body = get(server.port, "/readyz")
    assert (code, json.loads(body)) == (200, {"ok": True, "why": "role primary, etcd answering"})

    node.clock.advance(T.ttl_s)  # the loop froze: its last decision is old now
    code, _, body = get(server.port, "/healthz")
    assert code == 503
    assert "past the" in json.loads(body)["why"]


def test_readyz_names_every_failing_condition(node: ObservedNode, server: HealthServer) -> None:
    node.probe.role = Role.UNKNOWN
    node.store.fault = "refuse"
    run([node], 1.0)
    code, _, body = get(server.port, "/readyz?verbose=1")
    assert code == 503
    assert json.loads(body)["why"] == (
        "role unknown: connection refused; etcd unreachable: connection refused"
    )


def test_status_is_this_nodes_row_of_dbvip_status(node: ObservedNode, server: HealthServer) -> None:
    run([node], 1.0)
    code, kind, body = get(server.port, "/status")
    assert (code, kind) == (200, "application/json")
    status = json.loads(body)
    loop = status.pop("loop")

    # What `dbvip status --json` shows for this node once its latest report
    # is in etcd: the same builder, fed the same report, gives the same row.
    snapshot = node.published[-1]
    value = decode_member(encode_member(report_of(snapshot, "198.51.100.10/32"), "T"))
    cluster = ClusterStatus(KeyAbsent(1), None, (MemberStatus("n1", value, 0x1, None),))
    row = cluster_dict("c1", cluster)["members"][0]
    assert status == {**row, "updated": status["updated"]}
    assert status["role"] == "primary"
    assert status["vip"] == ["198.51.100.10/32"]
    assert status["reason"] == "holding"

    assert loop["lease"] == f"{snapshot.lease_id:x}"
    assert 0 < loop["deadline_in_s"] < T.ttl_s - T.margin_s
    assert loop["alive"] is True
    assert loop["ready"] is True
    assert loop["facts"]["role"] == "primary"


def test_metrics_are_prometheus_text(node: ObservedNode, server: HealthServer) -> None:
    run([node], 1.0)
    code, kind, body = get(server.port, "/metrics")
    assert code == 200
    assert kind.startswith("text/plain")
    text = body.decode()
    assert 'dbvip_role{role="primary"} 1.0' in text
    assert 'dbvip_actions_total{action="acquire_lease",result="ok"} 1.0' in text


def test_an_unknown_path_is_404(server: HealthServer) -> None:
    code, _, body = get(server.port, "/nope")
    assert code == 404
    assert json.loads(body)["paths"] == ["/healthz", "/readyz", "/status", "/metrics"]


def test_a_stalled_client_does_not_block_other_requests_or_the_loop(
    node: ObservedNode, server: HealthServer
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stalled:
        stalled.sendall(b"GET /metr")  # and never finishes the request
        run([node], 1.0)  # the loop publishes meanwhile
        assert get(server.port, "/healthz")[0] == 200


def test_ipv6_loopback_is_served() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    node = ObservedNode()
    run([node], 0.5)
    http = HealthServer(Listen("::1", 0), node.board, node.metrics)
    http.start()
    try:
        assert get(http.port, "/healthz", host="::1")[0] == 200
    finally:
        http.close()


def test_a_port_in_use_is_an_oserror_at_construction() -> None:
    node = ObservedNode()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            HealthServer(Listen("127.0.0.1", port), node.board, node.metrics)


ENV = {
    "DBVIP_CLUSTER": "c1",
    "DBVIP_NODE": "n1",
    "DBVIP_VIP": "198.51.100.10",
    "DBVIP_INTERFACE": "dbvt-missing0",
    "DBVIP_ETCD_ENDPOINTS": "http://127.0.0.1:9",
    "DBVIP_PG_DSN": "host=127.0.0.1 port=9 user=postgres connect_timeout=2",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8008", Listen("127.0.0.1", 8008)), ("[::1]:8008", Listen("::1", 8008))],
)
def test_http_listen_accepts_ipv4_and_bracketed_ipv6(text: str, expected: Listen) -> None:
    config = load({}, {**ENV, "DBVIP_HTTP_LISTEN": text})
    assert config["http_listen"] == expected
    assert str(config["http_listen"]) == text


def test_http_is_off_unless_set() -> None:
    assert load({}, ENV)["http_listen"] == ""


def test_dbvip_run_on_a_port_in_use_exits_with_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, **ENV, "DBVIP_HTTP_LISTEN": f"127.0.0.1:{port}"}
        done = subprocess.run(
            [sys.executable, "-m", "dbvip.cli", "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,  # were the bind to succeed, the sidecar would run on: fail
            check=False,
        )
    assert done.returncode == 2, done.stderr  # a setting that cannot work: no restart loop
    assert done.stderr.strip() == (
        f"dbvip: configuration error: http_listen = 127.0.0.1:{port} from environment "
        "DBVIP_HTTP_LISTEN: cannot listen: Address already in use"
    )
