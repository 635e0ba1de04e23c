"""Announcements on a real bridge: a client's stale neighbour entry follows the VIP.

Node ``n1`` and client ``c1`` share the lab bridge. The client holds a wrong
MAC for the VIP; one announcement round from the node must fix it. The client
also captures what arrives with an AF_PACKET socket.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from dbvip.adapters.arp import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV6,
    PacketAnnouncer,
    call_in_netns,
    garp_reply,
    garp_request,
    icmpv6_checksum,
    unsolicited_na,
)
from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.model import IPAddress, IPInterface
from dbvip.ports import Done, Unknown, VipChanged
from integration.lab.eventually import eventually
from integration.lab.netns import NUD_REACHABLE, NUD_STALE, NetLab, Node, write_sysctl

pytestmark = pytest.mark.real

VIP4 = ipaddress.IPv4Interface("198.51.100.100/32")
VIP6 = ipaddress.IPv6Interface("2001:db8::100/128")
WRONG_MAC = bytes.fromhex("02000000ee01")
ETH_P_ALL = 0x0003
NEIGHBOUR_BOUND_S = 5.0


class Capture:
    """Frames arriving on a namespace's interface, read without blocking."""

    def __init__(self, node: Node) -> None:
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((node.ifname, 0))
            sock.setblocking(False)
            return sock

        self._sock = call_in_netns(node.netns, open_socket)
        self.frames: list[bytes] = []

    def read(self) -> list[bytes]:
        while True:
            try:
                self.frames.append(self._sock.recv(65535))
            except BlockingIOError:
                return self.frames

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def capture(lab_client: Node) -> Iterator[Capture]:
    cap = Capture(lab_client)
    yield cap
    cap.close()


@pytest.fixture
def announcer_for(lab_node: Node) -> Iterator[list[PacketAnnouncer]]:
    made: list[PacketAnnouncer] = []
    yield made
    for announcer in made:
        announcer.close()


def add_vip(node: Node, vip: IPInterface) -> None:
    driver = NetlinkVipDriver(node.ifname, vip, netns=node.netns)
    try:
        assert driver.add(60) == VipChanged(was_present=False)
    finally:
        driver.close()


def arp_from(frames: list[bytes], mac: bytes, sender: ipaddress.IPv4Address) -> list[bytes]:
    return [
        f
        for f in frames
        if f[6:12] == mac
        and struct.unpack("!H", f[12:14])[0] == ETHERTYPE_ARP
        and f[28:32] == sender.packed
    ]


def na_from(frames: list[bytes], mac: bytes) -> list[bytes]:
    return [
        f
        for f in frames
        if f[6:12] == mac
        and struct.unpack("!H", f[12:14])[0] == ETHERTYPE_IPV6
        and f[20] == 58  # next header ICMPv6
        and f[54] == 136  # neighbour advertisement
    ]


def send_raw(node: Node, frame: bytes) -> None:
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind((node.ifname, 0))
            sock.send(frame)

    call_in_netns(node.netns, send)


# -- IPv4 ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [NUD_REACHABLE, NUD_STALE], ids=["reachable", "stale"])
def test_gratuitous_arp_moves_a_clients_stale_entry_to_the_node(
    netlab: NetLab,
    lab_node: Node,
    lab_client: Node,
    capture: Capture,
    announcer_for: list[PacketAnnouncer],
    state: int,
) -> None:
    add_vip(lab_node, VIP4)
    netlab.set_neighbour(lab_client, VIP4.ip, WRONG_MAC, state)
    assert netlab.neighbour_mac(lab_client, VIP4.ip) == WRONG_MAC

    announcer_for.append(PacketAnnouncer(lab_node.ifname, VIP4.ip, netns=lab_node.netns))
    assert announcer_for[0].announce() == Done()

    eventually(
        lambda: netlab.neighbour_mac(lab_client, VIP4.ip) == lab_node.mac,
        timeout_s=NEIGHBOUR_BOUND_S,
    )
    eventually(lambda: len(arp_from(capture.read(), lab_node.mac, VIP4.ip)) >= 2)
    request, reply = arp_from(capture.frames, lab_node.mac, VIP4.ip)
    assert request == garp_request(lab_node.mac, VIP4.ip)
    assert reply == garp_reply(lab_node.mac, VIP4.ip)
    for frame, op in ((request, 1), (reply, 2)):
        assert frame[0:6] == b"\xff" * 6
        hardware, protocol, hlen, plen, got_op = struct.unpack("!HHBBH", frame[14:22])
        assert (hardware, protocol, hlen, plen, got_op) == (1, 0x0800, 6, 4, op)
        assert frame[22:28] == lab_node.mac
        assert ipaddress.IPv4Address(frame[28:32]) == VIP4.ip  # sender IP
        assert ipaddress.IPv4Address(frame[38:42]) == VIP4.ip  # target IP


