"""The clock every deadline is measured on.

``CLOCK_BOOTTIME`` keeps counting while the machine is suspended (a paused
VM, a live migration), as etcd's lease does on the etcd side;
``time.monotonic()`` (``CLOCK_MONOTONIC``) stops, so a holder resumed after
a pause would believe its lease had time left that etcd already spent.
"""

from __future__ import annotations

import time


def boot_s() -> float:
    """Seconds since boot, suspended time included; never jumps backwards."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
