"""pytest fixtures for throwaway network namespaces (see ``integration.lab.netns``).

Registered for every test by tests/conftest.py. Fixture functions carry a
``_fixture`` suffix and register under the short name, so a module may also
import them without shadowing its parameters.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import pytest

from integration.lab.netns import NetLab, Node

NODE_V4 = ipaddress.IPv4Interface("198.51.100.11/24")
NODE_V6 = ipaddress.IPv6Interface("2001:db8::11/64")
CLIENT_V4 = ipaddress.IPv4Interface("198.51.100.21/24")
CLIENT_V6 = ipaddress.IPv6Interface("2001:db8::21/64")


@pytest.fixture(name="netlab")
def netlab_fixture() -> Iterator[NetLab]:
    """A switch namespace with a bridge; nodes are added by the test or fixtures below."""
    # Not a skip: these are the VIP's safety tests, and CI runs as root.
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    with NetLab() as lab:
        yield lab


@pytest.fixture(name="lab_node")
def lab_node_fixture(netlab: NetLab) -> Node:
    """Namespace ``n1`` on the bridge: eth0 with 198.51.100.11/24 and 2001:db8::11/64."""
    return netlab.add_node("n1", v4=NODE_V4, v6=NODE_V6)


@pytest.fixture(name="lab_client")
def lab_client_fixture(netlab: NetLab) -> Node:
    """Namespace ``c1`` on the bridge: eth0 with 198.51.100.21/24 and 2001:db8::21/64."""
    return netlab.add_node("c1", v4=CLIENT_V4, v6=CLIENT_V6)
