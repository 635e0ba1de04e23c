"""One table of settings -> CLI flags, ``DBVIP_*`` variables and TOML keys.

Precedence: flags > environment > file > defaults. Every error names the
setting and where its value came from; nothing is ever adjusted silently.
Secrets may come from files (``DBVIP_ETCD_PASSWORD_FILE``, the container
convention) and are masked wherever settings are printed.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dbvip.model import KERNEL_EXPIRY_SLACK_S, IPInterface, Timing

ENV_PREFIX = "DBVIP_"
CONFIG_ENV = "DBVIP_CONFIG"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(Exception):
    """A setting is wrong; the message names it and its source."""


# -- parsers: str -> value, raising ValueError with a reason -----------------


def _name(text: str) -> str:
    if not NAME_RE.match(text):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting alphanumeric")
    return text


def _vip(text: str) -> IPInterface:
    text = text.strip()
    if "/" not in text:  # a host route by default: never the interface's primary address
        text = f"{text}/{ipaddress.ip_address(text).max_prefixlen}"
    iface = ipaddress.ip_interface(text)
    if iface.ip.is_unspecified or iface.ip.is_multicast or iface.ip.is_loopback:
        raise ValueError("must be a unicast host address")
    if (
        iface.version == 4
        and iface.network.prefixlen < 31
        and iface.ip in (iface.network.network_address, iface.network.broadcast_address)
    ):
        raise ValueError("is the network or broadcast address of its prefix")
    return iface


def _interface(text: str) -> str:
    if not 1 <= len(text) <= 15 or "/" in text or text.strip() != text:
        raise ValueError("must be an interface name of 1-15 characters")
    return text


def _endpoints(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    if not urls:
        raise ValueError("needs at least one http:// or https:// URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"{url!r} is not http(s)://host:port")
    return urls


def _prefix(text: str) -> str:
    if not text.startswith("/") or text.endswith("/") or "//" in text:
        raise ValueError("must start with '/' and not end with '/'")
    return text


def _file(text: str) -> str:
    if not Path(text).is_file():
        raise ValueError(f"{text!r} is not a readable file")
    return text


def _executable(text: str) -> str:
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    if not path.is_file():
        raise ValueError(f"{text!r} does not exist or is not a file")
    if not os.access(path, os.X_OK):
        raise ValueError(f"{text!r} is not executable")
    return text


def _dsn(text: str) -> str:
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415  (heavy import, only here)

    try:
        conninfo_to_dict(text)
    except Exception as e:
        raise ValueError(f"is not a libpq connection string: {e}") from None
    return text


@dataclass(frozen=True)
class Listen:
    """An address to serve HTTP on; ``port`` 0 lets the kernel choose."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _listen(text: str) -> Listen:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8008 or [::1]:8008")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r} must be an IP address (IPv6 in brackets)") from None
    if (address.version == 6) != bracketed:
        raise ValueError("an IPv6 host goes in brackets, e.g. [::1]:8008, an IPv4 one not")
    return Listen(address.compressed, int(port))


def _text(text: str) -> str:
    return text


