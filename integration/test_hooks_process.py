"""Hooks of a real ``dbvip run``: the acquire hook sees the VIP up and the key
held, the release hook at SIGTERM sees the VIP down and the key gone."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from integration.lab.eventually import eventually
from integration.test_sidecar_process import VIP, Cluster, cluster_fixture

__all__ = ["cluster_fixture"]  # the fixture, shared with test_sidecar_process
pytestmark = pytest.mark.real


def recording_hook(cluster: Cluster, tmp_path: Path) -> Path:
    """A hook that writes what it sees to ``<event>.out`` (renamed when complete)."""
    out = tmp_path / "$1"
    path = tmp_path / "hook.sh"
    path.write_text(
        "#!/bin/sh\n"
        "{\n"
        '  echo "$DBVIP_HOOK_REASON $DBVIP_HOOK_LEASE_ID $DBVIP_HOOK_VIP $DBVIP_HOOK_INTERFACE"\n'
        f"  ip -o addr show dev {cluster.node.ifname} | grep -c ' inet {VIP} '\n"
        f"  etcdctl --endpoints={cluster.etcd.endpoints[0]} get /dbvip/e2e/writer"
        " --print-value-only | wc -c\n"
        "  env | grep '^DBVIP_' | grep -vc '^DBVIP_HOOK_'\n"
        f'}} > "{out}.tmp"\n'
        f'mv "{out}.tmp" "{out}.out"\n'
    )
    path.chmod(0o755)
    return path


def test_acquire_and_release_hooks_see_the_world_after_the_change(
    cluster: Cluster, tmp_path: Path
) -> None:
    hook = recording_hook(cluster, tmp_path)
    cluster.env.update(
        {
            "DBVIP_HOOK_ACQUIRE": str(hook),
            "DBVIP_HOOK_RELEASE": str(hook),
            "DBVIP_HOOK_TIMEOUT_S": "5",
        }
    )
    sidecar = cluster.start()
    acquired = tmp_path / "acquire.out"
    eventually(acquired.exists, timeout_s=15)
    lease = eventually(cluster.writer)["lease"]
    reason, lease_id, vip, ifname, vip_count, key_bytes, leaked = acquired.read_text().split()
    assert (reason, lease_id, vip, ifname) == (
        "taking_over",
        lease,
        str(VIP.ip),
        cluster.node.ifname,
    )
    assert int(vip_count) == 1, "acquire hook ran before the VIP was up"
    assert int(key_bytes) > 0, "acquire hook ran without the writer key held"
    assert int(leaked) == 0, "the sidecar's own DBVIP_* settings reached the hook"

    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(20) == 0, sidecar.log()
    released = tmp_path / "release.out"
    assert released.exists(), "the release hook did not get its chance at shutdown"
    reason, lease_id, *_, vip_count, key_bytes, _ = released.read_text().split()
    assert (reason, lease_id) == ("stopping", lease)
    assert int(vip_count) == 0, "release hook ran before the VIP was removed"
    assert int(key_bytes) == 0, "release hook ran before the writer key was released"
    assert "hook=release done exit status 0" in sidecar.log()
