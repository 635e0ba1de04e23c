"""Refuse, for a while, the connections that still reach this node for a VIP it gave away.

Between the moment a node removes a VIP and the moment the new holder's
gratuitous ARP reaches a client, the client's neighbour entry still names
this node's MAC. Without help, the kernel drops a SYN for an address it no
longer has, silently, and the client tries again only after its TCP
retransmission timeout (1 s, then 2 s, 4 s): a one-attempt-at-a-time
application waits a second or more for a hand-off that took 20 ms. With the
refusal, such a SYN is answered with a TCP reset (anything else with an ICMP
host unreachable): ``connect`` fails at once and the client's retry goes out
after it has learned the new MAC. A packet of an old connection gets the
reset too, so a pooled connection to the old holder fails at its next use
instead of hanging.

The refusal is an element (the VIP, with a timeout) in a set of a table of
this sidecar's own (``dbvip.adapters.nfnl``). Why it is safe to leave behind:

* the rule matches only while the address is **not** local here
  (``fib daddr type != local``): while this node holds the VIP again, the
  refusal does nothing, whatever the set holds;
* the kernel removes the element when its timeout runs out, even after this
  process was killed or frozen;
* a start flushes what of an earlier run could apply while the VIP is here
  (the closing elements below) and writes the rules afresh; it keeps the
  refusals, inert where the VIP is, so a restart in the middle of a hand-off
  keeps answering.

So the element is armed before the VIP is removed (no gap in which a SYN is
dropped), and while the VIP is held it is kept armed until ``refuse_s``
after the VIP's own kernel lifetime: a holder that is frozen or killed, whose
VIP the kernel expires, refuses from that instant too.

A removal goes: (1) refuse once gone, and *close* the VIP (new TCP
connections refused even though the address is still here: a ``closing``
element, about a second at most, in case this process dies right there);
(2) end the connections already established here on the VIP, a reset to
each client while it can still leave (``dbvip.adapters.sockdiag``); without
(1), a client could connect in between and wait for an answer that, once the
address is gone, can never leave (seen here: a whole 10 s connect_timeout in
about one switchover in ten); (3) remove the VIP; (4) stop closing.

A refusal that cannot be set (no nf_tables in this kernel, a firewall manager
that flushed the ruleset and a failed rebuild) never stops a VIP change: it is
logged, and the hand-off goes on as it would without it.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import zlib
from collections.abc import Callable
from typing import Protocol

from dbvip.adapters.arp import call_in_netns
from dbvip.adapters.nfnl import NftSocket
from dbvip.adapters.nlmsg import NetlinkError
from dbvip.adapters.sockdiag import SockDiag
from dbvip.model import KERNEL_EXPIRY_SLACK_S, IPAddress
from dbvip.ports import Done, Unknown, VipChanged, VipDriver, VipReading

log = logging.getLogger("dbvip.refusal")
# How long a removal may keep new connections to a VIP still here refused, if
# this process dies in the middle of it; a removal itself takes milliseconds.
CLOSING_S = 1.0


def table_name(cluster: str, interface: str, vip: IPAddress) -> str:
    """``dbvip_<interface>_<hash>``: one table per sidecar (cluster, interface and
    VIP), readable in ``nft list tables``, never shared with another sidecar."""
    # crc32, not hashlib: zlib is loaded anyway, hashlib would cost 0.6 MiB here.
    identity = "\0".join((cluster, interface, str(vip))).encode()
    digest = f"{zlib.crc32(identity):08x}"
    return f"dbvip_{re.sub(r'[^A-Za-z0-9_]', '_', interface)}_{digest}"


class NftRefusal:
    """The refusal of one VIP in one table; each call is one netlink batch.

    No call raises: every failure comes back as ``Unknown`` with its cause.
    """

    def __init__(
        self, table: str, vip: IPAddress, interface: str, netns: str | None = None
    ) -> None:
        self.table = table
        self._vip = vip
        self._interface = interface
        self._netns = netns
        self._nft: NftSocket | None = None
        self._diag: SockDiag | None = None
        self._prepared = False
        self._lock = threading.Lock()

    def prepare(self) -> Done | Unknown:
        """Create the table, or bring an earlier run's up to date (its closing ended)."""
        with self._lock:
            return self._guarded("creating", self._create)

    def refuse_for(self, seconds: float, closing_s: float = 0) -> Done | Unknown:
        """Refuse the VIP here from now for ``seconds`` (only while it is not
        local), and close it (refuse new TCP connections even while it is
        local) for ``closing_s``; 0 ends the closing."""
        refuse_ms = max(1, round(seconds * 1000))
        closing_ms = max(0, round(closing_s * 1000))
        with self._lock:
            return self._guarded("arming", lambda nft: self._set(nft, refuse_ms, closing_ms))

    def end_connections(self) -> int | Unknown:
        """Abort this node's TCP connections on the VIP (each client gets a reset);
        how many there were."""
        with self._lock:
            try:
                if self._diag is None:
                    self._diag = (
                        SockDiag() if self._netns is None else call_in_netns(self._netns, SockDiag)
                    )
                return self._diag.reset_all(self._vip)
            except Exception as e:  # an adapter never raises into the loop
                if self._diag is not None:
                    self._diag.close()
                    self._diag = None
                return Unknown(f"ending the connections on {self._vip}: {_cause(e)}")

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self._diag is not None:
                self._diag.close()
                self._diag = None

    def _create(self, nft: NftSocket) -> None:
        try:
            nft.create_table(self.table, self._interface)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            # A set of another shape, from another version: start afresh.
            nft.create_table(self.table, self._interface, fresh=True)
        self._prepared = True

    def _set(self, nft: NftSocket, refuse_ms: int, closing_ms: int) -> None:
        if not self._prepared:
            self._create(nft)
        try:
            nft.set_refusal(self.table, self._vip.packed, refuse_ms, closing_ms)
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise
            # The table is gone (`nft flush ruleset`, a firewall reload): build it again.
            self._create(nft)
            nft.set_refusal(self.table, self._vip.packed, refuse_ms, closing_ms)

    def _guarded(self, doing: str, call: Callable[[NftSocket], None]) -> Done | Unknown:
        try:
            if self._nft is None:
                self._nft = (
                    NftSocket() if self._netns is None else call_in_netns(self._netns, NftSocket)
                )
            call(self._nft)
        except NetlinkError as e:
            self._prepared = False  # rebuilt at the next try
            return Unknown(f"{doing} the refusal of {self._vip} in nftables table "
                           f"{self.table}: {_cause(e)}")  # fmt: skip
        except Exception as e:  # an adapter never raises into the loop
            self._drop()
            return Unknown(f"{doing} the refusal of {self._vip}: {_cause(e)}")
        return Done()

    def _drop(self) -> None:
        self._prepared = False
        if self._nft is not None:
            self._nft.close()
            self._nft = None


