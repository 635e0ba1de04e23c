"""The refusal (dbvip.adapters.refusal, .nfnl) against a real kernel, in throwaway namespaces.

A client namespace connects to the VIP of a node namespace over the lab
bridge; the node's table is read back with the ``nft`` tool, an independent
reading of what our hand-built netlink batches made.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from dbvip.adapters.arp import call_in_netns
from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.adapters.refusal import NftRefusal, RefusingVipDriver, table_name
from dbvip.model import IPInterface, VipPresence
from dbvip.ports import Done, Unknown, VipChanged
from integration.lab.eventually import eventually
from integration.lab.netns import NUD_PERMANENT, NetLab, Node, check_ranges_unused, write_sysctl

pytestmark = pytest.mark.real

VIP4 = ipaddress.IPv4Interface("198.51.100.100/32")
VIP6 = ipaddress.IPv6Interface("2001:db8::100/128")
PORT = 5432
TABLE = table_name("c1", "eth0", VIP4.ip)
HOLDER_V4 = ipaddress.IPv4Interface("198.51.100.12/24")
BEHIND = ipaddress.IPv4Network("203.0.113.0/24")  # a container's network behind n1
REPO = Path(__file__).resolve().parents[2]
# Clients on the VIP's own network only, and only while the address is not
# local here, in the main tables nor in the arriving interface's (a VRF).
GUARD = 'iifname "eth0" fib daddr type != local fib daddr . iif type != local'


def nft(node: Node, *args: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", *args],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    return done.stdout


def run_in(netns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *args], check=True, timeout=10)


def elements(node: Node, table: str, set_name: str) -> str:
    text = nft(node, "list", "set", "inet", table, set_name)
    return text.split("elements = ", 1)[1] if "elements = " in text else ""


def listen(node: Node, version: int) -> socket.socket:
    """A server socket inside the node on every address (the VIP included, when present)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    any_address = "0.0.0.0" if version == 4 else "::"
    return call_in_netns(
        node.netns, lambda: socket.create_server((any_address, PORT), family=family)
    )


def connect(client: Node, vip: IPInterface, timeout_s: float = 0.5) -> str:
    """What one connect from the client to the VIP ends with: ok, refused, unreachable, timeout."""
    family = socket.AF_INET if vip.version == 4 else socket.AF_INET6
    sock = call_in_netns(client.netns, lambda: socket.socket(family, socket.SOCK_STREAM))
    sock.settimeout(timeout_s)
    try:
        sock.connect((str(vip.ip), PORT))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return "unreachable" if e.errno == errno.EHOSTUNREACH else f"errno {e.errno}"
    finally:
        sock.close()


@pytest.fixture
def pair(netlab: NetLab, lab_node: Node, lab_client: Node) -> tuple[NetLab, Node, Node]:
    return netlab, lab_node, lab_client


@pytest.fixture
def make_driver(lab_node: Node) -> Iterator[Factory]:
    made: list[RefusingVipDriver] = []

    def make(vip: IPInterface, refuse_s: float, netns: str | None = None) -> RefusingVipDriver:
        inner = NetlinkVipDriver("eth0", vip, netns=lab_node.netns)
        table = table_name("c1", "eth0", vip.ip)
        driver = RefusingVipDriver(
            inner, NftRefusal(table, vip.ip, "eth0", netns=netns or lab_node.netns), refuse_s
        )
        driver.prepare()
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


class Factory(Protocol):
    def __call__(
        self, vip: IPInterface, refuse_s: float, netns: str | None = None
    ) -> RefusingVipDriver: ...


def hold(
    pair: tuple[NetLab, Node, Node], make_driver: Factory, vip: IPInterface, refuse_s: float
) -> RefusingVipDriver:
    """A driver whose VIP is on the node, the client sending to the node's MAC."""
    netlab, node, client = pair
    driver = make_driver(vip, refuse_s=refuse_s)
    assert isinstance(driver.add(30), VipChanged)
    pin_neighbour(netlab, client, node, vip)
    return driver


