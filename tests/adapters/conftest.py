"""Fixtures for the adapter tests. Each block is self-contained; add yours below."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dbvip.adapters.etcd_client import EtcdClient
from integration.lab.etcd import ETCD, EtcdCluster

# -- real etcd (see integration/lab/etcd.py) ---------------------------

ETCD_USER = ("dbvip", "dbvip-secret")


def _need_etcd() -> None:
    # Not a skip: CI installs etcd, and a silently skipped safety test is a lie.
    if not os.path.exists(ETCD) or not shutil.which("etcdctl"):
        pytest.fail("etcd and etcdctl are needed (Debian etcd-server, etcd-client)")


@pytest.fixture(scope="session")
def etcd_single() -> Iterator[EtcdCluster]:
    """One member shared by the session: do not stop, freeze or reconfigure it."""
    _need_etcd()
    with EtcdCluster(size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_private() -> Iterator[EtcdCluster]:
    """One member of this test's own, to stop, freeze or restart at will."""
    _need_etcd()
    with EtcdCluster(size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """Three members of this test's own."""
    _need_etcd()
    with EtcdCluster(size=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_tls() -> Iterator[EtcdCluster]:
    """One member serving https only and requiring a client certificate."""
    _need_etcd()
    with EtcdCluster(size=1, tls=True) as cluster:
        yield cluster


@pytest.fixture
def etcd_auth() -> Iterator[EtcdCluster]:
    """One member of this test's own with auth on; ``ETCD_USER`` may write /dbvip/."""
    _need_etcd()
    with EtcdCluster(size=1) as cluster:
        cluster.enable_auth(*ETCD_USER, prefix="/dbvip/")
        yield cluster


@pytest.fixture
def etcd_cluster_name() -> str:
    """A dbvip cluster name no other test uses, so tests can share a member."""
    return f"t{uuid.uuid4().hex[:10]}"


# -- etcd clients closed after the test ----------------------------------


@pytest.fixture
def clients() -> Iterator[Callable[..., EtcdClient]]:
    """``clients(endpoints, **kwargs)`` makes an ``EtcdClient``; all are closed after."""
    made: list[EtcdClient] = []

    def make(endpoints: list[str], **kwargs: Any) -> EtcdClient:
        made.append(EtcdClient(endpoints, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()
