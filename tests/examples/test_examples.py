"""The deployment examples under examples/, each checked by running something:
a linter or a schema validator on the file, and dbvip itself on the settings
the file gives it. No Docker engine, Kubernetes or systemd runs here; where
they would mount a file (a secret), the test puts a temporary file instead.

Tests marked ``tools`` run a validator from the dev extras (hadolint,
check-jsonschema, kubernetes-validate, patroni, shellcheck) or
systemd-analyze; the one marked ``real`` needs root and PostgreSQL 15.
The capability setups run on the real kernel in test_capabilities.py.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from dbvip.adapters.postgres import PostgresRoleProbe
from dbvip.cli import EXIT_CONFIG
from dbvip.config import BY_NAME, Listen, load
from dbvip.health import HealthServer
from dbvip.model import Role, RoleReading, Timing
from integration.lab.eventually import eventually
from integration.lab.postgres import PG_BIN, SUPERUSER, PgServer
from tests.examples.deploy import (
    BIN,
    COMPOSE,
    COMPOSE_NODE,
    DOCKERFILE,
    EXAMPLES,
    HEALTHCHECK,
    IMAGE,
    KUBERNETES,
    PATRONI,
    PATRONI_DBVIP,
    POSTGRES_SCRIPTS,
    ROOT,
    TOML,
    UNIT,
    Run,
    compose,
    compose_env,
    compose_sidecars,
    container,
    dbvip,
    dockerfile_stages,
    exec_form,
    final_stage,
    healthcheck_command,
    image_env,
    instructions,
    k8s,
    k8s_env,
    listen_host,
    listen_port,
    pod_spec,
    release_bound_s,
    seconds,
    source_of,
    tool,
    unit_directives,
    unit_value,
    unit_values,
    value_of,
)
from tests.observed import ObservedNode
from tests.support.tls import credential_text

CAPABILITIES = {"NET_ADMIN", "NET_RAW"}
DEFAULT_TIMING = Timing()


def with_secret_files(env: dict[str, str], where: Path) -> dict[str, str]:
    """``*_FILE`` settings point at files the runtime would mount: put
    temporary ones there instead."""
    out = dict(env)
    for key in env:
        if key.startswith("DBVIP_") and key.endswith("_FILE"):
            path = where / key.lower()
            path.write_text(credential_text(key))
            out[key] = str(path)
    return out


def assert_check_config_accepts(env: dict[str, str], where: Path, *args: str) -> Run:
    run = dbvip("check-config", *args, env=with_secret_files(env, where))
    assert run.code == 0, run.text
    for key in env:
        if key.startswith("DBVIP_") and key != "DBVIP_CONFIG":
            assert source_of(run.out, key[len("DBVIP_") :].lower()) == f"environment {key}"
    return run


# -- the image ---------------------------------------------------------------


@pytest.mark.tools
def test_the_dockerfile_passes_hadolint() -> None:
    run = tool("hadolint", "--no-color", "--failure-threshold", "style", DOCKERFILE)
    assert run.code == 0, run.text


def test_the_image_runs_dbvip_unprivileged_with_file_capabilities() -> None:
    build, final = dockerfile_stages()[0], final_stage()
    assert instructions(final, "FROM") == ["python:3.11-slim"]
    for args in instructions(build, "COPY"):
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert any("pip install --no-cache-dir ." in run for run in instructions(build, "RUN"))

    (user,) = instructions(final, "USER")
    uid = user.split(":")[0]
    # Numeric, so that Kubernetes can check runAsNonRoot without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    assert exec_form(instructions(final, "ENTRYPOINT")[0]) == ["dbvip"]
    assert exec_form(instructions(final, "CMD")[0]) == ["run"]
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]

    # The capabilities sit on the interpreter of the directory first in PATH,
    # where the dbvip console script is; the health check uses another one.
    words = [w for run in instructions(final, "RUN") for w in shlex.split(run)]
    at = words.index("setcap")
    assert words[at + 1] == "cap_net_admin,cap_net_raw+ep"
    interpreter = PurePosixPath(words[at + 2])
    first_in_path = image_env()["PATH"].split(":")[0]
    assert str(interpreter.parent) == first_in_path
    assert not healthcheck_command()[0].startswith(first_in_path)


@pytest.mark.tools
def test_the_entrypoint_answers_help() -> None:
    entrypoint = exec_form(instructions(final_stage(), "ENTRYPOINT")[0])
    run = dbvip(*entrypoint[1:], "--help", env={})
    assert run.code == 0, run.text
    assert "check-config" in run.out
    command = exec_form(instructions(final_stage(), "CMD")[0])
    run = dbvip(*entrypoint[1:], *command, "--help", env={})
    assert run.code == 0, run.text
    assert "--http-listen" in run.out


def test_the_image_healthcheck_follows_dbvip_healthz() -> None:
    command = healthcheck_command()
    copied = {args.split()[-1]: args.split()[0] for args in instructions(final_stage(), "COPY")}
    assert copied[command[-1]] == str(HEALTHCHECK.relative_to(ROOT))
    # The image's listen address with the port of a server on loopback.
    host = listen_host(image_env()["DBVIP_HTTP_LISTEN"])
    node = ObservedNode()
    server = HealthServer(Listen("127.0.0.1", 0), node.board, node.metrics)
    server.start()

    def healthy() -> int:
        env = {"DBVIP_HTTP_LISTEN": f"{host}:{server.port}"}
        done = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30, check=False)
        return done.returncode

    try:
        assert healthy() == 1  # no decision yet: 503
        node.runner.tick()
        assert healthy() == 0
        node.clock.advance(60)  # the loop stalled past the liveness window
        assert healthy() == 1
    finally:
        server.close()
    assert healthy() == 1  # nothing listens


def test_the_healthcheck_asks_loopback_for_a_wildcard_listen_address() -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.healthz_url("0.0.0.0:8008") == "http://127.0.0.1:8008/healthz"
    assert module.healthz_url("[::]:8008") == "http://[::1]:8008/healthz"
    assert module.healthz_url("[2001:db8::1]:9") == "http://[2001:db8::1]:9/healthz"
    assert module.healthz_url("198.51.100.7:8008") == "http://198.51.100.7:8008/healthz"


# -- compose -----------------------------------------------------------------


@pytest.mark.tools
@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_NODE], ids=lambda p: p.name)
def test_the_compose_file_matches_the_compose_specification(path: Path) -> None:
    run = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", path)
    assert run.code == 0, run.text


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_NODE], ids=lambda p: p.name)
def test_what_the_compose_file_refers_to_exists(path: Path) -> None:
    doc = compose(path)
    services = doc["services"]
    for name, svc in services.items():
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, name
            assert "ports" not in svc and "networks" not in svc, name
        for dependency in svc.get("depends_on", []):
            assert dependency in services, name
        for secret in svc.get("secrets", []):
            assert secret in doc["secrets"], name
        targets = []
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            targets.append(target)
            if source.startswith("."):
                assert (path.parent / source).is_file(), f"{name}: {source}"
            else:
                assert source in doc["volumes"], f"{name}: {source}"
        if "entrypoint" in svc:
            assert svc["entrypoint"][0] in targets, f"{name}: its entrypoint is not mounted"
        if "build" in svc:
            build = svc["build"]
            dockerfile = (path.parent / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile == DOCKERFILE
    for secret in doc["secrets"].values():
        # Created by hand (see the file's head), never committed.
        assert PurePosixPath(secret["file"]).parent.name == "secrets"


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_NODE], ids=lambda p: p.name)
def test_the_compose_sidecars_have_two_capabilities_and_time_to_release(path: Path) -> None:
    sidecars = compose_sidecars(path)
    assert sidecars
    nodes = set()
    for name, svc in sidecars.items():
        assert svc["cap_drop"] == ["ALL"], name
        assert set(svc["cap_add"]) == CAPABILITIES, name
        # no_new_privs would void the image's file capabilities.
        assert not any("no-new-privileges" in o for o in svc.get("security_opt", [])), name
        mode = svc["network_mode"]
        assert mode == "host" or compose(path)["services"][mode.removeprefix("service:")]
        assert seconds(svc["stop_grace_period"]) > release_bound_s(DEFAULT_TIMING), name
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM", name
        nodes.add(compose_env(path, name)["DBVIP_NODE"])
        secrets = {f"/run/secrets/{s}" for s in svc.get("secrets", [])}
        for key, value in compose_env(path, name).items():
            if key.endswith("_FILE"):
                assert value in secrets, f"{name}: {key}={value} is not mounted"
    assert len(nodes) == len(sidecars), "every sidecar needs its own node name"


def test_the_demo_vip_is_on_the_network_but_never_handed_out() -> None:
    doc = compose(COMPOSE)
    (ipam,) = doc["networks"]["db"]["ipam"]["config"]
    vips = {compose_env(COMPOSE, name)["DBVIP_VIP"] for name in compose_sidecars(COMPOSE)}
    (vip,) = vips
    address = ipaddress.ip_address(vip)
    assert address in ipaddress.ip_network(ipam["subnet"])
    assert address not in ipaddress.ip_network(ipam["ip_range"])
    replicas = [
        s for s in doc["services"].values() if s.get("environment", {}).get("PG_PRIMARY_HOST")
    ]
    assert replicas
    assert all(s["environment"]["PG_PRIMARY_HOST"] == vip for s in replicas)


@pytest.mark.tools
@pytest.mark.parametrize(
    ("path", "service"),
    [(COMPOSE, "dbvip1"), (COMPOSE, "dbvip2"), (COMPOSE_NODE, "dbvip")],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_the_compose_sidecar_environment_passes_check_config(
    path: Path, service: str, tmp_path: Path
) -> None:
    env = compose_env(path, service)
    command = exec_form(instructions(final_stage(), "CMD")[0])
    assert compose(path)["services"][service].get("command", command) == command
    run = assert_check_config_accepts(env, tmp_path)
    assert value_of(run.out, "node") == env["DBVIP_NODE"]


# -- Kubernetes --------------------------------------------------------------


@pytest.mark.tools
@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_the_kubernetes_manifest_matches_the_schemas(version: str) -> None:
    run = tool("kubernetes-validate", "--strict", "--kubernetes-version", version, KUBERNETES)
    assert run.code == 0, run.text
    assert "passed for resource statefulset/pg" in run.text


def test_the_statefulset_runs_dbvip_beside_postgres() -> None:
    sts = k8s("StatefulSet")
    assert sts["spec"]["replicas"] == 3
    service = k8s("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == sts["spec"]["serviceName"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pod = pod_spec()
    # The VIP goes on the node's interface (see the manifest's head).
    assert pod["hostNetwork"] is True
    assert pod["terminationGracePeriodSeconds"] > release_bound_s(DEFAULT_TIMING)
    assert {c["name"] for c in pod["containers"]} == {"postgres", "dbvip"}
    env = k8s_env()
    assert k8s_env("postgres")["PG_PRIMARY_HOST"] == env["DBVIP_VIP"]


def test_the_dbvip_container_has_two_capabilities_and_probes() -> None:
    c = container("dbvip")
    assert c["image"] == IMAGE
    context = c["securityContext"]
    assert context["runAsNonRoot"] is True
    (user,) = instructions(final_stage(), "USER")
    assert str(context["runAsUser"]) == user.split(":")[0]
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == CAPABILITIES
    # Under no_new_privs the image's file capabilities may not be granted.
    assert context["allowPrivilegeEscalation"] is True

    port = listen_port(k8s_env()["DBVIP_HTTP_LISTEN"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == port


def test_the_secret_files_are_mounted_where_the_settings_point() -> None:
    pod = pod_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in ("dbvip", "postgres"):
        mounts = {m["mountPath"]: m["name"] for m in container(name)["volumeMounts"]}
        for key, value in k8s_env(name).items():
            if not key.endswith("_FILE"):
                continue
            path = PurePosixPath(value)
            volume = volumes[mounts[str(path.parent)]]
            secret = k8s("Secret", volume["secret"]["secretName"])
            assert path.name in secret["stringData"], f"{name}: {key}={value}"
    # Group-readable by fsGroup, which the dbvip user gets as a supplementary group.
    assert pod["securityContext"]["fsGroup"]
    assert all(v["secret"]["defaultMode"] == 0o440 for v in volumes.values() if "secret" in v)


@pytest.mark.tools
def test_the_kubernetes_sidecar_environment_passes_check_config(tmp_path: Path) -> None:
    env = k8s_env()
    run = assert_check_config_accepts(env, tmp_path)
    assert value_of(run.out, "node") == "pg-0"


def test_the_configmap_carries_the_postgres_scripts_unchanged() -> None:
    scripts = k8s("ConfigMap", "pg-scripts")["data"]
    assert set(scripts) == {p.name for p in POSTGRES_SCRIPTS.glob("*.sh")}
    for name, text in scripts.items():
        assert text == (POSTGRES_SCRIPTS / name).read_text(), name


def test_dbvip_logs_in_with_the_role_and_password_the_init_script_creates() -> None:
    script = (POSTGRES_SCRIPTS / "initdb-dbvip.sh").read_text()
    created = re.search(r"CREATE ROLE (\w+) LOGIN", script)
    assert created
    envs: dict[str, list[dict[str, str]]] = {
        "compose.yaml": [s.get("environment", {}) for s in compose(COMPOSE)["services"].values()],
        "compose.node.yaml": [
            s.get("environment", {}) for s in compose(COMPOSE_NODE)["services"].values()
        ],
        "dbvip.yaml": [k8s_env("postgres"), k8s_env("dbvip")],
    }
    for where, environments in envs.items():
        merged = {k: str(v) for env in environments for k, v in env.items()}
        assert conninfo_to_dict(merged["DBVIP_PG_DSN"])["user"] == created[1], where
        role_secret = PurePosixPath(merged["DBVIP_ROLE_PASSWORD_FILE"]).name
        assert PurePosixPath(merged["DBVIP_PG_PASSWORD_FILE"]).name == role_secret, where


@pytest.mark.real
def test_the_initdb_script_gives_dbvip_a_login_its_probe_can_use(
    pg_primary: PgServer, pg_standby: PgServer, tmp_path: Path
) -> None:
    # What the official image gives scripts in /docker-entrypoint-initdb.d/,
    # pointed at a real primary; a password psql must quote.
    password = tmp_path / "dbvip-password"
    password.write_text("it's a s3cret\n")
    env = {
        "PATH": f"{PG_BIN}:/usr/bin:/bin",
        "POSTGRES_USER": SUPERUSER,
        "PGDATA": str(pg_primary.datadir),
        "PGHOST": str(pg_primary.socket_dir),
        "PGPORT": str(pg_primary.port),
        "DBVIP_ROLE_PASSWORD_FILE": str(password),
    }
    run = Run.of(["sh", str(POSTGRES_SCRIPTS / "initdb-dbvip.sh")], env)
    assert run.code == 0, run.text
    hba = (pg_primary.datadir / "pg_hba.conf").read_text().splitlines()
    assert hba[-1].split() == ["host", "replication", "postgres", "all", "scram-sha-256"]

    def probe(server: PgServer) -> RoleReading:
        # The image reads the file with cat: the trailing newline is not part of it.
        prober = PostgresRoleProbe(server.tcp_conninfo(user="dbvip"), "it's a s3cret")
        try:
            return prober.probe(timeout_s=10)
        finally:
            prober.close()

    assert probe(pg_primary) == RoleReading(Role.PRIMARY, 1, probe(pg_primary).lsn)
    # On a replica the probe reads the WAL receiver's timeline, which only
    # pg_monitor (through pg_read_all_stats) may see.
    replica = eventually(lambda: (r := probe(pg_standby)).cause is None and r, timeout_s=30)
    assert isinstance(replica, RoleReading)  # truthy, so not the False of "and"
    assert replica.role is Role.REPLICA
    dsn = pg_standby.tcp_conninfo(user="dbvip")
    with psycopg.connect(dsn, password="it's a s3cret", connect_timeout=10) as conn:
        row = conn.execute("SELECT received_tli FROM pg_stat_wal_receiver").fetchone()
    assert row == (1,)


@pytest.mark.tools
def test_the_postgres_scripts_pass_shellcheck() -> None:
    scripts = sorted(POSTGRES_SCRIPTS.glob("*.sh"))
    assert scripts
    run = tool("shellcheck", "--shell=sh", "--severity=style", *scripts)
    assert run.code == 0, run.text
    assert all(os.access(s, os.X_OK) for s in scripts)  # the image runs them directly


# -- systemd and the TOML file ----------------------------------------------


@pytest.mark.tools
@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze (Debian package systemd) is not installed",
)
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    binary = shlex.split(unit_value("ExecStart"))[0]
    assert binary == "/opt/dbvip/bin/dbvip"  # where the unit's head installs it
    # verify checks that ExecStart exists: point it at this venv's dbvip.
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(binary, str(BIN / "dbvip")))
    run = Run.of(["systemd-analyze", "verify", "--man=no", str(copy)])
    # Unknown keys and bad values are only warnings: any output fails.
    assert run.code == 0 and not run.text.strip(), run.text


def test_the_unit_gives_dbvip_two_capabilities_and_time_to_release() -> None:
    user = unit_value("User")
    assert user and user != "root"
    wanted = {f"CAP_{c}" for c in CAPABILITIES}
    assert set(unit_value("AmbientCapabilities").split()) == wanted
    assert set(unit_value("CapabilityBoundingSet").split()) == wanted
    assert unit_value("NoNewPrivileges") == "yes"
    assert unit_value("KillSignal") == "SIGTERM"
    # The password is one of the unit's credentials (LoadCredential), not in the file.
    timing = load({}, {"DBVIP_ETCD_PASSWORD": "x"}, config_file=str(TOML)).timing
    assert seconds(unit_value("TimeoutStopSec")) > release_bound_s(timing)
    assert unit_value("Restart") == "on-failure"
    assert str(EXIT_CONFIG) in unit_value("RestartPreventExitStatus").split()
    families = set(unit_value("RestrictAddressFamilies").split())
    assert {"AF_NETLINK", "AF_PACKET", "AF_INET", "AF_INET6", "AF_UNIX"} <= families
    keys = {k for _, k, _ in unit_directives()}
    assert not keys & {"PrivateNetwork", "PrivateUsers", "NetworkNamespacePath"}


@pytest.mark.tools
def test_the_unit_s_command_and_environment_pass_check_config(tmp_path: Path) -> None:
    argv = shlex.split(unit_value("ExecStart"))
    assert argv[1] == "run"
    config_at = argv.index("--config") + 1
    assert argv[config_at] == f"/etc/dbvip/{TOML.name}"
    argv[config_at] = str(TOML)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for spec in unit_values("LoadCredential"):
        name = spec.split(":")[0]
        (credentials / name).write_text(credential_text(name))
    env = {}
    for assignment in unit_values("Environment"):
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%d", str(credentials))
    run = dbvip("check-config", *argv[2:], env=env)
    assert run.code == 0, run.text
    for key in env:
        assert source_of(run.out, key.removeprefix("DBVIP_").lower()) == f"environment {key}"
    for name in tomllib.loads(TOML.read_text()):
        assert source_of(run.out, name) == f"file {TOML}"


@pytest.mark.tools
def test_every_key_of_the_example_toml_is_a_setting_shown_as_given(tmp_path: Path) -> None:
    settings = tomllib.loads(TOML.read_text())
    assert set(settings) <= set(BY_NAME)
    # The password is the unit's credential, not in the file (see the unit test above).
    password = tmp_path / "etcd-password"
    password.write_text("example-secret\n")
    run = dbvip("check-config", "--config", TOML, env={"DBVIP_ETCD_PASSWORD_FILE": str(password)})
    assert run.code == 0, run.text
    for name, given in settings.items():
        shown = value_of(run.out, name)
        assert source_of(run.out, name) == f"file {TOML}"
        if isinstance(given, list):
            parts = shown.split(",")
            assert len(parts) == len(given), name
            assert all(p.startswith(g) for p, g in zip(parts, given, strict=True)), name
        elif isinstance(given, bool):
            assert shown == ("on" if given else "off"), name
        elif isinstance(given, int | float):
            assert float(shown) == float(given), name
        else:
            assert shown.startswith(given), name  # a VIP gains its /32


# -- Patroni -------------------------------------------------------------------


@pytest.mark.tools
def test_patroni_accepts_its_configuration() -> None:
    # Ports in use on this machine are not the file's business.
    run = tool("patroni", "--validate-config", "--ignore-listen-port", PATRONI)
    assert run.code == 0, run.text


@pytest.mark.tools
def test_patroni_and_dbvip_describe_the_same_node() -> None:
    patroni: dict[str, Any] = yaml.safe_load(PATRONI.read_text())
    settings = tomllib.loads(PATRONI_DBVIP.read_text())
    assert settings["node"] == patroni["name"]
    assert settings["cluster"] == patroni["scope"]
    assert {urlsplit(u).netloc for u in settings["etcd_endpoints"]} == set(
        patroni["etcd3"]["hosts"]
    )
    assert not settings["etcd_prefix"].startswith(patroni["namespace"].rstrip("/"))
    dbvip_port = listen_port(settings["http_listen"])
    assert dbvip_port != listen_port(patroni["restapi"]["listen"])
    assert dbvip_port != listen_port(patroni["postgresql"]["listen"])
    vip = ipaddress.ip_interface(f"{settings['vip']}").ip
    for section in ("restapi", "postgresql"):
        host = patroni[section]["connect_address"].rpartition(":")[0]
        assert ipaddress.ip_address(host) != vip, section
    run = dbvip("check-config", "--config", PATRONI_DBVIP, env={})
    assert run.code == 0, run.text


# -- the README --------------------------------------------------------------


def test_the_readme_lists_every_example_in_its_deploying_section() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Deploying\n")
    end = text.index("\n## ", start + 1)
    assert text[end:].startswith("\n## What is in etcd\n")
    section = text[start:end]
    for path in sorted(EXAMPLES.rglob("*")):
        if path.is_file():
            assert str(path.relative_to(ROOT)) in section, path
