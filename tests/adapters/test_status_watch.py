"""``dbvip status --watch`` as a user runs it: the installed console script
against a real etcd on loopback, on a real pseudo-terminal (Ctrl-C typed
into it) and through a pipe (SIGINT sent to the process we started)."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import threading
from collections.abc import Iterator

import pytest

from dbvip.adapters.etcd_store import EtcdLeaseStore
from dbvip.ports import Granted, MemberReport
from dbvip.watch import CLEAR_BELOW, HIDE_CURSOR, HOME, SHOW_CURSOR
from dbvip.wiring import SystemClock
from integration.lab.etcd import EtcdCluster, refusing_url
from integration.lab.eventually import eventually
from tests.examples.deploy import BIN

pytestmark = pytest.mark.real

VIP = "198.51.100.10/32"
TIMEOUT_S = 2.0
INTERVAL = ["--interval-s", "0.2"]


class Output:
    """Everything a process writes to ``fd``, read by a thread of its own."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._data = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    def text(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace")

    def finish(self) -> str:
        self._thread.join(10)
        return self.text()


class Cluster:
    """Two nodes' stores, to change what ``dbvip status`` shows."""

    def __init__(self, etcd: EtcdCluster, name: str) -> None:
        self.etcd, self.name = etcd, name
        self.stores: dict[str, EtcdLeaseStore] = {}
        self.leases: dict[str, int] = {}

    def store(self, node: str) -> EtcdLeaseStore:
        if node not in self.stores:
            self.stores[node] = EtcdLeaseStore(
                self.etcd.endpoints, self.name, node, VIP, SystemClock()
            )
        return self.stores[node]

    def hold(self, node: str) -> None:
        granted = self.store(node).acquire(30, TIMEOUT_S)
        assert isinstance(granted, Granted), granted
        self.leases[node] = granted.lease_id
        report = MemberReport("primary", 2, "0/3000060", (VIP,), "holding")
        assert self.store(node).publish_member(report, TIMEOUT_S)

    def step_down(self, node: str) -> None:
        self.store(node).release(self.leases.pop(node), TIMEOUT_S)
        report = MemberReport("replica", 2, "0/3000060", (), "replica")
        assert self.store(node).publish_member(report, TIMEOUT_S)

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "DBVIP_CLUSTER": self.name,
            "DBVIP_ETCD_ENDPOINTS": self.etcd.endpoints[0],
        }

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


@pytest.fixture
def cluster(etcd_single: EtcdCluster, etcd_cluster_name: str) -> Iterator[Cluster]:
    c = Cluster(etcd_single, etcd_cluster_name)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed (by PID) if one is left running.

    A test run started in the background without job control (``cmd &`` in a
    script) ignores SIGINT, and an ignored signal stays ignored across exec:
    dbvip would never see the Ctrl-C these tests send. Handled here, so the
    children start with SIGINT at its default."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def dbvip_argv(*args: str) -> list[str]:
    return [str(BIN / "dbvip"), "status", "--watch", *args]


def last_frame(text: str) -> str:
    return text.rsplit(HOME, 1)[-1]


def test_on_a_terminal_the_table_is_redrawn_in_place_until_ctrl_c(
    cluster: Cluster, started: list[subprocess.Popen[bytes]]
) -> None:
    cluster.hold("n1")
    master, slave = pty.openpty()
    try:
        # setsid --ctty (util-linux) makes the pty the session's controlling
        # terminal, then execs dbvip in the same process: a ^C typed into the
        # pty is SIGINT to it, as in a shell.
        proc = subprocess.Popen(
            ["setsid", "--ctty", *dbvip_argv(*INTERVAL)],
            stdin=slave, stdout=slave, stderr=slave, env=cluster.env(),
        )  # fmt: skip
    finally:
        os.close(slave)
    started.append(proc)
    out = Output(master)
    try:
        eventually(lambda: "writer: n1" in last_frame(out.text()), timeout_s=20)
        cluster.step_down("n1")
        cluster.hold("n2")
        frame = eventually(
            lambda: "writer: n2" in (f := last_frame(out.text())) and CLEAR_BELOW in f and f,
            timeout_s=20,
        )
        assert isinstance(frame, str)  # truthy, so not the False of "and"
        os.write(master, b"\x03")  # Ctrl-C, typed
        assert proc.wait(20) == 0
        text = out.finish()
    finally:
        os.close(master)
    assert text.startswith(HIDE_CURSOR + HOME)
    assert text.count(HOME) >= 3  # several frames, each drawn from the top
    assert "---" not in text  # nothing appended as plain blocks
    assert "writer: n1" not in frame  # the old holder's line was overwritten
    assert re.search(r"n1\s+replica", frame) and re.search(r"n2\s+primary", frame)
    assert "Ctrl-C to stop" in frame
    assert text.rstrip().endswith(SHOW_CURSOR)  # the cursor is given back
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