def _int(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def _seconds(low: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise ValueError(f"must be a number of seconds {'>' if strict else '>='} {low:g}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: str | None  # None: no default
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


REQUIRED_TO_RUN = ("cluster", "node", "vip", "interface", "etcd_endpoints", "pg_dsn")
REQUIRED_FOR_STATUS = ("cluster", "etcd_endpoints")

SETTINGS: tuple[Setting, ...] = (
    Setting("cluster", _name, None, "cluster name; every key lives under <etcd_prefix>/<cluster>"),
    Setting("node", _name, None, "this node's name, unique in the cluster"),
    Setting(
        "vip",
        _vip,
        None,
        "the writer VIP, e.g. 198.51.100.10; /32 (or /128) unless a prefix is given",
    ),
    Setting("interface", _interface, None, "interface that carries the VIP"),
    Setting(
        "etcd_endpoints",
        _endpoints,
        None,
        "comma-separated etcd URLs http(s)://host:port, failover between them",
    ),
    Setting("etcd_prefix", _prefix, "/dbvip", "top of dbvip's keys in etcd"),
    Setting("etcd_username", _text, "", "etcd user (user/password authentication)"),
    Setting(
        "etcd_password", _text, "", "etcd password (user/password authentication)", secret=True
    ),
    Setting("etcd_password_file", _file, "", "file holding the etcd password"),
    Setting("etcd_ca_file", _file, "", "CA bundle that signed etcd's certificate"),
    Setting("etcd_cert_file", _file, "", "client certificate for etcd"),
    Setting("etcd_key_file", _file, "", "client key for etcd"),
    Setting("pg_dsn", _dsn, None, "libpq connection string of the local PostgreSQL"),
    Setting("pg_password", _text, "", "PostgreSQL password, given apart from pg_dsn", secret=True),
    Setting("pg_password_file", _file, "", "file holding the PostgreSQL password"),
    Setting("ttl_s", _int(2), "10", "etcd lease TTL (whole seconds)"),
    Setting("probe_interval_s", _seconds(0, True), "0.2", "time between two looks at the world"),
    Setting("probe_timeout_s", _seconds(0, True), "0.5", "hard bound on one PostgreSQL role probe"),
    Setting("request_timeout_s", _seconds(0, True), "1", "hard bound on one etcd request"),
    Setting(
        "margin_s",
        _seconds(0, True),
        "2",
        "deadline = instant the grant/keepalive was sent + ttl_s - margin_s",
    ),
    Setting("renew_interval_s", _seconds(0, True), "2", "time between lease renewals"),
    Setting("vip_op_timeout_s", _seconds(0, True), "0.5", "budget for one netlink call"),
    Setting(
        "role_grace_s",
        _seconds(0, False),
        "1",
        "how long a primary's database may fail to answer before the VIP goes "
        "(none when it is definitely down: nothing listens, or it is starting or stopping)",
    ),
    Setting("announce_count", _int(0), "3", "gratuitous ARP/NA rounds after adding the VIP"),
    Setting("announce_interval_s", _seconds(0, False), "0.05", "spacing of those rounds"),
    Setting("announce_refresh_s", _seconds(0, False), "0", "re-announce period (0: never)"),
    Setting(
        "refuse_s",
        _seconds(0, False),
        "5",
        "after this node loses a VIP, connections that still reach it for the VIP are "
        "refused (TCP reset) this long, so clients retry at once (0: never; at most ttl_s; "
        "the default is cut to ttl_s when that is shorter)",
    ),
    Setting(
        "eager_probe_interval_s",
        _seconds(0, True),
        "0.01",
        "probe interval of a replica that saw the writer key free (a promotion may be coming)",
    ),
    Setting(
        "eager_window_s",
        _seconds(0, False),
        "30",
        "how long after seeing the key free a replica probes at the eager interval (0: never)",
    ),
    Setting("hook_acquire", _executable, "", "run after this node added the VIP"),
    Setting("hook_release", _executable, "", "run after this node removed the VIP"),
    Setting(
        "hook_conflict",
        _executable,
        "",
        "run when the database is primary but another node holds the key",
    ),
    Setting("hook_timeout_s", _seconds(0, True), "10", "bound on one hook run"),
    Setting(
        "log_level",
        _choice("debug", "info", "warning", "error"),
        "info",
        "log level: debug, info, warning or error",
    ),
    Setting(
        "log_format",
        _choice("text", "json"),
        "text",
        "log line format: text, or json for JSON lines",
    ),
    Setting(
        "http_listen",
        _listen,
        "",
        "host:port of the HTTP endpoints (/healthz, /readyz, /status, /metrics), "
        "e.g. 127.0.0.1:8008 or [::1]:8008; empty: no HTTP server",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
TIMING_FIELDS = tuple(f for f in Timing.__dataclass_fields__)


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def timing(self) -> Timing:
        return Timing(**{name: self.values[name] for name in TIMING_FIELDS})

    def secret(self, name: str) -> str:
        """A secret's value, read from its ``*_file`` setting when given."""
        path = self.values.get(f"{name}_file") or ""
        return Path(path).read_text().strip() if path else str(self.values.get(name) or "")

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, printable value, source) with secrets masked."""
        rows = []
        for s in SETTINGS:
            raw = self.values.get(s.name)
            shown = "" if raw in (None, "") else str(raw)
            if raw is not None and isinstance(raw, tuple):
                shown = ",".join(raw)
            if s.secret and shown:
                shown = "********"
            if s.name == "pg_dsn" and shown:
                shown = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1********", shown)
            rows.append((s.name, shown, self.sources.get(s.name, "default")))
        return rows


def load(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    required: tuple[str, ...] = REQUIRED_TO_RUN,
    config_file: str | None = None,
) -> Config:
    """Merge the layers, parse, validate. Raises ConfigError."""
    raw: dict[str, tuple[str, str]] = {
        s.name: (s.default, "default") for s in SETTINGS if s.default is not None
    }
    path = config_file or environ.get(CONFIG_ENV)
    if path:
        source = f"--config {path}" if config_file else f"{CONFIG_ENV}={path}"
        raw.update(_read_file(path, source))
    for key in environ:
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            name = key[len(ENV_PREFIX) :].lower()
            if name not in BY_NAME:
                raise ConfigError(f"unknown environment variable {key}{_hint(name, True)}")
            raw[name] = (environ[key], f"environment {key}")
    for name, value in flags.items():
        if value is not None:
            raw[name] = (value, f"flag {BY_NAME[name].flag}")

    values: dict[str, Any] = {}
    for name, (text, source) in raw.items():
        if text == "" and BY_NAME[name].default == "":
            values[name] = ""  # optional and not set
            continue
        try:
            values[name] = BY_NAME[name].parse(text)
        except ValueError as e:
            shown = "********" if BY_NAME[name].secret else repr(text)
            raise ConfigError(f"{name} = {shown} from {source}: {e}") from None
    sources = {name: source for name, (_, source) in raw.items()}
    for name in required:
        if values.get(name) in (None, ""):
            s = BY_NAME[name]
            raise ConfigError(
                f"{name} is required: set {s.flag}, {s.env} or '{name}' in a config file"
            )
    config = Config(values, sources)
    _check_pairs(config)
    if "ttl_s" in required or "node" in required:
        check_timing(config)
    return config


def _read_file(path: str, source: str) -> dict[str, tuple[str, str]]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"config file from {source}: {e.strerror}: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} (from {source}) is not valid TOML: {e}") from None
    out = {}
    for key, value in data.items():
        if key not in BY_NAME:
            raise ConfigError(f"unknown key {key!r} in {path}{_hint(key, False)}")
        if isinstance(value, bool | dict):
            raise ConfigError(f"{key} in {path} must be a string, a number or a list")
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        out[key] = (text, f"file {path}")
    return out


def _hint(name: str, env: bool) -> str:
    close = difflib.get_close_matches(name, BY_NAME, n=1)
    if not close:
        return ""
    return f" (did you mean {BY_NAME[close[0]].env if env else close[0]}?)"


def _check_pairs(config: Config) -> None:
    def given(name: str) -> bool:
        return bool(config.values.get(name))

    for secret in ("etcd_password", "pg_password"):
        if given(secret) and given(f"{secret}_file"):
            raise ConfigError(
                f"{secret} (from {config.sources[secret]}) and {secret}_file "
                f"(from {config.sources[secret + '_file']}) are both set; "
                "give one"
            )
    if given("etcd_cert_file") != given("etcd_key_file"):
        raise ConfigError("etcd_cert_file and etcd_key_file go together; only one is set")
    if (given("etcd_password") or given("etcd_password_file")) and not given("etcd_username"):
        raise ConfigError("an etcd password is set but etcd_username is not")


def check_timing(config: Config) -> None:
    """Refuse timings under which the lease promise cannot be kept."""
    t = config.timing

    def show(*names: str) -> str:
        return ", ".join(
            f"{n}={config.values[n]:g} ({config.sources.get(n, 'default')})" for n in names
        )

    retry = t.renew_interval_s + t.request_timeout_s + t.release_lead_s + t.margin_s
    if retry >= t.ttl_s:
        raise ConfigError(
            "timing check failed: renew_interval_s + request_timeout_s + probe_interval_s + "
            "probe_timeout_s + vip_op_timeout_s + margin_s must be below ttl_s so a failed "
            f"renewal can be retried before the VIP must come down ({retry:g} >= {t.ttl_s}); "
            + show(
                "ttl_s",
                "renew_interval_s",
                "request_timeout_s",
                "probe_interval_s",
                "probe_timeout_s",
                "vip_op_timeout_s",
                "margin_s",
            )
        )
    if config.values.get("refuse_s", 0) > t.ttl_s and config.sources.get("refuse_s") not in (
        None,
        "default",
    ):
        # Within a TTL the VIP has a new holder that announced it, or none.
        raise ConfigError(
            "timing check failed: refuse_s must be at most ttl_s; " + show("refuse_s", "ttl_s")
        )
    # The VIP's kernel lifetime, set right after a renewal, must outlast the
    # time until the next renewal and refresh, or the VIP would blink.
    lifetime = math.floor(
        t.ttl_s - t.margin_s - t.request_timeout_s - KERNEL_EXPIRY_SLACK_S - t.vip_op_timeout_s
    )
    needed = t.renew_interval_s + t.request_timeout_s + t.probe_interval_s
    if lifetime <= needed:
        raise ConfigError(
            f"timing check failed: the VIP's kernel lifetime after a renewal ({lifetime} s = "
            f"ttl_s - margin_s - request_timeout_s - vip_op_timeout_s - {KERNEL_EXPIRY_SLACK_S:g}"
            " s kernel slack, rounded down) must exceed renew_interval_s + request_timeout_s "
            f"+ probe_interval_s ({needed:g} s); "
            + show(
                "ttl_s",
                "margin_s",
                "renew_interval_s",
                "request_timeout_s",
                "vip_op_timeout_s",
                "probe_interval_s",
            )
        )
