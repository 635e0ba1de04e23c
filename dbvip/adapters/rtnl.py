"""Two read-only rtnetlink queries on a plain socket: a link's index, its addresses.

Why not pyroute2 here: the VIP driver looks at the interface on every tick
(five times a second by default), and pyroute2 0.9 spends about 0.8 ms of CPU
per request (an asyncio loop run per call, every attribute decoded), which
made these two looks most of an idle sidecar's CPU. This module builds the
two requests with ``struct`` and decodes only the fields the driver compares:
about 30 µs per look. Changes to addresses stay with pyroute2.

Layouts (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h):
``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32;
``ifinfomsg`` = family u8, pad u8, type u16, index s32, flags u32, change u32;
``ifaddrmsg`` = family u8, prefixlen u8, flags u8, scope u8, index u32;
``rtattr`` = len u16, type u16, then the payload, padded to 4 bytes.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct
from dataclasses import dataclass

from dbvip.model import IPInterface

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
NLA_TYPE_MASK = 0x3FFF

_HEADER = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERROR = struct.Struct("=i")
# A dump answers in datagrams of at most 32 KiB; a link carries a few KiB.
RECV_BYTES = 64 * 1024
RECV_TIMEOUT_S = 2.0  # the kernel answers at once; this only bounds a surprise


class RtnlError(OSError):
    """The kernel answered the request with an error: ``code`` is its errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code, f"netlink request failed: errno {code}")
        self.code = code


@dataclass(frozen=True)
class AddressEntry:
    packed: bytes  # the address (IFA_LOCAL, else IFA_ADDRESS), 4 or 16 bytes
    prefixlen: int
    flags: int  # IFA_FLAGS when present (it holds all 32 bits), else ifa_flags

    @property
    def interface(self) -> IPInterface:
        # Built on demand: parsing into ipaddress objects on every look costs
        # more than the rest of the look.
        return ipaddress.ip_interface((ipaddress.ip_address(self.packed), self.prefixlen))

    def same(self, interface: IPInterface) -> bool:
        """The same address with the same prefix length as ``interface``."""
        return (
            self.packed == interface.packed
            and self.prefixlen == interface.network.prefixlen
            and self.interface == interface
        )


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while start + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, start)
        if length < _RTATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = data[start + _RTATTR.size : start + length]
        start += _align(length)
    return found


def parse_address(message: bytes, body: int, end: int) -> tuple[int, AddressEntry | None]:
    """(interface index, entry) of one RTM_NEWADDR body; no entry without an address."""
    family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(message, body)
    attrs = _attributes(message, body + _IFADDRMSG.size, end)
    # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or len(raw) != (4 if family == socket.AF_INET else 16):
        return index, None
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= _U32.size:
        (flags,) = _U32.unpack_from(attrs[IFA_FLAGS])
    return index, AddressEntry(raw, prefixlen, flags)


class RtnlSocket:
    """One ``NETLINK_ROUTE`` socket, requests answered in order on the caller's thread.

    Not thread-safe (the driver holds its lock around it). After any
    exception other than ``RtnlError`` the caller should close it: a reply
    may be left half read.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))  # no multicast groups: only answers arrive
            self._sock.settimeout(RECV_TIMEOUT_S)
        except BaseException:
            self._sock.close()
            raise
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def link_index(self, name: str) -> int:
        """The index of interface ``name``; ``RtnlError`` ENODEV if there is none."""
        encoded = name.encode() + b"\0"
        attr = _RTATTR.pack(_RTATTR.size + len(encoded), IFLA_IFNAME) + encoded
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr.ljust(_align(len(attr)), b"\0")
        for kind, message, start, _end in self._ask(RTM_GETLINK, NLM_F_REQUEST, body):
            if kind == RTM_NEWLINK:
                _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(message, start)
                return int(index)
        raise OSError(f"no answer to the link request for {name}")

    def addresses(self, index: int, family: int) -> list[AddressEntry]:
        """Every address of ``family`` on interface ``index``."""
        # The kernel may ignore the index in a dump (no strict checking): filter here.
        body = _IFADDRMSG.pack(family, 0, 0, 0, index)
        found = []
        for kind, message, start, end in self._ask(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body):
            if kind == RTM_NEWADDR:
                where, entry = parse_address(message, start, end)
                if where == index and entry is not None:
                    found.append(entry)
        return found

    def _ask(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes, int, int]]:
        """Send one request; its reply messages as (type, datagram, body start, end)."""
        seq = next(self._seq)
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body)
        replies: list[tuple[int, bytes, int, int]] = []
        while True:
            data, _, msg_flags, _ = self._sock.recvmsg(RECV_BYTES)
            if msg_flags & socket.MSG_TRUNC:
                raise OSError(f"netlink reply larger than {RECV_BYTES} bytes")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, _mflags, mseq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise OSError(f"malformed netlink message of {length} bytes")
                start, end = offset + _HEADER.size, offset + length
                offset += _align(length)
                if mseq != seq:
                    continue  # left over from an earlier request
                if mtype == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(data, start)
                    if code == 0:  # an acknowledgement
                        return replies
                    raise RtnlError(-code)
                if mtype == NLMSG_DONE:
                    return replies
                replies.append((mtype, data, start, end))
                if not flags & NLM_F_DUMP:
                    return replies  # a plain request has one answer
