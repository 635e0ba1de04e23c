"""What idle dbvip sidecars cost etcd, from etcd's own Prometheus counters.

    python -m integration.bench.etcd_cost [--window-s 60] [--readers N] [--json PATH]

Starts a default three-node lab against a three-member etcd (plus ``N``
reader VIPs), waits until it is steady, and reads every etcd member's
``/metrics`` at the start and the end of an idle window. What the sidecars
sent in between, per second and per sidecar, by kind:

- ``grpc_server_started_total`` by gRPC method: every request. A sidecar
  talks to etcd's JSON gateway, which turns each HTTP call into one gRPC call
  of its own; a lease keepalive through the gateway opens a LeaseKeepAlive
  stream of its own (counted once here), a watch is one Watch stream for as
  long as the HTTP stream stays open.
- ``grpc_server_msg_received_total``: messages on those calls (a stream's
  messages too).
- ``etcd_server_proposals_committed_total``: raft writes (Put, Txn that
  writes, lease grant and revoke); the same on every member, so taken once.
- ``etcd_debugging_mvcc_watch_stream_total`` and ``..._watcher_total``: open
  watch streams and watchers at the end (gauges, not rates).
- ``etcd_network_client_grpc_{received,sent}_bytes_total``: bytes.

Then the replicas' sidecars are stopped (cleanly) and a second window
measures the holder alone: the holder's cost is that window, a replica's is
the rest of the first window split over the replicas. Stopping the replicas
changes what the holder sees (fewer member reports; with reader VIPs the
primary takes them as the fallback): the table says so.

``cost(before, after, sidecars)``, ``table`` and ``metrics_pages`` are what
``--part scale`` reuses.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Counters summed over every member (each member counts what it served).
REQUESTS = "grpc_server_started_total"
MESSAGES = "grpc_server_msg_received_total"
BYTES_IN = "etcd_network_client_grpc_received_bytes_total"
BYTES_OUT = "etcd_network_client_grpc_sent_bytes_total"
# Raft writes: every member commits every proposal, so the largest is taken.
WRITES = "etcd_server_proposals_committed_total"
STREAMS = ("etcd_debugging_mvcc_watch_stream_total", "etcd_debugging_mvcc_watcher_total")


@dataclass(frozen=True)
class Scrape:
    """One member's counters at one instant: ``(name, grpc_method)`` -> value
    (grpc_method "" for counters without one)."""

    at_s: float
    values: Mapping[tuple[str, str], float]


def parse_metrics(text: str, at_s: float) -> Scrape:
    """The counters this module uses, from a ``/metrics`` page."""
    wanted = {REQUESTS, MESSAGES, BYTES_IN, BYTES_OUT, WRITES, *STREAMS}
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            key = (sample.name, sample.labels.get("grpc_method", ""))
            values[key] = values.get(key, 0.0) + sample.value
    return Scrape(at_s, values)


def _by_method(scrapes: Iterable[Scrape], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for scrape in scrapes:
        for (metric, method), value in scrape.values.items():
            if metric == name:
                out[method] = out.get(method, 0.0) + value
    return out


def _largest(scrapes: Iterable[Scrape], name: str) -> float:
    return max((s.values.get((name, ""), 0.0) for s in scrapes), default=0.0)


def cost(before: Sequence[Scrape], after: Sequence[Scrape], sidecars: int) -> dict[str, Any]:
    """Per-sidecar rates between two scrapes of every member (same order).

    ``requests``/``messages``: per second by gRPC method; ``writes_per_s``:
    raft proposals; ``bytes_*_per_s``; ``watch_streams``/``watchers``: open at
    the end, per sidecar. Counters that went back (a member restarted) raise.
    """
    if len(before) != len(after) or not before:
        raise ValueError("one scrape of every member before and after")
    window_s = min(a.at_s for a in after) - max(b.at_s for b in before)
    if window_s <= 0 or sidecars <= 0:
        raise ValueError(f"window {window_s:.1f} s, {sidecars} sidecars: nothing to divide by")
    per = window_s * sidecars

    def rates(name: str) -> dict[str, float]:
        start, end = _by_method(before, name), _by_method(after, name)
        out = {}
        for method in sorted(set(start) | set(end)):
            delta = end.get(method, 0.0) - start.get(method, 0.0)
            if delta < 0:
                raise ValueError(f"{name}{{{method}}} went back: did a member restart?")
            if delta > 0:
                out[method] = delta / per
        return out

    def rate(name: str, combine: str = "sum") -> float:
        if combine == "max":
            return (_largest(after, name) - _largest(before, name)) / per
        return sum(rates(name).values())

    requests = rates(REQUESTS)
    return {
        "window_s": round(window_s, 3),
        "sidecars": sidecars,
        "requests": requests,
        "requests_per_s": sum(requests.values()),
        "messages": rates(MESSAGES),
        "writes_per_s": rate(WRITES, "max"),
        "bytes_in_per_s": rate(BYTES_IN),
        "bytes_out_per_s": rate(BYTES_OUT),
        "watch_streams": sum(a.values.get((STREAMS[0], ""), 0.0) for a in after) / sidecars,
        "watchers": sum(a.values.get((STREAMS[1], ""), 0.0) for a in after) / sidecars,
    }


def split(everyone: dict[str, Any], holder: dict[str, Any], replicas: int) -> dict[str, Any]:
    """A replica's cost: everyone's total less the holder's, over the replicas."""
    total = everyone["sidecars"]

    def rest(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
        keys = sorted(set(a) | set(b))
        out = {k: (a.get(k, 0.0) * total - b.get(k, 0.0)) / replicas for k in keys}
        return {k: max(0.0, v) for k, v in out.items() if abs(v) > 1e-9}

    out: dict[str, Any] = {"sidecars": 1, "derived": "all sidecars less the holder alone"}
    for field in ("requests", "messages"):
        out[field] = rest(everyone[field], holder[field])
    out["requests_per_s"] = sum(out["requests"].values())
    for field in ("writes_per_s", "bytes_in_per_s", "bytes_out_per_s"):
        out[field] = max(0.0, (everyone[field] * total - holder[field]) / replicas)
    return out


def table(columns: Mapping[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per request kind, one column per cost."""
    methods = sorted({m for c in columns.values() for m in c["requests"]})
    head = "| per sidecar, per second | " + " | ".join(columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]

    def row(label: str, values: Iterable[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    for method in methods:
        row(method, (f"{c['requests'].get(method, 0.0):.2f}" for c in columns.values()))
    row("**requests, all kinds**", (f"**{c['requests_per_s']:.2f}**" for c in columns.values()))
    row("raft writes", (f"{c['writes_per_s']:.2f}" for c in columns.values()))
    row("bytes in / out", (
        f"{c['bytes_in_per_s']:.0f} / {c['bytes_out_per_s']:.0f}" for c in columns.values()
    ))  # fmt: skip
    row("watch streams open (end)", (
        f"{c['watch_streams']:.1f}" if "watch_streams" in c else "-" for c in columns.values()
    ))  # fmt: skip
    return "\n".join(lines)


# -- the lab ------------------------------------------------------------------


def scrape_all(lab: Any) -> list[Scrape]:
    """Every etcd member's counters, fetched from inside the etcd namespace."""
    return [parse_metrics(text, at_s) for at_s, text in metrics_pages(lab)]


def metrics_pages(lab: Any) -> list[tuple[float, str]]:
    """Every etcd member's ``/metrics`` page and the instant it arrived."""
    pages = []
    for member in lab.etcd.members:
        done = subprocess.run(
            ["ip", "netns", "exec", lab.netns("etcd"), "curl", "-sS", "--max-time", "5",
             f"{member.client_url}/metrics"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"/metrics of {member.name}: {done.stderr.strip()}")
        pages.append((time.monotonic(), done.stdout))
    return pages


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def measure(window_s: float, readers: int, settle_s: float) -> dict[str, Any]:
    """Both windows on a fresh lab; the lab is gone when this returns."""
    from integration.lab.eventually import eventually  # noqa: PLC0415 (root, a lab)
    from integration.lab.lab import Lab, LabSpec  # noqa: PLC0415
    from integration.lab.readers import READER_VIPS, pool  # noqa: PLC0415

    settings = ((READER_VIPS, pool(readers)),) if readers else ()
    name = f"cost{readers}"
    say(f"lab {name}: 3 nodes, 3 etcd members, {readers} reader VIPs, default timing")
    with Lab.create(LabSpec(name, etcd_members=3, sidecar_settings=settings)) as lab:
        eventually(lambda: lab.holders() == {"n1"}, timeout_s=90, interval_s=0.2)
        say(f"n1 holds the VIP; {settle_s:g} s to settle")
        time.sleep(settle_s)  # the start's burst of requests is not the idle cost
        say(f"window 1: all three sidecars, {window_s:g} s")
        before = scrape_all(lab)
        time.sleep(window_s)
        everyone = cost(before, scrape_all(lab), 3)
        say(f"  {everyone['requests_per_s']:.2f} requests/s per sidecar")
        for node in ("n2", "n3"):
            lab.kill_sidecar(node, signal.SIGTERM)
        time.sleep(settle_s)
        say(f"window 2: the holder alone, {window_s:g} s")
        before = scrape_all(lab)
        time.sleep(window_s)
        holder = cost(before, scrape_all(lab), 1)
        say(f"  {holder['requests_per_s']:.2f} requests/s")
    return {
        "readers": readers,
        "everyone": everyone,
        "holder": holder,
        "replica": split(everyone, holder, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m integration.bench.etcd_cost",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--window-s", type=float, default=60.0, help="each idle window (60)")
    p.add_argument("--settle-s", type=float, default=15.0, help="before each window (15)")
    p.add_argument("--readers", type=int, default=0, help="reader VIPs (0)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.window_s < 5 or not 0 <= args.readers <= 8:
        p.error("--window-s at least 5, --readers 0..8")
    result = measure(args.window_s, args.readers, args.settle_s)
    columns = {
        "all three (average)": result["everyone"],
        "holder alone": result["holder"],
        "replica (derived)": result["replica"],
    }
    print(f"\nidle cost, {args.readers} reader VIPs, windows of {args.window_s:g} s; "
          "client: three dbvip sidecars (JSON gateway)\n")  # fmt: skip
    print(table(columns))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
