"""Throwaway network namespaces for tests: a switch with a bridge, nodes on veths.

Every namespace is named ``<run prefix>-<name>``, the prefix unique to this
run. The bridge lives in a namespace of its own; each veth is created inside
it with the peer moved straight into the node's namespace, so no interface
ever appears in the root namespace and no lab namespace has a route out.
Deleting a namespace deletes its veths, so teardown only deletes namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl import ndmsg

from dbvip.adapters.arp import call_in_netns
from integration.lab.eventually import eventually

LAB_V4 = ipaddress.IPv4Network("198.51.100.0/24")
LAB_V6 = ipaddress.IPv6Network("2001:db8::/64")
IFA_F_NODAD = 0x02
NUD_REACHABLE = ndmsg.NUD_REACHABLE
NUD_STALE = ndmsg.NUD_STALE
NUD_PERMANENT = ndmsg.NUD_PERMANENT

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def run_prefix() -> str:
    """A namespace name prefix unique to this test run."""
    return f"dbvt{os.getpid()}{secrets.token_hex(2)}"


def overlapping(ranges: Iterable[IPNetwork], used: Iterable[IPNetwork]) -> list[IPNetwork]:
    """The networks of ``used`` that overlap any of ``ranges``.

    Default routes (prefix length 0) are left out: they overlap everything,
    and a lab namespace has no route to reach them anyway.
    """
    wanted = list(ranges)
    return [
        net
        for net in used
        if net.prefixlen > 0 and any(net.version == r.version and net.overlaps(r) for r in wanted)
    ]


def networks_in_use(namespace: str | None = None) -> list[IPNetwork]:
    """Every address (as a network) and every route destination of a namespace."""
    used: list[IPNetwork] = []
    with _open_iproute(namespace) as ipr:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            used.append(ipaddress.ip_interface(f"{text}/{msg['prefixlen']}").network)
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_routes(family=family):
                dst = msg.get_attr("RTA_DST")
                if dst is not None:
                    used.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
    return used


def check_ranges_unused(ranges: Sequence[IPNetwork], namespace: str | None = None) -> None:
    """Refuse to go on if the lab ranges are in use where the lab would run."""
    clash = overlapping(ranges, networks_in_use(namespace))
    if clash:
        where = f"namespace {namespace}" if namespace else "the root namespace"
        raise RuntimeError(
            f"lab ranges {', '.join(map(str, ranges))} overlap {', '.join(map(str, clash))} "
            f"in {where}: refusing to start"
        )


def _open_iproute(namespace: str | None) -> Any:
    if namespace is None:
        return IPRoute(groups=0)
    return IPRoute(netns=namespace, flags=0, groups=0)


def write_sysctl(namespace: str, key: str, value: str) -> None:
    """Set ``key`` (``net/ipv4/conf/eth0/promote_secondaries``) inside a namespace."""
    path = os.path.join("/proc/sys", key)

    def write() -> None:
        with open(path, "w") as file:
            file.write(value)

    call_in_netns(namespace, write)


@dataclass(frozen=True)
class Node:
    """A node namespace with one interface ``ifname`` on the lab bridge."""

    name: str
    netns: str
    ifname: str
    index: int
    mac: bytes
    v4: ipaddress.IPv4Interface | None
    v6: ipaddress.IPv6Interface | None


class NetLab:
    """A switch namespace with a bridge, and node namespaces joined to it."""

    def __init__(
        self, ranges: Sequence[IPNetwork] = (LAB_V4, LAB_V6), prefix: str | None = None
    ) -> None:
        self.prefix = prefix or run_prefix()
        self.ranges = tuple(ranges)
        self.switch = f"{self.prefix}-sw"
        self.nodes: dict[str, Node] = {}
        self._made: list[str] = []
        self._iproutes: dict[str, Any] = {}

    def __enter__(self) -> NetLab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        check_ranges_unused(self.ranges)
        self.create_netns(self.switch)
        sw = self.ipr(self.switch)
        sw.link("add", ifname="br0", kind="bridge")
        sw.link("set", index=sw.link_lookup(ifname="br0")[0], state="up")

    def create_netns(self, name: str) -> str:
        if not name.startswith(self.prefix):
            raise ValueError(f"namespace {name} lacks this run's prefix {self.prefix}")
        netns.create(name)
        self._made.append(name)
        self.ipr(name).link("set", index=1, state="up")  # lo
        return name

    def ipr(self, namespace: str) -> Any:
        """A netlink socket inside one of this lab's namespaces (kept until close)."""
        if namespace not in self._made:
            raise ValueError(f"{namespace} is not a namespace of this lab")
        if namespace not in self._iproutes:
            self._iproutes[namespace] = _open_iproute(namespace)
        return self._iproutes[namespace]

    def add_node(
        self,
        name: str,
        v4: ipaddress.IPv4Interface | None = None,
        v6: ipaddress.IPv6Interface | None = None,
        ifname: str = "eth0",
    ) -> Node:
        for address in (v4, v6):
            if address is not None and not any(
                address.version == r.version and address.ip in r for r in self.ranges
            ):
                raise ValueError(f"{address} is outside the lab ranges")
        namespace = self.create_netns(f"{self.prefix}-{name}")
        port = f"p-{name}"
        sw = self.ipr(self.switch)
        sw.link("add", ifname=port, kind="veth", peer={"ifname": ifname, "net_ns_fd": namespace})
        sw.link(
            "set",
            index=sw.link_lookup(ifname=port)[0],
            master=sw.link_lookup(ifname="br0")[0],
            state="up",
        )
        ipr = self.ipr(namespace)
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="up")
        if v4 is not None:
            ipr.addr("add", index=index, address=str(v4.ip), prefixlen=v4.network.prefixlen)
        if v6 is not None:
            ipr.addr(
                "add",
                index=index,
                address=str(v6.ip),
                prefixlen=v6.network.prefixlen,
                flags=IFA_F_NODAD,
            )
        eventually(lambda: self.operstate(namespace, index) == "UP", timeout_s=10)
        (link,) = ipr.link("get", index=index)
        mac = bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
        node = Node(name, namespace, ifname, index, mac, v4, v6)
        self.nodes[name] = node
        return node

    def set_port(self, node: Node, up: bool) -> None:
        """Switch port of ``node`` up or down: down cuts it off from everything
        while its own interface stays up (a pulled cable at the switch)."""
        sw = self.ipr(self.switch)
        (index,) = sw.link_lookup(ifname=f"p-{node.name}")
        sw.link("set", index=index, state="up" if up else "down")

    def operstate(self, namespace: str, index: int) -> str:
        (link,) = self.ipr(namespace).link("get", index=index)
        return str(link.get_attr("IFLA_OPERSTATE"))

    def addresses(self, node: Node) -> set[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        found: set[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = set()
        for msg in self.ipr(node.netns).get_addr(index=node.index):
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            found.add(ipaddress.ip_interface(f"{text}/{msg['prefixlen']}"))
        return found

    def address_info(
        self, node: Node, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> Any:
        """The kernel's message for exactly ``address`` on the node, or None."""
        for msg in self.ipr(node.netns).get_addr(index=node.index):
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if ipaddress.ip_interface(f"{text}/{msg['prefixlen']}") == address:
                return msg
        return None

    def set_neighbour(
        self,
        node: Node,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        mac: bytes,
        state: int = NUD_REACHABLE,
    ) -> None:
        self.ipr(node.netns).neigh(
            "replace", index=node.index, dst=str(ip), lladdr=mac.hex(":"), state=state
        )

    def neighbour_mac(
        self, node: Node, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> bytes | None:
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        for msg in self.ipr(node.netns).get_neighbours(family=family, ifindex=node.index):
            dst = msg.get_attr("NDA_DST")
            lladdr = msg.get_attr("NDA_LLADDR")
            if dst is not None and lladdr and ipaddress.ip_address(dst) == ip:
                return bytes.fromhex(lladdr.replace(":", ""))
        return None

    def close(self) -> None:
        for ipr in self._iproutes.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._iproutes.clear()
        failures: list[str] = []
        # Nodes before the switch: each removal also deletes the veth pair.
        for name in reversed(self._made):
            try:
                netns.remove(name)
            except OSError as exc:
                failures.append(f"{name}: {exc}")
        self._made.clear()
        self.nodes.clear()
        if failures:
            raise RuntimeError("could not delete namespaces: " + "; ".join(failures))
