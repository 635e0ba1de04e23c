"""Builds the real adapters from a Config: the sidecar, and the status read."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbvip.adapters.arp import PacketAnnouncer
from dbvip.adapters.etcd_status import ClusterStatus
from dbvip.adapters.etcd_store import EtcdLeaseStore
from dbvip.adapters.host import SeatLock, SeatTakenError, host_identity
from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.adapters.postgres import PostgresRoleProbe
from dbvip.adapters.refusal import NftRefusal, RefusingVipDriver, table_name
from dbvip.board import Board
from dbvip.boottime import boot_s
from dbvip.config import Config, Listen
from dbvip.events import EventKind
from dbvip.hooks import HookObserver, HookRunner
from dbvip.identity import Identity
from dbvip.members import MemberPublisher
from dbvip.model import KeyHeld, KeyInvalid, NodeState
from dbvip.ports import Announcer, Clock, Unknown, VipDriver
from dbvip.runner import EventWaiter, Observer, Ports, Runner, Snapshot
from dbvip.status_view import member_row, reader_row, writer_row

if TYPE_CHECKING:
    from dbvip.adapters.peers import PeerServer
    from dbvip.health import HealthServer
    from dbvip.metrics import Metrics
    from dbvip.promises import Failsafe
    from dbvip.reader_wiring import ReaderParts

log = logging.getLogger("dbvip")


def lease_store(
    config: Config, clock: Clock, node: str = "-", identity: Identity | None = None
) -> EtcdLeaseStore:
    password = config.secret("etcd_password") or None
    return EtcdLeaseStore(
        config["etcd_endpoints"],
        config["cluster"],
        node,
        str(config.values.get("vip") or ""),
        clock,
        prefix=config["etcd_prefix"],
        member_ttl_s=config["ttl_s"],
        ca_file=config["etcd_ca_file"] or None,
        cert_file=config["etcd_cert_file"] or None,
        key_file=config["etcd_key_file"] or None,
        username=config["etcd_username"] or None,
        password=password if config["etcd_username"] else None,
        identity=identity,
    )


def hook_runner(config: Config, observe: HookObserver | None = None) -> HookRunner:
    hooks = {kind: config[f"hook_{kind.value}"] for kind in EventKind}
    facts = {
        "NODE": config["node"],
        "CLUSTER": config["cluster"],
        "VIP": str(config["vip"].ip),
        "INTERFACE": config["interface"],
    }
    if observe is None:
        return HookRunner(hooks, config["hook_timeout_s"], facts)
    return HookRunner(hooks, config["hook_timeout_s"], facts, observe=observe)


def refuse_s(config: Config) -> float:
    """``refuse_s``; its default (5 s) is cut to ``ttl_s`` when that is shorter
    (a value given is checked against ``ttl_s`` instead: dbvip.config)."""
    if config.sources.get("refuse_s", "default") == "default":
        return float(min(config["refuse_s"], config["ttl_s"]))
    return float(config["refuse_s"])


class SystemClock:
    def monotonic_s(self) -> float:
        # Boot time, not CLOCK_MONOTONIC: it counts a suspended machine's
        # pause, as etcd's lease does (see dbvip.boottime).
        return boot_s()

    def wall_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StartError(Exception):
    """The sidecar cannot start; the message says why, naming the setting."""


def _fan_out(*sinks: Callable[[Snapshot], None]) -> Callable[[Snapshot], None]:
    def publish(snapshot: Snapshot) -> None:
        for sink in sinks:
            sink(snapshot)

    return publish


class Sidecar:
    """One node's loop with its real ports, watch, member publisher and, when
    ``http_listen`` is set, the HTTP endpoints."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        *,
        vip_driver: VipDriver | None = None,
        announcer: Announcer | None = None,
    ) -> None:
        """``vip_driver`` and ``announcer`` replace the netlink and raw-socket
        ones (tests that must not touch this machine's interfaces)."""
        node, vip = config["node"], config["vip"]
        timing = config.timing
        interface = config["interface"]
        # First: a second sidecar for this cluster and interface on this host
        # stops here, before it can touch anything.
        try:
            self.seat = SeatLock(config["etcd_prefix"], config["cluster"], interface)
        except SeatTakenError as e:
            raise StartError(str(e)) from None
        self.identity = Identity.fresh(node, host_identity(), interface)
        self.board = Board(str(vip), timing, clock, self.identity)
        # Metrics are only kept when served: nothing else reads them.
        self.metrics: Metrics | None = None
        self.http: HealthServer | None = None
        if config["http_listen"]:
            # Imported here: the metrics and the HTTP server cost memory a sidecar without
            # http_listen would carry for nothing.
            from dbvip.metrics import Metrics  # noqa: PLC0415

            self.metrics = Metrics(
                self.board,
                config["cluster"],
                node,
                str(vip),
                refusal=refuse_s(config) > 0,
                reader_vips=config.readers.vips,
                failsafe=config["failsafe"] == "on",
            )
            # Bound first: a port in use stops the start before anything else is made.
            self.http = _listen(config, self.board, self.metrics)
        self.store = lease_store(config, clock, node, self.identity)
        self.refusing: RefusingVipDriver | None = None
        if vip_driver is None:
            vip_driver = NetlinkVipDriver(config["interface"], vip)
            if refuse_s(config) > 0:
                table = table_name(config["cluster"], config["interface"], vip.ip)
                refusal = NftRefusal(table, vip.ip, config["interface"])
                vip_driver = self.refusing = RefusingVipDriver(
                    vip_driver, refusal, refuse_s(config), observer=self.metrics
                )
        # The reader pool, when reader_vips is set.
        self.readers: ReaderParts | None = None
        if config.readers.vips:
            from dbvip.reader_wiring import reader_parts  # noqa: PLC0415  (only with a pool)

            self.readers = reader_parts(
                config, self.store, self.identity, clock, refuse_s(config), self.metrics
            )
        self.ports = Ports(
            clock=clock,
            probe=PostgresRoleProbe(config["pg_dsn"], config.secret("pg_password") or None),
            store=self.store,
            vip=vip_driver,
            announcer=announcer or PacketAnnouncer(config["interface"], vip.ip),
            readers=self.readers.ports if self.readers else None,
        )
        # A second client for member reports: a slow publish never delays a renewal.
        self.publisher = MemberPublisher(
            lease_store(config, clock, node, self.identity),
            str(vip),
            period_s=timing.renew_interval_s,
            timeout_s=timing.request_timeout_s,
            failsafe=str(config["failsafe_listen"] or "") if config["failsafe"] == "on" else "",
        )
        self.hooks = hook_runner(config, self.metrics.hook_done if self.metrics else None)
        sinks = [self.publisher.offer, self.board.offer]
        observer: Observer | None = None
        if self.metrics is not None:
            sinks.append(self.metrics.offer)
            observer = self.metrics
        self.runner = Runner(
            node,
            timing,
            self.ports,
            EventWaiter(),
            _fan_out(*sinks),
            observer=observer,
            on_event=self.hooks.on_event,
            reader_settings=config.readers,
        )
        self.peers: PeerServer | None = None
        if config["failsafe"] == "on":
            self.runner.failsafe, self.peers = _failsafe(config, self.identity, clock, self.store)
        self.watcher = self.store.writer_watcher()
        log.info(
            "starting node=%s instance=%s host=%s cluster=%s vip=%s interface=%s etcd=%s hooks=%s",
            node,
            self.identity.instance,
            self.identity.host,
            config["cluster"],
            vip,
            config["interface"],
            ",".join(config["etcd_endpoints"]),
            ",".join(k.value for k in EventKind if config[f"hook_{k.value}"]) or "-",
        )
        if config.readers.vips:
            log.info("reader VIPs %s", ",".join(config.readers.vips))

    def run(self) -> NodeState:
        if self.refusing is not None:
            # Before the loop: what an earlier run left is cleared first.
            self.refusing.prepare()
            if not self.refusing.last_error:
                log.info("refusing connections for a VIP just given away: nftables table "
                         "inet %s", self.refusing.table)  # fmt: skip
        if self.readers is not None:
            for driver in self.readers.refusing:
                driver.prepare()
            self.readers.watcher.start(self.runner.pool_changed)
        self.hooks.start()
        if self.http is not None:
            self.http.start()
        if self.peers is not None:
            self.peers.start()
        self.publisher.start()
        self.watcher.start(self.runner.key_changed)
        state = self.runner.run()
        log.info("stopped reason=%s", state.reason.value if state.reason else "-")
        return state

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.peers is not None:
            self.peers.close()
        # The loop is over: the VIP is down and the key released. Hooks still
        # queued or running (the release hook among them) get hook_timeout_s
        # more, and no longer.
        self.hooks.stop()
        self.watcher.stop()
        if self.readers is not None:
            self.readers.close()
        self.publisher.stop()
        for port in (self.ports.probe, self.ports.vip, self.ports.announcer, self.ports.store):
            port.close()
        self.seat.close()  # last: until here this process may still touch the key


