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

from dbvip.adapters.nlmsg import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkError,
    attr,
    attributes,
    error_code,
    message,
    open_socket,
    receive,
)
from dbvip.model import IPInterface

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
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

_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_U32 = struct.Struct("=I")
_CACHEINFO = struct.Struct("=IIII")  # preferred, valid, cstamp, tstamp


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


def parse_address(message: bytes, body: int, end: int) -> tuple[int, AddressEntry | None]:
    """(interface index, entry) of one RTM_NEWADDR body; no entry without an address."""
    family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(message, body)
    attrs = attributes(message, body + _IFADDRMSG.size, end)
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
    exception other than ``NetlinkError`` the caller should close it: a reply
    may be left half read.
    """

    def __init__(self) -> None:
        self._sock = open_socket(socket.NETLINK_ROUTE)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def link_index(self, name: str) -> int:
        """The index of interface ``name``; ``NetlinkError`` ENODEV if there is none."""
        message, start, _end = self._link_message(name)
        return int(_IFINFOMSG.unpack_from(message, start)[2])

    def link(self, name: str) -> LinkEntry:
        """As ``link_index``, with the interface's ``promote_secondaries``."""
        message, start, end = self._link_message(name)
        index = int(_IFINFOMSG.unpack_from(message, start)[2])
        spec = attributes(message, start + _IFINFOMSG.size, end).get(IFLA_AF_SPEC, b"")
        inet = attributes(spec, 0, len(spec)).get(socket.AF_INET, b"")
        conf = attributes(inet, 0, len(inet)).get(IFLA_INET_CONF, b"")
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
        ``lifetime_s`` is its valid and preferred lifetime. ``NetlinkError`` if refused."""
        kind, extra = CHANGES[command]
        family = socket.AF_INET if interface.version == 4 else socket.AF_INET6
        packed = interface.ip.packed
        body = _IFADDRMSG.pack(family, interface.network.prefixlen, 0, 0, index)
        if family == socket.AF_INET:
            body += attr(IFA_LOCAL, packed)  # the kernel wants it for IPv4
        body += attr(IFA_ADDRESS, packed)
        if lifetime_s is not None:
            body += attr(IFA_CACHEINFO, _CACHEINFO.pack(lifetime_s, lifetime_s, 0, 0))
        if flags:
            body += attr(IFA_FLAGS, _U32.pack(flags))
        self._ask(kind, NLM_F_REQUEST | NLM_F_ACK | extra, body)

    def _link_message(self, name: str) -> tuple[bytes, int, int]:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        body += attr(IFLA_IFNAME, name.encode() + b"\0")
        for kind, reply, start, end in self._ask(RTM_GETLINK, NLM_F_REQUEST, body):
            if kind == RTM_NEWLINK:
                return reply, start, end
        raise OSError(f"no answer to the link request for {name}")

    def addresses(self, index: int, family: int) -> list[AddressEntry]:
        """Every address of ``family`` on interface ``index``."""
        # The kernel may ignore the index in a dump (no strict checking): filter here.
        body = _IFADDRMSG.pack(family, 0, 0, 0, index)
        found = []
        for kind, reply, start, end in self._ask(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body):
            if kind == RTM_NEWADDR:
                where, entry = parse_address(reply, start, end)
                if where == index and entry is not None:
                    found.append(entry)
        return found

    def _ask(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes, int, int]]:
        """Send one request; its reply messages as (type, datagram, body start, end)."""
        seq = next(self._seq)
        self._sock.send(message(kind, flags, seq, body))
        replies: list[tuple[int, bytes, int, int]] = []
        while True:
            for mtype, mseq, data, start, end in receive(self._sock):
                if mseq != seq:
                    continue  # left over from an earlier request
                if mtype == NLMSG_ERROR:
                    if code := error_code(data, start):
                        raise NetlinkError(code)
                    return replies  # an acknowledgement
                if mtype == NLMSG_DONE:
                    return replies
                replies.append((mtype, data, start, end))
                if not flags & NLM_F_DUMP:
                    return replies  # a plain request has one answer
