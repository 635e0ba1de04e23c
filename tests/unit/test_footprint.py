"""What a sidecar loads: the HTTP endpoints' libraries only when served, never
pyroute2 or httpx, not hashlib (0.6 MiB of OpenSSL digests for a table name), and
not difflib or tomllib unless a typo or a file needs them (0.35 MiB)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import dbvip.cli, dbvip.wiring
names = (
    "prometheus_client", "dbvip.metrics", "dbvip.health", "pyroute2", "httpx", "hashlib",
    "difflib", "tomllib",
)
print(sorted(m for m in names if m in sys.modules))
"""


def test_wiring_loads_none_of_what_a_default_sidecar_does_not_use() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
