"""Builds the reader pool's real ports from a Config (``reader_vips`` set).

One netlink driver (with the refusal, as for the writer VIP) and one
announcer per reader VIP, one more driver that looks at every reader VIP
from one address dump, the reader keys on the sidecar's etcd client, and the
watch on the cluster's keys that wakes the loop when the pool changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbvip.adapters.arp import PacketAnnouncer
from dbvip.adapters.etcd_readers import EtcdPoolWatcher, EtcdReaderStore
from dbvip.adapters.etcd_store import EtcdLeaseStore
from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.adapters.refusal import NftRefusal, RefusalObserver, RefusingVipDriver, table_name
from dbvip.config import Config
from dbvip.identity import Identity
from dbvip.ports import Announcer, Clock, VipDriver, VipReading
from dbvip.shell import ReaderPorts


@dataclass
class ReaderParts:
    ports: ReaderPorts
    watcher: EtcdPoolWatcher
    refusing: list[RefusingVipDriver]  # prepared before the loop starts
    looker: NetlinkVipDriver

    def close(self) -> None:
        self.watcher.stop()
        self.looker.close()
        for driver in self.ports.drivers.values():
            driver.close()
        for announcer in self.ports.announcers.values():
            announcer.close()


def reader_parts(
    config: Config,
    store: EtcdLeaseStore,
    identity: Identity,
    clock: Clock,
    refuse_s: float,
    observer: RefusalObserver | None,
) -> ReaderParts:
    interface, cluster = config["interface"], config["cluster"]
    vips = config["reader_vips"]
    drivers: dict[str, VipDriver] = {}
    announcers: dict[str, Announcer] = {}
    refusing: list[RefusingVipDriver] = []
    for iface in vips:
        name = iface.ip.compressed
        driver: VipDriver = NetlinkVipDriver(interface, iface)
        if refuse_s > 0:
            refusal = NftRefusal(table_name(cluster, interface, iface.ip), iface.ip, interface)
            wrapped = RefusingVipDriver(driver, refusal, refuse_s, observer=observer)
            refusing.append(wrapped)
            driver = wrapped
        drivers[name] = driver
        announcers[name] = PacketAnnouncer(interface, iface.ip)
    looker = NetlinkVipDriver(interface, vips[0])
    names = [v.ip.compressed for v in vips]

    def look() -> dict[str, VipReading]:
        return dict(zip(names, looker.observe_many(vips), strict=True))

    readers = EtcdReaderStore(store.client, store.keys, identity, clock)
    ports = ReaderPorts(readers, drivers, announcers, look)
    return ReaderParts(ports, readers.pool_watcher(), refusing, looker)
