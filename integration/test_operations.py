"""What operators do to a running cluster, on the real lab."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from integration.conftest import MakeLab
from integration.lab.eventually import eventually

pytestmark = pytest.mark.real


def test_maintenance_steps_down_and_stays_away_until_told(make_lab: MakeLab) -> None:
    lab = make_lab()
    lab.wait_holder("n1")
    with lab.watched():
        on = lab.dbvip("n1", "maintenance", "on")
        assert on.returncode == 0, on.stderr
        assert "sidecar confirms (reason maintenance, VIP on it: none)" in on.stdout
        assert lab.holders() == set()
        assert lab.writer_value() is None  # released, not left to expire
        assert lab.status("n2")["maintenance"] == ["n1"]
        time.sleep(2.0)  # still primary, still away
        assert lab.holders() == set()
        off = lab.dbvip("n1", "maintenance", "off")
        assert off.returncode == 0, off.stderr
        lab.wait_holder("n1")
    assert "reason=maintenance" in lab.sidecar_log("n1")


def test_runs_as_an_unprivileged_user_with_exactly_two_capabilities(make_lab: MakeLab) -> None:
    # The acquire hook records its own capabilities: it must not inherit the two.
    lab = make_lab(sidecars=False)
    hook = lab.dir / "hook-acquire"
    hook.write_text('#!/bin/sh\ngrep CapEff /proc/self/status > "$0.out"\n')
    hook.chmod(0o755)
    hook_out = lab.dir / "hook-acquire.out"
    lab.dir.chmod(0o777)  # the hook runs as nobody and writes beside itself
    lab.settings_for_sidecars(DBVIP_HOOK_ACQUIRE=str(hook))
    for node in lab.spec.nodes:
        lab.start_sidecar(node, user="nobody", capabilities=("net_admin", "net_raw"))
    with lab.watched():
        lab.wait_holder("n1")
        written_by_n1 = lab.client_write()
        assert written_by_n1.ok and written_by_n1.node == "n1", written_by_n1.error
        status = Path(f"/proc/{lab.sidecars['n1'].proc.pid}/status").read_text()
        assert "Uid:\t65534" in status
        assert "CapEff:\t0000000000003000" in status  # CAP_NET_ADMIN and CAP_NET_RAW only
        assert eventually(lambda: hook_out.exists() and hook_out.read_text()) == (
            "CapEff:\t0000000000000000\n"
        )
        lab.kill_sidecar("n1", signal.SIGTERM)  # releases cleanly as nobody too
        assert lab.sidecars["n1"].proc.returncode == 0
        assert lab.holders() == set()
        # The refusal (nf_tables and sock_diag over netlink) needs nothing more.
        log = lab.sidecar_log("n1")
        assert "refusing connections for a VIP just given away" in log
        assert "refusal unavailable" not in log
        assert "Connection refused" in lab.client_write().error  # at once, not a timeout


@pytest.mark.parametrize(
    ("capabilities", "missing"),
    [((), "CAP_NET_ADMIN"), (("net_admin",), "CAP_NET_RAW"), (("net_raw",), "CAP_NET_ADMIN")],
)
def test_without_them_it_refuses_to_start_naming_what_is_missing(
    make_lab: MakeLab, capabilities: tuple[str, ...], missing: str
) -> None:
    lab = make_lab(db_nodes=1, sidecars=False)
    sidecar = lab.start_sidecar("n1", user="nobody", capabilities=capabilities)
    assert sidecar.wait(30) == 3
    assert f"cannot start: missing capability {missing}" in sidecar.log() or (
        not capabilities
        and "CAP_NET_ADMIN (to add and remove the VIP) and CAP_NET_RAW" in sidecar.log()
    )
    assert lab.holders() == set()