def pin_neighbour(netlab: NetLab, client: Node, node: Node, vip: IPInterface) -> None:
    """The client keeps sending to the node's MAC, as a client does until an announcement."""
    netlab.set_neighbour(client, vip.ip, node.mac, state=NUD_PERMANENT)


def test_the_table_is_what_nft_reads_back(lab_node: Node, make_driver: Factory) -> None:
    make_driver(VIP4, 5)
    text = nft(lab_node, "list", "table", "inet", TABLE)
    assert "type filter hook prerouting priority raw; policy accept;" in text
    rules = [line.strip() for line in text.splitlines() if "reject" in line]
    # The TCP reset comes first: a client's connect fails with ECONNREFUSED.
    assert rules == [
        "ip daddr @closing4 meta l4proto tcp reject with tcp reset",
        f"ip daddr @refuse4 {GUARD} meta l4proto tcp reject with tcp reset",
        f"ip daddr @refuse4 {GUARD} reject with icmpx host-unreachable",
        "ip6 daddr @closing6 meta l4proto tcp reject with tcp reset",
        f"ip6 daddr @refuse6 {GUARD} meta l4proto tcp reject with tcp reset",
        f"ip6 daddr @refuse6 {GUARD} reject with icmpx host-unreachable",
    ]
    for name in ("refuse4", "refuse6", "closing4", "closing6"):
        assert "flags timeout" in nft(lab_node, "list", "set", "inet", TABLE, name)


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_a_removed_vip_is_refused_then_dropped_once_the_refusal_ran_out(
    pair: tuple[NetLab, Node, Node], make_driver: Factory, vip: IPInterface
) -> None:
    _netlab, node, client = pair
    server = listen(node, vip.version)
    try:
        driver = hold(pair, make_driver, vip, 1)
        # Armed while held (past the VIP's own lifetime), yet never applied: it is local.
        assert str(vip.ip) in elements(node, driver.table, f"refuse{vip.version}")
        assert connect(client, vip) == "ok"
        assert isinstance(driver.remove(), VipChanged)
        assert driver.observe().presence is VipPresence.ABSENT
        assert connect(client, vip) == "refused"
        # The kernel removes the element by itself; then the SYN is dropped, as without dbvip.
        eventually(lambda: elements(node, driver.table, f"refuse{vip.version}") == "",
                   timeout_s=10)  # fmt: skip
        assert connect(client, vip) == "timeout"
        assert driver.last_error == ""
    finally:
        server.close()


def test_the_refusal_never_applies_while_this_node_holds_the_vip_again(
    pair: tuple[NetLab, Node, Node], make_driver: Factory
) -> None:
    _netlab, node, client = pair
    server = listen(node, 4)
    try:
        driver = hold(pair, make_driver, VIP4, 10)
        driver.remove()
        assert connect(client, VIP4) == "refused"
        # Taken back within the refusal's time: served at once.
        assert isinstance(driver.add(30), VipChanged)
        assert connect(client, VIP4) == "ok"
    finally:
        server.close()


def test_a_connection_waiting_for_an_answer_is_reset_when_the_vip_goes(
    pair: tuple[NetLab, Node, Node], make_driver: Factory
) -> None:
    """A client in the middle of a login waits for the server's answer; once
    the VIP is gone nothing the server sends could leave, so dbvip ends the
    connection while it still can: the client gets a reset without sending."""
    _netlab, node, client = pair
    server = listen(node, 4)
    try:
        driver = hold(pair, make_driver, VIP4, 10)
        sock = call_in_netns(client.netns, lambda: socket.create_connection((str(VIP4.ip), PORT)))
        accepted, _ = server.accept()
        try:
            sock.sendall(b"startup")  # the server reads it and says nothing yet
            assert accepted.recv(16) == b"startup"
            driver.remove()
            sock.settimeout(5)
            with pytest.raises(ConnectionResetError):
                sock.recv(16)
            # The server's side is closed too: its next send fails.
            with pytest.raises(OSError):
                for _ in range(3):
                    accepted.sendall(b"late answer")
        finally:
            sock.close()
            accepted.close()
    finally:
        server.close()