def test_through_a_pipe_each_look_is_appended_as_plain_text_until_sigint(
    cluster: Cluster, started: list[subprocess.Popen[bytes]]
) -> None:
    cluster.hold("n1")
    proc = subprocess.Popen(
        dbvip_argv(*INTERVAL), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env()
    )
    started.append(proc)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Output(proc.stdout.fileno()), Output(proc.stderr.fileno())
    eventually(lambda: "writer: n1" in out.text(), timeout_s=20)
    cluster.step_down("n1")
    cluster.hold("n2")
    eventually(lambda: "writer: n2" in out.text(), timeout_s=20)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert proc.wait(20) == 0
    text, errors = out.finish(), err.finish()
    assert errors == ""
    assert "\x1b" not in text
    # Each look: a header line with the time, the table, a blank line.
    blocks = re.findall(r"^--- (\S+)\n(.*?)\n\n(?=--- |\Z)", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2
    assert "".join(f"--- {at}\n{body}\n\n" for at, body in blocks) == text  # nothing else
    for at, body in blocks:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at)
        assert body.startswith("cluster ")
    heads = [body.splitlines()[0] for _, body in blocks]
    first_n2 = next(i for i, h in enumerate(heads) if "writer: n2" in h)
    assert "writer: n1" in heads[0]
    assert all("writer: n2" not in h for h in heads[:first_n2])  # in order, as it happened


def test_json_watch_prints_one_object_per_line(
    cluster: Cluster, started: list[subprocess.Popen[bytes]]
) -> None:
    cluster.hold("n1")
    proc = subprocess.Popen(
        dbvip_argv("--json", *INTERVAL), stdout=subprocess.PIPE, env=cluster.env()
    )
    started.append(proc)
    assert proc.stdout is not None
    out = Output(proc.stdout.fileno())
    eventually(lambda: out.text().count("\n") >= 2, timeout_s=20)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    lines = out.finish().splitlines()
    assert len(lines) >= 2
    for line in lines:
        view = json.loads(line)
        assert view["writer"]["node"] == "n1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", view["at"])


def test_an_unreachable_etcd_is_shown_and_the_watch_goes_on(
    started: list[subprocess.Popen[bytes]],
) -> None:
    with refusing_url() as url:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "DBVIP_CLUSTER": "main", "DBVIP_ETCD_ENDPOINTS": url}
        proc = subprocess.Popen(dbvip_argv(*INTERVAL), stdout=subprocess.PIPE, env=env)
        started.append(proc)
        assert proc.stdout is not None
        out = Output(proc.stdout.fileno())
        eventually(lambda: out.text().count("cannot read the cluster from etcd") >= 2, timeout_s=30)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    assert "Traceback" not in out.finish()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--watch", "--interval-s", "0"], "argument --interval-s: a number of seconds >= 0.1"),
        (["--watch", "--interval-s", "soon"], "argument --interval-s: a number of seconds"),
        (["--interval-s", "2"], "--interval-s is given without --watch"),
    ],
)
def test_a_bad_interval_is_refused_naming_the_option(args: list[str], complaint: str) -> None:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DBVIP_CLUSTER": "main",
           "DBVIP_ETCD_ENDPOINTS": "http://127.0.0.1:2379"}  # fmt: skip
    done = subprocess.run(
        [str(BIN / "dbvip"), "status", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert complaint in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
