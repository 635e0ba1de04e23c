"""Every bad setting an operator can give, refused at start (issue 13).

One table. Each row is one mistake, given as a flag, a ``DBVIP_*`` variable
or a TOML file, with what the refusal must name: the setting and where its
value came from. For every row, ``dbvip check-config`` and ``dbvip run`` both
exit 2 (``RestartPreventExitStatus=2``) with the same message, without a
traceback and without any secret: every password in these inputs contains
``S3CRET``, and ``S3CRET`` must show nowhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dbvip import cli
from dbvip.config import HOOK_FACTS
from dbvip.events import Event, EventKind
from dbvip.hooks import hook_environment
from dbvip.model import Role
from tests.support.tls import CA, CLIENT_CERT, CLIENT_KEY

SECRET = "S3CRET"
BASE_ENV = {
    "DBVIP_CLUSTER": "c1",
    "DBVIP_NODE": "n1",
    "DBVIP_VIP": "198.51.100.10",
    # No such interface, no etcd, no database: a sidecar started by mistake holds nothing.
    "DBVIP_INTERFACE": "dbvt-none0",
    "DBVIP_ETCD_ENDPOINTS": "http://127.0.0.1:9",
    "DBVIP_ETCD_USERNAME": "dbvip",
    "DBVIP_ETCD_PASSWORD": f"{SECRET}-etcd",
    "DBVIP_PG_DSN": "host=/nonexistent port=5432 user=dbvip",
}


@dataclass(frozen=True)
class Row:
    """A mistake. ``env`` adds to (or, with None, removes from) BASE_ENV;
    ``toml`` is a config file's content (bytes: written as is), given by
    ``DBVIP_CONFIG``; ``{tmp}`` in any value is a fresh directory with the
    files ``make`` names. ``names``: what the message must contain."""

    env: dict[str, str | None] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    toml: str | bytes | None = None
    names: tuple[str, ...] = ()
    make: tuple[str, ...] = ()  # see make_files


def env(var: str, value: str, *more: str) -> Row:
    setting = var.removeprefix("DBVIP_").lower()
    return Row(env={var: value}, names=(setting, f"environment {var}", *more))


def flag(name: str, value: str) -> Row:
    setting = name.removeprefix("--").replace("-", "_")
    return Row(flags=(name, value), names=(setting, f"flag {name}"))


def toml(text: str | bytes, setting: str) -> Row:
    return Row(toml=text, names=(setting, "{tmp}/dbvip.toml"))


HTTPS = {"DBVIP_ETCD_ENDPOINTS": "https://127.0.0.1:9"}

ROWS: dict[str, Row] = {
    # -- the issue's list ------------------------------------------------------
    "vip /0": env("DBVIP_VIP", "198.51.100.10/0"),
    "vip limited broadcast": env("DBVIP_VIP", "255.255.255.255"),
    "vip reserved 240/4": env("DBVIP_VIP", "240.0.0.1"),
    "vip IPv4-mapped IPv6": env("DBVIP_VIP", "::ffff:198.51.100.10"),
    "vip scoped IPv6": env("DBVIP_VIP", "fe80::1%eth0"),
    "vip netmask prefix": env("DBVIP_VIP", "198.51.100.10/255.255.255.0"),
    "ttl_s overflow": env("DBVIP_TTL_S", "99999999999999999999"),
    "ttl_s underscore": env("DBVIP_TTL_S", "1_0"),
    "ttl_s Arabic-Indic digits": env("DBVIP_TTL_S", "\u0661\u0660"),
    "announce_count huge": env("DBVIP_ANNOUNCE_COUNT", "1000000000"),
    "interval unbounded": env("DBVIP_RENEW_INTERVAL_S", "100000000"),
    "grace unbounded": env("DBVIP_ROLE_GRACE_S", "1e9"),
    "eager window unbounded": env("DBVIP_EAGER_WINDOW_S", "99999999"),
    "TOML ttl_s string": toml('ttl_s = "10"\n', "ttl_s"),
    "TOML ttl_s list": toml("ttl_s = [10]\n", "ttl_s"),
    "TOML ttl_s float": toml("ttl_s = 10.0\n", "ttl_s"),
    "TOML not UTF-8": Row(
        toml=b'cluster = "caf\xe9"\n', names=("not UTF-8", "DBVIP_CONFIG={tmp}/dbvip.toml")
    ),
    "endpoint with path": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1:2379/v3"),
    "endpoint with query": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1:2379?x=1"),
    "endpoint with credentials": env("DBVIP_ETCD_ENDPOINTS", f"http://u:{SECRET}@127.0.0.1:2379"),
    "endpoint with space": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1 :2379"),
    "cluster ends in newline": env("DBVIP_CLUSTER", "c1\n"),
    "password file missing": env("DBVIP_PG_PASSWORD_FILE", "/nonexistent/pw"),
    "CA garbage": Row(
        env={**HTTPS, "DBVIP_ETCD_CA_FILE": "{tmp}/garbage"},
        make=("garbage",),
        names=("etcd_ca_file", "environment DBVIP_ETCD_CA_FILE", "PEM"),
    ),
    "client cert garbage": Row(
        env={**HTTPS, "DBVIP_ETCD_CERT_FILE": "{tmp}/garbage", "DBVIP_ETCD_KEY_FILE": "{key}"},
        make=("garbage",),
        names=("etcd_cert_file", "environment DBVIP_ETCD_CERT_FILE"),
    ),
    "client key garbage": Row(
        env={**HTTPS, "DBVIP_ETCD_CERT_FILE": "{cert}", "DBVIP_ETCD_KEY_FILE": "{tmp}/garbage"},
        make=("garbage",),
        names=("etcd_key_file", "environment DBVIP_ETCD_KEY_FILE"),
    ),
    "etcd user without password": Row(
        env={"DBVIP_ETCD_PASSWORD": None},
        names=("etcd_username", "environment DBVIP_ETCD_USERNAME", "no password"),
    ),
    "pg password twice": Row(
        env={
            "DBVIP_PG_PASSWORD": f"{SECRET}-a",
            "DBVIP_PG_DSN": f"host=/tmp user=dbvip password={SECRET}-b",
        },
        names=(
            "pg_dsn",
            "environment DBVIP_PG_DSN",
            "pg_password",
            "environment DBVIP_PG_PASSWORD",
        ),
    ),
    "URI DSN refused, password not echoed": env(
        "DBVIP_PG_DSN", f"postgresql://dbvip:{SECRET}@127.0.0.1:5432/postgres?bogus=1"
    ),
    "DSN error quotes the password": env("DBVIP_PG_DSN", f"host=/tmp password=my {SECRET}"),
    "DSN bad percent-encoding of the password": env(
        "DBVIP_PG_DSN", f"postgresql://dbvip:{SECRET}%ZZ@127.0.0.1/postgres"
    ),
    # -- more: addresses --------------------------------------------------------
    "vip IPv6 multicast": env("DBVIP_VIP", "ff02::1"),
    "vip IPv6 loopback": env("DBVIP_VIP", "::1"),
    "vip IPv6 unspecified": env("DBVIP_VIP", "::"),
    "vip IPv4 link-local": env("DBVIP_VIP", "169.254.10.10"),
    "vip IPv6 link-local": env("DBVIP_VIP", "fe80::10"),
    "vip this-network 0/8": env("DBVIP_VIP", "0.1.2.3"),
    "vip broadcast of its prefix": env("DBVIP_VIP", "198.51.100.255/24"),
    "vip IPv6 subnet-router anycast": env("DBVIP_VIP", "2001:db8::/64"),
    "vip prefix too long": env("DBVIP_VIP", "198.51.100.10/33"),
    "vip negative prefix": env("DBVIP_VIP", "198.51.100.10/-1"),
    "vip with a leading space": env("DBVIP_VIP", " 198.51.100.10"),
    "vip as a flag, multicast": flag("--vip", "239.1.1.1"),
    # -- names and strings ------------------------------------------------------
    "node with NUL": env("DBVIP_NODE", "n1\x00"),
    "node with an escape sequence": env("DBVIP_NODE", "n\x1b[31m1"),
    "node overlong": env("DBVIP_NODE", "n" * 10000),
    "cluster with a slash": flag("--cluster", "c1/evil"),
    "interface with newline": env("DBVIP_INTERFACE", "eth0\n"),
    "interface '..'": env("DBVIP_INTERFACE", ".."),
    "prefix with newline": env("DBVIP_ETCD_PREFIX", "/dbvip\n"),
    "prefix root only": env("DBVIP_ETCD_PREFIX", "/"),
    "log level in capitals": env("DBVIP_LOG_LEVEL", "INFO"),
    # -- endpoints --------------------------------------------------------------
    "endpoints duplicated": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1:9,http://127.0.0.1:9"),
    "endpoints with an empty entry": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1:9,,"),
    "endpoint port out of range": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1:99999"),
    "endpoint unspecified host": env("DBVIP_ETCD_ENDPOINTS", "http://0.0.0.0:2379"),
    "endpoint with fragment": env("DBVIP_ETCD_ENDPOINTS", "http://127.0.0.1:2379#x"),
    "endpoint bad scheme with credentials": flag(
        "--etcd-endpoints", f"ftp://u:{SECRET}@127.0.0.1:21"
    ),
    # -- numbers ----------------------------------------------------------------
    "ttl_s negative": env("DBVIP_TTL_S", "-10"),
    "ttl_s zero": env("DBVIP_TTL_S", "0"),
    "ttl_s hex": env("DBVIP_TTL_S", "0x10"),
    "ttl_s with a plus": flag("--ttl-s", "+10"),
    "ttl_s with a trailing space": env("DBVIP_TTL_S", "10 "),
    "probe interval NaN": env("DBVIP_PROBE_INTERVAL_S", "nan"),
    "probe interval inf": env("DBVIP_PROBE_INTERVAL_S", "inf"),
    "probe interval negative zero": env("DBVIP_PROBE_INTERVAL_S", "-0"),
    "probe interval decimal comma": env("DBVIP_PROBE_INTERVAL_S", "0,5"),
    "probe interval exponent": env("DBVIP_PROBE_INTERVAL_S", "2e-1"),
    "request timeout overflowing float": env("DBVIP_REQUEST_TIMEOUT_S", "1" + "0" * 400),
    "hook timeout zero": flag("--hook-timeout-s", "0"),
    # -- TOML -------------------------------------------------------------------
    "TOML ttl_s boolean": toml("ttl_s = true\n", "ttl_s"),
    "TOML ttl_s nan": toml("ttl_s = nan\n", "ttl_s"),
    "TOML probe interval nan": toml("probe_interval_s = nan\n", "probe_interval_s"),
    "TOML interval as string": toml('probe_interval_s = "0.2"\n', "probe_interval_s"),
    "TOML log format boolean": toml("log_format = true\n", "log_format"),
    "TOML vip as a number": toml("vip = 198\n", "vip"),
    "TOML endpoints empty list": toml("etcd_endpoints = []\n", "etcd_endpoints"),
    "TOML endpoints numbers": toml("etcd_endpoints = [1, 2]\n", "etcd_endpoints"),
    "TOML node as a date": toml("node = 2026-12-04\n", "node"),
    "TOML unknown key": toml("tll_s = 10\n", "tll_s"),
    "TOML table": toml("[etcd]\nendpoints = 'http://127.0.0.1:9'\n", "etcd"),
    "TOML key twice": Row(
        toml="ttl_s = 10\nttl_s = 11\n", names=("not valid TOML", "{tmp}/dbvip.toml")
    ),
    "config file is a FIFO": Row(
        env={"DBVIP_CONFIG": "{tmp}/fifo"},
        make=("fifo",),
        names=("config file", "DBVIP_CONFIG={tmp}/fifo", "regular file"),
    ),
    "config file is /dev/zero": Row(
        env={"DBVIP_CONFIG": "/dev/zero"}, names=("config file", "DBVIP_CONFIG=/dev/zero")
    ),
    "config file of 2 MB": Row(
        env={"DBVIP_CONFIG": "{tmp}/huge"},
        make=("huge",),
        names=("config file", "DBVIP_CONFIG={tmp}/huge", "over"),
    ),
    "config file is a directory": Row(
        env={"DBVIP_CONFIG": "{tmp}"}, names=("config file", "DBVIP_CONFIG={tmp}")
    ),
    # -- files and secrets ------------------------------------------------------
    "password file is a directory": env("DBVIP_PG_PASSWORD_FILE", "{tmp}"),
    "password file is a FIFO": Row(
        env={"DBVIP_PG_PASSWORD_FILE": "{tmp}/fifo"},
        make=("fifo",),
        names=("pg_password_file", "environment DBVIP_PG_PASSWORD_FILE", "regular file"),
    ),
    "password file empty": Row(
        env={"DBVIP_PG_PASSWORD_FILE": "{tmp}/empty"},
        make=("empty",),
        names=("pg_password_file", "environment DBVIP_PG_PASSWORD_FILE", "empty"),
    ),
    "password file of two lines": Row(
        env={"DBVIP_ETCD_PASSWORD": None, "DBVIP_ETCD_PASSWORD_FILE": "{tmp}/two-lines"},
        make=("two-lines",),
        names=("etcd_password_file", "environment DBVIP_ETCD_PASSWORD_FILE"),
    ),
    "password file not UTF-8": Row(
        env={"DBVIP_PG_PASSWORD_FILE": "{tmp}/latin1"},
        make=("latin1",),
        names=("pg_password_file", "environment DBVIP_PG_PASSWORD_FILE", "UTF-8"),
    ),
    "password file huge": Row(
        env={"DBVIP_PG_PASSWORD_FILE": "{tmp}/huge"},
        make=("huge",),
        names=("pg_password_file", "environment DBVIP_PG_PASSWORD_FILE"),
    ),
    "etcd password given twice": Row(
        env={"DBVIP_ETCD_PASSWORD_FILE": "{tmp}/secret"},
        make=("secret",),
        names=("etcd_password", "environment DBVIP_ETCD_PASSWORD", "DBVIP_ETCD_PASSWORD_FILE"),
    ),
    "CA is a directory": Row(
        env={**HTTPS, "DBVIP_ETCD_CA_FILE": "{tmp}"},
        names=("etcd_ca_file", "environment DBVIP_ETCD_CA_FILE"),
    ),
    "CA with only http endpoints": Row(
        env={"DBVIP_ETCD_CA_FILE": "{ca}"},
        names=("etcd_ca_file", "environment DBVIP_ETCD_CA_FILE", "https"),
    ),
    "client key of another certificate": Row(
        env={**HTTPS, "DBVIP_ETCD_CERT_FILE": "{ca}", "DBVIP_ETCD_KEY_FILE": "{key}"},
        names=("etcd_cert_file", "etcd_key_file", "environment DBVIP_ETCD_KEY_FILE"),
    ),
    "hook is a directory": env("DBVIP_HOOK_ACQUIRE", "{tmp}"),
    "hook not executable": Row(
        env={"DBVIP_HOOK_RELEASE": "{tmp}/empty"},
        make=("empty",),
        names=("hook_release", "environment DBVIP_HOOK_RELEASE", "not executable"),
    ),
    "hook setting misspelt": Row(
        env={"DBVIP_HOOK_ACQIURE": "/bin/true"}, names=("DBVIP_HOOK_ACQIURE", "DBVIP_HOOK_ACQUIRE")
    ),
    # -- DSN and HTTP -----------------------------------------------------------
    "DSN port not a number": env("DBVIP_PG_DSN", "host=/tmp port=five"),
    "DSN with NUL": env("DBVIP_PG_DSN", f"host=/tmp password={SECRET}\x00"),
    "DSN unknown option next to a password": env(
        "DBVIP_PG_DSN", f"password={SECRET} bogus={SECRET}"
    ),
    "http_listen multicast": env("DBVIP_HTTP_LISTEN", "224.0.0.1:8008"),
    "http_listen negative port": env("DBVIP_HTTP_LISTEN", "127.0.0.1:-1"),
    # -- failsafe ---------------------------------------------------------------
    "failsafe neither on nor off": env("DBVIP_FAILSAFE", "true"),
    "failsafe on without its endpoint": Row(
        env={"DBVIP_FAILSAFE": "on", "DBVIP_FAILSAFE_SECRET_FILE": "{tmp}/secret"},
        names=("failsafe_listen", "environment DBVIP_FAILSAFE"),
        make=("secret",),
    ),
    "failsafe on without its secret": Row(
        env={"DBVIP_FAILSAFE": "on", "DBVIP_FAILSAFE_LISTEN": "127.0.0.1:8009"},
        names=("failsafe_secret_file", "environment DBVIP_FAILSAFE"),
    ),
    "failsafe secret file empty": Row(
        env={"DBVIP_FAILSAFE_SECRET_FILE": "{tmp}/empty"},
        names=("failsafe_secret_file", "environment DBVIP_FAILSAFE_SECRET_FILE"),
        make=("empty",),
    ),
    "failsafe window too short to ask again": Row(
        env={
            "DBVIP_FAILSAFE": "on",
            "DBVIP_FAILSAFE_LISTEN": "127.0.0.1:8009",
            "DBVIP_FAILSAFE_SECRET_FILE": "{tmp}/secret",
            "DBVIP_FAILSAFE_WINDOW_S": "2",
        },
        names=("failsafe_window_s", "environment DBVIP_FAILSAFE_WINDOW_S"),
        make=("secret",),
    ),
}


def make_files(tmp: Path, names: tuple[str, ...]) -> None:
    contents: dict[str, bytes] = {
        "garbage": b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        "empty": b"",
        "two-lines": f"{SECRET}-1\n{SECRET}-2\n".encode(),
        "latin1": f"{SECRET}-caf\xe9".encode("latin-1"),
        "huge": (SECRET * 350000).encode(),
        "secret": f"{SECRET}-file\n".encode(),
    }
    for name in names:
        if name == "fifo":
            os.mkfifo(tmp / name)
        else:
            (tmp / name).write_bytes(contents[name])


def fill(text: str, tmp: Path) -> str:
    return (
        text.replace("{tmp}", str(tmp))
        .replace("{ca}", str(CA))
        .replace("{cert}", str(CLIENT_CERT))
        .replace("{key}", str(CLIENT_KEY))
    )


def test_the_table_has_the_issue_s_list_and_25_more() -> None:
    issue_list = list(ROWS).index("vip IPv6 multicast")
    assert issue_list >= 30
    assert len(ROWS) - issue_list >= 25


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_bad_setting_is_refused_with_exit_2_naming_it_and_its_source(
    row: Row, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_files(tmp_path, row.make)
    environ = dict(BASE_ENV)
    for key, value in row.env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = fill(value, tmp_path)
    if row.toml is not None:
        path = tmp_path / "dbvip.toml"
        path.write_bytes(row.toml if isinstance(row.toml, bytes) else row.toml.encode())
        environ["DBVIP_CONFIG"] = str(path)
    argv = [command, *(fill(a, tmp_path) for a in row.flags)]
    if command == "run":
        # A row run accepted would start a sidecar that runs until stopped:
        # the same settings must have been refused by check-config first.
        assert cli.main(["check-config", *argv[1:]], environ) == 2
        capsys.readouterr()

    code = cli.main(argv, environ)
    out, err = capsys.readouterr()

    assert code == 2, f"{command} exited {code}:\n{out}{err}"
    assert out == ""  # nothing was done, nothing shown but the refusal
    assert err.startswith("dbvip: configuration error: "), err
    assert err.count("\n") == 1, err  # one line: no traceback, no echoed newline
    for name in row.names:
        assert fill(name, tmp_path) in err, err
    assert SECRET not in err
    assert "Traceback" not in err


# -- refusals that are not one setting's value ---------------------------------


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "1e9", "soon"])
def test_maintenance_wait_that_could_hang_is_refused(
    wait: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse reports it: exit 2 before etcd is asked anything.
    with pytest.raises(SystemExit) as exit_:
        cli.main(["maintenance", "on", "--wait-s", wait], BASE_ENV)
    assert exit_.value.code == 2
    assert "--wait-s" in capsys.readouterr().err


def test_a_hook_can_call_dbvip_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The facts a hook gets are not misspelt settings to the dbvip it runs."""
    event = Event(EventKind.ACQUIRE, "taking_over", "", 0x1F, "n1", Role.PRIMARY, 3, "now")
    hook_env = hook_environment(event, {"NODE": "n1", "CLUSTER": "c1", "VIP": "198.51.100.10",
                                        "INTERFACE": "eth0"}, {})  # fmt: skip
    facts = {k: v for k, v in hook_env.items() if k.startswith("DBVIP_HOOK_")}
    assert set(facts) == {f"DBVIP_HOOK_{name}" for name in HOOK_FACTS}
    environ = {**BASE_ENV, **facts, "DBVIP_REQUEST_TIMEOUT_S": "0.1"}
    code = cli.main(["status"], environ)  # etcd at 127.0.0.1:9 does not answer
    err = capsys.readouterr().err
    assert code == cli.EXIT_UNAVAILABLE, err
    assert "configuration error" not in err