def test_reply_counts_as_gratuitous_only_with_target_mac_equal_to_sender(
    netlab: NetLab, lab_node: Node, lab_client: Node
) -> None:
    """Why the reply's target MAC is the node's own and not broadcast.

    With a long locktime the client ignores ARP for a recently confirmed entry
    unless Linux classifies it as gratuitous.
    """
    write_sysctl(lab_client.netns, f"net/ipv4/neigh/{lab_client.ifname}/locktime", "360000")
    vip_a, vip_b = ipaddress.IPv4Address("198.51.100.101"), ipaddress.IPv4Address("198.51.100.102")
    for vip in (vip_a, vip_b):
        netlab.set_neighbour(lab_client, vip, WRONG_MAC, NUD_REACHABLE)

    broadcast_target = garp_reply(lab_node.mac, vip_a)
    broadcast_target = broadcast_target[:32] + b"\xff" * 6 + broadcast_target[38:]
    send_raw(lab_node, broadcast_target)
    send_raw(lab_node, garp_reply(lab_node.mac, vip_b))  # sent after, processed after

    eventually(
        lambda: netlab.neighbour_mac(lab_client, vip_b) == lab_node.mac,
        timeout_s=NEIGHBOUR_BOUND_S,
    )
    assert netlab.neighbour_mac(lab_client, vip_a) == WRONG_MAC


# -- IPv6 ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [NUD_REACHABLE, NUD_STALE], ids=["reachable", "stale"])
def test_unsolicited_na_moves_a_clients_stale_entry_to_the_node(
    netlab: NetLab,
    lab_node: Node,
    lab_client: Node,
    capture: Capture,
    announcer_for: list[PacketAnnouncer],
    state: int,
) -> None:
    add_vip(lab_node, VIP6)
    netlab.set_neighbour(lab_client, VIP6.ip, WRONG_MAC, state)
    assert netlab.neighbour_mac(lab_client, VIP6.ip) == WRONG_MAC

    announcer_for.append(PacketAnnouncer(lab_node.ifname, VIP6.ip, netns=lab_node.netns))
    assert announcer_for[0].announce() == Done()

    eventually(
        lambda: netlab.neighbour_mac(lab_client, VIP6.ip) == lab_node.mac,
        timeout_s=NEIGHBOUR_BOUND_S,
    )
    (frame,) = eventually(lambda: na_from(capture.read(), lab_node.mac))
    assert frame == unsolicited_na(lab_node.mac, VIP6.ip)
    assert frame[0:6] == bytes.fromhex("333300000001")
    assert frame[21] == 255  # hop limit
    src, dst = ipaddress.IPv6Address(frame[22:38]), ipaddress.IPv6Address(frame[38:54])
    assert (src, dst) == (VIP6.ip, ipaddress.IPv6Address("ff02::1"))
    message = frame[54:]
    assert icmpv6_checksum(src, dst, message) == 0
    (flags,) = struct.unpack("!I", message[4:8])
    assert flags == 0x2000_0000  # Override only
    assert ipaddress.IPv6Address(message[8:24]) == VIP6.ip
    assert message[24:26] == b"\x02\x01" and message[26:32] == lab_node.mac


# -- behaviour of the announcer ----------------------------------------------------


