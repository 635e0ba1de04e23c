"""What a sidecar loads: the HTTP endpoints' libraries only when they are served."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import dbvip.cli, dbvip.wiring
print(sorted(m for m in ("prometheus_client", "dbvip.metrics", "dbvip.health") if m in sys.modules))
"""


def test_wiring_does_not_load_the_metrics_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
