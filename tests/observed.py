"""For the observability tests: a node on the in-memory fakes with its board
and metrics wired as in ``dbvip.wiring.Sidecar``, an HTTP GET, and the dbvip
logger captured as ``dbvip run`` sets it up."""

from __future__ import annotations

import io
import logging
import logging.handlers
from http.client import HTTPConnection

from prometheus_client.parser import text_string_to_metric_families

from dbvip import logs
from dbvip.board import Board
from dbvip.metrics import Metrics
from dbvip.model import Role, Timing
from dbvip.runner import Ports, Runner, Snapshot
from tests.fakes import (
    FakeAnnouncer,
    FakeClock,
    FakeEtcd,
    FakeKernel,
    FakeLeaseStore,
    FakeProbe,
    FakeVipDriver,
    FakeWaiter,
)

T = Timing()
VIP = "198.51.100.10/32"


class ObservedNode:
    def __init__(
        self,
        name: str = "n1",
        role: Role = Role.PRIMARY,
        clock: FakeClock | None = None,
        etcd: FakeEtcd | None = None,
        kernel: FakeKernel | None = None,
        reader_vips: tuple[str, ...] = (),
    ) -> None:
        self.clock = clock or FakeClock()
        self.etcd = etcd or FakeEtcd(self.clock)
        self.kernel = kernel or FakeKernel(self.clock)
        self.probe = FakeProbe(self.clock, role)
        self.store = FakeLeaseStore(self.etcd, name)
        self.vip = FakeVipDriver(self.kernel, name)
        self.announcer = FakeAnnouncer(self.kernel, name)
        self.board = Board(VIP, T, self.clock)
        self.metrics = Metrics(
            self.board, "main", name, VIP, refusal=True, reader_vips=reader_vips, failsafe=True
        )  # refuse_s is on by default; failsafe on, so that its series are exported
        self.published: list[Snapshot] = []

        def publish(snapshot: Snapshot) -> None:
            self.published.append(snapshot)
            self.board.offer(snapshot)
            self.metrics.offer(snapshot)

        self.runner = Runner(
            name,
            T,
            Ports(self.clock, self.probe, self.store, self.vip, self.announcer),
            FakeWaiter(self.clock),
            publish,
            observer=self.metrics,
        )

    def value(self, name: str, **labels: str) -> float | None:
        return sample_value(self.metrics, name, labels)


def sample_value(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    """A sample's value in the exposition, read back by prometheus_client's
    parser (an independent reader of the text format dbvip writes)."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def run(nodes: list[ObservedNode], seconds: float) -> None:
    """Every node ticks once per probe interval on the shared fake clock."""
    clock = nodes[0].clock
    until = clock.now_s + seconds
    while clock.now_s < until:
        for node in nodes:
            node.runner.tick()
        clock.advance(T.probe_interval_s)


Answer = tuple[int, str, bytes]


def get(port: int, path: str, host: str = "127.0.0.1") -> Answer:
    conn = HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read()
    finally:
        conn.close()


class Capture:
    """The dbvip logger routed as ``dbvip run`` does, into a string."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("dbvip")
        self.saved = (self.logger.handlers[:], self.logger.level, self.logger.propagate)
        self.stream = io.StringIO()
        self.listener: logging.handlers.QueueListener | None = None

    def start(self, fmt: str) -> None:
        self.listener = logs.setup("debug", fmt, self.stream)

    def text(self) -> str:
        """Everything logged so far (stops the listener: it writes from a thread)."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        return self.stream.getvalue()

    def restore(self) -> None:
        self.text()
        self.logger.handlers[:] = self.saved[0]
        self.logger.setLevel(self.saved[1])
        self.logger.propagate = self.saved[2]
