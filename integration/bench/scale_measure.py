"""The ``scale`` part's arithmetic: no I/O, no clock.

What an idle window's records become (etcd's CPU and memory, its request
latency from its own histogram and from timed reads, cost per cluster), what
the hand-offs become (idle against loaded), and how many clusters one etcd
serves by etcd's published guidance.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from integration.bench.measure import percentile

HANDLING = "grpc_server_handling_seconds"  # etcd --metrics=extensive
SIDECARS_PER_CLUSTER = 3  # the lab's three nodes, one sidecar each
GOAL_RATIO = 1.2  # issue 12: a loaded hand-off within 20 % of the idle one

Buckets = dict[str, dict[float, float]]  # gRPC method -> upper bound (s) -> cumulative count


def handling_buckets(text: str) -> Buckets:
    """The unary requests' handling-time histogram of one ``/metrics`` page, by
    method (streams are left out: their "handling time" is how long they stay
    open). Empty when etcd runs without ``--metrics=extensive``."""
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != HANDLING:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket") or sample.labels.get("grpc_type") != "unary":
                continue
            bound = float(sample.labels["le"])
            method = out.setdefault(sample.labels["grpc_method"], {})
            method[bound] = method.get(bound, 0.0) + sample.value
    return out


def bucket_delta(before: Iterable[Buckets], after: Iterable[Buckets]) -> Buckets:
    """What every member counted between two scrapes, summed over the members."""

    def total(pages: Iterable[Buckets]) -> Buckets:
        out: Buckets = {}
        for page in pages:
            for method, buckets in page.items():
                into = out.setdefault(method, {})
                for bound, count in buckets.items():
                    into[bound] = into.get(bound, 0.0) + count
        return out

    start, end = total(before), total(after)
    delta: Buckets = {}
    for method, buckets in end.items():
        counts = {b: c - start.get(method, {}).get(b, 0.0) for b, c in buckets.items()}
        if any(c < 0 for c in counts.values()):
            raise ValueError(f"{HANDLING}{{{method}}} went back: did a member restart?")
        if counts.get(math.inf, 0.0) > 0:
            delta[method] = counts
    return delta


def share_within(buckets: Mapping[float, float], bound_s: float) -> float:
    """The share of requests handled within ``bound_s`` (a bucket bound)."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        raise ValueError("no request in the histogram")
    if bound_s not in buckets:
        raise ValueError(f"{bound_s} s is not a bucket bound: {sorted(buckets)}")
    return buckets[bound_s] / total


def bucket_quantile(buckets: Mapping[float, float], q: float) -> float:
    """The smallest bucket bound at or under which a share ``q`` (0..1) of the
    requests fall: the histogram says no more than that (its buckets start at
    5 ms, so a request's own time is read from the timed reads instead)."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0 or not 0.0 < q <= 1.0:
        raise ValueError(f"q {q} over {total} requests")
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return math.inf


def latency(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p99 and max of timed requests (ms)."""
    if not samples_ms:
        raise ValueError("no timed request")
    return {
        "count": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "max_ms": round(max(samples_ms), 3),
    }


@dataclass(frozen=True)
class Usage:
    """One process's CPU over a window and its largest resident memory."""

    cpu_s: float
    window_s: float
    rss_mib: float

    @property
    def core_percent(self) -> float:
        return self.cpu_s / self.window_s * 100.0 if self.window_s > 0 else math.nan


def etcd_usage(members: Mapping[str, Usage]) -> dict[str, Any]:
    """Every member's CPU (% of one core) and RSS, and their sums."""
    if not members:
        raise ValueError("no etcd member")
    return {
        "members": {
            name: {"core_percent": round(u.core_percent, 3), "rss_mib": round(u.rss_mib, 1)}
            for name, u in members.items()
        },
        "core_percent": round(sum(u.core_percent for u in members.values()), 3),
        "rss_mib": round(sum(u.rss_mib for u in members.values()), 1),
    }


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (None with fewer than two distinct x)."""
    xs = {x for x, _ in points}
    if len(xs) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den


def per_cluster(steps: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """What one more cluster costs etcd, from the steps' idle windows (slope over
    the number of clusters): CPU (% of a core, all members), RSS (MiB, all
    members), requests and raft writes per second."""

    def fit(value: Any) -> float | None:
        return slope([(float(s["clusters"]), float(value(s))) for s in steps])

    return {
        "core_percent": fit(lambda s: s["etcd"]["core_percent"]),
        "rss_mib": fit(lambda s: s["etcd"]["rss_mib"]),
        "requests_per_s": fit(lambda s: s["cost"]["requests_per_s"] * s["sidecars"]),
        "writes_per_s": fit(lambda s: s["cost"]["writes_per_s"] * s["sidecars"]),
    }


@dataclass(frozen=True)
class Tier:
    """One of etcd's example hardware configurations (etcd's "Hardware
    recommendations", https://etcd.io/docs/v3.4/op-guide/hardware/)."""

    name: str
    clients: int  # "serves fewer than ... clients"
    requests_per_s: int  # "fewer than ... requests per second"
    vcpus: int
    memory_gb: int


