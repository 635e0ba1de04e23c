"""The few rtnetlink requests the VIP driver makes, on a plain socket.

A link's index (and its ``promote_secondaries``), its addresses, and adding,
replacing or deleting one address. Why not pyroute2: the driver looks at the
interface on every tick (five times a second by default), and pyroute2 0.9
spends about 0.8 ms of CPU per request (an asyncio loop run per call, every
attribute decoded), which made those looks most of an idle sidecar's CPU;
importing it also cost about 10 MiB of memory. Requests are built with
``struct``, and only the fields the driver compares are decoded.

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
RTM_DELADDR = 21
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
IFLA_IFNAME = 3
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
# IPV4_DEVCONF_PROMOTE_SECONDARIES (linux/ip.h) is 20; the array starts at 1.
PROMOTE_SECONDARIES_AT = 19
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_CACHEINFO = 6
IFA_FLAGS = 8
# What each change asks of the kernel; "add" refuses an address already there.
CHANGES = {
    "add": (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL),
    "replace": (RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE),
    "del": (RTM_DELADDR, 0),
}
NLA_TYPE_MASK = 0x3FFF

_HEADER = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERROR = struct.Struct("=i")
_CACHEINFO = struct.Struct("=IIII")  # preferred, valid, cstamp, tstamp
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


@dataclass(frozen=True)
class LinkEntry:
    index: int
    promote_secondaries: bool  # IPv4: a primary's deletion promotes a secondary


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _RTATTR.pack(_RTATTR.size + len(payload), kind) + payload
    return raw.ljust(_align(len(raw)), b"\0")


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
        message, start, _end = self._link_message(name)
        return int(_IFINFOMSG.unpack_from(message, start)[2])

    def link(self, name: str) -> LinkEntry:
        """As ``link_index``, with the interface's ``promote_secondaries``."""
        message, start, end = self._link_message(name)
        index = int(_IFINFOMSG.unpack_from(message, start)[2])
        spec = _attributes(message, start + _IFINFOMSG.size, end).get(IFLA_AF_SPEC, b"")
        inet = _attributes(spec, 0, len(spec)).get(socket.AF_INET, b"")
        conf = _attributes(inet, 0, len(inet)).get(IFLA_INET_CONF, b"")
        at = PROMOTE_SECONDARIES_AT * _U32.size
        promote = len(conf) >= at + _U32.size and _U32.unpack_from(conf, at)[0] != 0
        return LinkEntry(index, promote)

    def change_address(
        self,
        command: str,
        index: int,
        interface: IPInterface,
        *,
        lifetime_s: int | None = None,
        flags: int = 0,
    ) -> None:
        """``command`` (add, replace, del) ``interface`` on link ``index``;
        ``lifetime_s`` is its valid and preferred lifetime. ``RtnlError`` if refused."""
        kind, extra = CHANGES[command]
        family = socket.AF_INET if interface.version == 4 else socket.AF_INET6
        packed = interface.ip.packed
        body = _IFADDRMSG.pack(family, interface.network.prefixlen, 0, 0, index)
        if family == socket.AF_INET:
            body += _attr(IFA_LOCAL, packed)  # the kernel wants it for IPv4
        body += _attr(IFA_ADDRESS, packed)
        if lifetime_s is not None:
            body += _attr(IFA_CACHEINFO, _CACHEINFO.pack(lifetime_s, lifetime_s, 0, 0))
        if flags:
            body += _attr(IFA_FLAGS, _U32.pack(flags))
        self._ask(kind, NLM_F_REQUEST | NLM_F_ACK | extra, body)

    def _link_message(self, name: str) -> tuple[bytes, int, int]:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        body += _attr(IFLA_IFNAME, name.encode() + b"\0")
        for kind, message, start, end in self._ask(RTM_GETLINK, NLM_F_REQUEST, body):
            if kind == RTM_NEWLINK:
                return message, start, end
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
