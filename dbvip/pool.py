"""Who should hold which reader VIP: a pure, deterministic assignment.

Every sidecar computes the same target from the same etcd state (the reader
keys and the members' published pool flags), and acts only on its own part:
it gives back what the target gives to another node and takes, once free,
what the target gives to it. So a VIP moves by a release followed by a take,
never by a race, and the spread is balanced by construction: with R VIPs
over H healthy replicas each holds floor(R/H) or ceil(R/H).

The assignment is sticky: a VIP stays where it is as long as its holder is
in the pool and within its quota, so a replica coming or going moves only
the VIPs it must.

Also here: how a node judges its own place in the pool (lag, streaming,
maintenance, ...), which it publishes so that the others need not guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dbvip.model import Role
from dbvip.reader_model import (
    IN_POOL,
    IN_POOL_NOT_STREAMING,
    PoolReading,
    PoolWhy,
    ReaderKey,
    ReaderObservation,
    ReaderSettings,
)


def assign(
    vips: Sequence[str], pool: Iterable[str], holders: Mapping[str, str]
) -> dict[str, str | None]:
    """The target holder of every VIP (None: nobody, the pool is empty).

    ``holders`` maps a VIP to the node its key names now. Ties are broken by
    name, so every sidecar given the same inputs computes the same target.
    """
    nodes = sorted(set(pool))
    if not nodes:
        return {v: None for v in vips}
    held = {n: sorted(v for v in vips if holders.get(v) == n) for n in nodes}
    q, extra = divmod(len(vips), len(nodes))
    # The ceil quotas go to the nodes holding the most already: fewer moves.
    order = sorted(nodes, key=lambda n: (-len(held[n]), n))
    quota = {n: q + (1 if i < extra else 0) for i, n in enumerate(order)}
    target: dict[str, str | None] = {}
    count = dict.fromkeys(nodes, 0)
    for n in nodes:
        for v in held[n][: quota[n]]:
            target[v] = n
            count[n] += 1
    for v in sorted(vips):
        if v in target:
            continue
        n = min((n for n in nodes if count[n] < quota[n]), key=lambda n: (count[n], n))
        target[v] = n
        count[n] += 1
    return target


def holders_of(keys: Iterable[ReaderKey]) -> dict[str, str]:
    return {k.vip: k.holder for k in keys if k.holder is not None}


def target(
    settings: ReaderSettings, reading: PoolReading, me: str, me_in_pool: bool
) -> dict[str, str | None]:
    """The assignment as this node sees it: the others' published flags, its
    own judgement of itself (fresher than its report), and the primary (the
    writer key's holder) when no replica is in the pool and fallback is on."""
    pool = {m.node for m in reading.members if m.in_pool and m.node != me}
    if me_in_pool:
        pool.add(me)
    if not pool and settings.fallback_to_primary and reading.writer_holder is not None:
        pool = {reading.writer_holder}
    return assign(settings.vips, pool, holders_of(reading.keys))


def lsn_bytes(text: str | None) -> int | None:
    """``'16/B374D848'`` -> its byte position; None for anything else."""
    if text is None or text.count("/") != 1:
        return None
    high, low = text.split("/")
    try:
        h, lo = int(high, 16), int(low, 16)
    except ValueError:
        return None
    if not (0 <= h < 2**32 and 0 <= lo < 2**32):
        return None
    return (h << 32) | lo


@dataclass(frozen=True)
class Judgement:
    in_pool: bool
    why: PoolWhy
    lag_bytes: int | None
    lag_high_s: float | None
    lag_low_since_s: float | None
    # When the replica's stream last broke (the start of its latest
    # not_streaming spell): a second break soon after is damped like lag.
    stream_broke_s: float | None = None


def judge(
    obs: ReaderObservation,
    settings: ReaderSettings,
    previous: Judgement,
) -> Judgement:
    """Is this node a healthy replica that should serve reads, and why not.

    Lag is measured against the primary's current WAL position as published
    in its member report (at most a renew interval old), or against what
    this replica has received, whichever shows more (a replay that stalls is
    seen at the next probe, not at the primary's next report). A replica that left
    for lag comes back only after staying fine for ``rejoin_s``: a replica
    oscillating around the limit does not make VIPs flap.

    A replica whose stream breaks leaves at once while another replica in
    the pool streams, and comes back as soon as it streams again within the
    limit. Every replica's stream breaks when the primary changes: a
    replica within the limit then stays (``in_pool_not_streaming``) until
    another one streams, so a switchover does not leave reads nowhere, and
    no replica pays ``rejoin_s`` for it. A break less than ``rejoin_s`` after coming back from an
    earlier one is damped like lag, so a replica whose stream keeps
    breaking does not make VIPs flap.
    """
    now = obs.now_s
    keep = (
        previous.lag_bytes,
        previous.lag_high_s,
        previous.lag_low_since_s,
        previous.stream_broke_s,
    )

    def out(why: PoolWhy) -> Judgement:
        return Judgement(False, why, *keep)

    if settings.no_load_balance:
        return out("no_load_balance")
    if obs.stopping:
        return out("stopping")
    if obs.name_conflict:
        return out("name_conflict")
    if obs.maintenance is None:
        return out("maintenance_unread")
    if obs.maintenance:
        return out("maintenance")
    if obs.role is Role.PRIMARY:
        return out("primary")
    if obs.role is Role.DOWN:
        return out("database_down")
    if obs.role is Role.UNKNOWN:
        return out("role_unknown")
    if obs.pool is None:
        # The primary's position is unknown: keep the last judgement (the
        # lease bounds how long anything is held without etcd anyway).
        if previous.why == "not_looked_yet":
            return out("etcd_unreachable")
        return previous
    members, holder = obs.pool.members, obs.pool.writer_holder
    primary = next((m for m in members if m.role is Role.PRIMARY and m.node == holder), None)
    head, mine = lsn_bytes(primary.lsn if primary else None), lsn_bytes(obs.lsn)
    # Two lower bounds of the true lag, the larger kept: behind the primary's
    # published position (at most a renew interval old), and behind what this
    # replica has received itself (seen at once when replay stalls).
    ahead = [h for h in (head, lsn_bytes(obs.received_lsn)) if h is not None]
    lag = None if not ahead or mine is None else max(0, *(h - mine for h in ahead))
    broke = previous.stream_broke_s
    if lag is not None and lag > settings.max_lag_bytes:
        return Judgement(False, "lagging", lag, now, None, broke)
    broken = primary is not None and obs.streaming is False
    # Out for a broken stream only while another replica streams and serves:
    # when the primary changes every replica's stream breaks for a moment,
    # and a replica within the limit serves reads better than none.
    elsewhere = any(m.in_pool and m.streaming and m.role is Role.REPLICA for m in members)
    if broken and elsewhere:
        if previous.why == "not_streaming":
            return Judgement(False, "not_streaming", lag, previous.lag_high_s, None, broke)
        # Damped if it broke before and came back less than rejoin_s ago.
        back_s = previous.lag_low_since_s
        again = broke is not None and back_s is not None and now - back_s < settings.rejoin_s
        high_s = now if again else previous.lag_high_s
        return Judgement(False, "not_streaming", lag, high_s, None, now)
    low_since = previous.lag_low_since_s if previous.lag_low_since_s is not None else now
    if previous.lag_high_s is not None and now - low_since < settings.rejoin_s:
        return Judgement(False, "rejoining", lag, previous.lag_high_s, low_since, broke)
    why: PoolWhy = IN_POOL_NOT_STREAMING if broken else IN_POOL
    return Judgement(True, why, lag, None, low_since, broke)