def test_announcer_follows_a_mac_change(
    netlab: NetLab, lab_node: Node, lab_client: Node, announcer_for: list[PacketAnnouncer]
) -> None:
    announcer_for.append(PacketAnnouncer(lab_node.ifname, VIP4.ip, netns=lab_node.netns))
    assert announcer_for[0].announce() == Done()
    new_mac = bytes.fromhex("02000000aa02")
    netlab.ipr(lab_node.netns).link("set", index=lab_node.index, address=new_mac.hex(":"))
    netlab.set_neighbour(lab_client, VIP4.ip, WRONG_MAC, NUD_REACHABLE)
    assert announcer_for[0].announce() == Done()
    eventually(
        lambda: netlab.neighbour_mac(lab_client, VIP4.ip) == new_mac, timeout_s=NEIGHBOUR_BOUND_S
    )


def test_missing_interface_or_namespace_is_unknown(netlab: NetLab, lab_node: Node) -> None:
    cases: list[tuple[str, IPAddress, str | None, str]] = [
        ("nope0", VIP4.ip, lab_node.netns, "nope0"),
        ("eth0", VIP6.ip, f"{netlab.prefix}-typo", "namespace"),
    ]
    for interface, vip, namespace, word in cases:
        announcer = PacketAnnouncer(interface, vip, netns=namespace)
        try:
            result = announcer.announce()
        finally:
            announcer.close()
        assert isinstance(result, Unknown)
        assert word in result.cause and "does not exist" in result.cause


def test_interface_down_is_unknown_then_recovers(
    netlab: NetLab, lab_node: Node, announcer_for: list[PacketAnnouncer]
) -> None:
    announcer_for.append(PacketAnnouncer(lab_node.ifname, VIP4.ip, netns=lab_node.netns))
    ipr = netlab.ipr(lab_node.netns)
    ipr.link("set", index=lab_node.index, state="down")
    result = announcer_for[0].announce()
    assert isinstance(result, Unknown) and "down" in result.cause
    ipr.link("set", index=lab_node.index, state="up")
    assert announcer_for[0].announce() == Done()


def test_interface_replaced_is_unknown_then_recovers(
    netlab: NetLab, lab_node: Node, announcer_for: list[PacketAnnouncer]
) -> None:
    announcer_for.append(PacketAnnouncer(lab_node.ifname, VIP4.ip, netns=lab_node.netns))
    assert announcer_for[0].announce() == Done()
    ipr = netlab.ipr(lab_node.netns)
    ipr.link("del", index=lab_node.index)
    result = announcer_for[0].announce()
    assert isinstance(result, Unknown) and "does not exist" in result.cause
    ipr.link("add", ifname=lab_node.ifname, kind="veth", peer="peer0")
    for index in ipr.link_lookup(ifname=lab_node.ifname) + ipr.link_lookup(ifname="peer0"):
        ipr.link("set", index=index, state="up")
    assert announcer_for[0].announce() == Done()


UNPRIVILEGED = textwrap.dedent(
    """
    import ctypes, ipaddress, os, sys
    from dbvip.adapters.arp import PacketAnnouncer
    fd = os.open("/run/netns/" + sys.argv[1], os.O_RDONLY)
    assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0
    announcer = PacketAnnouncer("eth0", ipaddress.ip_address(sys.argv[2]))
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)  # from root to nobody: every capability goes
    print(announcer.announce())
    """
)


def test_without_cap_net_raw_announce_is_unknown_and_names_the_capability(
    netlab: NetLab, lab_node: Node
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED, lab_node.netns, str(VIP4.ip)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Unknown(") and "CAP_NET_RAW" in proc.stdout


def test_entering_a_namespace_leaves_the_calling_thread_where_it_was(
    netlab: NetLab, lab_node: Node
) -> None:
    def inode() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    before = inode()
    inside = call_in_netns(lab_node.netns, inode)
    assert inside != before
    assert inside == os.stat(f"/run/netns/{lab_node.netns}").st_ino
    with pytest.raises(ZeroDivisionError):
        call_in_netns(lab_node.netns, lambda: 1 // 0)
    assert inode() == before