def _listen(config: Config, board: Board, metrics: Metrics) -> HealthServer:
    from dbvip.health import HealthServer  # noqa: PLC0415  (see Sidecar: only when served)

    listen = config["http_listen"]
    try:
        server = HealthServer(listen, board, metrics)
    except OSError as e:
        source = config.sources.get("http_listen", "default")
        raise StartError(
            f"http_listen = {listen} from {source}: cannot listen: {e.strerror or e}"
        ) from None
    log.info("serving HTTP on %s", Listen(listen.host, server.port))
    return server


def _failsafe(
    config: Config, identity: Identity, clock: Clock, store: EtcdLeaseStore
) -> tuple[Failsafe, PeerServer]:
    """The promise book, the client that asks peers, the endpoint they ask.
    Imported here: hashlib and hmac stay out of a sidecar without failsafe."""
    from dbvip.adapters.peers import PeerClient, PeerServer  # noqa: PLC0415
    from dbvip.promises import Failsafe  # noqa: PLC0415

    secret = config.secret("failsafe_secret").encode()
    book = Failsafe(identity, config.timing, clock, None, store)
    book.channel = PeerClient(secret, book.endpoint_of)
    listen = config["failsafe_listen"]
    try:
        server = PeerServer(listen, identity, secret, book.answer)
    except OSError as e:
        source = config.sources.get("failsafe_listen", "default")
        raise StartError(
            f"failsafe_listen = {listen} from {source}: cannot listen: {e.strerror or e}"
        ) from None
    log.info("failsafe on: serving peers on %s", Listen(listen.host, server.port))
    return book, server


