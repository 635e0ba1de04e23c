"""The capability setups of the examples, on the real kernel: a non-root
process runs dbvip's own netlink driver and announcer on an interface in a
namespace this test creates, with its capabilities granted as the image does
(file capabilities under Docker's rules) and as the systemd unit does
(ambient capabilities). The capability sets are read from the example files.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.examples.deploy import (
    COMPOSE,
    ROOT,
    compose_sidecars,
    final_stage,
    instructions,
    unit_value,
)

CAPABILITIES = {"NET_ADMIN", "NET_RAW"}

CAP_NUMBER = {"NET_ADMIN": 12, "NET_RAW": 13}
NOBODY = 65534

# Runs as root: leaves only ``keep`` in the bounding set (what cap_add
# grants), optionally sets no_new_privs, becomes nobody without keeping
# capabilities (as Docker starts a non-root user), and execs.
AS_CONTAINER_USER = """
import ctypes, json, os, sys
keep = {int(c) for c in sys.argv[1].split(",") if c}
libc = ctypes.CDLL(None, use_errno=True)
last = int(open("/proc/sys/kernel/cap_last_cap").read())
for cap in range(last + 1):
    if cap not in keep and libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
if sys.argv[2] == "nnp" and libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
try:
    os.execv(sys.argv[3], sys.argv[3:])
except OSError as e:
    print(json.dumps({"exec_errno": e.errno}))
"""

# Runs as nobody: dbvip's own netlink driver and announcer on interface d0.
PROBE = """
import ipaddress, json, sys
sys.path[:0] = sys.argv[1:]
from dbvip.adapters.arp import PacketAnnouncer
from dbvip.adapters.netlink import NetlinkVipDriver
vip = ipaddress.ip_interface("198.51.100.77/32")
driver = NetlinkVipDriver("d0", vip)
status = dict(l.split(":\\t") for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
steps = [("add", lambda: driver.add(30)), ("announce", PacketAnnouncer("d0", vip.ip).announce),
         ("remove", driver.remove)]
out = {"uid": status["Uid"].split()[0], "cap_eff": status["CapEff"]}
for name, step in steps:
    result = step()
    out[name] = [type(result).__name__, getattr(result, "cause", "")]
print(json.dumps(out))
"""


def run_json(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture(scope="module")
def caps_lab() -> Iterator[dict[str, Any]]:
    """A namespace with a veth pair, a world-readable copy of the system's
    Python carrying the Dockerfile's file capabilities, and the probe."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, setcap)")
    for needed in ("ip", "setcap", "setpriv"):
        if shutil.which(needed) is None:
            pytest.fail(f"{needed} is needed (Debian iproute2, libcap2-bin, util-linux)")
    system_python = Path(f"/usr/bin/python3.{sys.version_info.minor}")
    if not system_python.exists():
        pytest.fail(f"{system_python} is needed: a Python readable by an unprivileged user")
    setcap_spec = next(
        w
        for run in instructions(final_stage(), "RUN")
        for w in shlex.split(run)
        if w.startswith("cap_") and "+" in w
    )
    netns = f"dbvt{os.getpid()}{uuid.uuid4().hex[:4]}-caps"
    work = Path(tempfile.mkdtemp(prefix="dbvt-caps-"))
    try:
        work.chmod(0o755)
        capable = work / system_python.name
        shutil.copy2(system_python, capable)
        subprocess.run(["setcap", setcap_spec, str(capable)], check=True)
        probe = work / "probe.py"
        probe.write_text(PROBE)
        probe.chmod(0o644)
        subprocess.run(["ip", "netns", "add", netns], check=True)
        ipr = ["ip", "-n", netns, "link"]
        subprocess.run([*ipr, "add", "d0", "type", "veth", "peer", "name", "d1"], check=True)
        for link in ("d0", "d1"):
            subprocess.run([*ipr, "set", link, "up"], check=True)
        paths = [str(ROOT), *{sysconfig.get_paths()[k] for k in ("purelib", "platlib")}]
        yield {
            "netns": netns,
            "plain": str(system_python),
            "capable": str(capable),
            "probe": [str(probe), *paths],
        }
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


def as_container_user(lab: dict[str, Any], keep: set[str], nnp: bool) -> dict[str, Any]:
    numbers = ",".join(str(CAP_NUMBER[c]) for c in sorted(keep))
    wrapper = [sys.executable, "-c", AS_CONTAINER_USER, numbers, "nnp" if nnp else "-"]
    return run_json(["ip", "netns", "exec", lab["netns"], *wrapper, lab["capable"], *lab["probe"]])


def assert_vip_handled(answer: dict[str, Any]) -> None:
    assert answer["uid"] == str(NOBODY)
    assert answer["add"] == ["VipChanged", ""], answer
    assert answer["announce"] == ["Done", ""], answer
    assert answer["remove"] == ["VipChanged", ""], answer


@pytest.mark.real
def test_the_image_s_file_capabilities_let_a_non_root_dbvip_move_the_vip(
    caps_lab: dict[str, Any],
) -> None:
    svc = compose_sidecars(COMPOSE)["dbvip1"]
    answer = as_container_user(caps_lab, set(svc["cap_add"]), nnp=False)
    assert_vip_handled(answer)
    assert int(answer["cap_eff"], 16) == sum(1 << CAP_NUMBER[c] for c in CAPABILITIES)


@pytest.mark.real
def test_without_cap_add_the_image_s_interpreter_does_not_start(caps_lab: dict[str, Any]) -> None:
    answer = as_container_user(caps_lab, {"NET_RAW"}, nnp=False)  # NET_ADMIN forgotten
    assert answer == {"exec_errno": 1}  # EPERM: refused at start, not at the first failover


@pytest.mark.real
def test_no_new_privileges_voids_the_image_s_file_capabilities(caps_lab: dict[str, Any]) -> None:
    answer = as_container_user(caps_lab, CAPABILITIES, nnp=True)
    assert int(answer["cap_eff"], 16) == 0
    assert answer["add"][0] == "Unknown" and "CAP_NET_ADMIN" in answer["add"][1]
    assert answer["announce"][0] == "Unknown" and "CAP_NET_RAW" in answer["announce"][1]


@pytest.mark.real
def test_the_unit_s_ambient_capabilities_let_dbvip_move_the_vip(caps_lab: dict[str, Any]) -> None:
    caps = ",".join(
        "+" + c.removeprefix("CAP_").lower() for c in unit_value("AmbientCapabilities").split()
    )
    bounding = ",".join(
        "+" + c.removeprefix("CAP_").lower() for c in unit_value("CapabilityBoundingSet").split()
    )
    nnp = ["--no-new-privs"] if unit_value("NoNewPrivileges") == "yes" else []
    setpriv = [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        f"--bounding-set=-all,{bounding}",
        f"--inh-caps={caps}",
        f"--ambient-caps={caps}",
        *nnp,
    ]
    answer = run_json(
        ["ip", "netns", "exec", caps_lab["netns"], *setpriv, caps_lab["plain"], *caps_lab["probe"]]
    )
    assert_vip_handled(answer)


@pytest.mark.real
def test_without_capabilities_dbvip_cannot_move_the_vip(caps_lab: dict[str, Any]) -> None:
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    answer = run_json(
        ["ip", "netns", "exec", caps_lab["netns"], *setpriv, caps_lab["plain"], *caps_lab["probe"]]
    )
    assert answer["add"][0] == "Unknown" and "CAP_NET_ADMIN" in answer["add"][1]
    assert answer["announce"][0] == "Unknown"