def test_check_config_shows_a_uri_dsn_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ = {
        **BASE_ENV,
        "DBVIP_PG_DSN": f"postgresql://dbvip:{SECRET}@127.0.0.1:5432/postgres?sslpassword={SECRET}",
    }
    assert cli.main(["check-config"], environ) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "password=********" in out
    assert "host=127.0.0.1" in out


GOOD: dict[str, Row] = {
    "IPv6 VIP": env("DBVIP_VIP", "2001:db8::10"),
    "VIP with a prefix": env("DBVIP_VIP", "198.51.100.10/24"),
    "VIP in a /31": env("DBVIP_VIP", "198.51.100.10/31"),
    "endpoints by name and IPv6": env(
        "DBVIP_ETCD_ENDPOINTS", "https://etcd-1.example.internal:2379, http://[2001:db8::2]:2379/"
    ),
    "longest ttl_s": env("DBVIP_TTL_S", "3600"),
    "interval without a leading 0": env("DBVIP_PROBE_INTERVAL_S", ".1"),
    "node with every allowed character": env("DBVIP_NODE", "n-1.a_B"),
    "URI DSN without a password": env("DBVIP_PG_DSN", "postgresql://dbvip@127.0.0.1:5432/postgres"),
    "TOML float seconds": toml("probe_interval_s = 0.00005\nrole_grace_s = 2\n", "role_grace_s"),
    "TOML endpoints list": Row(
        env={"DBVIP_ETCD_ENDPOINTS": None},
        toml='etcd_endpoints = ["http://127.0.0.1:9", "http://127.0.0.2:9"]\n',
        names=("etcd_endpoints", "{tmp}/dbvip.toml"),
    ),
    "TLS files with https": Row(
        env={
            "DBVIP_ETCD_ENDPOINTS": "https://127.0.0.1:9",
            "DBVIP_ETCD_CA_FILE": "{ca}",
            "DBVIP_ETCD_CERT_FILE": "{cert}",
            "DBVIP_ETCD_KEY_FILE": "{key}",
        },
        names=("etcd_key_file",),
    ),
    "password from a file with a trailing newline": Row(
        env={"DBVIP_ETCD_PASSWORD": None, "DBVIP_ETCD_PASSWORD_FILE": "{tmp}/secret"},
        make=("secret",),
        names=("etcd_password_file",),
    ),
}


@pytest.mark.parametrize("row", GOOD.values(), ids=GOOD.keys())
def test_what_is_right_is_accepted_and_shown_with_its_source(
    row: Row, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_files(tmp_path, row.make)
    environ = {k: v for k, v in BASE_ENV.items() if row.env.get(k, "") is not None}
    environ.update({k: fill(v, tmp_path) for k, v in row.env.items() if v is not None})
    if isinstance(row.toml, str):
        (tmp_path / "dbvip.toml").write_text(row.toml)
        environ["DBVIP_CONFIG"] = str(tmp_path / "dbvip.toml")
    code = cli.main(["check-config", *row.flags], environ)
    out, err = capsys.readouterr()
    assert code == 0, err
    setting, *source = row.names
    line = next(x for x in out.splitlines() if x.startswith(setting + " "))
    assert line.endswith(fill(source[0], tmp_path) if source else line.split()[-1])
    assert SECRET not in out
