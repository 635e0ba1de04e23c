"""End this node's TCP connections on the VIP, on a plain sock_diag netlink socket.

Why: a connection a client opened through the VIP is still established here
when the VIP is removed, and from then on nothing this node sends on it can
leave (its source address is no longer local): a client waiting for an answer
(a login in progress, a query running) waits for its own timeout, seen here
as a whole ``connect_timeout`` of 10 s during a switchover. Aborting such a
socket while the VIP is still here sends the client a TCP reset at once
(``tcp_abort``, the kernel's ``SOCK_DESTROY``, what ``ss -K`` does), so it
reconnects right away, to the new holder. Listening sockets are never touched.

Why by hand: one dump and one request per connection, each well under a
millisecond, on the hot path of a hand-off; running ``ss -K`` costs a fork
and exec (milliseconds) and CAP_NET_ADMIN in the child.

Layouts (linux/sock_diag.h, linux/inet_diag.h): ``inet_diag_req_v2`` =
family u8, protocol u8, ext u8, pad u8, states u32, then ``inet_diag_sockid``
= sport be16, dport be16, src 16 bytes, dst 16 bytes, interface u32,
cookie 2 x u32; ``inet_diag_msg`` = family u8, state u8, timer u8, retrans
u8, then the sockid, then expires, rqueue, wqueue, uid, inode (u32 each).

``SOCK_DESTROY`` needs a kernel built with ``CONFIG_INET_DIAG_DESTROY``
(distribution kernels have it; without it the request fails with
EOPNOTSUPP, said once in the log and by ``dbvip_refusal_ready``).
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct

from dbvip.adapters.nlmsg import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NetlinkError,
    error_code,
    message,
    open_socket,
    receive,
)
from dbvip.model import IPAddress

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
TCP_LISTEN = 10
TCP_TIME_WAIT = 6
# Every TCP state but LISTEN (a server bound to the VIP keeps listening) and
# TIME_WAIT (no peer left to tell).
STATES = 0xFFF & ~(1 << TCP_LISTEN) & ~(1 << TCP_TIME_WAIT)

_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16s")  # ports and addresses; interface and cookie follow
_SOCKID_SIZE = 48
_MSG_HEAD = struct.Struct("=BBBB")


class SockDiag:
    """One ``NETLINK_SOCK_DIAG`` socket. Not thread-safe; close it after an ``OSError``
    other than ``NetlinkError`` (an answer may be left unread)."""

    def __init__(self) -> None:
        # A short bound: the loop thread waits on it in the middle of a removal.
        self._sock = open_socket(NETLINK_SOCK_DIAG, timeout_s=0.25)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def connections(self, local: IPAddress) -> list[tuple[int, bytes]]:
        """(family, raw ``inet_diag_sockid``) of each TCP connection whose local
        address is ``local``; for an IPv4 address, those of dual-stack IPv6
        sockets too (``::ffff:a.b.c.d``, a proxy listening on ``[::]``)."""
        found = self._dump(socket.AF_INET6 if local.version == 6 else socket.AF_INET,
                           local.packed.ljust(16, b"\0"))  # fmt: skip
        if local.version == 4:
            found += self._dump(socket.AF_INET6, b"\0" * 10 + b"\xff\xff" + local.packed)
        return found

    def _dump(self, family: int, want: bytes) -> list[tuple[int, bytes]]:
        body = _REQ.pack(family, socket.IPPROTO_TCP, 0, STATES) + bytes(_SOCKID_SIZE)
        seq = self._send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, body)
        found: list[tuple[int, bytes]] = []
        while True:
            for kind, mseq, data, start, _end in receive(self._sock):
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    raise NetlinkError(error_code(data, start))
                sockid = data[start + _MSG_HEAD.size : start + _MSG_HEAD.size + _SOCKID_SIZE]
                if len(sockid) == _SOCKID_SIZE and _SOCKID.unpack_from(sockid)[2] == want:
                    found.append((family, sockid))

    def destroy(self, family: int, sockid: bytes) -> None:
        """Abort one connection (the peer gets a reset); ``NetlinkError`` if refused,
        ENOENT when it closed meanwhile."""
        body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
        seq = self._send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, body)
        while True:
            for kind, mseq, data, start, _end in receive(self._sock):
                if mseq == seq and kind == NLMSG_ERROR:
                    if code := error_code(data, start):
                        raise NetlinkError(code)
                    return

    def reset_all(self, local: IPAddress) -> int:
        """Abort every TCP connection on ``local``; how many were aborted."""
        done = 0
        for family, sockid in self.connections(local):
            try:
                self.destroy(family, sockid)
                done += 1
            except NetlinkError as e:
                if e.code != errno.ENOENT:  # it closed by itself meanwhile
                    raise
        return done

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        seq = next(self._seq)
        self._sock.send(message(kind, flags, seq, body))
        return seq
