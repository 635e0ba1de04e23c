"""What every netlink socket of dbvip shares: opening one, framing requests,
reading answers (``rtnl``: addresses; ``nfnl``: nf_tables; ``sockdiag``:
connections).

``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32; attributes are
len u16, type u16, then the payload, padded to 4 bytes (linux/netlink.h).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
HEADER = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")
# A dump answers in datagrams of at most 32 KiB.
RECV_BYTES = 64 * 1024
RECV_TIMEOUT_S = 2.0  # the kernel answers at once; this only bounds a surprise


class NetlinkError(OSError):
    """The kernel answered the request with an error: ``code`` is its errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code, f"netlink request failed: errno {code}")
        self.code = code


def align(length: int) -> int:
    return (length + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    raw = _RTATTR.pack(_RTATTR.size + len(payload), kind) + payload
    return raw.ljust(align(len(raw)), b"\0")


def attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """The attributes in ``data[start:end]`` by type (the last of a type wins)."""
    found: dict[int, bytes] = {}
    while start + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, start)
        if length < _RTATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = data[start + _RTATTR.size : start + length]
        start += align(length)
    return found


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def open_socket(protocol: int, timeout_s: float = RECV_TIMEOUT_S) -> socket.socket:
    """A netlink socket bound to no multicast group (only answers arrive),
    with a receive timeout."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.bind((0, 0))
        sock.settimeout(timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


def receive(sock: socket.socket) -> Iterator[tuple[int, int, bytes, int, int]]:
    """The messages of one datagram as (type, seq, datagram, body start, body end)."""
    data, _, msg_flags, _ = sock.recvmsg(RECV_BYTES)
    if msg_flags & socket.MSG_TRUNC:
        raise OSError(f"netlink reply larger than {RECV_BYTES} bytes")
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            raise OSError(f"malformed netlink message of {length} bytes")
        yield kind, seq, data, offset + HEADER.size, offset + length
        offset += align(length)


def error_code(data: bytes, start: int) -> int:
    """The errno of an ``NLMSG_ERROR`` body (0: an acknowledgement)."""
    (code,) = _ERROR.unpack_from(data, start)
    return -int(code)
