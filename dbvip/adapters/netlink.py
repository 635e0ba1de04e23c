"""The VIP on one interface, over rtnetlink (``dbvip.adapters.rtnl``; never the ``ip`` tool).

The VIP is added with ``valid_lft = preferred_lft = lifetime_s`` so that the
kernel removes it by itself when this process stops refreshing it. Addresses
are compared as values, address and prefix length both.

What this driver refuses to do, because it would harm the node's own address:

* put a lifetime on, or delete, an address the kernel marks permanent (no
  lifetime): dbvip never adds one, so it is someone else's (often the node's
  own address given as the VIP by mistake);
* add the VIP when the interface carries the same address with another prefix
  length (the node's own address, most likely);
* add an IPv4 VIP into the subnet of another address on the interface (same
  prefix length) while ``promote_secondaries`` is off, or delete such a VIP
  while it is the subnet's primary address: the kernel then deletes every
  secondary of the subnet with it, the node's own address included, and its
  lifetime expiry does the same. A /32 (or /128) VIP never shares a subnet.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from dbvip.adapters.arp import call_in_netns
from dbvip.adapters.nlmsg import NetlinkError
from dbvip.adapters.rtnl import AddressEntry, LinkEntry, RtnlSocket
from dbvip.model import IPInterface, VipPresence
from dbvip.ports import Unknown, VipChanged, VipReading

T = TypeVar("T")

IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80
_INFINITE_LIFETIME_S = 0xFFFF_FFFF


class _RefusedError(Exception):
    """The call cannot be done safely, or failed with a known cause."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _permanent(address: AddressEntry) -> bool:
    return bool(address.flags & IFA_F_PERMANENT)


def _secondary(address: AddressEntry) -> bool:
    return bool(address.flags & IFA_F_SECONDARY)


