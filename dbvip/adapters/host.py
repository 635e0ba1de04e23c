"""This host, as the identity sees it, and the seat lock.

The host identity is the machine id plus the network namespace: two
sidecars on one machine in different namespaces (containers, the lab's
nodes) manage different interfaces even when the names match.

The seat lock keeps a second sidecar of the same cluster off the same
interface on the same host: a previous process's key may be adopted only
because no other process can be that sidecar at the same time. It is an
abstract Unix socket, bound for the life of the process: it lives in the
network namespace (exactly the scope of an interface), needs no file (so it
works with ``ProtectSystem=strict`` and ``PrivateTmp``), and the kernel
frees it when the process dies, however it dies.
"""

from __future__ import annotations

import os
import socket
import zlib
from pathlib import Path

_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_MAX_ABSTRACT_NAME = 107  # sun_path is 108 bytes, the first one is NUL


def machine_id() -> str:
    for path in _MACHINE_ID_FILES:
        try:
            found = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if found:
            return found
    return "host:" + socket.gethostname()  # a container without one


def network_namespace() -> str:
    try:
        return f"net:{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:
        return "net:?"


def host_identity() -> str:
    return f"{machine_id()}/{network_namespace()}"


class SeatTakenError(Exception):
    """Another sidecar of this cluster runs for this interface on this host."""


class SeatLock:
    """Held from ``__init__`` until ``close`` (or the process's end)."""

    def __init__(self, prefix: str, cluster: str, interface: str) -> None:
        name = f"dbvip/{prefix.strip('/')}/{cluster}/{interface}"
        if len(name.encode()) > _MAX_ABSTRACT_NAME:
            # crc32 and the name's tail, not hashlib: that would cost the
            # sidecar 0.6 MiB of OpenSSL digests (tests/unit/test_footprint.py).
            digest = f"{zlib.crc32(name.encode()):08x}"
            tail = name.encode()[-(_MAX_ABSTRACT_NAME - 16) :].decode(errors="ignore")
            name = f"dbvip/{digest}/{tail}"
        self.name = name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind("\0" + name)
        except OSError as e:
            self._sock.close()
            raise SeatTakenError(
                f"another dbvip runs for cluster {cluster!r} on interface {interface!r} "
                f"on this host (abstract socket @{name}: {e.strerror or e})"
            ) from None

    def close(self) -> None:
        self._sock.close()
