"""Telling neighbours the VIP moved: gratuitous ARP and unsolicited neighbour advertisement.

Pure frame builders plus one raw ``AF_PACKET`` send. Which frames, checked
against what iputils ``arping`` and the Linux kernel put on the wire:

* ``garp_request``: ARP request, sender IP = target IP = VIP, target MAC
  00:00:00:00:00:00, as the kernel's own gratuitous ARP (``arp_notify``) and
  RFC 5227's ARP announcement. (``arping -U`` puts ff:ff:ff:ff:ff:ff there;
  receivers ignore the field in a request.)
* ``garp_reply``: ARP reply, sender IP = target IP = VIP, target MAC = the
  sender's own MAC, as ``arping -A`` sends it. Linux treats a reply as
  gratuitous, and lets it override an entry confirmed within the last
  ``locktime``, only when target MAC equals sender MAC (``arp_is_garp``); a
  reply with a broadcast target MAC is ignored by such a client.
* ``unsolicited_na``: what the kernel sends itself (``ndisc_notify``):
  source = target = VIP, to ff02::1, hop limit 255, Override set, Solicited
  and Router clear, with a Target Link-Layer Address option.

Frames are not padded to 60 bytes; the kernel does not pad its own ARP either
and NIC drivers pad short frames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from dbvip.model import IPAddress
from dbvip.ports import Done, Unknown

T = TypeVar("T")

ETH_BROADCAST = b"\xff" * 6
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
ICMPV6_NEIGHBOUR_ADVERTISEMENT = 136
NA_FLAG_OVERRIDE = 0x2000_0000
ND_OPT_TARGET_LINK_LAYER_ADDRESS = 2
ALL_NODES = IPv6Address("ff02::1")
IPPROTO_ICMPV6 = 58

_CLONE_NEWNET = 0x4000_0000
_NETNS_RUN_DIR = "/run/netns"


def _check_mac(mac: bytes) -> None:
    if len(mac) != 6:
        raise ValueError(f"an Ethernet MAC address has 6 bytes, got {len(mac)}")


def _ethernet(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return dst + src + struct.pack("!H", ethertype)


def _garp(op: int, mac: bytes, ip: IPv4Address, target_mac: bytes) -> bytes:
    _check_mac(mac)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)  # Ethernet / IPv4
    arp += mac + ip.packed + target_mac + ip.packed
    return _ethernet(ETH_BROADCAST, mac, ETHERTYPE_ARP) + arp


def garp_request(mac: bytes, ip: IPv4Address) -> bytes:
    """Broadcast ARP request announcing ``ip`` at ``mac`` (target MAC zero)."""
    return _garp(ARP_REQUEST, mac, ip, b"\x00" * 6)


def garp_reply(mac: bytes, ip: IPv4Address) -> bytes:
    """Broadcast ARP reply announcing ``ip`` at ``mac`` (target MAC = ``mac``)."""
    return _garp(ARP_REPLY, mac, ip, mac)


def icmpv6_checksum(src: IPv6Address, dst: IPv6Address, message: bytes) -> int:
    """RFC 4443 checksum over the IPv6 pseudo-header and ``message``."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    data = pseudo + message
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na(mac: bytes, ip: IPv6Address) -> bytes:
    """Unsolicited neighbour advertisement of ``ip`` at ``mac`` to all nodes."""
    _check_mac(mac)
    option = struct.pack("!BB", ND_OPT_TARGET_LINK_LAYER_ADDRESS, 1) + mac  # length in 8 octets
    body = struct.pack("!I", NA_FLAG_OVERRIDE) + ip.packed + option
    unsummed = struct.pack("!BBH", ICMPV6_NEIGHBOUR_ADVERTISEMENT, 0, 0) + body
    checksum = icmpv6_checksum(ip, ALL_NODES, unsummed)
    icmp = struct.pack("!BBH", ICMPV6_NEIGHBOUR_ADVERTISEMENT, 0, checksum) + body
    # version 6, traffic class 0, flow label 0; hop limit 255 or receivers drop it
    ipv6 = struct.pack("!IHBB", 6 << 28, len(icmp), IPPROTO_ICMPV6, 255)
    ipv6 += ip.packed + ALL_NODES.packed
    dst_mac = b"\x33\x33" + ALL_NODES.packed[-4:]
    return _ethernet(dst_mac, mac, ETHERTYPE_IPV6) + ipv6 + icmp


