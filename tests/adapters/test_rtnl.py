"""The plain-socket rtnetlink reader: decoding by hand, and against a real kernel."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest

from dbvip.adapters.arp import call_in_netns
from dbvip.adapters.nlmsg import NetlinkError
from dbvip.adapters.rtnl import (
    IFA_ADDRESS,
    IFA_FLAGS,
    IFA_LOCAL,
    AddressEntry,
    LinkEntry,
    RtnlSocket,
    parse_address,
)
from integration.lab.netns import NetLab, Node, write_sysctl
from tests.support.netns_fixtures import NODE_V4, NODE_V6

IFA_F_PERMANENT = 0x80
IFA_F_MANAGETEMPADDR = 0x100  # only in IFA_FLAGS: above ifa_flags' 8 bits


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw.ljust((len(raw) + 3) & ~3, b"\0")


def ifaddrmsg(family: int, prefixlen: int, flags: int, index: int, *attrs: bytes) -> bytes:
    return struct.pack("=BBBBI", family, prefixlen, flags, 0, index) + b"".join(attrs)


# -- decoding ---------------------------------------------------------------------


def test_ipv4_address_with_its_prefix_and_flags() -> None:
    body = ifaddrmsg(
        socket.AF_INET, 24, IFA_F_PERMANENT, 7, attr(IFA_LOCAL, bytes([198, 51, 100, 11]))
    )
    index, entry = parse_address(body, 0, len(body))
    assert index == 7
    assert entry == AddressEntry(bytes([198, 51, 100, 11]), 24, IFA_F_PERMANENT)
    assert entry.interface == ipaddress.ip_interface("198.51.100.11/24")


def test_local_address_wins_over_the_peer_address() -> None:
    local, peer = bytes([198, 51, 100, 11]), bytes([198, 51, 100, 99])
    body = ifaddrmsg(socket.AF_INET, 32, 0, 3, attr(IFA_ADDRESS, peer), attr(IFA_LOCAL, local))
    _, entry = parse_address(body, 0, len(body))
    assert entry is not None and entry.interface == ipaddress.ip_interface("198.51.100.11/32")


def test_ipv6_address_and_the_32_bit_flags_attribute() -> None:
    v6 = ipaddress.IPv6Address("2001:db8::11")
    body = ifaddrmsg(
        socket.AF_INET6,
        64,
        IFA_F_PERMANENT,
        2,
        attr(IFA_ADDRESS, v6.packed),
        attr(IFA_FLAGS, struct.pack("=I", IFA_F_PERMANENT | IFA_F_MANAGETEMPADDR)),
    )
    _, entry = parse_address(body, 0, len(body))
    assert entry == AddressEntry(v6.packed, 64, IFA_F_PERMANENT | IFA_F_MANAGETEMPADDR)
    assert entry.interface == ipaddress.ip_interface("2001:db8::11/64")


def test_same_means_same_address_and_same_prefix_length() -> None:
    entry = AddressEntry(bytes([198, 51, 100, 100]), 32, 0)
    assert entry.same(ipaddress.ip_interface("198.51.100.100/32"))
    assert not entry.same(ipaddress.ip_interface("198.51.100.100/24"))
    assert not entry.same(ipaddress.ip_interface("198.51.100.101/32"))
    assert not entry.same(ipaddress.ip_interface("::ffff:198.51.100.100/32"))


def test_a_message_without_an_address_gives_no_entry() -> None:
    body = ifaddrmsg(socket.AF_INET, 24, 0, 2, attr(IFA_LOCAL, b"\x01\x02"))  # cut short
    assert parse_address(body, 0, len(body)) == (2, None)


# -- against the kernel -------------------------------------------------------------


@pytest.fixture
def rtnl_in(lab_node: Node) -> Iterator[RtnlSocket]:
    sock = call_in_netns(lab_node.netns, RtnlSocket)
    yield sock
    sock.close()


@pytest.mark.real
def test_reads_what_pyroute2_reads(netlab: NetLab, lab_node: Node, rtnl_in: RtnlSocket) -> None:
    index = rtnl_in.link_index(lab_node.ifname)
    assert index == lab_node.index
    found = {
        e.interface
        for family in (socket.AF_INET, socket.AF_INET6)
        for e in rtnl_in.addresses(index, family)
    }
    assert found == netlab.addresses(lab_node)
    assert {NODE_V4, NODE_V6} <= found


@pytest.mark.real
def test_addresses_of_another_interface_are_left_out(lab_node: Node, rtnl_in: RtnlSocket) -> None:
    loopback = rtnl_in.addresses(rtnl_in.link_index("lo"), socket.AF_INET)
    assert [e.interface for e in loopback] == [ipaddress.ip_interface("127.0.0.1/8")]


@pytest.mark.real
def test_many_requests_on_one_socket_stay_in_step(lab_node: Node, rtnl_in: RtnlSocket) -> None:
    for _ in range(200):
        assert rtnl_in.link_index("lo") == 1
        (entry,) = rtnl_in.addresses(lab_node.index, socket.AF_INET)
        assert entry.interface == NODE_V4


@pytest.mark.real
def test_missing_interface_is_the_kernels_enodev(rtnl_in: RtnlSocket) -> None:
    with pytest.raises(NetlinkError) as caught:
        rtnl_in.link_index("nope0")
    assert caught.value.code == errno.ENODEV
    assert rtnl_in.link_index("lo") == 1  # the socket is still usable


@pytest.mark.real
def test_link_reads_promote_secondaries(lab_node: Node, rtnl_in: RtnlSocket) -> None:
    key = f"net/ipv4/conf/{lab_node.ifname}/promote_secondaries"
    for on in (True, False, True):
        write_sysctl(lab_node.netns, key, str(int(on)))
        assert rtnl_in.link(lab_node.ifname) == LinkEntry(lab_node.index, on)


@pytest.mark.real
def test_add_replace_delete_with_a_lifetime(
    netlab: NetLab, lab_node: Node, rtnl_in: RtnlSocket
) -> None:
    vip = ipaddress.IPv4Interface("198.51.100.100/32")
    rtnl_in.change_address("add", lab_node.index, vip, lifetime_s=30)
    with pytest.raises(NetlinkError) as caught:
        rtnl_in.change_address("add", lab_node.index, vip, lifetime_s=30)
    assert caught.value.code == errno.EEXIST
    rtnl_in.change_address("replace", lab_node.index, vip, lifetime_s=100)
    valid_s = netlab.address_info(lab_node, vip).get_attr("IFA_CACHEINFO")["ifa_valid"]
    assert 90 < valid_s <= 100
    rtnl_in.change_address("del", lab_node.index, vip)
    assert vip not in netlab.addresses(lab_node)
    with pytest.raises(NetlinkError) as gone:
        rtnl_in.change_address("del", lab_node.index, vip)
    assert gone.value.code == errno.EADDRNOTAVAIL
