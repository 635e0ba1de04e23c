"""The lab itself: named, side by side, safe ranges, and nothing left behind,
also when the process that built it dies."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys

import pytest

from integration.conftest import MakeLab
from integration.lab import cleanup
from integration.lab.lab import Lab, LabSpec
from integration.lab.names import check_name
from integration.lab.netns import NetLab

pytestmark = pytest.mark.real
LAB_CLI = [sys.executable, "-m", "integration.lab"]


def unique_name() -> str:
    return f"x{os.getpid() % 100000}{secrets.token_hex(2)}"


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB_CLI, *args], capture_output=True, text=True, timeout=180,
                          check=False)  # fmt: skip


def test_cli_up_leaves_a_running_lab_that_down_removes_by_name() -> None:
    name = unique_name()
    try:
        up = lab_cli("up", "--name", name, "--nodes", "2")
        assert up.returncode == 0, up.stderr
        # The process that built the lab is gone; everything it made lives on.
        found = cleanup.find(name)
        assert len(found.namespaces) == 5 and found.pids and found.directory is not None
        status = lab_cli("status", "--name", name)
        assert status.returncode == 0, status.stderr
        assert "n1: role=primary vip=yes" in status.stdout
        assert "n2: role=replica vip=no" in status.stdout
        write = lab_cli("write", "--name", name)
        assert write.returncode == 0 and "acknowledged by n1" in write.stdout, write.stdout
        switch = lab_cli("switchover", "--name", name)
        assert switch.returncode == 0, switch.stderr
        assert "n2: role=primary vip=yes" in lab_cli("status", "--name", name).stdout
        assert name in lab_cli("list").stdout.split()
        down = lab_cli("down", "--name", name)
        assert down.returncode == 0, down.stderr
        assert cleanup.find(name).empty()
    finally:
        cleanup.down(name)


def test_down_cleans_up_after_the_lab_process_was_killed() -> None:
    name = unique_name()
    build_and_die = (
        "import os, signal\n"
        "from integration.lab.lab import Lab, LabSpec\n"
        f"Lab.create(LabSpec({name!r}, db_nodes=1))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", build_and_die], capture_output=True,
                              timeout=180, check=False)  # fmt: skip
        assert done.returncode == -9, done.stderr
        left = cleanup.find(name)
        assert left.namespaces and left.pids and left.directory is not None
        removed = cleanup.down(name)
        assert removed.pids == left.pids
        assert cleanup.find(name).empty()
        assert not any(cleanup.alive(pid) for pid in left.pids)  # dead (zombies at most)
    finally:
        cleanup.down(name)


def test_two_labs_run_side_by_side_on_the_same_addresses(make_lab: MakeLab) -> None:
    first = make_lab(db_nodes=1)
    second = make_lab(db_nodes=1)
    first.wait_holder("n1")
    second.wait_holder("n1")
    assert first.client_write().node == "n1"
    assert second.client_write().node == "n1"
    first.close()
    assert cleanup.find(first.name).empty()
    second_write = second.client_write()
    assert second_write.ok, second_write.error
    assert not cleanup.find(second.name).empty()


def test_lab_refuses_ranges_in_use_by_the_root_namespace() -> None:
    # Loopback is in use in every root namespace: a lab on it must refuse,
    # before creating anything.
    prefix = f"dbvt{os.getpid()}r"
    lab = NetLab(ranges=(ipaddress.IPv4Network("127.0.0.0/8"),), prefix=prefix)
    with pytest.raises(RuntimeError, match="refusing to start"):
        lab.start()
    made = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [n for n in made if n.startswith(prefix)]


def test_a_failed_build_leaves_nothing() -> None:
    name = unique_name()
    with pytest.raises(subprocess.CalledProcessError):  # cp of the missing template
        Lab.create(LabSpec(name, db_nodes=1, pg_template="/nonexistent/template"))
    assert cleanup.find(name).empty()


@pytest.mark.parametrize("bad", ["", "a-b", "Lab", "1ab", "abcdefghijklm", "a b", "../x"])
def test_lab_names_cannot_reach_into_another_labs_names(bad: str) -> None:
    with pytest.raises(ValueError, match="lab name"):
        check_name(bad)
