"""The ``scale`` part on the lab: K dbvip clusters side by side on one
three-member etcd, sharing the lab's three PostgreSQL nodes.

Cluster 0 is the lab's own sidecars (its name, its writer VIP); cluster i > 0
is one more ``dbvip run`` per node, started here in the node's namespace with
the lab's sidecar settings plus its own ``DBVIP_CLUSTER`` and ``DBVIP_VIP``, so
every node runs K sidecars watching the same local database. Per step (a
number of clusters, growing): wait until every cluster's writer key and VIP
are on the primary and every member reported, then ``QUIET_S`` more (a
replica that saw a key free probes eagerly for ``eager_window_s``, 30 s);
an idle window (etcd's counters, its members' CPU and memory, every sidecar's
CPU); a few hundred timed reads; then switchovers of the lab's primary with
the failover benchmark's orchestrator and clients, measured through cluster
0's VIP. Every cluster hands off at that instant (they share the databases):
the loaded hand-off is K hand-offs at once, the worst case for etcd.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dbvip.adapters.arp import call_in_netns
from integration.bench import footprint
from integration.bench import scale_measure as sm
from integration.bench.client import WRITER_TIMEOUT_S
from integration.bench.etcd_cost import cost, metrics_pages, parse_metrics
from integration.bench.peers import DbvipSidecars
from integration.bench.scenarios import Orchestrator, wait_for
from integration.lab.lab import DEFAULT_VIP, ETCD_ADDRESSES, Lab, LabSpec
from integration.lab.sidecar import SidecarProcess

Say = Callable[[str], None]

# Cluster i > 0: 198.51.100.(EXTRA_VIP_BASE + i). The lab uses .2-.4 (etcd),
# .11-.19 (nodes), .21 (client), .30 (lb), .100 (writer) and .101-.120 (readers).
EXTRA_VIP_BASE = 140
# Every sidecar keeps a connection to its node's database (the lab's
# PostgreSQL allows 100): leave room for the monitor, clients and WAL senders.
MAX_CLUSTERS = 40
QUIET_S = 35.0  # eager_window_s (30 s) and a margin
# etcd's own defaults for raft timing (the lab's are 20/200 ms, for fast
# fault tests; these come after the lab's flags, and etcd takes the last) and
# the request-latency histogram.
ETCD_ARGS = ("--heartbeat-interval=100", "--election-timeout=1000", "--metrics=extensive")
RANGE_READS = 300  # timed reads per step, spread over the members
SETTLE_TIMEOUT_S = 240.0
PHASE_S = 2.0  # dbvip's renew interval: each switchover at a random phase of it


def cluster_name(lab: str, index: int) -> str:
    return lab if index == 0 else f"{lab}-c{index:02d}"


def cluster_vip(index: int) -> str:
    if not 0 <= index < MAX_CLUSTERS:
        raise ValueError(f"cluster index {index}: 0..{MAX_CLUSTERS - 1}")
    return DEFAULT_VIP if index == 0 else f"198.51.100.{EXTRA_VIP_BASE + index}/32"


class Clusters:
    """The lab's sidecars (cluster 0) and the extra clusters' sidecars, which
    this class starts and stops, by PID."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.count = 1
        self.extra: dict[str, SidecarProcess] = {}  # "<node>/c<i>" -> its process

    def grow(self, clusters: int) -> None:
        """Start clusters ``count .. clusters - 1``, one sidecar per node each."""
        for index in range(self.count, clusters):
            name, vip = cluster_name(self.lab.name, index), cluster_vip(index)
            for node in self.lab.spec.nodes:
                env = self.lab.sidecar_env(node) | {"DBVIP_CLUSTER": name, "DBVIP_VIP": vip}
                log = self.lab.dir / "logs" / f"{node}-c{index:02d}.log"
                self.extra[f"{node}/c{index}"] = SidecarProcess(self.lab.netns(node), env, log)
        self.count = max(self.count, clusters)

    def pids(self) -> dict[str, int]:
        own = {f"{n}/c0": s.proc.pid for n, s in self.lab.sidecars.items()}
        return own | {key: s.proc.pid for key, s in self.extra.items()}

    def exited(self) -> list[str]:
        every = {f"{n}/c0": s for n, s in self.lab.sidecars.items()} | self.extra
        return [f"{k} (exit {s.proc.returncode})" for k, s in every.items()
                if s.proc.poll() is not None]  # fmt: skip

    def stop(self) -> None:
        """SIGTERM to every extra sidecar (each releases its VIP), then SIGKILL
        what is left after 10 s; only these PIDs."""
        for sidecar in self.extra.values():
            if sidecar.proc.poll() is None:
                sidecar.signal(signal.SIGTERM)
        for sidecar in self.extra.values():
            try:
                sidecar.wait(10)
            except subprocess.TimeoutExpired:
                sidecar.kill()


