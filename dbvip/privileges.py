"""The two capabilities dbvip needs, checked at start so that a missing one
is a clear error naming it, not a netlink EPERM on the first take-over.

CAP_NET_ADMIN adds and removes the VIP (netlink); CAP_NET_RAW sends the
gratuitous ARP / unsolicited neighbour advertisement (a packet socket).
Nothing else: dbvip runs fine as an unprivileged user given exactly these two
(ambient capabilities, file capabilities or a container's capabilities.add).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NEEDED = {
    CAP_NET_ADMIN: "CAP_NET_ADMIN (to add and remove the VIP)",
    CAP_NET_RAW: "CAP_NET_RAW (to announce the VIP by gratuitous ARP / neighbour advertisement)",
}


def effective_capabilities(proc_status: str) -> int:
    """The ``CapEff`` mask from the text of ``/proc/<pid>/status``."""
    for line in proc_status.splitlines():
        name, _, value = line.partition(":")
        if name == "CapEff":
            return int(value.strip(), 16)
    raise ValueError("no CapEff line in the process status")


def missing(cap_eff: int) -> list[str]:
    return [text for bit, text in NEEDED.items() if not cap_eff >> bit & 1]


def check(proc_status: str | None = None) -> None:
    """Raise PermissionError naming every needed capability this process lacks."""
    if proc_status is None:
        proc_status = Path("/proc/self/status").read_text()
    lacking = missing(effective_capabilities(proc_status))
    if lacking:
        raise PermissionError(
            "missing capabilit"
            + ("ies " if len(lacking) > 1 else "y ")
            + " and ".join(lacking)
            + "; grant them (e.g. systemd AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW, "
            "or a container's capabilities.add: [NET_ADMIN, NET_RAW])"
        )


_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def keep_from_children() -> None:
    """Clear the ambient capability set: this process keeps what it has, but
    hooks it runs no longer inherit CAP_NET_ADMIN and CAP_NET_RAW (ambient
    capabilities survive exec; that is how systemd hands them to dbvip)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_CAP_AMBIENT_CLEAR_ALL): {os.strerror(code)}")
