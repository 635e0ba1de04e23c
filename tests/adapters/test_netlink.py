"""The netlink VIP driver against a real kernel, in throwaway namespaces."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Protocol

import pytest
from pyroute2 import netns

from dbvip.adapters.netlink import IFA_F_NODAD, NetlinkVipDriver
from dbvip.model import IPInterface, VipPresence
from dbvip.ports import Unknown, VipChanged, VipReading
from integration.lab.eventually import eventually
from integration.lab.netns import (
    LAB_V4,
    LAB_V6,
    NetLab,
    Node,
    check_ranges_unused,
    write_sysctl,
)
from tests.support.netns_fixtures import NODE_V4, NODE_V6

pytestmark = pytest.mark.real

VIP4 = ipaddress.IPv4Interface("198.51.100.100/32")
VIP4_SAME_PREFIX = ipaddress.IPv4Interface("198.51.100.100/24")
VIP6 = ipaddress.IPv6Interface("2001:db8::100/128")
VIP6_SAME_PREFIX = ipaddress.IPv6Interface("2001:db8::100/64")
IFA_F_SECONDARY = 0x01
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_PERMANENT = 0x80
EXPIRY_BOUND_S = 10.0  # generous: the kernel's expiry worker runs up to ~1 s late


@pytest.fixture
def driver_for(lab_node: Node) -> Iterator[DriverFactory]:
    made: list[NetlinkVipDriver] = []

    def make(vip: IPInterface, interface: str = "eth0") -> NetlinkVipDriver:
        made.append(NetlinkVipDriver(interface, vip, netns=lab_node.netns))
        return made[-1]

    yield make
    for driver in made:
        driver.close()


class DriverFactory(Protocol):
    def __call__(self, vip: IPInterface, interface: str = "eth0") -> NetlinkVipDriver: ...


def flags(lab: NetLab, node: Node, address: IPInterface) -> int:
    msg = lab.address_info(node, address)
    assert msg is not None, f"{address} is not on {node.name}"
    value = msg.get_attr("IFA_FLAGS")
    return int(msg["flags"] if value is None else value)


def valid_lft_s(lab: NetLab, node: Node, address: IPInterface) -> int:
    msg = lab.address_info(node, address)
    assert msg is not None, f"{address} is not on {node.name}"
    return int(msg.get_attr("IFA_CACHEINFO")["ifa_valid"])


def add_by_hand(
    lab: NetLab, node: Node, address: IPInterface, lifetime_s: int | None = None
) -> None:
    extra = {} if lifetime_s is None else {"valid_lft": lifetime_s, "preferred_lft": lifetime_s}
    lab.ipr(node.netns).addr(
        "add",
        index=node.index,
        address=str(address.ip),
        prefixlen=address.network.prefixlen,
        **extra,
    )


def delete_by_hand(lab: NetLab, node: Node, address: IPInterface) -> None:
    lab.ipr(node.netns).addr(
        "del", index=node.index, address=str(address.ip), prefixlen=address.network.prefixlen
    )


def set_promote_secondaries(lab: NetLab, node: Node, on: bool) -> None:
    write_sysctl(node.netns, f"net/ipv4/conf/{node.ifname}/promote_secondaries", str(int(on)))


# -- observe / add / remove ---------------------------------------------------


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_add_observe_remove(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory, vip: IPInterface
) -> None:
    driver = driver_for(vip)
    own = {NODE_V4, NODE_V6}

    assert driver.observe() == VipReading(VipPresence.ABSENT)
    assert driver.add(30) == VipChanged(was_present=False)
    assert driver.observe() == VipReading(VipPresence.PRESENT)
    assert vip in netlab.addresses(lab_node)
    assert 25 <= valid_lft_s(netlab, lab_node, vip) <= 30
    assert own <= netlab.addresses(lab_node)

    assert driver.remove() == VipChanged(was_present=True)
    assert driver.observe() == VipReading(VipPresence.ABSENT)
    assert vip not in netlab.addresses(lab_node)
    assert own <= netlab.addresses(lab_node), "the node's own addresses must survive"
    assert driver.remove() == VipChanged(was_present=False)


def test_slash32_vip_primary_on_its_own_leaves_node_slash24(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    # The VIP goes on first, the node's address after: still nothing is shared.
    delete_by_hand(netlab, lab_node, NODE_V4)
    driver = driver_for(VIP4)
    assert driver.add(30) == VipChanged(was_present=False)
    add_by_hand(netlab, lab_node, NODE_V4)
    assert driver.remove() == VipChanged(was_present=True)
    assert NODE_V4 in netlab.addresses(lab_node)


def test_observe_compares_prefix_length_too(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    add_by_hand(netlab, lab_node, ipaddress.IPv4Interface("198.51.100.100/25"), lifetime_s=30)
    assert driver_for(VIP4).observe() == VipReading(VipPresence.ABSENT)
    # a longer address that merely starts with the VIP's text is not the VIP either
    add_by_hand(netlab, lab_node, ipaddress.IPv4Interface("198.51.100.10/32"), lifetime_s=30)
    assert driver_for(ipaddress.IPv4Interface("198.51.100.1/32")).observe() == VipReading(
        VipPresence.ABSENT
    )


# -- lifetimes -----------------------------------------------------------------


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_refresh_extends_the_lifetime(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory, vip: IPInterface
) -> None:
    driver = driver_for(vip)
    # A witness added with the same short lifetime shows when the VIP would have gone.
    witness = ipaddress.ip_interface(f"{vip.ip + 1}/{vip.network.prefixlen}")
    assert driver.add(2) == VipChanged(was_present=False)
    add_by_hand(netlab, lab_node, witness, lifetime_s=2)

    assert driver.add(60) == VipChanged(was_present=True)
    assert valid_lft_s(netlab, lab_node, vip) > 50

    eventually(lambda: witness not in netlab.addresses(lab_node), timeout_s=EXPIRY_BOUND_S)
    assert driver.observe() == VipReading(VipPresence.PRESENT)


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_kernel_removes_the_vip_when_its_lifetime_runs_out(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory, vip: IPInterface
) -> None:
    driver = driver_for(vip)
    assert driver.add(1) == VipChanged(was_present=False)
    eventually(lambda: driver.observe() == VipReading(VipPresence.ABSENT), timeout_s=EXPIRY_BOUND_S)
    assert {NODE_V4, NODE_V6} <= netlab.addresses(lab_node)


@pytest.mark.parametrize("lifetime_s", [0, -1, 0xFFFF_FFFF])
def test_lifetime_must_be_finite_and_positive(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory, lifetime_s: int
) -> None:
    result = driver_for(VIP4).add(lifetime_s)
    assert isinstance(result, Unknown)
    assert "lifetime" in result.cause
    assert VIP4 not in netlab.addresses(lab_node)


# -- IPv6 ----------------------------------------------------------------------


def test_ipv6_vip_is_usable_at_once(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    # Read right after the add: with DAD the address would be tentative for ~1 s.
    assert driver_for(VIP6).add(30) == VipChanged(was_present=False)
    got = flags(netlab, lab_node, VIP6)
    assert got & IFA_F_NODAD
    assert not got & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    assert driver_for(VIP6).add(30) == VipChanged(was_present=True)
    assert not flags(netlab, lab_node, VIP6) & IFA_F_TENTATIVE


def test_ipv6_vip_in_the_node_prefix_leaves_node_address_and_route(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    driver = driver_for(VIP6_SAME_PREFIX)
    assert driver.add(30) == VipChanged(was_present=False)
    assert driver.remove() == VipChanged(was_present=True)
    assert NODE_V6 in netlab.addresses(lab_node)
    routes = netlab.ipr(lab_node.netns).get_routes(family=10, oif=lab_node.index)
    prefixes = {
        ipaddress.ip_network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
        for r in routes
        if r.get_attr("RTA_DST")
    }
    assert LAB_V6 in prefixes


# -- same subnet as the node's own address ------------------------------------


def test_kernel_deletes_secondaries_with_their_primary_without_promote_secondaries(
    netlab: NetLab, lab_node: Node
) -> None:
    """The hazard the driver guards against, shown on the bare kernel."""
    set_promote_secondaries(netlab, lab_node, on=False)
    delete_by_hand(netlab, lab_node, NODE_V4)
    add_by_hand(netlab, lab_node, VIP4_SAME_PREFIX, lifetime_s=30)
    add_by_hand(netlab, lab_node, NODE_V4)  # renumbered: the node's address is now secondary
    assert flags(netlab, lab_node, NODE_V4) & IFA_F_SECONDARY
    delete_by_hand(netlab, lab_node, VIP4_SAME_PREFIX)
    assert NODE_V4 not in netlab.addresses(lab_node)


def test_same_subnet_vip_is_refused_without_promote_secondaries(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    set_promote_secondaries(netlab, lab_node, on=False)
    result = driver_for(VIP4_SAME_PREFIX).add(30)
    assert isinstance(result, Unknown)
    assert "promote_secondaries" in result.cause
    assert "198.51.100.11/24" in result.cause
    assert VIP4_SAME_PREFIX not in netlab.addresses(lab_node)


def test_same_subnet_vip_with_promote_secondaries_never_takes_the_node_address(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    set_promote_secondaries(netlab, lab_node, on=True)
    driver = driver_for(VIP4_SAME_PREFIX)

    # the usual case: the VIP is the subnet's secondary
    assert driver.add(30) == VipChanged(was_present=False)
    assert flags(netlab, lab_node, VIP4_SAME_PREFIX) & IFA_F_SECONDARY
    assert driver.remove() == VipChanged(was_present=True)
    assert NODE_V4 in netlab.addresses(lab_node)

    # the node's address was re-added while the VIP was up: the VIP is primary
    delete_by_hand(netlab, lab_node, NODE_V4)
    assert driver.add(30) == VipChanged(was_present=False)
    add_by_hand(netlab, lab_node, NODE_V4)
    assert not flags(netlab, lab_node, VIP4_SAME_PREFIX) & IFA_F_SECONDARY
    assert driver.remove() == VipChanged(was_present=True)
    assert netlab.addresses(lab_node) >= {NODE_V4, NODE_V6}
    assert VIP4_SAME_PREFIX not in netlab.addresses(lab_node)


def test_primary_vip_is_not_deleted_once_promote_secondaries_is_off(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    set_promote_secondaries(netlab, lab_node, on=True)
    driver = driver_for(VIP4_SAME_PREFIX)
    delete_by_hand(netlab, lab_node, NODE_V4)
    assert driver.add(30) == VipChanged(was_present=False)
    add_by_hand(netlab, lab_node, NODE_V4)
    set_promote_secondaries(netlab, lab_node, on=False)

    result = driver.remove()
    assert isinstance(result, Unknown)
    assert "promote_secondaries" in result.cause
    assert {VIP4_SAME_PREFIX, NODE_V4} <= netlab.addresses(lab_node)
    refresh = driver.add(30)
    assert isinstance(refresh, Unknown)


# -- not ours ------------------------------------------------------------------


def test_the_node_address_given_as_vip_is_never_touched(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    driver = driver_for(NODE_V4)
    assert driver.observe() == VipReading(VipPresence.PRESENT)
    for result in (driver.add(30), driver.remove()):
        assert isinstance(result, Unknown)
        assert "no lifetime" in result.cause
    assert NODE_V4 in netlab.addresses(lab_node)
    assert flags(netlab, lab_node, NODE_V4) & IFA_F_PERMANENT


def test_vip_address_with_another_prefix_length_is_not_touched(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    driver = driver_for(ipaddress.IPv4Interface("198.51.100.11/32"))
    assert driver.observe() == VipReading(VipPresence.ABSENT)
    result = driver.add(30)
    assert isinstance(result, Unknown)
    assert "another prefix length" in result.cause
    assert driver.remove() == VipChanged(was_present=False)
    assert netlab.addresses(lab_node) >= {NODE_V4}
    assert ipaddress.IPv4Interface("198.51.100.11/32") not in netlab.addresses(lab_node)


def test_remove_deletes_exactly_the_vip_beside_its_address_with_another_prefix(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    alias = ipaddress.IPv4Interface("198.51.100.100/25")
    add_by_hand(netlab, lab_node, VIP4, lifetime_s=30)
    add_by_hand(netlab, lab_node, alias, lifetime_s=30)
    assert driver_for(VIP4).remove() == VipChanged(was_present=True)
    assert alias in netlab.addresses(lab_node)
    assert VIP4 not in netlab.addresses(lab_node)


# -- failures --------------------------------------------------------------------


def test_missing_interface_is_unknown(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    driver = driver_for(VIP4, interface="nope0")
    reading = driver.observe()
    assert reading.presence is VipPresence.UNKNOWN
    assert reading.cause is not None and "nope0" in reading.cause
    assert "does not exist" in reading.cause
    for result in (driver.add(30), driver.remove()):
        assert isinstance(result, Unknown)
        assert "does not exist" in result.cause


def test_interface_that_vanishes_is_unknown_and_recovers(
    netlab: NetLab, lab_node: Node, driver_for: DriverFactory
) -> None:
    driver = driver_for(VIP4)
    assert driver.add(30) == VipChanged(was_present=False)
    ipr = netlab.ipr(lab_node.netns)
    ipr.link("del", index=lab_node.index)
    assert driver.observe().presence is VipPresence.UNKNOWN

    ipr.link("add", ifname="eth0", kind="veth", peer="peer0")
    assert driver.observe() == VipReading(VipPresence.ABSENT)
    assert driver.add(30) == VipChanged(was_present=False)


def test_missing_namespace_is_unknown_and_not_created(netlab: NetLab) -> None:
    name = f"{netlab.prefix}-typo"
    driver = NetlinkVipDriver("eth0", VIP4, netns=name)
    try:
        reading = driver.observe()
        assert reading.presence is VipPresence.UNKNOWN
        assert reading.cause is not None and name in reading.cause
        assert isinstance(driver.add(30), Unknown)
        assert isinstance(driver.remove(), Unknown)
    finally:
        driver.close()
    assert name not in netns.listnetns()


def test_close_then_use_reopens(netlab: NetLab, lab_node: Node, driver_for: DriverFactory) -> None:
    driver = driver_for(VIP4)
    driver.close()
    driver.close()
    assert driver.add(30) == VipChanged(was_present=False)
    driver.close()
    assert driver.observe() == VipReading(VipPresence.PRESENT)


UNPRIVILEGED = textwrap.dedent(
    """
    import ctypes, ipaddress, os, sys
    fd = os.open("/run/netns/" + sys.argv[1], os.O_RDONLY)
    assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0
    from dbvip.adapters.netlink import NetlinkVipDriver
    driver = NetlinkVipDriver("eth0", ipaddress.ip_interface(sys.argv[2]))
    driver.observe()  # as root: loads every module while the Python tree is readable
    driver.close()
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)  # from root to nobody: every capability goes
    print(driver.observe())
    print(driver.add(30))
    print(driver.remove())
    """
)


def test_without_cap_net_admin_changes_are_unknown_and_name_the_capability(
    netlab: NetLab, lab_node: Node
) -> None:
    add_by_hand(netlab, lab_node, VIP4, lifetime_s=30)
    proc = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED, lab_node.netns, str(VIP4)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert proc.returncode == 0, proc.stderr
    observed, added, removed = proc.stdout.splitlines()
    assert "PRESENT" in observed  # reading needs no privilege
    for line in (added, removed):
        assert line.startswith("Unknown(") and "CAP_NET_ADMIN" in line
    assert VIP4 in netlab.addresses(lab_node)


# -- the lab's own guard -------------------------------------------------------------


def test_lab_refuses_ranges_in_use(netlab: NetLab, lab_node: Node) -> None:
    check_ranges_unused([LAB_V4, LAB_V6])  # the root namespace does not use them
    with pytest.raises(RuntimeError, match=r"198\.51\.100\.0/24"):
        check_ranges_unused([LAB_V4], namespace=lab_node.netns)


def test_observe_many_sees_each_vip_of_both_families_from_one_dump_each(
    lab_node: Node, driver_for: DriverFactory
) -> None:
    v4b = ipaddress.IPv4Interface("198.51.100.101/32")
    looker = driver_for(VIP4)
    vips: list[IPInterface] = [VIP4, v4b, VIP6, VIP4_SAME_PREFIX]
    absent = VipReading(VipPresence.ABSENT)
    present = VipReading(VipPresence.PRESENT)
    assert looker.observe_many(vips) == [absent] * 4
    assert driver_for(v4b).add(30) == VipChanged(was_present=False)
    assert driver_for(VIP6).add(30) == VipChanged(was_present=False)
    # Compared as values, prefix length too: /24 is not the /32 VIP.
    assert looker.observe_many(vips) == [absent, present, present, absent]
    missing = driver_for(VIP4, interface="nosuch0").observe_many(vips)
    assert all(r.presence is VipPresence.UNKNOWN and r.cause for r in missing)