def announcement(mac: bytes, ip: IPAddress) -> tuple[bytes, ...]:
    """The frames of one announcement round for ``ip``."""
    if isinstance(ip, IPv4Address):
        return (garp_request(mac, ip), garp_reply(mac, ip))
    return (unsolicited_na(mac, ip),)


def call_in_netns(netns: str, func: Callable[[], T]) -> T:
    """Run ``func`` inside network namespace ``netns`` (a name under /run/netns).

    ``setns`` moves only the calling thread, so ``func`` runs in a short-lived
    thread of its own: the caller's threads never leave their namespace, even
    if ``func`` raises. Sockets created there stay in that namespace.
    """
    if not netns or "/" in netns or netns in (".", ".."):
        raise ValueError(f"not a network namespace name: {netns!r}")
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(os.path.join(_NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(func())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


def _open_packet_socket(interface: str) -> socket.socket:
    # Protocol 0: the socket sends only and never queues received frames.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((interface, 0))
        sock.setblocking(False)  # a full queue must fail the round, not hang the loop
    except BaseException:
        sock.close()
        raise
    return sock


class PacketAnnouncer:
    """Sends one announcement round for the VIP on one interface.

    The socket stays open between rounds and is reopened after any error.
    The MAC is read from the bound socket at every round, so a changed MAC is
    announced as it is now.
    """

    def __init__(self, interface: str, vip: IPAddress, netns: str | None = None) -> None:
        self._interface = interface
        self._vip = vip
        self._netns = netns
        self._sock: socket.socket | None = None

    def announce(self) -> Done | Unknown:
        try:
            sock = self._socket()
            mac = self._current_mac(sock)
            for frame in announcement(mac, self._vip):
                sent = sock.send(frame)
                if sent != len(frame):
                    raise OSError(errno.EMSGSIZE, f"sent {sent} of {len(frame)} bytes")
        except OSError as exc:
            self.close()
            return Unknown(self._cause(exc))
        except Exception as exc:
            self.close()
            return Unknown(f"announcing {self._vip} on {self._where()} failed: {exc!r}")
        return Done()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            interface = self._interface
            if self._netns is None:
                self._sock = _open_packet_socket(interface)
            else:
                self._sock = call_in_netns(self._netns, lambda: _open_packet_socket(interface))
        return self._sock

    def _current_mac(self, sock: socket.socket) -> bytes:
        # A deleted interface leaves the socket bound to nothing: empty address.
        mac = sock.getsockname()[4]
        if not isinstance(mac, bytes) or len(mac) != 6 or mac == b"\x00" * 6:
            raise OSError(errno.ENODEV, f"no Ethernet address on {self._interface}")
        return mac

    def _where(self) -> str:
        if self._netns is None:
            return self._interface
        return f"{self._interface} (netns {self._netns})"

    def _cause(self, exc: OSError) -> str:
        where = self._where()
        if isinstance(exc, FileNotFoundError) and self._netns is not None:
            return f"network namespace {self._netns} does not exist"
        if exc.errno in (errno.EPERM, errno.EACCES):
            return (
                f"permission denied opening a raw packet socket on {where}: "
                "announcing needs CAP_NET_RAW (and CAP_SYS_ADMIN to enter a namespace)"
            )
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            return f"interface {where} does not exist (or has no Ethernet address)"
        if exc.errno == errno.ENETDOWN:
            return f"interface {where} is down"
        if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
            return f"send queue of {where} is full"
        return f"announcing {self._vip} on {where} failed: {exc.strerror or exc}"
