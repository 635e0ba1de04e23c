"""Settings: precedence, every setting's bad values, errors that name the source."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dbvip.config import (
    BY_NAME,
    SETTINGS,
    Config,
    ConfigError,
    load,
)
from dbvip.wiring import refuse_s
from tests.support.tls import CLIENT_CERT

GOOD_ENV = {
    "DBVIP_CLUSTER": "c1",
    "DBVIP_NODE": "n1",
    "DBVIP_VIP": "198.51.100.10",
    "DBVIP_INTERFACE": "eth0",
    "DBVIP_ETCD_ENDPOINTS": "http://127.0.0.1:2379",
    "DBVIP_PG_DSN": "host=/tmp port=5432 user=postgres",
}


def cfg(env: dict[str, str] | None = None, **flags: str) -> Config:
    return load(flags, {**GOOD_ENV, **(env or {})})


def test_environment_alone_is_enough_and_defaults_fill_the_rest() -> None:
    c = cfg()
    assert c["vip"] == ipaddress.ip_interface("198.51.100.10/32")
    assert c["ttl_s"] == 10
    assert c.timing.probe_interval_s == 0.2
    assert c.sources["ttl_s"] == "default"
    assert c.sources["node"] == "environment DBVIP_NODE"


def test_ipv6_vip_defaults_to_a_host_prefix() -> None:
    assert cfg({"DBVIP_VIP": "2001:db8::10"})["vip"] == ipaddress.ip_interface("2001:db8::10/128")


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    f = tmp_path / "dbvip.toml"
    f.write_text('ttl_s = 12\nrenew_interval_s = 1.5\netcd_endpoints = ["http://127.0.0.1:1"]\n')
    env = {**GOOD_ENV, "DBVIP_CONFIG": str(f), "DBVIP_TTL_S": "11"}
    del env["DBVIP_ETCD_ENDPOINTS"]
    c = load({"ttl_s": "13"}, env)
    assert c["ttl_s"] == 13
    assert c.sources["ttl_s"] == "flag --ttl-s"
    c = load({}, env)
    assert c["ttl_s"] == 11
    assert c["renew_interval_s"] == 1.5
    assert c.sources["renew_interval_s"] == f"file {f}"
    assert c["etcd_endpoints"] == ("http://127.0.0.1:1",)


BAD_VALUES = [
    ("cluster", "has space"),
    ("cluster", ""),
    ("node", "-leading"),
    ("node", "x" * 64),
    ("vip", "198.51.100.300"),
    ("vip", "0.0.0.0"),
    ("vip", "224.0.0.1"),
    ("vip", "127.0.0.5"),
    ("vip", "198.51.100.0/24"),
    ("vip", "not-an-ip"),
    ("interface", "a-very-long-interface-name"),
    ("interface", "eth/0"),
    ("etcd_endpoints", "127.0.0.1:2379"),
    ("etcd_endpoints", "ftp://x:1"),
    ("etcd_endpoints", "http://host"),
    ("etcd_endpoints", " , "),
    ("etcd_prefix", "dbvip"),
    ("etcd_prefix", "/dbvip/"),
    ("etcd_ca_file", "/nonexistent/ca.pem"),
    ("etcd_password_file", "/nonexistent"),
    ("pg_dsn", "host='unterminated"),
    ("ttl_s", "1"),
    ("ttl_s", "10.5"),
    ("ttl_s", "ten"),
    ("probe_interval_s", "0"),
    ("probe_interval_s", "-1"),
    ("probe_interval_s", "nan"),
    ("probe_timeout_s", "0"),
    ("request_timeout_s", "inf"),
    ("margin_s", "0"),
    ("renew_interval_s", "0"),
    ("vip_op_timeout_s", "-0.1"),
    ("role_grace_s", "-1"),
    ("announce_count", "-1"),
    ("announce_count", "two"),
    ("announce_interval_s", "-1"),
    ("announce_refresh_s", "x"),
    ("refuse_s", "-1"),
    ("refuse_s", "nan"),
    ("eager_probe_interval_s", "0"),
    ("eager_probe_interval_s", "fast"),
    ("eager_window_s", "-1"),
    ("hook_acquire", "/nonexistent/hook"),
    ("hook_release", "relative/hook"),
    ("hook_conflict", "/"),
    ("hook_timeout_s", "0"),
    ("log_level", "loud"),
    ("log_format", "xml"),
    ("http_listen", "8008"),
    ("http_listen", "localhost:8008"),
    ("http_listen", "::1:8008"),
    ("http_listen", "[127.0.0.1]:8008"),
    ("http_listen", "127.0.0.1:70000"),
    ("reader_vips", "198.51.100.20,198.51.100.20/32"),
    ("reader_vips", "198.51.100.20,,198.51.100.21"),
    ("reader_vips", "198.51.100.20,224.0.0.1"),
    ("reader_vips", "198.51.100.10"),  # the writer VIP
    ("reader_max_lag_bytes", "16MB"),
    ("reader_max_lag_bytes", "-1"),
    ("reader_rejoin_s", "-1"),
    ("reader_fallback_to_primary", "maybe"),
    ("no_load_balance", "2"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_names_the_setting_and_its_source(name: str, value: str) -> None:
    env_var = BY_NAME[name].env
    with pytest.raises(ConfigError) as err:
        cfg({env_var: value})
    message = str(err.value)
    assert message.startswith(name), message
    assert f"environment {env_var}" in message or "required" in message


def test_every_setting_has_a_bad_value_test() -> None:
    tested = {name for name, _ in BAD_VALUES}
    untestable = {"etcd_username", "etcd_password", "pg_password"}  # any text is valid
    files = {"etcd_cert_file", "etcd_key_file", "pg_password_file"}  # same parser as ca_file
    assert {s.name for s in SETTINGS} - tested - untestable - files == set()


SHORT_TTL = {
    "DBVIP_TTL_S": "4",
    "DBVIP_MARGIN_S": "0.5",
    "DBVIP_RENEW_INTERVAL_S": "0.5",
    "DBVIP_REQUEST_TIMEOUT_S": "0.25",
    "DBVIP_PROBE_INTERVAL_S": "0.1",
    "DBVIP_PROBE_TIMEOUT_S": "0.2",
    "DBVIP_VIP_OP_TIMEOUT_S": "0.1",
}


def test_the_default_refuse_s_follows_a_shorter_ttl_a_given_one_is_checked() -> None:
    # A configuration valid before refuse_s existed stays valid.
    c = cfg(SHORT_TTL)
    assert refuse_s(c) == 4
    assert refuse_s(cfg({"DBVIP_REFUSE_S": "3", **SHORT_TTL})) == 3
    assert refuse_s(cfg()) == 5
    with pytest.raises(ConfigError, match=r"refuse_s=5 \(environment DBVIP_REFUSE_S\)"):
        cfg({"DBVIP_REFUSE_S": "5", **SHORT_TTL})


def test_refuse_s_past_the_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"refuse_s must be at most ttl_s; refuse_s=11 "):
        cfg({"DBVIP_REFUSE_S": "11"})
    assert cfg({"DBVIP_REFUSE_S": "10"})["refuse_s"] == 10
    assert cfg({"DBVIP_REFUSE_S": "0"})["refuse_s"] == 0


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"ttl_s = 'x' from flag --ttl-s"):
        cfg(ttl_s="x")


@pytest.mark.parametrize(
    "name", ["cluster", "node", "vip", "interface", "etcd_endpoints", "pg_dsn"]
)
def test_required_settings(name: str) -> None:
    env = dict(GOOD_ENV)
    del env[BY_NAME[name].env]
    with pytest.raises(ConfigError, match=f"{name} is required.*{BY_NAME[name].env}"):
        load({}, env)


def test_status_needs_only_cluster_and_etcd() -> None:
    c = load(
        {},
        {"DBVIP_CLUSTER": "c1", "DBVIP_ETCD_ENDPOINTS": "http://127.0.0.1:2379"},
        required=("cluster", "etcd_endpoints"),
    )
    assert c["cluster"] == "c1"


def test_unknown_environment_variable_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"DBVIP_TTL .*did you mean DBVIP_TTL_S"):
        cfg({"DBVIP_TTL": "10"})


def test_unknown_file_key_and_bad_toml(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("tll_s = 10\n")
    with pytest.raises(ConfigError, match=r"unknown key 'tll_s'.*did you mean ttl_s"):
        cfg({"DBVIP_CONFIG": str(f)})
    f.write_text("ttl_s = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg({"DBVIP_CONFIG": str(f)})
    with pytest.raises(ConfigError, match="No such file"):
        cfg({"DBVIP_CONFIG": str(tmp_path / "missing.toml")})


def test_timing_that_cannot_keep_the_promise_is_refused_not_adjusted() -> None:
    with pytest.raises(ConfigError, match=r"timing check failed.*ttl_s=4 \(environment"):
        cfg({"DBVIP_TTL_S": "4"})
    with pytest.raises(ConfigError, match="kernel lifetime"):
        cfg({"DBVIP_TTL_S": "7", "DBVIP_MARGIN_S": "0.5", "DBVIP_RENEW_INTERVAL_S": "3"})


def test_fast_settings_pass() -> None:
    c = cfg(
        {
            "DBVIP_TTL_S": "6",
            "DBVIP_MARGIN_S": "1",
            "DBVIP_RENEW_INTERVAL_S": "1",
            "DBVIP_REQUEST_TIMEOUT_S": "0.5",
            "DBVIP_PROBE_INTERVAL_S": "0.05",
            "DBVIP_PROBE_TIMEOUT_S": "0.2",
            "DBVIP_VIP_OP_TIMEOUT_S": "0.2",
        }
    )
    assert c.timing.ttl_s == 6


def test_secrets_are_masked_and_read_from_files(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-from-file\n")
    c = cfg(
        {
            "DBVIP_ETCD_USERNAME": "root",
            "DBVIP_ETCD_PASSWORD_FILE": str(pw),
            "DBVIP_PG_PASSWORD": "pg-s3cret",
        }
    )
    assert c.secret("etcd_password") == "s3cret-from-file"
    assert c.secret("pg_password") == "pg-s3cret"
    printed = repr(c.rows())
    assert "s3cret" not in printed
    assert "********" in printed


def test_secret_given_twice_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x")
    with pytest.raises(ConfigError, match="both set"):
        cfg(
            {
                "DBVIP_ETCD_USERNAME": "u",
                "DBVIP_ETCD_PASSWORD": "a",
                "DBVIP_ETCD_PASSWORD_FILE": str(pw),
            }
        )


def test_bad_secret_file_names_the_setting() -> None:
    # Secrets parse as text, so provoke the error through a secret file path instead.
    with pytest.raises(ConfigError) as err:
        cfg({"DBVIP_PG_PASSWORD_FILE": "/nonexistent/s3cret"})
    assert "pg_password_file" in str(err.value)


def test_cert_without_key_and_password_without_user() -> None:
    https = {"DBVIP_ETCD_ENDPOINTS": "https://127.0.0.1:2379"}
    with pytest.raises(ConfigError, match="go together"):
        cfg({**https, "DBVIP_ETCD_CERT_FILE": str(CLIENT_CERT)})
    with pytest.raises(ConfigError, match="etcd_username"):
        cfg({"DBVIP_ETCD_PASSWORD": "x"})
