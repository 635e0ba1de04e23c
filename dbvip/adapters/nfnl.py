"""The few nf_tables requests the refusal makes, on a plain netfilter netlink socket.

What they build (``nft list table inet <name>`` shows it)::

    table inet <name> {
      set refuse4 { type ipv4_addr; flags timeout; }
      set closing4 { type ipv4_addr; flags timeout; }
      (refuse6 and closing6 of type ipv6_addr)
      chain prerouting {
        type filter hook prerouting priority -300; policy accept;
        ip daddr @closing4 meta l4proto tcp reject with tcp reset
        ip daddr @refuse4 fib daddr type != local meta l4proto tcp reject with tcp reset
        ip daddr @refuse4 fib daddr type != local reject with icmpx type host-unreachable
        (the same three for ip6 daddr @closing6 / @refuse6)
      }
    }

and the set elements (an address with a timeout) that switch them on for a
while: ``refuse`` after the VIP is gone (inert while the address is local),
``closing`` during the removal itself (about a second at most: no new
connection may be accepted between ending the old ones and removing the VIP).

Why by hand and not the ``nft`` tool or libnftables: an element
is added on the hot path of every hand-off, where running ``nft`` costs about
1.6 ms (fork and exec) and needs CAP_NET_ADMIN in the child (the sidecar
clears its ambient capabilities), and loading libnftables costs about 2.4 MiB
of resident memory (measured), more than this whole module's job is worth.
One batch here is one ``sendmsg`` and one answer, well under a millisecond.

Layouts (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h):
``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32; ``nfgenmsg`` =
family u8, version u8, res_id be16; attributes as in rtnetlink, with
``NLA_F_NESTED`` on nested ones. nf_tables integers are big-endian, except
the data compared with a register, which is in the layout the expression
writes (host order for the fib result, one byte for protocol numbers).
Everything is changed in batches: the kernel applies a batch whole or not at all.
"""

from __future__ import annotations

import itertools
import socket
import struct

from dbvip.adapters.nlmsg import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RECV_BYTES,
    NetlinkError,
    attr,
    error_code,
    message,
    open_socket,
    receive,
)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NLM_F_CREATE = 0x400  # a new set or chain is refused (ENOENT) without it
NLM_F_APPEND = 0x800  # a new rule goes after the others, not before
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10

NFT_MSG_NEWTABLE = 0
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFT_MSG_NEWSET = 9
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14

NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 3, 4
NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN, NFTA_SET_ID = 4, 5, 10
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT = 1, 4
NFTA_LIST_ELEM = 1
NFTA_DATA_VALUE = 1
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2

NF_INET_PRE_ROUTING = 0
NF_ACCEPT = 1
# Before conntrack (-200) and every usual filter: a refused packet costs nothing else.
PRIORITY = -300
NFT_SET_TIMEOUT = 0x10
# nft's own datatype numbers (the kernel keeps them for `nft list`).
TYPE_IPADDR, TYPE_IP6ADDR = 7, 8
NFT_REG_1 = 1
NFT_META_IIFNAME, NFT_META_NFPROTO, NFT_META_L4PROTO = 6, 15, 16
IFNAMSIZ = 16
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_FIB_RESULT_ADDRTYPE = 3
NFTA_FIB_F_DADDR, NFTA_FIB_F_IIF = 2, 8
RTN_LOCAL = 2
NFT_REJECT_TCP_RST = 1
NFT_REJECT_ICMPX_UNREACH = 2
NFT_REJECT_ICMPX_HOST_UNREACH = 2

REFUSE, CLOSING = "refuse", "closing"
SETS = {(kind, version): f"{kind}{version}" for kind in (REFUSE, CLOSING) for version in (4, 6)}
CHAIN = "prerouting"
# family version -> (nfproto, daddr offset in the network header, address length, type)
_FAMILIES = {
    4: (NFPROTO_IPV4, 16, 4, TYPE_IPADDR),
    6: (NFPROTO_IPV6, 24, 16, TYPE_IP6ADDR),
}

_CREATES = (NFT_MSG_NEWTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM)
_NFGENMSG = struct.Struct("=BBH")
# The kernel answers at once; the bound is short because the loop thread
# waits on it in the middle of a VIP change.
RECV_TIMEOUT_S = 0.25
_BE32 = struct.Struct(">I")
_BE32S = struct.Struct(">i")
_BE64 = struct.Struct(">Q")
_U32 = struct.Struct("=I")


