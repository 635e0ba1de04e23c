"""The host identity and the seat lock (one sidecar per host, cluster and interface)."""

from __future__ import annotations

import os

import pytest

from dbvip.adapters.host import SeatLock, SeatTakenError, host_identity
from dbvip.config import load
from dbvip.wiring import Sidecar, StartError, SystemClock
from tests.fakes import FakeAnnouncer, FakeClock, FakeKernel, FakeVipDriver


def test_host_identity_names_the_machine_and_the_network_namespace() -> None:
    host = host_identity()
    machine, _, netns = host.rpartition("/")
    assert machine
    assert netns == f"net:{os.stat('/proc/self/ns/net').st_ino}"


def test_a_second_sidecar_for_the_same_cluster_and_interface_is_refused() -> None:
    cluster = f"test-seat-{os.getpid()}"
    first = SeatLock("/dbvip", cluster, "eth0")
    try:
        with pytest.raises(SeatTakenError, match=f"cluster '{cluster}' on interface 'eth0'"):
            SeatLock("/dbvip", cluster, "eth0")
        SeatLock("/dbvip", cluster, "eth1").close()  # another interface: another seat
        SeatLock("/other", cluster, "eth0").close()  # another prefix: another cluster
    finally:
        first.close()
    SeatLock("/dbvip", cluster, "eth0").close()  # free again once the first one is gone


def test_a_long_name_still_makes_a_lock() -> None:
    cluster = "c" * 200 + str(os.getpid())
    first = SeatLock("/dbvip", cluster, "eth0")
    try:
        with pytest.raises(SeatTakenError):
            SeatLock("/dbvip", cluster, "eth0")
    finally:
        first.close()


def test_a_second_sidecar_of_one_cluster_on_one_interface_does_not_start() -> None:
    config = load(
        {},
        {
            "DBVIP_CLUSTER": f"seat{os.getpid()}",
            "DBVIP_NODE": "n1",
            "DBVIP_VIP": "198.51.100.10",
            "DBVIP_INTERFACE": "dbvt-fake0",
            "DBVIP_ETCD_ENDPOINTS": "http://127.0.0.1:9",
            "DBVIP_PG_DSN": "host=127.0.0.1 port=9 user=postgres",
        },
    )
    kernel = FakeKernel(FakeClock())

    def sidecar(name: str) -> Sidecar:
        return Sidecar(
            config,
            SystemClock(),
            vip_driver=FakeVipDriver(kernel, name),
            announcer=FakeAnnouncer(kernel, name),
        )

    first = sidecar("first")
    try:
        with pytest.raises(StartError, match="another dbvip runs for cluster"):
            sidecar("second")
        assert first.identity.host == host_identity()
        assert first.store.identity == first.identity  # what it writes is who it is
    finally:
        first.close()
    sidecar("third").close()  # the seat is free again