TIERS = (
    Tier("small", 100, 200, 2, 8),
    Tier("medium", 500, 1_000, 4, 16),
    Tier("large", 1_500, 10_000, 8, 32),
)


def capacity(requests_per_sidecar_s: float, tiers: Sequence[Tier] = TIERS) -> list[dict[str, Any]]:
    """Clusters of three sidecars each tier serves: by its client count (every
    sidecar is one client), by its request rate (at the measured idle rate per
    sidecar), and the smaller of the two."""
    if requests_per_sidecar_s <= 0:
        raise ValueError("a sidecar that sends nothing: nothing to divide by")
    rows = []
    per_cluster_s = requests_per_sidecar_s * SIDECARS_PER_CLUSTER
    for tier in tiers:
        by_clients = tier.clients // SIDECARS_PER_CLUSTER
        by_requests = math.floor(tier.requests_per_s / per_cluster_s)
        rows.append(
            {
                "tier": tier.name,
                "clients": tier.clients,
                "requests_per_s": tier.requests_per_s,
                "vcpus": tier.vcpus,
                "memory_gb": tier.memory_gb,
                "by_clients": by_clients,
                "by_requests": by_requests,
                "clusters": min(by_clients, by_requests),
                "bound": "clients" if by_clients <= by_requests else "requests",
            }
        )
    return rows


def handoff_summary(values_ms: Sequence[float]) -> dict[str, float | int] | None:
    """median, p95 and max of one step's hand-offs (None with none measured)."""
    if not values_ms:
        return None
    return {
        "n": len(values_ms),
        "median_ms": round(percentile(values_ms, 50), 1),
        "p95_ms": round(percentile(values_ms, 95), 1),
        "max_ms": round(max(values_ms), 1),
    }


def handoff_ratio(idle_ms: Sequence[float], loaded_ms: Sequence[float]) -> float | None:
    """Loaded over idle, of the medians (None when either is missing or idle is 0)."""
    if not idle_ms or not loaded_ms:
        return None
    idle = percentile(idle_ms, 50)
    return None if idle <= 0 else percentile(loaded_ms, 50) / idle


# -- what etcd and the kernel hold (parsed, for the harness's waits) -------------------


def _kvs(listing: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, value) of an ``etcdctl get -w json`` listing (value "" with --keys-only)."""
    out = []
    for kv in listing.get("kvs") or ():
        key = base64.b64decode(kv["key"]).decode()
        value = base64.b64decode(kv.get("value", "")).decode(errors="replace")
        out.append((key, value))
    return out


def writer_nodes(listing: Mapping[str, Any]) -> dict[str, str]:
    """cluster -> the node its ``/dbvip/<cluster>/writer`` key names."""
    out = {}
    for key, value in _kvs(listing):
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "dbvip" and parts[3] == "writer":
            try:
                node = json.loads(value).get("node")
            except (ValueError, AttributeError):
                continue
            if isinstance(node, str):
                out[parts[2]] = node
    return out


def member_keys(listing: Mapping[str, Any]) -> int:
    """How many ``/dbvip/<cluster>/members/<node>`` keys the listing holds."""
    count = 0
    for key, _ in _kvs(listing):
        parts = key.split("/")
        count += len(parts) == 5 and parts[1] == "dbvip" and parts[3] == "members"
    return count


def addresses(links: Sequence[Mapping[str, Any]]) -> set[str]:
    """Every address of an ``ip -j addr show`` answer."""
    return {a["local"] for link in links for a in link.get("addr_info", ()) if "local" in a}


def client_connections(ss_lines: str, own: Iterable[str]) -> int:
    """Connections in ``ss -Htn state established`` output whose peer (the last
    column, ``address:port``) is not one of the ``own`` addresses."""
    skip = set(own)
    count = 0
    for line in ss_lines.splitlines():
        fields = line.split()
        if fields:
            address = fields[-1].rpartition(":")[0].strip("[]")
            count += address not in skip
    return count
