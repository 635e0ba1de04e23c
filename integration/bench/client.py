"""The benchmark's client: the lab's writer, kept running for a lab's whole life,
and its output read as it grows.

One writer per lab (not one per repetition) saves a process start and a
warm-up per repetition, keeps the client's neighbour entry as fresh as a busy
application's, and puts every attempt, those made while the cluster was being
rebuilt included, into the safety tally.
"""

from __future__ import annotations

import json
from pathlib import Path

from integration.lab.lab import Lab
from integration.lab.postgres import SUPERUSER
from integration.lab.writer import Attempt, ClientWriter

WRITER_INTERVAL_S = 0.02
# An attempt sent while nobody held the VIP waits for its whole timeout (the
# SYN went to a MAC that no longer answers for the VIP): the timeout bounds
# how late the client notices the VIP has arrived. Writes take 5-11 ms here.
WRITER_TIMEOUT_S = 0.1
WRITER_DURATION_S = 4 * 3600.0  # longer than any lab lives; stopped with the lab


def start_writer(lab: Lab, timeout_s: float, mode: str = "overlapping") -> ClientWriter:
    """``overlapping``: a new attempt every 20 ms, each bounded by ``timeout_s``
    (when writing becomes possible); ``ordinary``: one connection attempt at a
    time, retried at once on error, a write every 20 ms otherwise (when an
    application writes again)."""
    out = lab.dir / "logs" / f"bench-{mode}.jsonl"
    writer = ClientWriter(
        lab.netns("client"), str(lab.vip.ip), 5432, SUPERUSER, "postgres", lab.password_file,
        out, interval_s=WRITER_INTERVAL_S, timeout_s=timeout_s, duration_s=WRITER_DURATION_S,
        mode=mode,
    )  # fmt: skip
    writer.start()
    return writer


class AttemptTail:
    """Every attempt in a writer's output file, read incrementally (the file
    holds one JSON line per attempt; a line still being written is left for
    the next read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._attempts: list[Attempt] = []

    def read(self) -> list[Attempt]:
        """All attempts so far (the same list, grown)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._attempts
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            if line.strip():
                d = json.loads(line)
                self._attempts.append(
                    Attempt(float(d["started"]), float(d["ended"]), bool(d["ok"]), d["node"],
                            str(d["error"]), str(d["phase"]))
                )  # fmt: skip
        return self._attempts

    def since(self, index: int) -> list[Attempt]:
        return self.read()[index:]
