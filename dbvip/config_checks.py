"""Checks across settings, run once every setting has parsed on its own:
pairs that go together, a password given once, timings that keep the lease
promise. Each error names the settings and where they came from."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dbvip import dsn
from dbvip import parsers as p
from dbvip.model import KERNEL_EXPIRY_SLACK_S
from dbvip.parsers import ConfigError

if TYPE_CHECKING:
    from dbvip.config import Config


def check_pairs(config: Config) -> None:
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
    if given("etcd_username") and not (given("etcd_password") or given("etcd_password_file")):
        raise ConfigError(
            f"etcd_username (from {config.sources['etcd_username']}) is set but no password: "
            "set etcd_password or etcd_password_file"
        )
    tls = [n for n in ("etcd_ca_file", "etcd_cert_file") if given(n)]
    endpoints = config.values.get("etcd_endpoints") or ()
    if tls and endpoints and not any(u.startswith("https://") for u in endpoints):
        raise ConfigError(
            f"{tls[0]} (from {config.sources[tls[0]]}) is set but no etcd endpoint is "
            f"https:// (etcd_endpoints from {config.sources['etcd_endpoints']})"
        )
    if given("etcd_cert_file"):
        try:
            p.cert_and_key(config["etcd_cert_file"], config["etcd_key_file"])
        except ValueError as e:
            raise ConfigError(
                f"etcd_cert_file (from {config.sources['etcd_cert_file']}) and etcd_key_file "
                f"(from {config.sources['etcd_key_file']}) {e}"
            ) from None


def check_reader_vips(config: Config) -> None:
    """A reader VIP must not be the writer VIP: one address, two owners."""
    writer, readers = config.values.get("vip"), config.values.get("reader_vips") or ()
    if not writer:
        return
    for r in readers:
        if r.ip == writer.ip:
            raise ConfigError(
                f"reader_vips (from {config.sources['reader_vips']}) lists {r.ip}, which is "
                f"the writer VIP (vip from {config.sources['vip']}); a reader VIP must differ"
            )


def check_secrets(config: Config) -> None:
    """One place for each password, so none silently wins over another."""
    if not config.values.get("pg_dsn"):
        return
    given = [n for n in ("pg_password", "pg_password_file") if config.values.get(n)]
    if given and dsn.has_password(config["pg_dsn"]):
        raise ConfigError(
            f"pg_dsn (from {config.sources['pg_dsn']}) holds a password and {given[0]} "
            f"(from {config.sources[given[0]]}) is set too; give the password once"
        )


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
        # The default is cut to ttl_s instead (dbvip.wiring.refuse_s).
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
