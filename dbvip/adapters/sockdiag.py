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
"""

from __future__ import annotations

import itertools
import socket
import struct

from dbvip.adapters.rtnl import NLMSG_DONE, NLMSG_ERROR, RtnlError
from dbvip.model import IPAddress

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
TCP_LISTEN = 10
TCP_TIME_WAIT = 6
# Every TCP state but LISTEN (a server bound to the VIP keeps listening) and
# TIME_WAIT (no peer left to tell).
STATES = 0xFFF & ~(1 << TCP_LISTEN) & ~(1 << TCP_TIME_WAIT)

_HEADER = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16s")  # ports and addresses; interface and cookie follow
_SOCKID_SIZE = 48
_MSG_HEAD = struct.Struct("=BBBB")
_ERROR = struct.Struct("=i")
RECV_BYTES = 64 * 1024
RECV_TIMEOUT_S = 2.0


class SockDiag:
    """One ``NETLINK_SOCK_DIAG`` socket. Not thread-safe; close it after an ``OSError``
    other than ``RtnlError`` (an answer may be left unread)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(RECV_TIMEOUT_S)
        except BaseException:
            self._sock.close()
            raise
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def connections(self, local: IPAddress) -> list[bytes]:
        """The socket ids (raw ``inet_diag_sockid``) of TCP connections whose
        local address is ``local``."""
        family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        body = _REQ.pack(family, socket.IPPROTO_TCP, 0, STATES) + bytes(_SOCKID_SIZE)
        seq = self._send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, body)
        want = local.packed.ljust(16, b"\0")
        found: list[bytes] = []
        while True:
            data = self._sock.recv(RECV_BYTES)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, mseq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise OSError(f"malformed netlink message of {length} bytes")
                start = offset + _HEADER.size
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(data, start)
                    raise RtnlError(-code)
                sockid = data[start + _MSG_HEAD.size : start + _MSG_HEAD.size + _SOCKID_SIZE]
                if len(sockid) == _SOCKID_SIZE and _SOCKID.unpack_from(sockid)[2] == want:
                    found.append(sockid)

    def destroy(self, local: IPAddress, sockid: bytes) -> None:
        """Abort one connection (the peer gets a reset); ``RtnlError`` if refused,
        ENOENT when it closed meanwhile."""
        family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
        seq = self._send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, body)
        while True:
            data = self._sock.recv(RECV_BYTES)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, mseq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError(f"malformed netlink message of {length} bytes")
                start = offset + _HEADER.size
                offset += (length + 3) & ~3
                if mseq == seq and kind == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(data, start)
                    if code:
                        raise RtnlError(-code)
                    return

    def reset_all(self, local: IPAddress) -> int:
        """Abort every TCP connection on ``local``; how many were aborted."""
        done = 0
        for sockid in self.connections(local):
            try:
                self.destroy(local, sockid)
                done += 1
            except RtnlError as e:
                if e.code != 2:  # ENOENT: it closed by itself meanwhile
                    raise
        return done

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        seq = next(self._seq)
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body)
        return seq
