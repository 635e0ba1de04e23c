"""Readers of the deployment examples: what each file gives the dbvip sidecar.

The tests take every value from the files through these readers, never from
copies of their own, so an edited example is tested as edited.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbvip.board import liveness_window_s
from dbvip.model import Timing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DOCKERFILE = EXAMPLES / "docker" / "Dockerfile"
HEALTHCHECK = EXAMPLES / "docker" / "healthcheck.py"
COMPOSE = EXAMPLES / "docker" / "compose.yaml"
COMPOSE_NODE = EXAMPLES / "docker" / "compose.node.yaml"
KUBERNETES = EXAMPLES / "kubernetes" / "dbvip.yaml"
UNIT = EXAMPLES / "systemd" / "dbvip.service"
TOML = EXAMPLES / "dbvip.toml"
PATRONI = EXAMPLES / "patroni" / "patroni.yml"
PATRONI_DBVIP = EXAMPLES / "patroni" / "dbvip.toml"
POSTGRES_SCRIPTS = EXAMPLES / "postgres"
IMAGE = "dbvip:example"
# The test's virtual environment: dbvip's console script and the validators.
BIN = Path(sys.executable).parent


def release_bound_s(t: Timing) -> float:
    """From SIGTERM to the VIP removed and one release sent: the tick in
    progress (bounded by the liveness window), one netlink call, one etcd
    request. A stop timeout must exceed it."""
    return liveness_window_s(t) + t.vip_op_timeout_s + t.request_timeout_s


def seconds(text: str | int) -> float:
    """A duration as compose and systemd write it: 30, "30s", "1m30s"."""
    if isinstance(text, int):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)min|(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not parts or not text.strip():
        raise ValueError(f"not a duration: {text!r}")
    minutes = int(parts[1] or parts[2] or 0)
    return 60.0 * minutes + int(parts[3] or 0)


def listen_host(listen: str) -> str:
    """The host part of an ``http_listen`` value as written (brackets kept)."""
    return listen.rpartition(":")[0]


def listen_port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


# -- running tools -------------------------------------------------------------


def tool(name: str, *args: str | Path, env: Mapping[str, str] | None = None) -> Run:
    path = BIN / name
    if not path.exists():
        pytest.fail(
            f"{name} is missing from {BIN}: install the dev extras (pip install -e '.[dev]')"
        )
    return Run.of([str(path), *map(str, args)], env)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @classmethod
    def of(cls, argv: list[str], env: Mapping[str, str] | None = None) -> Run:
        done = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env=None if env is None else dict(env),
        )
        return cls(done.returncode, done.stdout, done.stderr)

    @property
    def text(self) -> str:
        return self.out + self.err


def dbvip(*args: str | Path, env: Mapping[str, str]) -> Run:
    """The installed ``dbvip`` console script, with exactly ``env`` (plus PATH)."""
    return tool("dbvip", *args, env={"PATH": str(BIN), **env})


def source_of(output: str, setting: str) -> str:
    """The source column of ``setting``'s row in ``dbvip check-config`` output."""
    for line in output.splitlines():
        if line.startswith(f"{setting} "):
            return re.split(r"\s{2,}", line.strip())[-1]
    raise AssertionError(f"no row for {setting} in:\n{output}")


def value_of(output: str, setting: str) -> str:
    for line in output.splitlines():
        if line.startswith(f"{setting} "):
            return re.split(r"\s{2,}", line.strip())[1]
    raise AssertionError(f"no row for {setting} in:\n{output}")


# -- Dockerfile ----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def instructions(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def image_env() -> dict[str, str]:
    """The ENV of the image's final stage."""
    env: dict[str, str] = {}
    for args in instructions(final_stage(), "ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def image_dbvip_env() -> dict[str, str]:
    return {k: v for k, v in image_env().items() if k.startswith("DBVIP_")}


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec form: {args}"
    return [str(v) for v in value]


def healthcheck_command() -> list[str]:
    (args,) = instructions(final_stage(), "HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    return exec_form(command)


# -- compose -------------------------------------------------------------------


def compose(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def compose_sidecars(path: Path) -> dict[str, dict[str, Any]]:
    services = compose(path)["services"]
    return {name: svc for name, svc in services.items() if svc.get("image") == IMAGE}


def compose_env(path: Path, service: str) -> dict[str, str]:
    """What the container sees: the image's ENV, then the service's."""
    environment = compose(path)["services"][service].get("environment", {})
    assert isinstance(environment, dict), "write environment as a mapping"
    return {**image_dbvip_env(), **{k: str(v) for k, v in environment.items()}}


# -- Kubernetes ----------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in k8s_objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {KUBERNETES}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("StatefulSet")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec()["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def k8s_env(name: str = "dbvip") -> dict[str, str]:
    """The container's environment as the kubelet builds it for pod ``<sts>-0``:
    the image's ENV, then envFrom, then env."""
    sts = k8s("StatefulSet")
    c = container(name)
    env = image_dbvip_env() if c["image"] == IMAGE else {}
    for source in c.get("envFrom", []):
        env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = f"{sts['metadata']['name']}-0"
        else:
            raise AssertionError(f"unsupported env source in the test: {item}")
    return env


# -- systemd -------------------------------------------------------------------


def unit_directives(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; repeated keys are kept."""
    section = ""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_directives() if k == key]


def unit_value(key: str) -> str:
    values = unit_values(key)
    assert len(values) == 1, f"{key} should be set once in {UNIT}, found {values}"
    return values[0]