def _nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def _name(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return attr(kind, _BE32.pack(value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(NFTA_LIST_ELEM, _name(NFTA_EXPR_NAME, name), _nest(NFTA_EXPR_DATA, *attrs))


def _cmp(op: int, data: bytes) -> bytes:
    # nft_cmp attributes: SREG 1, OP 2, DATA 3.
    return _expr("cmp", _be32(1, NFT_REG_1), _be32(2, op), _nest(3, attr(NFTA_DATA_VALUE, data)))


def _meta(key: int) -> bytes:
    return _expr("meta", _be32(2, key), _be32(1, NFT_REG_1))  # KEY 2, DREG 1


def _match_daddr(kind: str, version: int) -> list[bytes]:
    """``ip[6] daddr @<kind><version>``."""
    nfproto, offset, length, _ = _FAMILIES[version]
    set_id = list(SETS).index((kind, version)) + 1
    return [
        _meta(NFT_META_NFPROTO),
        _cmp(NFT_CMP_EQ, bytes([nfproto])),
        # payload: DREG 1, BASE 2, OFFSET 3, LEN 4
        _expr(
            "payload",
            _be32(1, NFT_REG_1),
            _be32(2, NFT_PAYLOAD_NETWORK_HEADER),
            _be32(3, offset),
            _be32(4, length),
        ),
        # lookup: SET 1, SREG 2, SET_ID 4
        _expr("lookup", _name(1, SETS[kind, version]), _be32(2, NFT_REG_1), _be32(4, set_id)),
    ]


def _tcp_reset() -> list[bytes]:
    return [
        _meta(NFT_META_L4PROTO),
        _cmp(NFT_CMP_EQ, bytes([socket.IPPROTO_TCP])),
        _expr("reject", _be32(1, NFT_REJECT_TCP_RST)),
    ]


def _not_local(flags: int) -> list[bytes]:
    return [
        # fib: DREG 1, RESULT 2, FLAGS 3; the address type is a host-order u32.
        _expr("fib", _be32(1, NFT_REG_1), _be32(2, NFT_FIB_RESULT_ADDRTYPE), _be32(3, flags)),
        _cmp(NFT_CMP_NEQ, _U32.pack(RTN_LOCAL)),
    ]


def refusal_rules(version: int, interface: str) -> list[bytes]:
    """The expressions of each rule for one address family, in order.

    ``fib daddr type != local`` is what makes the refusal safe to leave in
    place: while this node has the address, those rules do not match,
    whatever the set holds (a crash, a timeout not yet run out). The lookup
    is made twice, in the main tables and in the arriving interface's (a VRF
    keeps its local routes in a table of its own), and both must say "not
    local". ``iifname`` keeps the refusal to clients on the VIP's own network:
    a packet this node routes on to the new holder (a container, a VM behind
    it) is never refused. The closing rule has no such guards, so its
    elements live about a second at most.
    """
    iifname = [
        _meta(NFT_META_IIFNAME),
        _cmp(NFT_CMP_EQ, interface.encode().ljust(IFNAMSIZ, b"\0")),
    ]
    unreachable = _expr(  # reject: TYPE 1, ICMP_CODE 2 (one byte)
        "reject",
        _be32(1, NFT_REJECT_ICMPX_UNREACH),
        attr(2, bytes([NFT_REJECT_ICMPX_HOST_UNREACH])),
    )
    refuse = [
        *_match_daddr(REFUSE, version),
        *iifname,
        *_not_local(NFTA_FIB_F_DADDR),
        *_not_local(NFTA_FIB_F_DADDR | NFTA_FIB_F_IIF),
    ]
    return [
        b"".join(_match_daddr(CLOSING, version) + _tcp_reset()),
        b"".join(refuse + _tcp_reset()),
        b"".join([*refuse, unreachable]),
    ]


class NftSocket:
    """One ``NETLINK_NETFILTER`` socket; each call sends one batch and waits for its answers.

    Not thread-safe. After any exception other than ``NetlinkError`` the caller
    should close it: an answer may be left unread.
    """

    def __init__(self) -> None:
        self._sock = open_socket(NETLINK_NETFILTER, RECV_TIMEOUT_S)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def create_table(self, table: str, interface: str, fresh: bool = False) -> None:
        """Create ``table`` if missing, with its sets, and its chain's rules afresh.

        Refusals an earlier run armed are kept: they are inert where the VIP
        is and run out by themselves, and a restart in the middle of a
        hand-off keeps them answering. Closing elements, the only ones that
        apply while the VIP is here, are flushed. ``fresh``: delete the table
        first (an earlier version's sets of another shape).
        """
        t = _name(1, table)  # NFTA_*_TABLE is 1 for chains, sets and rules alike
        messages = [(NFT_MSG_NEWTABLE, 0, _name(NFTA_TABLE_NAME, table))]
        if fresh:  # created just above if missing, so that the delete finds one
            messages += [
                (NFT_MSG_DELTABLE, 0, _name(NFTA_TABLE_NAME, table)),
                (NFT_MSG_NEWTABLE, 0, _name(NFTA_TABLE_NAME, table)),
            ]
        for set_id, ((_, version), name) in enumerate(SETS.items(), start=1):
            _, _, length, datatype = _FAMILIES[version]
            body = t + _name(NFTA_SET_NAME, name) + _be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT)
            body += _be32(NFTA_SET_KEY_TYPE, datatype) + _be32(NFTA_SET_KEY_LEN, length)
            messages.append((NFT_MSG_NEWSET, 0, body + _be32(NFTA_SET_ID, set_id)))
        for version in (4, 6):  # a delete without elements flushes the set
            closing = _name(NFTA_SET_ELEM_LIST_SET, SETS[CLOSING, version])
            messages.append((NFT_MSG_DELSETELEM, 0, t + closing))
        hook = _nest(
            NFTA_CHAIN_HOOK,
            _be32(NFTA_HOOK_HOOKNUM, NF_INET_PRE_ROUTING),
            attr(NFTA_HOOK_PRIORITY, _BE32S.pack(PRIORITY)),
        )
        chain = t + _name(NFTA_CHAIN_NAME, CHAIN) + hook + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        messages.append((NFT_MSG_NEWCHAIN, 0, chain + _name(NFTA_CHAIN_TYPE, "filter")))
        # A delete naming only the chain flushes it: the rules are this version's.
        messages.append((NFT_MSG_DELRULE, 0, t + _name(NFTA_RULE_CHAIN, CHAIN)))
        for version in (4, 6):
            for expressions in refusal_rules(version, interface):
                rule = t + _name(NFTA_RULE_CHAIN, CHAIN)
                rule += _nest(NFTA_RULE_EXPRESSIONS, expressions)
                messages.append((NFT_MSG_NEWRULE, NLM_F_APPEND, rule))
        self._batch(messages)

    def set_refusal(self, table: str, address: bytes, refuse_ms: int, closing_ms: int) -> None:
        """Refuse ``address`` for ``refuse_ms`` from now, and close it for
        ``closing_ms`` (0: not at all), in one batch.

        Each element is added, deleted and added again: adding an element that
        exists leaves its old timeout, and deleting one that does not exist
        fails the batch. The kernel removes an element when its time is up.
        """
        version = 4 if len(address) == 4 else 6
        messages = []
        for kind, timeout_ms in ((REFUSE, refuse_ms), (CLOSING, closing_ms)):
            name = SETS[kind, version]
            messages += [
                # No timeout: an element timing out between this add and the
                # delete would fail the batch; the batch is atomic anyway.
                (NFT_MSG_NEWSETELEM, 0, self._element(table, name, address, None)),
                (NFT_MSG_DELSETELEM, 0, self._element(table, name, address, None)),
            ]
            if timeout_ms > 0:
                messages.append(
                    (NFT_MSG_NEWSETELEM, 0, self._element(table, name, address, timeout_ms))
                )
        self._batch(messages)

    @staticmethod
    def _element(table: str, set_name: str, address: bytes, timeout_ms: int | None) -> bytes:
        element = _nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, address))
        if timeout_ms is not None:
            element += attr(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(timeout_ms))
        return (
            _name(NFTA_SET_ELEM_LIST_TABLE, table)
            + _name(NFTA_SET_ELEM_LIST_SET, set_name)
            + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, _nest(NFTA_LIST_ELEM, element))
        )

    def _batch(self, messages: list[tuple[int, int, bytes]]) -> None:
        """Send ``messages`` as one batch; ``NetlinkError`` with the first refusal's errno."""
        begin = next(self._seq)
        parts = [self._marker(NFNL_MSG_BATCH_BEGIN, begin)]
        waiting: set[int] = set()
        for kind, extra, body in messages:
            seq = next(self._seq)
            waiting.add(seq)
            payload = _NFGENMSG.pack(NFPROTO_INET, 0, 0) + body
            flags = NLM_F_REQUEST | NLM_F_ACK | extra
            if kind in _CREATES:
                flags |= NLM_F_CREATE
            kind_nft = (NFNL_SUBSYS_NFTABLES << 8) | kind
            parts.append(message(kind_nft, flags, seq, payload))
        parts.append(self._marker(NFNL_MSG_BATCH_END, next(self._seq)))
        self._sock.sendall(b"".join(parts))
        error = 0
        while waiting and not error:
            for kind, seq, data, start, _end in receive(self._sock):
                if kind != NLMSG_ERROR:
                    continue
                if seq == begin:
                    # The batch as a whole was refused (EPERM, no nf_tables, ...):
                    # no message of it gets an answer of its own.
                    error = error or error_code(data, start) or 1
                elif seq in waiting:
                    waiting.discard(seq)
                    error = error or error_code(data, start)
        if error:
            # The batch was refused whole: answers still queued for it are
            # dropped so the next batch does not read them as its own.
            self._drain()
            raise NetlinkError(error)

    def _drain(self) -> None:
        self._sock.setblocking(False)
        try:
            while self._sock.recv(RECV_BYTES):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self._sock.settimeout(RECV_TIMEOUT_S)

    @staticmethod
    def _marker(kind: int, seq: int) -> bytes:
        """A batch's begin or end; ``res_id`` names the subsystem the batch is for."""
        body = _NFGENMSG.pack(0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
        return message(kind, NLM_F_REQUEST, seq, body)
