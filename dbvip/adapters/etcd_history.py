"""Notices etcd's history going back: etcd wiped, or restored from a snapshot."""

from __future__ import annotations

import threading
from typing import Any


class History:
    """Notices etcd's history going back between two replies: a revision below
    one already seen, or another cluster id. etcd was wiped or restored from
    a snapshot: lease ids may be reused, old leases may live again.

    Only replies the caller used count (an attempt abandoned at its deadline
    may answer late with an older revision), and only of calls whose header
    follows the cluster's history (linearizable reads, writes, lease grants
    and revokes, applied in order on any member); a keepalive's header is the
    answering member's own revision, which may lag.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revision = 0
        self._cluster: str | None = None
        self._reset: str | None = None

    def saw(self, header: dict[str, Any]) -> None:
        revision = int(header.get("revision", 0))
        cluster = header.get("cluster_id")
        with self._lock:
            cause = None
            if self._cluster is not None and cluster is not None and cluster != self._cluster:
                cause = f"etcd cluster id {cluster} after {self._cluster}"
            elif revision < self._revision:
                cause = f"etcd revision {revision} after {self._revision} was seen"
            if cause is not None:
                self._reset = cause
                self._revision = revision  # the new history from here on
            else:
                self._revision = max(self._revision, revision)
            self._cluster = cluster if cluster is not None else self._cluster

    def take(self) -> str | None:
        """The cause of a reset seen since the last call, once."""
        with self._lock:
            cause, self._reset = self._reset, None
            return cause
