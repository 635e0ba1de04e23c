"""The HAProxy configuration for dbvip's VIPs (examples/haproxy/haproxy.cfg)
under the real ``haproxy -c`` (Debian package ``haproxy``, scripts/setup.sh),
and its addresses against the node settings in examples/dbvip.toml.

The lab runs the same shape of configuration against live reader VIPs
(integration/lab/haproxy.py, integration/test_lab_readers.py).
"""

from __future__ import annotations

import ipaddress
import shutil
import tomllib
from pathlib import Path

import pytest

from tests.examples.deploy import EXAMPLES, TOML, Run

HAPROXY_CFG = EXAMPLES / "haproxy" / "haproxy.cfg"


def haproxy_check(path: Path) -> Run:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists()
                                         else None)  # fmt: skip
    if found is None:  # not a skip: CI installs it, and an unchecked example is a lie
        pytest.fail("haproxy is needed (Debian package haproxy; scripts/setup.sh installs it)")
    return Run.of([found, "-c", "-f", str(path)])


def sections() -> dict[str, list[list[str]]]:
    """``frontend readers`` -> its lines split into words, comments left out."""
    found: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in HAPROXY_CFG.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace():
            current = found.setdefault(" ".join(words), [])
        else:
            current.append(words)
    return found


def servers(backend: str) -> dict[str, list[str]]:
    return {w[1]: w[2:] for w in sections()[f"backend {backend}"] if w[0] == "server"}


def test_haproxy_accepts_the_example() -> None:
    run = haproxy_check(HAPROXY_CFG)
    assert run.code == 0, run.text


def test_haproxy_check_refuses_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: the same file with one server line broken."""
    broken = tmp_path / "haproxy.cfg"
    text = HAPROXY_CFG.read_text()
    broken.write_text(text.replace("198.51.100.12:5432", "198.51.100.12:notaport", 1))
    run = haproxy_check(broken)
    assert run.code != 0 and "notaport" in run.text, run.text


def test_the_writer_backend_is_the_writer_vip_of_the_example_settings() -> None:
    vip = ipaddress.ip_interface(tomllib.loads(TOML.read_text())["vip"]).ip
    ((address, *options),) = servers("writer").values()
    assert address == f"{vip}:5432"
    assert "check" in options and "shutdown-sessions" in options


def test_the_reader_backends_are_distinct_vips_with_fast_checks() -> None:
    writer = ipaddress.ip_interface(tomllib.loads(TOML.read_text())["vip"]).ip
    readers = [
        ipaddress.ip_address(args[0].rsplit(":", 1)[0]) for args in servers("readers").values()
    ]
    assert len(readers) == 4 and len(set(readers)) == 4 and writer not in readers
    assert all(args[0].endswith(":5432") for args in servers("readers").values())
    (default,) = [w for w in sections()["backend readers"] if w[0] == "default-server"]
    text = " ".join(default)
    assert "check inter 200ms fall 2 rise 2" in text and "on-marked-down shutdown-sessions" in text
    # The same pool as the example settings, and as the comment that names it.
    pool = tomllib.loads(TOML.read_text())["reader_vips"]
    assert [ipaddress.ip_interface(v).ip for v in pool] == readers
    comment = next(
        line for line in HAPROXY_CFG.read_text().splitlines() if "DBVIP_READER_VIPS=" in line
    )
    named = comment.split("DBVIP_READER_VIPS=", 1)[1].rstrip(").").split(",")
    assert [ipaddress.ip_interface(v).ip for v in named] == readers