def read_cluster(config: Config) -> dict[str, Any]:
    """The cluster as ``dbvip status`` shows it, as plain data."""
    store = lease_store(config, SystemClock())
    try:
        status = store.read_cluster(config["request_timeout_s"] * 3)
    finally:
        store.close()
    if isinstance(status, Unknown):
        raise RuntimeError(status.cause)
    return cluster_dict(config["cluster"], status)


def set_maintenance(config: Config, node: str, on: bool) -> None:
    store = lease_store(config, SystemClock())
    try:
        done = store.set_maintenance(node, on, config["request_timeout_s"] * 3)
    finally:
        store.close()
    if isinstance(done, Unknown):
        raise RuntimeError(done.cause)


def cluster_dict(cluster: str, status: ClusterStatus) -> dict[str, Any]:
    lease_id = None
    if isinstance(status.writer, KeyHeld | KeyInvalid):
        lease_id = status.writer.lease_id
    return {
        "cluster": cluster,
        "writer": writer_row(status.writer_value, lease_id, status.writer_ttl_s),
        "members": [member_row(m.node, m.value, m.ttl_s) for m in status.members],
        "maintenance": list(status.maintenance),
        "readers": [
            reader_row(r.vip, r.value, r.lease_id, r.ttl_s, r.claim_only) for r in status.readers
        ],
    }
