"""Fixtures for tests against the real thing: namespaces and PostgreSQL (from
tests/support) and whole labs (``make_lab``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.lab import cleanup
from integration.lab.lab import Lab, LabSpec
from tests.support.netns_fixtures import *  # noqa: F403
from tests.support.postgres_fixtures import *  # noqa: F403

MakeLab = Callable[..., Lab]


@pytest.fixture
def make_lab(pg_template: Path) -> Iterator[MakeLab]:
    """``make_lab(**LabSpec fields)``: a lab with a name unique to this run,
    removed after the test whatever happened; the sidecars' logs are printed
    at teardown (pytest shows them when the test failed)."""
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    labs: list[Lab] = []

    def make(**fields: object) -> Lab:
        name = f"t{os.getpid() % 100000}{secrets.token_hex(2)}"
        lab = Lab.create(LabSpec(name, pg_template=str(pg_template), **fields))  # type: ignore[arg-type]
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            for node in lab.spec.nodes:
                print(f"--- {lab.name} {node} sidecar log ---\n{lab.sidecar_log(node)[-4000:]}")
            lab.close()
            left = cleanup.find(lab.name)
            assert left.empty(), f"lab {lab.name} left {left.describe()}"