# -- what etcd and the kernels hold ------------------------------------------------


def writers(lab: Lab) -> dict[str, str]:
    """cluster -> the node its writer key names (every cluster of this lab)."""
    out = lab.etcdctl("get", "--prefix", "/dbvip/", "-w", "json")
    return sm.writer_nodes(json.loads(out))


def member_reports(lab: Lab) -> int:
    out = lab.etcdctl("get", "--prefix", "/dbvip/", "--keys-only", "-w", "json")
    return sm.member_keys(json.loads(out))


def vip_hosts(lab: Lab) -> dict[str, set[str]]:
    """address -> the database nodes that have it on eth0 (the kernel's view)."""
    out: dict[str, set[str]] = {}
    for node in lab.spec.nodes:
        done = subprocess.run(["ip", "-j", "-n", lab.netns(node), "addr", "show", "dev", "eth0"],
                              capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
        for address in sm.addresses(json.loads(done.stdout)):
            out.setdefault(address, set()).add(node)
    return out


def settled(lab: Lab, clusters: int, primary: str) -> str | None:
    """Why the ``clusters`` clusters are not settled on ``primary`` yet (None: they are)."""
    names = [cluster_name(lab.name, i) for i in range(clusters)]
    held = writers(lab)
    wrong = [n for n in names if held.get(n) != primary]
    if wrong:
        return f"writer keys not on {primary}: {wrong[:3]}{'...' if len(wrong) > 3 else ''}"
    hosts = vip_hosts(lab)
    vips = [cluster_vip(i).split("/")[0] for i in range(clusters)]
    misplaced = [v for v in vips if hosts.get(v) != {primary}]
    if misplaced:
        return f"VIPs not on {primary} alone: {[(v, sorted(hosts.get(v, ()))) for v in misplaced]}"
    reports = member_reports(lab)
    if reports != clusters * len(lab.spec.nodes):
        return f"{reports} member reports of {clusters * len(lab.spec.nodes)}"
    return None


def wait_settled(lab: Lab, clusters: int, primary: str) -> float:
    began_s = time.monotonic()
    last: list[str | None] = [None]

    def done() -> bool:
        last[0] = settled(lab, clusters, primary)
        return last[0] is None

    try:
        wait_for("every cluster settled", done, SETTLE_TIMEOUT_S, interval_s=1.0)
    except Exception as exc:
        raise RuntimeError(f"{exc}: {last[0]}") from None
    return time.monotonic() - began_s


# -- one idle window ---------------------------------------------------------------


def window(lab: Lab, clusters: Clusters, window_s: float) -> dict[str, Any]:
    """etcd's counters, its members' CPU and memory, and every sidecar's CPU, over
    ``window_s`` of idle (no client, no monitor)."""
    assert lab.etcd is not None
    sidecars = clusters.pids()
    members = {m.name: m.pid for m in lab.etcd.members}
    before = metrics_pages(lab)
    sidecar_cpu = {k: footprint.cpu_s([p]) for k, p in sidecars.items()}
    used = footprint.measure(members, window_s)
    after = metrics_pages(lab)
    sidecar_cpu = {k: footprint.cpu_s([p]) - sidecar_cpu[k] for k, p in sidecars.items()}
    sidecar_rss = sum(footprint.rss_kib([p]) for p in sidecars.values()) / 1024
    count = len(sidecars)
    measured = cost([parse_metrics(t, at) for at, t in before],
                    [parse_metrics(t, at) for at, t in after], count)  # fmt: skip
    histogram = sm.bucket_delta([sm.handling_buckets(t) for _, t in before],
                                [sm.handling_buckets(t) for _, t in after])  # fmt: skip
    usage = {f.node: sm.Usage(f.cpu_s, f.window_s, f.rss_mib_max) for f in used}
    window_done_s = used[0].window_s
    return {
        "sidecars": count,
        "cost": measured,
        "etcd": sm.etcd_usage(usage),
        "histogram": _json_buckets(histogram),
        "sidecar_core_percent": round(sum(sidecar_cpu.values()) / window_done_s * 100, 2),
        "sidecar_rss_mib": round(sidecar_rss, 1),
        "etcd_connections": etcd_connections(lab),
    }


def etcd_connections(lab: Lab) -> int:
    """Established client connections to the etcd members (port 2379) from
    other hosts (each member's JSON gateway has its own to the members)."""
    done = subprocess.run(
        ["ip", "netns", "exec", lab.netns("etcd"), "ss", "-Htn", "state", "established",
         "( sport = :2379 )"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return sm.client_connections(done.stdout, ETCD_ADDRESSES)


def timed_reads(lab: Lab, cluster: str, count: int) -> list[float]:
    """``count`` reads of ``cluster``'s keys (the range a sidecar reads, linearizable,
    through etcd's JSON gateway as a sidecar does), one at a time, on one
    kept-alive connection per member, the members in turn; each one's ms."""
    assert lab.etcd is not None
    prefix = f"/dbvip/{cluster}/".encode()
    keys = {"key": prefix, "range_end": prefix[:-1] + b"0"}  # every key under the prefix
    body = json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()}).encode()
    conns = []
    try:
        for member in lab.etcd.members:
            host, port = member.client_url.removeprefix("http://").rsplit(":", 1)
            conns.append(_connect(lab.netns("etcd"), host, int(port)))
        taken = []
        for i in range(count):
            conn = conns[i % len(conns)]
            began_s = time.monotonic()
            conn.request("POST", "/v3/kv/range", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            taken.append((time.monotonic() - began_s) * 1000)
            if response.status != 200:
                raise RuntimeError(f"Range through the gateway: HTTP {response.status}")
        return taken
    finally:
        for conn in conns:
            conn.close()


def _connect(netns: str, host: str, port: int) -> http.client.HTTPConnection:
    """An HTTP connection whose socket lives in ``netns`` (made there, used from here)."""
    sock = call_in_netns(netns, lambda: socket.create_connection((host, port), 2))
    # http.client sends the headers and the body in two segments: without
    # TCP_NODELAY the body waits for the server's delayed ACK (40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = http.client.HTTPConnection(host, port, timeout=2)
    conn.sock = sock
    return conn


# -- hand-offs ---------------------------------------------------------------------------


def handoffs(
    lab: Lab, clusters: int, primary: str, repetitions: int, seed: int, say: Say
) -> tuple[list[dict[str, Any]], str, list[str], dict[str, dict[str, float]]]:
    """``repetitions`` switchovers of the lab's primary, measured through cluster
    0's VIP by the failover benchmark's orchestrator (its clients and its
    monitor); returns the samples, the primary after them, any error, and
    etcd's handling-time histogram over them (was etcd slow to answer?)."""
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    before = [sm.handling_buckets(text) for _, text in metrics_pages(lab)]
    monitor = lab.monitor()
    monitor.start()
    orchestrator = Orchestrator(lab, DbvipSidecars(lab), monitor, WRITER_TIMEOUT_S, seed,
                                PHASE_S, primary)  # fmt: skip
    try:
        for rep in range(1, repetitions + 1):
            if rep > 1:
                wait_settled(lab, clusters, orchestrator.primary)
                time.sleep(QUIET_S)  # every repetition starts idle, its eager probing over
            try:
                sample = orchestrator.run(f"K={clusters}", "switchover", rep)
            except Exception as exc:
                errors.append(f"K={clusters} switchover {rep}: {type(exc).__name__}: {exc}")
                say(f"    switchover {rep}: FAILED {errors[-1]}")
                break
            samples.append(sample.to_json() | {"clusters": clusters})
            say(
                f"    switchover {rep}/{repetitions} {sample.old}->{sample.new}: ordinary "
                f"client's first write {_ms(sample.ordinary_write_ms)} after the promotion "
                f"(VIP {_ms(sample.vip_ms)}, double holders {len(sample.double_holders)})"
            )
    finally:
        with contextlib.suppress(Exception):
            orchestrator.close()
        with contextlib.suppress(Exception):
            monitor.stop()
    after = [sm.handling_buckets(text) for _, text in metrics_pages(lab)]
    return samples, orchestrator.primary, errors, _json_buckets(sm.bucket_delta(before, after))


def _json_buckets(histogram: sm.Buckets) -> dict[str, dict[str, float]]:
    return {m: {str(b): c for b, c in bs.items()} for m, bs in histogram.items()}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


# -- the whole part --------------------------------------------------------------------


def run_all(
    name: str,
    steps: Sequence[int],
    window_s: float,
    repetitions: int,
    seed: int,
    say: Say,
    template: Path | None = None,
    quiet_s: float = QUIET_S,
) -> dict[str, Any]:
    """Every step on one lab named ``name``; the lab is gone when this returns."""
    if list(steps) != sorted(set(steps)) or not steps or steps[0] < 1 or steps[-1] > MAX_CLUSTERS:
        raise ValueError(f"steps {steps}: growing, 1..{MAX_CLUSTERS}")
    spec = LabSpec(name, etcd_members=3, etcd_args=ETCD_ARGS,
                   pg_template=None if template is None else str(template))  # fmt: skip
    say(f"lab {name}: 3 PostgreSQL nodes, 3 etcd members, dbvip at its defaults")
    lab = Lab.create(spec)
    clusters = Clusters(lab)
    measured: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        primary = "n1"
        for k in steps:
            clusters.grow(k)
            say(f"K={k}: {3 * k} sidecars; waiting for every cluster on {primary}")
            took_s = wait_settled(lab, k, primary)
            say(f"  settled in {took_s:.0f} s; {quiet_s:g} s more to go idle")
            time.sleep(quiet_s)
            if exited := clusters.exited():
                raise RuntimeError(f"sidecars exited: {exited}")
            say(f"  idle window, {window_s:g} s")
            step: dict[str, Any] = {"clusters": k, **window(lab, clusters, window_s)}
            step["reads"] = sm.latency(timed_reads(lab, lab.name, RANGE_READS))
            step["database_sessions"] = int(lab.servers[primary].sql(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'dbvip'"))  # fmt: skip
            say(f"  etcd {step['etcd']['core_percent']:.1f}% of a core (3 members), "
                f"{step['etcd']['rss_mib']:.0f} MiB; {step['cost']['requests_per_s']:.2f} "
                f"requests/s per sidecar; Range p50 {step['reads']['p50_ms']:.2f} ms, "
                f"p99 {step['reads']['p99_ms']:.2f} ms")  # fmt: skip
            step["handoffs"], primary, failed, step["handoff_histogram"] = handoffs(
                lab, k, primary, repetitions, seed + k, say
            )
            measured.append(step)
            errors += failed
            if failed:
                break
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        say(f"FAILED: {errors[-1]}")
    finally:
        clusters.stop()
        lab.close()
    return {"steps": measured, "errors": errors}
