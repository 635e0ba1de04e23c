"""The one table of settings: each one's name (so its CLI flag, its
``DBVIP_*`` variable and its TOML key), parser, default and help. Reading
and checking values against it is ``dbvip.config``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbvip import dsn
from dbvip import parsers as p
from dbvip.model import Timing

ENV_PREFIX = "DBVIP_"
CONFIG_ENV = "DBVIP_CONFIG"
# The facts a hook gets (dbvip.hooks): a hook that calls dbvip passes them on,
# and they must not read as misspelt settings.
HOOK_FACTS = frozenset(
    {"EVENT", "NODE", "CLUSTER", "VIP", "INTERFACE", "REASON", "DETAIL", "LEASE_ID", "HOLDER",
     "ROLE", "TIMELINE", "AT"}
)  # fmt: skip
MAX_VALUE_CHARS = 4096
MAX_FILE_BYTES = 1024 * 1024
# What a TOML value of each kind may be: a string is never read as a number.
TOML_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "int": (int,),
    "seconds": (int, float),
    "list": (str, list),
    "bool": (bool, str),
}
BOOLEAN_SETTINGS = frozenset({"reader_fallback_to_primary", "no_load_balance"})


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: str | None  # None: no default
    help: str
    secret: bool = False

    @property
    def kind(self) -> str:
        """What a TOML value may be: text, int, seconds or list."""
        if self.name in ("ttl_s", "announce_count", "reader_max_lag_bytes"):
            return "int"
        if self.name in ("etcd_endpoints", "reader_vips"):
            return "list"
        if self.name in BOOLEAN_SETTINGS:
            return "bool"
        return "seconds" if self.name.endswith("_s") else "text"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _seconds(strict: bool, high: float) -> Callable[[str], float]:
    return p.seconds(0, strict, high)


REQUIRED_TO_RUN = ("cluster", "node", "vip", "interface", "etcd_endpoints", "pg_dsn")
REQUIRED_FOR_STATUS = ("cluster", "etcd_endpoints")

SETTINGS: tuple[Setting, ...] = (
    Setting("cluster", p.name, None, "cluster name; every key lives under <etcd_prefix>/<cluster>"),
    Setting("node", p.name, None, "this node's name, unique in the cluster"),
    Setting(
        "vip",
        p.vip,
        None,
        "the writer VIP, e.g. 198.51.100.10; /32 (or /128) unless a prefix is given",
    ),
    Setting("interface", p.interface, None, "interface that carries the VIP"),
    Setting(
        "etcd_endpoints",
        p.endpoints,
        None,
        "comma-separated etcd URLs http(s)://host:port, failover between them",
    ),
    Setting("etcd_prefix", p.prefix, "/dbvip", "top of dbvip's keys in etcd"),
    Setting("etcd_username", p.text, "", "etcd user (user/password authentication)"),
    Setting(
        "etcd_password", p.text, "", "etcd password (user/password authentication)", secret=True
    ),
    Setting("etcd_password_file", p.secret_file, "", "file holding the etcd password"),
    Setting("etcd_ca_file", p.ca_file, "", "CA bundle that signed etcd's certificate"),
    Setting("etcd_cert_file", p.cert_file, "", "client certificate for etcd"),
    Setting("etcd_key_file", p.readable_file, "", "client key for etcd"),
    Setting("pg_dsn", dsn.check, None, "libpq connection string of the local PostgreSQL"),
    Setting("pg_password", p.text, "", "PostgreSQL password, given apart from pg_dsn", secret=True),
    Setting("pg_password_file", p.secret_file, "", "file holding the PostgreSQL password"),
    Setting("ttl_s", p.integer(2, 3600), "10", "etcd lease TTL (whole seconds)"),
    Setting("probe_interval_s", _seconds(True, 60), "0.2", "time between two looks at the world"),
    Setting(
        "probe_timeout_s", _seconds(True, 60), "0.5", "hard bound on one PostgreSQL role probe"
    ),
    Setting("request_timeout_s", _seconds(True, 60), "1", "hard bound on one etcd request"),
    Setting(
        "margin_s",
        _seconds(True, 3600),
        "2",
        "deadline = instant the grant/keepalive was sent + ttl_s - margin_s",
    ),
    Setting("renew_interval_s", _seconds(True, 3600), "2", "time between lease renewals"),
    Setting("vip_op_timeout_s", _seconds(True, 60), "0.5", "budget for one netlink call"),
    Setting(
        "role_grace_s",
        _seconds(False, 3600),
        "1",
        "how long a primary's database may fail to answer before the VIP goes "
        "(none when it is definitely down: nothing listens, or it is starting or stopping)",
    ),
    Setting(
        "announce_count",
        p.integer(0, 100),
        "3",
        "gratuitous ARP/NA rounds after adding the VIP",
    ),
    Setting("announce_interval_s", _seconds(False, 10), "0.05", "spacing of those rounds"),
    Setting("announce_refresh_s", _seconds(False, 86400), "0", "re-announce period (0: never)"),
    Setting(
        "refuse_s",
        _seconds(False, 3600),
        "5",
        "after this node loses a VIP, connections that still reach it for the VIP are "
        "refused (TCP reset) this long, so clients retry at once (0: never; at most ttl_s; "
        "the default is cut to ttl_s when that is shorter)",
    ),
    Setting(
        "eager_probe_interval_s",
        _seconds(True, 60),
        "0.01",
        "probe interval of a replica that saw the writer key free (a promotion may be coming)",
    ),
    Setting(
        "eager_window_s",
        _seconds(False, 86400),
        "30",
        "how long after seeing the key free a replica probes at the eager interval (0: never)",
    ),
    Setting(
        "reader_vips",
        p.vip_list,
        "",
        "comma-separated reader VIPs spread over the healthy replicas (same rules as vip); "
        "empty: no reader pool",
    ),
    Setting(
        "reader_max_lag_bytes",
        p.integer(0, 2**62),
        str(16 * 1024 * 1024),
        "a replica further behind the primary's published WAL position (or its own received "
        "one) leaves the reader pool",
    ),
    Setting(
        "reader_rejoin_s",
        _seconds(False, 86400),
        "10",
        "a replica that left the pool for lag (or whose stream broke again this soon after "
        "coming back) comes back only after staying fine this long",
    ),
    Setting(
        "reader_fallback_to_primary",
        p.boolean,
        "on",
        "with no healthy replica, the primary holds the reader VIPs (off: they stay unassigned)",
    ),
    Setting(
        "no_load_balance",
        p.boolean,
        "off",
        "this node never joins the reader pool (like Patroni's noloadbalance tag)",
    ),
    Setting("hook_acquire", p.executable, "", "run after this node added the VIP"),
    Setting("hook_release", p.executable, "", "run after this node removed the VIP"),
    Setting(
        "hook_conflict",
        p.executable,
        "",
        "run when the database is primary but another node holds the key",
    ),
    Setting("hook_timeout_s", _seconds(True, 3600), "10", "bound on one hook run"),
    Setting(
        "log_level",
        p.choice("debug", "info", "warning", "error"),
        "info",
        "log level: debug, info, warning or error",
    ),
    Setting(
        "log_format",
        p.choice("text", "json"),
        "text",
        "log line format: text, or json for JSON lines",
    ),
    Setting(
        "http_listen",
        p.listen,
        "",
        "host:port of the HTTP endpoints (/healthz, /readyz, /status, /metrics), "
        "e.g. 127.0.0.1:8008 or [::1]:8008; empty: no HTTP server",
    ),
    Setting(
        "failsafe",
        p.choice("off", "on"),
        "off",
        "keep the writer VIP through an etcd outage while every peer last seen in etcd "
        "promises not to take it (on or off; see the README's Failsafe section)",
    ),
    Setting(
        "failsafe_window_s",
        _seconds(True, 3600),
        "10",
        "how long one failsafe acknowledgement lets the holder keep the VIP",
    ),
    Setting(
        "failsafe_listen",
        p.listen,
        "",
        "host:port of this node's failsafe peer endpoint, published in its member report "
        "(required with failsafe on)",
    ),
    Setting(
        "failsafe_secret_file",
        p.secret_file,
        "",
        "file holding the secret every peer shares to sign failsafe requests and answers "
        "(required with failsafe on)",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
TIMING_FIELDS = tuple(f for f in Timing.__dataclass_fields__)