class NetlinkVipDriver:
    """Implements ``dbvip.ports.VipDriver`` for one VIP on one interface.

    One netlink socket is kept open and reopened after an error that is not
    a plain answer from the kernel. ``netns`` names a namespace under
    /run/netns (tests and the lab); it is never created if missing.
    """

    def __init__(self, interface: str, vip: IPInterface, netns: str | None = None) -> None:
        self._interface = interface
        self._vip = vip
        self._family = socket.AF_INET if vip.version == 4 else socket.AF_INET6
        self._netns = netns
        self._rtnl: RtnlSocket | None = None
        self._lock = threading.Lock()  # one request at a time on the shared socket

    # -- the port ---------------------------------------------------------

    def observe(self) -> VipReading:
        with self._lock:
            try:
                index = self._read(lambda rtnl: rtnl.link_index(self._interface), "get")
                present = self._find(self._addresses(index)) is not None
            except _RefusedError as exc:
                return VipReading(VipPresence.UNKNOWN, exc.cause)
            except Exception as exc:
                return VipReading(VipPresence.UNKNOWN, self._failed("reading addresses of", exc))
        return VipReading(VipPresence.PRESENT if present else VipPresence.ABSENT)

    def observe_many(self, vips: Sequence[IPInterface]) -> list[VipReading]:
        """Several VIPs on this interface, from one address dump per family:
        the reader pool looks at every reader VIP on every tick, and one dump
        costs what one VIP's look costs."""
        with self._lock:
            try:
                index = self._read(lambda rtnl: rtnl.link_index(self._interface), "get")
                found: list[AddressEntry] = []
                for version in sorted({v.version for v in vips}):
                    found += self._dump(index, socket.AF_INET if version == 4 else socket.AF_INET6)
            except _RefusedError as exc:
                return [VipReading(VipPresence.UNKNOWN, exc.cause) for _ in vips]
            except Exception as exc:
                cause = self._failed("reading addresses of", exc)
                return [VipReading(VipPresence.UNKNOWN, cause) for _ in vips]
        return [
            VipReading(VipPresence.PRESENT if any(a.same(v) for a in found) else VipPresence.ABSENT)
            for v in vips
        ]

    def add(self, lifetime_s: int) -> VipChanged | Unknown:
        if not 0 < lifetime_s < _INFINITE_LIFETIME_S:
            return Unknown(f"VIP lifetime must be a positive number of seconds, got {lifetime_s}")
        with self._lock:
            try:
                return self._add(lifetime_s)
            except _RefusedError as exc:
                return Unknown(exc.cause)
            except Exception as exc:
                return Unknown(self._failed(f"adding {self._vip} to", exc))

    def remove(self, before_delete: Callable[[], None] | None = None) -> VipChanged | Unknown:
        with self._lock:
            try:
                return self._remove(before_delete)
            except _RefusedError as exc:
                return Unknown(exc.cause)
            except Exception as exc:
                return Unknown(self._failed(f"removing {self._vip} from", exc))

    def close(self) -> None:
        with self._lock:
            self._drop_socket()

    # -- steps ------------------------------------------------------------

    def _add(self, lifetime_s: int) -> VipChanged:
        link = self._link()
        addresses = self._addresses(link.index)
        mine = self._find(addresses)
        self._check_not_foreign(mine, "refresh")
        self._check_no_alias(addresses)
        self._check_subnet_safe(link, addresses, "add")
        # Usable at once: duplicate address detection would hold an IPv6 VIP ~1 s.
        flags = IFA_F_NODAD if self._vip.version == 6 else 0
        # add refuses an existing address (EEXIST), so a VIP that appeared
        # since the dump is not silently given our lifetime.
        command = "replace" if mine else "add"
        self._read(
            lambda rtnl: rtnl.change_address(
                command, link.index, self._vip, lifetime_s=lifetime_s, flags=flags
            ),
            command,
        )
        return VipChanged(was_present=mine is not None)

    def _remove(self, before_delete: Callable[[], None] | None) -> VipChanged:
        link = self._link()
        addresses = self._addresses(link.index)
        mine = self._find(addresses)
        if mine is None:
            return VipChanged(was_present=False)
        self._check_not_foreign(mine, "delete")
        if not _secondary(mine):
            self._check_subnet_safe(link, addresses, "delete")
        if before_delete is not None:
            before_delete()  # the address is the VIP and may go
        try:
            self._read(lambda rtnl: rtnl.change_address("del", link.index, self._vip), "del")
        except _RefusedError:
            if self._find(self._addresses(link.index)) is None:
                return VipChanged(was_present=False)  # expired between dump and delete
            raise
        return VipChanged(was_present=True)

    # -- netlink ----------------------------------------------------------

    def _socket(self) -> RtnlSocket:
        if self._rtnl is None:
            # Opened inside the namespace, never creating it: a mistyped name fails.
            self._rtnl = (
                RtnlSocket() if self._netns is None else call_in_netns(self._netns, RtnlSocket)
            )
        return self._rtnl

    def _drop_socket(self) -> None:
        rtnl, self._rtnl = self._rtnl, None
        if rtnl is not None:
            # the socket is being discarded, perhaps after an error: closing is best effort
            with contextlib.suppress(Exception):
                rtnl.close()

    def _link(self) -> LinkEntry:
        return self._read(lambda rtnl: rtnl.link(self._interface), "get")

    def _dump(self, index: int, family: int) -> list[AddressEntry]:
        return self._read(lambda rtnl: rtnl.addresses(index, family), "dump")

    def _addresses(self, index: int) -> list[AddressEntry]:
        return self._read(lambda rtnl: rtnl.addresses(index, self._family), "dump")

    def _read(self, request: Callable[[RtnlSocket], T], command: str) -> T:
        try:
            return request(self._socket())
        except NetlinkError as exc:
            raise _RefusedError(self._netlink_cause(command, exc.code)) from exc

    def _find(self, addresses: list[AddressEntry]) -> AddressEntry | None:
        for address in addresses:
            if address.same(self._vip):
                return address
        return None

    # -- safety -----------------------------------------------------------

    def _check_not_foreign(self, mine: AddressEntry | None, verb: str) -> None:
        if mine is not None and _permanent(mine):
            raise _RefusedError(
                f"{self._vip} on {self._where()} has no lifetime, so dbvip did not add it "
                f"(the node's own address?); refusing to {verb} it"
            )

    def _check_no_alias(self, addresses: list[AddressEntry]) -> None:
        # The VIP's address under another prefix is most likely the node's own.
        where = self._where()
        for address in addresses:
            if address.interface.ip == self._vip.ip and address.interface != self._vip:
                raise _RefusedError(
                    f"{where} already carries {address.interface}, the VIP's address "
                    f"with another prefix length than {self._vip}; refusing to add the VIP"
                )

    def _check_subnet_safe(self, link: LinkEntry, addresses: list[AddressEntry], verb: str) -> None:
        if self._vip.version != 4 or link.promote_secondaries:
            return
        neighbours = [
            a.interface
            for a in addresses
            if a.interface != self._vip and a.interface.network == self._vip.network
        ]
        if neighbours:
            shared = ", ".join(str(n) for n in neighbours)
            raise _RefusedError(
                f"refusing to {verb} {self._vip}: it shares its subnet with {shared} on "
                f"{self._where()} and promote_secondaries is off, so deleting or expiring "
                f"the VIP could delete those addresses too; use a /32 VIP or set "
                f"net.ipv4.conf.{self._interface}.promote_secondaries=1"
            )

    # -- causes -----------------------------------------------------------

    def _where(self) -> str:
        if self._netns is None:
            return self._interface
        return f"{self._interface} (netns {self._netns})"

    def _netlink_cause(self, command: str, code: int) -> str:
        where = self._where()
        if code == errno.ENODEV:
            return f"interface {where} does not exist"
        if code in (errno.EPERM, errno.EACCES):
            verb = {"del": "delete", "replace": "change"}.get(command, command)
            return f"permission denied to {verb} addresses on {where}: needs CAP_NET_ADMIN"
        if code == errno.EEXIST:
            return f"{self._vip} appeared on {where} while it was being added"
        if code == errno.EADDRNOTAVAIL:
            return f"{self._vip} is not on {where}"
        return f"netlink {command} on {where} failed: {os.strerror(code)} (errno {code})"

    def _failed(self, what: str, exc: Exception) -> str:
        # Not an answer from the kernel: the socket may be broken, so start afresh.
        self._drop_socket()
        if isinstance(exc, FileNotFoundError) and self._netns is not None:
            return f"network namespace {self._netns} does not exist"
        if isinstance(exc, PermissionError):
            return f"permission denied {what} {self._where()}: needs CAP_NET_ADMIN"
        return f"{what} {self._where()} failed: {exc!r}"
