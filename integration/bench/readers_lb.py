"""The ``readers`` part's load balancers: which ones, their settings, their configurations.

Three HAProxy processes run side by side on the lab's ``lb`` host, each with a
frontend port and a reading client of its own, so every fault is seen by all
three at once. They share the lab's ``global`` and ``defaults`` sections
(``integration/lab/haproxy.preamble``: ``timeout connect 1s``, ``retries 2``,
``option redispatch``), so they differ only in their backends:

- ``dbvip-pool``: the lab's own HAProxy, TCP mode over the four reader VIPs
  with plain TCP checks (``integration/lab/haproxy.CHECK``); dbvip moves the
  VIPs, HAProxy never learns about nodes.
- ``patroni-example``: every database node's own address, checked with
  ``option httpchk GET /replica?lag=16MB`` on Patroni's REST port, at the
  check settings of Patroni's haproxy.cfg (``inter 3s fall 3 rise 2
  on-marked-down shutdown-sessions``, ``timeout check 5s``).
- ``patroni-fast``: the same at the fastest settings we find sensible (see
  ``FAST``).

Pure: nothing here starts a process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.lab.haproxy import BACKEND_PORT, CHECK, READ_PORT, address, preamble

REST_PORT = 8008  # Patroni's REST API (integration/lab/patroni.py)
LAG_BYTES = 16 * 1024 * 1024  # dbvip's reader_max_lag_bytes default
LAG_QUERY = "16MB"  # Patroni reads units as PostgreSQL does: MB = 1024 * 1024 bytes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Checks:
    inter: str
    fall: int
    rise: int
    timeout: str  # timeout check: how long a check may wait for Patroni's answer


# Patroni's own haproxy.cfg (github.com/patroni/patroni, haproxy.cfg): `option
# httpchk`, `http-check expect status 200`, `default-server inter 3s fall 3 rise
# 2 on-marked-down shutdown-sessions`, `timeout check 5s`, `check port 8008`.
EXAMPLE = Checks("3s", 3, 2, "5s")
# Fastest sensible: every check is an HTTP request that Patroni (one Python
# process, its REST API a thread pool sharing the GIL with its HA loop) answers
# by querying PostgreSQL, from every HAProxy of every application host; at
# 500 ms that is 2 queries a second per load balancer and node. fall 2: one
# slow answer (a busy Patroni, a checkpoint) does not take a healthy replica
# out; rise 1: a replica is back as soon as Patroni says so (Patroni, not the
# check count, is what says it is healthy). 500 ms x 2 is about dbvip's own
# bound on a reader VIP move (1 s).
FAST = Checks("500ms", 2, 1, "500ms")


@dataclass(frozen=True)
class LbSystem:
    key: str
    port: int  # its frontend on host lb
    note: str  # every setting, for the report

    @property
    def patroni(self) -> bool:
        return self.key.startswith("patroni")


DBVIP = LbSystem(
    "dbvip-pool",
    READ_PORT,
    "HAProxy over the 4 reader VIPs (TCP mode, TCP checks only: "
    f"`{CHECK}`); dbvip at its default settings with `reader_vips` = 4 VIPs and "
    "`reader_fallback_to_primary` off (reads fail rather than go to the primary, as "
    "with Patroni's /replica check), `reader_max_lag_bytes` 16 MiB, `reader_rejoin_s` 10",
)
PATRONI_EXAMPLE = LbSystem(
    "patroni-example",
    5442,
    "HAProxy over the 3 nodes' own addresses, `option httpchk GET /replica?lag=16MB`, "
    f"`http-check expect status 200`, `check port {REST_PORT}`, "
    f"`inter {EXAMPLE.inter} fall {EXAMPLE.fall} rise {EXAMPLE.rise} "
    f"on-marked-down shutdown-sessions`, `timeout check {EXAMPLE.timeout}` "
    "(Patroni's example haproxy.cfg)",
)
PATRONI_FAST = LbSystem(
    "patroni-fast",
    5452,
    "as patroni-example but "
    f"`inter {FAST.inter} fall {FAST.fall} rise {FAST.rise}`, `timeout check {FAST.timeout}`",
)
SYSTEMS = (DBVIP, PATRONI_EXAMPLE, PATRONI_FAST)
CHECKS = {PATRONI_EXAMPLE.key: EXAMPLE, PATRONI_FAST.key: FAST}


def render_patroni(
    system: LbSystem,
    nodes: Sequence[tuple[str, IPAddress]],
    listen: Sequence[IPAddress],
    stats_socket: Path,
) -> str:
    """A haproxy.cfg whose one backend is every node (named after it), checked
    against Patroni's ``/replica?lag=16MB``: the primary and any replica that is
    down, not streaming or lagging answer 503 and are left out."""
    checks = CHECKS[system.key]
    name = system.key
    lines = [
        *preamble(stats_socket),
        f"frontend {name}",
        *(f"    bind {address(ip, system.port)}" for ip in listen),
        f"    default_backend {name}",
        f"backend {name}",
        "    balance roundrobin",
        f"    option httpchk GET /replica?lag={LAG_QUERY}",
        "    http-check expect status 200",
        f"    timeout check {checks.timeout}",
        f"    default-server inter {checks.inter} fall {checks.fall} rise {checks.rise} "
        "on-marked-down shutdown-sessions",
        *(
            f"    server {node} {address(ip, BACKEND_PORT)} check port {REST_PORT}"
            for node, ip in nodes
        ),
    ]
    return "\n".join(lines) + "\n"