def test_a_server_listening_on_the_vip_keeps_listening(
    pair: tuple[NetLab, Node, Node], make_driver: Factory
) -> None:
    netlab, node, client = pair
    driver = make_driver(VIP4, refuse_s=10)
    driver.add(30)
    bound = call_in_netns(node.netns, lambda: socket.create_server((str(VIP4.ip), PORT + 1)))
    try:
        driver.remove()
        driver.add(30)
        pin_neighbour(netlab, client, node, VIP4)
        sock = call_in_netns(
            client.netns, lambda: socket.create_connection((str(VIP4.ip), PORT + 1), timeout=5)
        )
        sock.close()
    finally:
        bound.close()


def test_closing_refuses_new_connections_to_a_vip_still_here_for_a_bounded_time(
    pair: tuple[NetLab, Node, Node], make_driver: Factory
) -> None:
    _netlab, node, client = pair
    server = listen(node, 4)
    refusal = NftRefusal(TABLE, VIP4.ip, "eth0", netns=node.netns)
    try:
        hold(pair, make_driver, VIP4, 10)
        assert isinstance(refusal.refuse_for(10, closing_s=30), Done)
        assert connect(client, VIP4) == "refused"  # the VIP is here, yet closed
        assert isinstance(refusal.refuse_for(10), Done)
        assert elements(node, TABLE, "closing4") == ""
        assert connect(client, VIP4) == "ok"
        # A removal cut short (this process killed right then) closes it for a second at most.
        refusal.refuse_for(10, closing_s=1)
        eventually(lambda: elements(node, TABLE, "closing4") == "", timeout_s=10)
        assert connect(client, VIP4) == "ok"
    finally:
        refusal.close()
        server.close()


def test_a_restart_keeps_the_refusal_and_clears_the_closing(
    lab_node: Node, make_driver: Factory
) -> None:
    first = make_driver(VIP4, refuse_s=10)
    first.remove()  # refused for 10 s
    refusal = NftRefusal(first.table, VIP4.ip, "eth0", netns=lab_node.netns)
    try:
        refusal.refuse_for(10, closing_s=30)  # as if killed in the middle of a removal
        nft(lab_node, "delete", "rule", "inet", first.table, "prerouting", "handle",
            rule_handles(lab_node, first.table)[0])  # fmt: skip
    finally:
        refusal.close()
    make_driver(VIP4, refuse_s=10)  # a new run prepares the same table
    assert str(VIP4.ip) in elements(lab_node, first.table, "refuse4")
    assert elements(lab_node, first.table, "closing4") == ""
    assert len(rule_handles(lab_node, first.table)) == 6  # written afresh, none twice


def rule_handles(node: Node, table: str) -> list[str]:
    text = nft(node, "-a", "list", "chain", "inet", table, "prerouting")
    return [line.rsplit("# handle ", 1)[1] for line in text.splitlines() if "reject" in line]


def test_a_flushed_ruleset_is_rebuilt_at_the_next_refusal(
    lab_node: Node, make_driver: Factory
) -> None:
    driver = make_driver(VIP4, refuse_s=10)
    driver.add(30)
    nft(lab_node, "flush", "ruleset")
    driver.remove()
    assert str(VIP4.ip) in elements(lab_node, driver.table, "refuse4")
    assert driver.last_error == ""


def test_a_refusal_that_cannot_be_set_never_stops_the_removal(
    pair: tuple[NetLab, Node, Node], make_driver: Factory
) -> None:
    netlab, node, _client = pair
    broken = make_driver(VIP4, refuse_s=5, netns=f"{netlab.prefix}-nosuch")
    assert broken.last_error != ""
    assert isinstance(broken.add(30), VipChanged)
    assert isinstance(broken.remove(), VipChanged)
    assert broken.observe().presence is VipPresence.ABSENT
    assert VIP4 not in netlab.addresses(node)


