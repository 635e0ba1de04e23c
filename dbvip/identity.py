"""Who wrote a value: the identity every sidecar process puts in its values.

A node name alone proves nothing: two sidecars given the same ``node`` (a
copied configuration file, a template gone wrong) would take each other's
writer key for their own. So every value dbvip writes carries an identity
no other process can share: a random ``instance`` made at start, plus the
``host`` (machine and network namespace) and the ``interface`` it runs for.

Pure: no I/O (the shell finds the host, see ``dbvip.adapters.host``).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

# The format of every value this version writes. Today's values without a
# "format" field are format 1 (they carry a node name, no identity); a
# value of a format above this one is held by another identity, never
# ours and never garbage to delete (a newer dbvip during a rolling upgrade).
FORMAT = 2
OLDEST_FORMAT = 1


@dataclass(frozen=True)
class Identity:
    node: str
    instance: str  # random, made at start: this process and no other
    host: str  # the machine and its network namespace
    interface: str

    @staticmethod
    def fresh(node: str, host: str, interface: str) -> Identity:
        # os.urandom, not secrets: that loads hashlib (0.6 MiB) for nothing here.
        return Identity(node, os.urandom(8).hex(), host, interface)

    def restarted(self) -> Identity:
        """The same sidecar after a restart: a new process, a new instance."""
        return Identity.fresh(self.node, self.host, self.interface)

    def short(self) -> str:
        """For logs and status: who, without the whole machine id."""
        return f"{self.node}@{self.host[:12]}/{self.interface}#{self.instance[:6]}"


class Whose(enum.Enum):
    """How a value's writer relates to this process."""

    MINE = "mine"
    # This host's sidecar for this interface, an earlier process: the seat
    # lock (one sidecar per host, cluster and interface) says it has exited.
    PREDECESSOR = "predecessor"
    # Names this node but comes from another host or interface: a live twin
    # configured with the same node name.
    NAME_TAKEN = "name_taken"
    # Another node, or a value without an identity this version can read
    # (format 1, or a newer format): never ours.
    OTHER = "other"


def whose(node: str, identity: Identity | None, me: Identity) -> Whose:
    if identity is None or node != me.node or identity.node != me.node:
        return Whose.OTHER
    if identity == me:
        return Whose.MINE
    if identity.host == me.host and identity.interface == me.interface:
        return Whose.PREDECESSOR
    return Whose.NAME_TAKEN


def ours(whose_: Whose) -> bool:
    """May this process adopt or release it? Only its own, or its seat's."""
    return whose_ is Whose.MINE or whose_ is Whose.PREDECESSOR
