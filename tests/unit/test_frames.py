"""Byte-exact gratuitous ARP and unsolicited neighbour advertisement frames.

Expected frames are written out field by field. The ``KERNEL_*`` and
``ARPING_*`` frames were captured on this machine (kernel 6.18, iputils arping
20221126) from a veth with an AF_PACKET socket: the kernel's own gratuitous
ARP and NA (``arp_notify`` / ``ndisc_notify`` = 1, then a MAC change) and
``arping -A``. They pin the ICMPv6 checksum independently of our code.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from dbvip.adapters.arp import (
    announcement,
    garp_reply,
    garp_request,
    icmpv6_checksum,
    unsolicited_na,
)

MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")
VIP4 = IPv4Address("198.51.100.11")  # c6 33 64 0b
VIP6 = IPv6Address("2001:db8::11")
LINK_LOCAL = IPv6Address("fe80::ff:fe00:a")


def hexbytes(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields))


KERNEL_GARP_REQUEST = bytes.fromhex(
    "ffffffffffff02000000000b0806000108000604000102000000000bc633640b000000000000c633640b"
)
ARPING_A_REPLY = bytes.fromhex(
    "ffffffffffff02000000000a0806000108000604000202000000000ac633640b02000000000ac633640b"
)
KERNEL_NA = bytes.fromhex(
    "33330000000102000000000b86dd6000000000203aff20010db8000000000000000000000011"
    "ff020000000000000000000000000001"
    "8800f9002000000020010db8000000000000000000000011020102000000000b"
)
KERNEL_NA_LINK_LOCAL = bytes.fromhex(
    "33330000000102000000000b86dd6000000000203afffe80000000000000000000fffe00000a"
    "ff020000000000000000000000000001"
    "8800597f20000000fe80000000000000000000fffe00000a020102000000000b"
)


def test_garp_request_fields() -> None:
    expected = hexbytes(
        "ffffffffffff",  # Ethernet destination: broadcast
        "02000000000a",  # Ethernet source: the node's MAC
        "0806",  # EtherType ARP
        "0001",  # hardware type Ethernet
        "0800",  # protocol type IPv4
        "06",  # hardware address length
        "04",  # protocol address length
        "0001",  # operation: request
        "02000000000a",  # sender MAC
        "c633640b",  # sender IP: the VIP
        "000000000000",  # target MAC: zero, as the kernel's own gratuitous ARP
        "c633640b",  # target IP: the VIP again
    )
    assert garp_request(MAC_A, VIP4) == expected
    assert len(expected) == 42


def test_garp_reply_fields() -> None:
    expected = hexbytes(
        "ffffffffffff",  # Ethernet destination: broadcast
        "02000000000a",  # Ethernet source
        "0806",  # EtherType ARP
        "000108000604",  # Ethernet / IPv4, address lengths
        "0002",  # operation: reply
        "02000000000a",  # sender MAC
        "c633640b",  # sender IP: the VIP
        "02000000000a",  # target MAC = sender MAC, or Linux does not take it as gratuitous
        "c633640b",  # target IP: the VIP
    )
    assert garp_reply(MAC_A, VIP4) == expected


def test_unsolicited_na_fields() -> None:
    expected = hexbytes(
        "333300000001",  # Ethernet destination: multicast MAC of ff02::1
        "02000000000b",  # Ethernet source
        "86dd",  # EtherType IPv6
        "60000000",  # version 6, traffic class 0, flow label 0
        "0020",  # payload length: 32 bytes of ICMPv6
        "3a",  # next header: ICMPv6
        "ff",  # hop limit 255 (receivers drop anything else)
        "20010db8000000000000000000000011",  # source: the VIP
        "ff020000000000000000000000000001",  # destination: all nodes
        "88",  # ICMPv6 type 136: neighbour advertisement
        "00",  # code 0
        "f900",  # checksum, as the kernel computed it for this very message
        "20000000",  # flags: Override set; Router and Solicited clear
        "20010db8000000000000000000000011",  # target: the VIP
        "02",  # option: target link-layer address
        "01",  # option length: 1 unit of 8 bytes
        "02000000000b",  # the node's MAC
    )
    assert unsolicited_na(MAC_B, VIP6) == expected


def test_frames_match_what_the_kernel_and_arping_send() -> None:
    assert garp_request(MAC_B, VIP4) == KERNEL_GARP_REQUEST
    assert garp_reply(MAC_A, VIP4) == ARPING_A_REPLY
    assert unsolicited_na(MAC_B, VIP6) == KERNEL_NA
    assert unsolicited_na(MAC_B, LINK_LOCAL) == KERNEL_NA_LINK_LOCAL


@pytest.mark.parametrize("frame", [KERNEL_NA, KERNEL_NA_LINK_LOCAL], ids=["global", "link-local"])
def test_checksum_of_captured_na_verifies(frame: bytes) -> None:
    src, dst, message = IPv6Address(frame[22:38]), IPv6Address(frame[38:54]), frame[54:]
    # Summing the pseudo-header and a message that carries a correct checksum
    # gives 0xffff (one's complement), so the checksum over it comes out zero.
    assert icmpv6_checksum(src, dst, message) == 0
    zeroed = message[:2] + b"\x00\x00" + message[4:]
    assert icmpv6_checksum(src, dst, zeroed) == int.from_bytes(message[2:4], "big")


def test_checksum_odd_length_is_padded() -> None:
    # 0x0100 pads to 0x0100 0x0000; pseudo-header of :: -> :: with length 1 adds 1 + 58.
    assert icmpv6_checksum(IPv6Address("::"), IPv6Address("::"), b"\x01") == 0xFFFF - (
        0x0100 + 1 + 58
    )


def test_one_round_is_request_and_reply_for_ipv4_and_one_na_for_ipv6() -> None:
    assert announcement(MAC_A, VIP4) == (garp_request(MAC_A, VIP4), garp_reply(MAC_A, VIP4))
    assert announcement(MAC_B, VIP6) == (unsolicited_na(MAC_B, VIP6),)


@pytest.mark.parametrize("mac", [b"", b"\x02" * 5, b"\x02" * 8])
def test_a_mac_must_have_six_bytes(mac: bytes) -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        garp_request(mac, VIP4)
    with pytest.raises(ValueError, match="6 bytes"):
        unsolicited_na(mac, VIP6)