def _cause(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


class Refusal(Protocol):
    """What ``RefusingVipDriver`` needs of a refusal (``NftRefusal``, or a fake)."""

    table: str

    def prepare(self) -> Done | Unknown: ...

    def refuse_for(self, seconds: float, closing_s: float = 0) -> Done | Unknown: ...

    def end_connections(self) -> int | Unknown: ...

    def close(self) -> None: ...


class RefusalObserver(Protocol):
    """Told each outcome (``dbvip.metrics.Metrics``)."""

    def refusal_done(self, ready: bool) -> None: ...

    def connections_ended(self, count: int) -> None: ...


class RefusingVipDriver:
    """A ``VipDriver`` whose removals leave the refusal behind.

    The refusal's steps of a removal run inside the inner driver's, once it
    has checked that the address is the VIP and may be deleted, just before
    the delete: an address the driver refuses to touch (the node's own) is
    never closed and its connections never ended. Adding or refreshing the
    VIP keeps the refusal armed until ``refuse_s`` past its kernel lifetime.
    Nothing the refusal does (a failure, an exception, its observer's) ever
    changes what the VIP change does or returns: it is logged once per run of
    failures, and ``dbvip_refusal_ready`` says it.
    """

    def __init__(
        self,
        inner: VipDriver,
        refusal: Refusal,
        refuse_s: float,
        observer: RefusalObserver | None = None,
    ) -> None:
        self._inner = inner
        self.observer = observer
        self._refusal = refusal
        self._refuse_s = refuse_s
        self.table = refusal.table
        self.last_error = ""  # why the refusal could not be set, "" when it could
        self._ending_error = ""

    def prepare(self) -> None:
        self._step(self._refusal.prepare)

    def observe(self) -> VipReading:
        return self._inner.observe()

    def add(self, lifetime_s: int) -> VipChanged | Unknown:
        added = self._inner.add(lifetime_s)
        if isinstance(added, VipChanged):
            # Past the instant the kernel may expire the VIP by itself.
            seconds = lifetime_s + KERNEL_EXPIRY_SLACK_S + self._refuse_s
            self._step(lambda: self._refusal.refuse_for(seconds))
        return added

    def remove(self, before_delete: Callable[[], None] | None = None) -> VipChanged | Unknown:
        closed = False

        def at_the_delete() -> None:
            nonlocal closed
            # 1. Refused once gone, and closed to new connections meanwhile.
            self._step(lambda: self._refusal.refuse_for(self._refuse_s, closing_s=CLOSING_S))
            closed = True
            # 2. While the VIP is still here: afterwards nothing sent on these
            #    connections (their resets included) could leave this node.
            self._end_connections()
            if before_delete is not None:
                before_delete()

        try:
            return self._inner.remove(before_delete=at_the_delete)  # 3. the delete
        finally:
            if closed:
                # 4. Closed no longer: the refusal (or, if the delete failed and
                #    the VIP is still here, the VIP itself) takes over.
                self._step(lambda: self._refusal.refuse_for(self._refuse_s))

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._refusal.close()

    def _end_connections(self) -> None:
        try:
            ended = self._refusal.end_connections()
        except Exception as e:
            ended = Unknown(f"ending the connections on the VIP: {_cause(e)}")
        if isinstance(ended, Unknown):
            # Not every kernel has it (CONFIG_INET_DIAG_DESTROY): said once.
            if ended.cause != self._ending_error:
                log.warning("%s (clients waiting for an answer on them time out instead)",
                            ended.cause)  # fmt: skip
            self._ending_error = ended.cause
            self._tell(lambda o: o.refusal_done(False))
            return
        self._ending_error = ""
        self._tell(lambda o: o.connections_ended(ended))
        if ended:
            log.info("ended %d connection(s) on the VIP before removing it: their clients "
                     "reconnect at once", ended)  # fmt: skip

    def _step(self, call: Callable[[], Done | Unknown]) -> None:
        try:
            result = call()
        except Exception as e:  # a refusal never stops a VIP change
            result = Unknown(f"the refusal failed: {_cause(e)}")
        error = result.cause if isinstance(result, Unknown) else ""
        self._tell(lambda o: o.refusal_done(not error))
        if error and error != self.last_error:
            log.warning("refusal unavailable: %s (clients that still send to this node for "
                        "the VIP wait for their TCP retry instead)", error)  # fmt: skip
        elif not error and self.last_error:
            log.info("refusal available again")
        self.last_error = error

    def _tell(self, event: Callable[[RefusalObserver], None]) -> None:
        if self.observer is None:
            return
        try:
            event(self.observer)
        except Exception:  # metrics never stop a VIP change
            log.exception("the refusal's observer failed")