def test_refusal_results_say_done_or_why_not(lab_node: Node) -> None:
    refusal = NftRefusal(TABLE, VIP4.ip, "eth0", netns=lab_node.netns)
    try:
        assert isinstance(refusal.prepare(), Done)
        assert isinstance(refusal.refuse_for(1), Done)
    finally:
        refusal.close()
    missing = NftRefusal(TABLE, VIP4.ip, "eth0", netns="dbvip-no-such-namespace")
    result = missing.refuse_for(1)
    assert isinstance(result, Unknown)
    assert "refusal of 198.51.100.100" in result.cause


def test_a_dual_stack_servers_connections_on_an_ipv4_vip_are_ended_too(
    pair: tuple[NetLab, Node, Node], make_driver: Factory
) -> None:
    """A proxy listening on [::] without IPV6_V6ONLY holds IPv4 clients as
    ::ffff:a.b.c.d sockets: they are ended like the others."""
    _netlab, node, client = pair

    def dual_stack() -> socket.socket:
        return socket.create_server(("::", PORT), family=socket.AF_INET6, dualstack_ipv6=True)

    server = call_in_netns(node.netns, dual_stack)
    try:
        driver = hold(pair, make_driver, VIP4, 10)
        sock = call_in_netns(client.netns, lambda: socket.create_connection((str(VIP4.ip), PORT)))
        accepted, peer = server.accept()
        assert peer[0] == "::ffff:198.51.100.21"
        try:
            driver.remove()
            sock.settimeout(5)
            with pytest.raises(ConnectionResetError):
                sock.recv(16)
        finally:
            sock.close()
            accepted.close()
    finally:
        server.close()


def test_traffic_this_node_routes_on_to_the_new_holder_is_never_refused(
    netlab: NetLab, make_driver: Factory, lab_node: Node
) -> None:
    """A container behind the old holder (routed through it) reaches the VIP on
    its new holder while the old holder refuses it to clients of its own network."""
    check_ranges_unused([BEHIND])
    holder = netlab.add_node("h1", v4=HOLDER_V4)
    container = netlab.create_netns(f"{netlab.prefix}-k1")
    run_in(lab_node.netns, "ip", "link", "add", "k0", "type", "veth", "peer", "name", "eth0",
           "netns", container)  # fmt: skip
    run_in(lab_node.netns, "ip", "addr", "add", "203.0.113.1/24", "dev", "k0")
    run_in(lab_node.netns, "ip", "link", "set", "k0", "up")
    run_in(container, "ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
    run_in(container, "ip", "link", "set", "eth0", "up")
    run_in(container, "ip", "route", "add", "default", "via", "203.0.113.1")
    run_in(holder.netns, "ip", "route", "add", str(BEHIND), "via", str(lab_node.v4.ip))  # type: ignore[union-attr]
    write_sysctl(lab_node.netns, "net/ipv4/ip_forward", "1")
    # The VIP now lives on the new holder; the old one (lab_node) refuses it.
    run_in(holder.netns, "ip", "addr", "add", str(VIP4), "dev", "eth0")
    server = listen(holder, 4)
    try:
        driver = make_driver(VIP4, refuse_s=10)
        driver.add(30)
        driver.remove()
        assert str(VIP4.ip) in elements(lab_node, driver.table, "refuse4")
        routed = call_in_netns(
            container, lambda: socket.create_connection((str(VIP4.ip), PORT), timeout=5)
        )
        routed.close()
    finally:
        server.close()


def test_a_refused_batch_is_an_error_at_once_not_a_wait(lab_node: Node) -> None:
    """Without CAP_NET_ADMIN the kernel refuses the batch as a whole, under the
    batch's own sequence number: that is an answer, not a timeout."""
    script = (
        "from dbvip.adapters.nfnl import NftSocket\n"
        "from dbvip.adapters.nlmsg import NetlinkError\n"
        "try:\n"
        "    NftSocket().create_table('dbvip_eth0_test', 'eth0')\n"
        "except NetlinkError as e:\n"
        "    print('refused', e.code)\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", lab_node.netns, "setpriv", "--reuid=nobody", "--regid=nogroup",
         "--clear-groups", "--inh-caps=-all", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.stdout.strip() == f"refused {errno.EPERM}", done.stderr[-2000:]
