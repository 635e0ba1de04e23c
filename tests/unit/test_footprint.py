"""What a sidecar loads: the HTTP endpoints' libraries only when served, never pyroute2."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import dbvip.cli, dbvip.wiring
names = ("prometheus_client", "dbvip.metrics", "dbvip.health", "pyroute2")
print(sorted(m for m in names if m in sys.modules))
"""


def test_wiring_loads_neither_the_metrics_library_nor_pyroute2() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
