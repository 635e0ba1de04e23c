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
from collections.abc import Iterator

import pytest

from dbvip.adapters.arp import call_in_netns
from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.adapters.refusal import NftRefusal, RefusingVipDriver, table_name
from dbvip.model import IPInterface, VipPresence
from dbvip.ports import Done, Unknown, VipChanged
from integration.lab.eventually import eventually
from integration.lab.netns import NUD_PERMANENT, NetLab, Node

pytestmark = pytest.mark.real

VIP4 = ipaddress.IPv4Interface("198.51.100.100/32")
VIP6 = ipaddress.IPv6Interface("2001:db8::100/128")
PORT = 5432
TABLE = table_name("c1", "eth0", VIP4.ip)


def nft(node: Node, *args: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", *args],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    return done.stdout


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
            inner, NftRefusal(table, vip.ip, netns=netns or lab_node.netns), refuse_s
        )
        driver.prepare()
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


class Factory:
    def __call__(
        self, vip: IPInterface, refuse_s: float, netns: str | None = None
    ) -> RefusingVipDriver: ...


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
        "ip daddr @refuse4 fib daddr type != local meta l4proto tcp reject with tcp reset",
        "ip daddr @refuse4 fib daddr type != local reject with icmpx host-unreachable",
        "ip6 daddr @closing6 meta l4proto tcp reject with tcp reset",
        "ip6 daddr @refuse6 fib daddr type != local meta l4proto tcp reject with tcp reset",
        "ip6 daddr @refuse6 fib daddr type != local reject with icmpx host-unreachable",
    ]
    for name in ("refuse4", "refuse6", "closing4", "closing6"):
        assert "flags timeout" in nft(lab_node, "list", "set", "inet", TABLE, name)


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_a_removed_vip_is_refused_then_dropped_once_the_refusal_ran_out(
    pair: tuple[NetLab, Node, Node], make_driver: Factory, vip: IPInterface
) -> None:
    netlab, node, client = pair
    server = listen(node, vip.version)
    try:
        driver = make_driver(vip, refuse_s=1)
        assert isinstance(driver.add(30), VipChanged)
        pin_neighbour(netlab, client, node, vip)
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
    netlab, node, client = pair
    server = listen(node, 4)
    try:
        driver = make_driver(VIP4, refuse_s=10)
        driver.add(30)
        pin_neighbour(netlab, client, node, VIP4)
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
    netlab, node, client = pair
    server = listen(node, 4)
    try:
        driver = make_driver(VIP4, refuse_s=10)
        driver.add(30)
        pin_neighbour(netlab, client, node, VIP4)
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
    netlab, node, client = pair
    server = listen(node, 4)
    refusal = NftRefusal(TABLE, VIP4.ip, netns=node.netns)
    try:
        driver = make_driver(VIP4, refuse_s=10)
        driver.add(30)
        pin_neighbour(netlab, client, node, VIP4)
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
    refusal = NftRefusal(first.table, VIP4.ip, netns=lab_node.netns)
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
    refusal = NftRefusal(TABLE, VIP4.ip, netns=lab_node.netns)
    try:
        assert isinstance(refusal.prepare(), Done)
        assert isinstance(refusal.refuse_for(1), Done)
    finally:
        refusal.close()
    missing = NftRefusal(TABLE, VIP4.ip, netns="dbvip-no-such-namespace")
    result = missing.refuse_for(1)
    assert isinstance(result, Unknown)
    assert "refusal of 198.51.100.100" in result.cause
