"""Resident memory of dbvip sidecars as operators run them: with a reader pool
and the HTTP endpoints (/metrics, /healthz) on, through replica faults.

    python -m integration.bench.memory [--readers 4] [--faults 6] [--no-http] [--json PATH]

Starts a three-node lab whose sidecars serve HTTP on 127.0.0.1:8008 in their
own namespaces (each scraped once a second, as Prometheus and a liveness
probe would), with ``--readers`` reader VIPs; waits until the pool is
balanced, then reads every sidecar's VmRSS (``/proc/<pid>/status``) at the
start, after a minute idle, and after ``--faults`` replica crashes, each
followed by the database's restart and the pool balanced again. The table
gives KiB, MiB and MB (10^6 bytes: the unit of the 40 MB goal).
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from integration.bench.footprint import rss_kib
from integration.bench.runner import machine_info

HTTP_LISTEN = "127.0.0.1:8008"
GOAL_MB = 40.0
# An HTTP(S)_PROXY in the environment must not reroute a lab URL.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def mb(kib: int) -> float:
    return kib * 1024 / 1e6


def table(stages: Mapping[str, Mapping[str, int]]) -> str:
    """One row per stage: each node's KiB, then the largest in MiB and MB."""
    nodes = sorted({node for per_node in stages.values() for node in per_node})
    head = ["stage", *(f"{n} (KiB)" for n in nodes), "largest (MiB)", "largest (MB)",
            f"<= {GOAL_MB:g} MB"]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage, per_node in stages.items():
        largest = max(per_node.values())
        cells = [stage, *(f"{per_node.get(n, 0):,}" for n in nodes),
                 f"{largest / 1024:.1f}", f"{mb(largest):.1f}",
                 "yes" if mb(largest) <= GOAL_MB else "**no**"]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


CLONE_NEWNET = 0x40000000


def enter_netns(netns: str) -> None:
    """Move the calling thread (only it: setns(2) is per thread) into ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


@contextmanager
def scraping(
    namespaces: Mapping[str, str], period_s: float
) -> Iterator[tuple[list[str], dict[str, int]]]:
    """GET /metrics and /healthz of every sidecar every ``period_s``, as
    Prometheus and a liveness probe would: one thread per node, inside that
    node's namespace, where the sidecar listens on ``HTTP_LISTEN``."""
    stop = threading.Event()
    errors: list[str] = []
    answered = dict.fromkeys(namespaces, 0)

    def loop(node: str, netns: str) -> None:
        try:
            enter_netns(netns)
            while not stop.wait(period_s):
                for path in ("/metrics", "/healthz"):
                    got = fetch(f"http://{HTTP_LISTEN}{path}")
                    if isinstance(got, str):
                        errors.append(f"{node}{path}: {got}")
                    else:
                        answered[node] += 1
        except Exception as exc:  # a scraper that died must show in the result
            errors.append(f"{node}: scraper ended: {exc!r}")

    threads = [threading.Thread(target=loop, args=item, name=f"scrape-{item[0]}", daemon=True)
               for item in namespaces.items()]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        yield errors, answered
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def fetch(url: str) -> int | str:
    """The body's length, or why it failed (a 503 from /healthz is an answer)."""
    try:
        with NO_PROXY.open(url, timeout=2) as reply:
            return len(reply.read())
    except urllib.error.HTTPError as exc:
        return len(exc.read())
    except (OSError, http.client.HTTPException) as exc:
        return repr(exc)


def measure(readers: int, faults: int, idle_s: float, http: bool = True) -> dict[str, Any]:
    from integration.lab.demo_readers import wait_balanced  # noqa: PLC0415 (root, a lab)
    from integration.lab.lab import Lab, LabSpec  # noqa: PLC0415
    from integration.lab.readers import READER_VIPS, pool  # noqa: PLC0415

    settings: tuple[tuple[str, str], ...] = (("DBVIP_HTTP_LISTEN", HTTP_LISTEN),) if http else ()
    if readers:
        settings += ((READER_VIPS, pool(readers)),)
    name = f"mem{int(time.time()) % 100000}"
    say(f"lab {name}: 3 nodes, {readers} reader VIPs, HTTP endpoints {'on' if http else 'off'}")
    stages: dict[str, dict[str, int]] = {}
    with Lab.create(LabSpec(name, sidecar_settings=settings)) as lab:
        lab.wait_holder("n1", timeout_s=90)
        if readers:
            wait_balanced(lab, ["n2", "n3"])
        pids = {node: sidecar.proc.pid for node, sidecar in lab.sidecars.items()}

        def sample(stage: str) -> None:
            # A sidecar that died would drop out of the largest: stop instead.
            dead = [n for n, s in lab.sidecars.items() if s.proc.poll() is not None]
            if dead or any(s.proc.pid != pids[n] for n, s in lab.sidecars.items()):
                raise RuntimeError(f"{stage}: sidecars not running as started: {dead}")
            stages[stage] = {node: rss_kib([pid]) for node, pid in pids.items()}
            say(f"{stage}: {stages[stage]} KiB")

        namespaces = {node: lab.netns(node) for node in pids} if http else {}
        with scraping(namespaces, 1.0) as (errors, answered):
            time.sleep(3)
            sample("started")
            time.sleep(idle_s)
            sample(f"after {idle_s:g} s idle")
            for i in range(faults):
                node = ("n2", "n3")[i % 2]
                lab.crash_db(node)
                time.sleep(2)
                lab.start_db(node)
                if readers:
                    wait_balanced(lab, ["n2", "n3"])
                time.sleep(1)
            sample(f"after {faults} replica crashes")
    return {
        "readers": readers,
        "faults": faults,
        "http_listen": HTTP_LISTEN if http else None,
        "stages_kib": stages,
        "scrape_errors": errors[:20],
        "scrapes_answered": answered,
        "machine": machine_info(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m integration.bench.memory",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--readers", type=int, default=4, help="reader VIPs (4)")
    p.add_argument("--faults", type=int, default=6, help="replica crashes (6)")
    p.add_argument("--idle-s", type=float, default=60.0, help="idle window (60)")
    p.add_argument("--no-http", action="store_true", help="without the HTTP endpoints")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if not 0 <= args.readers <= 8 or not 0 <= args.faults <= 50 or args.idle_s < 0:
        p.error("--readers 0..8, --faults 0..50, --idle-s >= 0")
    result = measure(args.readers, args.faults, args.idle_s, http=not args.no_http)
    http = "off" if args.no_http else "on and scraped every second"
    print(f"\nresident memory (VmRSS) of each sidecar, {args.readers} reader VIPs, "
          f"HTTP endpoints {http}\n")  # fmt: skip
    print(table(result["stages_kib"]))
    print(f"\nanswers to scrapes (/metrics and /healthz) by node: {result['scrapes_answered']}")
    if result["scrape_errors"]:
        print(f"scrape errors: {result['scrape_errors']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
