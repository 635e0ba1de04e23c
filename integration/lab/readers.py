"""The reader VIPs of a lab: which ones, who has each in the kernel, what etcd says.

The pool comes from the sidecars' own setting (``DBVIP_READER_VIPS`` in the
LabSpec's ``sidecar_settings``): a test names it once and every part of the
lab (the sidecars, HAProxy, the monitor, these helpers) follows.

Kernel holders are read with netlink, one address dump per node (a socket per
node, opened once), compared as parsed addresses, never as text. The reader
keys are read with plain ``etcdctl``, as an operator would.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from dbvip.keys import KeyLayout

READER_VIPS = "DBVIP_READER_VIPS"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def parse_reader_vips(settings: Mapping[str, str]) -> tuple[IPInterface, ...]:
    """The pool named by ``DBVIP_READER_VIPS`` (comma-separated, each with its
    prefix); empty when the setting is absent or empty."""
    text = settings.get(READER_VIPS, "")
    vips = []
    for item in text.split(","):
        if item.strip():
            try:
                vips.append(ipaddress.ip_interface(item.strip()))
            except ValueError as exc:
                raise ValueError(f"{READER_VIPS}: {item.strip()!r} is not an address") from exc
    return tuple(vips)


def pool(count: int) -> str:
    """A ``DBVIP_READER_VIPS`` value of ``count`` lab addresses: 198.51.100.101/32, ..."""
    if not 1 <= count <= 20:
        raise ValueError(f"a lab pool has 1..20 reader VIPs, not {count}")
    return ",".join(f"198.51.100.{101 + i}/32" for i in range(count))


def readers_prefix(cluster: str) -> str:
    """The etcd prefix of the reader keys, as dbvip's own key layout spells it."""
    return KeyLayout(cluster).readers_prefix


@dataclass(frozen=True)
class ReaderKey:
    """One reader key: the VIP's address, the holder its value names (``node``,
    as in the writer key), the lease it is attached to, and its whole value."""

    address: IPAddress
    holder: str | None
    lease: int  # 0: the key has no lease
    value: dict[str, Any] = field(compare=False)

    @property
    def under_named_lease(self) -> bool:
        """Attached to a lease, the one its value names (hex, as etcdctl prints it)."""
        return self.lease != 0 and self.value.get("lease") == format(self.lease, "x")


def parse_reader_keys(cluster: str, etcdctl_json: str) -> dict[IPAddress, ReaderKey]:
    """``etcdctl get --prefix <readers prefix> -w json`` output, by VIP address."""
    prefix = readers_prefix(cluster)
    answer = json.loads(etcdctl_json) if etcdctl_json.strip() else {}
    keys: dict[IPAddress, ReaderKey] = {}
    for kv in answer.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        raw = base64.b64decode(kv.get("value", "")).decode(errors="replace")
        try:
            value = json.loads(raw)
        except ValueError:
            value = {"garbage": raw}
        if not isinstance(value, dict):
            value = {"garbage": raw}
        try:
            address = ipaddress.ip_address(key.removeprefix(prefix))
        except ValueError:
            continue  # not a reader key itself (a claim kept beside it, say)
        holder = value.get("node")
        keys[address] = ReaderKey(address, None if holder is None else str(holder),
                                  int(kv.get("lease", 0)), value)  # fmt: skip
    return keys


def balanced(counts: Iterable[int], vips: int) -> bool:
    """Each of the counts (VIPs per healthy replica) is floor or ceil of vips / replicas."""
    counts = list(counts)
    if not counts:
        return False
    low, high = vips // len(counts), -(-vips // len(counts))
    return sum(counts) == vips and all(low <= c <= high for c in counts)


class KernelView:
    """Which of a pool's addresses each node has on its interface, by netlink.

    ``netns_of`` maps a node to its namespace; sockets are opened on first use.
    """

    def __init__(self, netns_of: Callable[[str], str], ifname: str = "eth0") -> None:
        self._netns_of = netns_of
        self._ifname = ifname
        self._sockets: dict[str, tuple[Any, int]] = {}

    def addresses(self, node: str) -> set[IPAddress] | None:
        """Every address on ``node``'s interface; None if it could not be read."""
        try:
            ipr, index = self._socket(node)
            found: set[IPAddress] = set()
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in ipr.get_addr(index=index, family=family):
                    text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                    if text is not None:
                        found.add(ipaddress.ip_address(text))
            return found
        except Exception:
            self._drop(node)
            return None

    def holders(
        self, nodes: Iterable[str], vips: Iterable[IPInterface]
    ) -> dict[IPAddress, set[str]]:
        """For each VIP, the nodes that have it (a node that could not be read has none)."""
        seen = {node: self.addresses(node) or set() for node in nodes}
        return {vip.ip: {n for n, found in seen.items() if vip.ip in found} for vip in vips}

    def _socket(self, node: str) -> tuple[Any, int]:
        if node not in self._sockets:
            # flags=0: a mistyped name must fail, not create a namespace.
            ipr = IPRoute(netns=self._netns_of(node), flags=0, groups=0)
            found = ipr.link_lookup(ifname=self._ifname)
            if not found:
                ipr.close()
                raise LookupError(f"no {self._ifname} on {node}")
            self._sockets[node] = (ipr, found[0])
        return self._sockets[node]

    def _drop(self, node: str) -> None:
        entry = self._sockets.pop(node, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                entry[0].close()

    def close(self) -> None:
        for node in list(self._sockets):
            self._drop(node)
