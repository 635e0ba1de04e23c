"""The pure assignment and self-judgement of the reader pool."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbvip.keys import pool_member
from dbvip.model import Role, VipPresence
from dbvip.pool import Judgement, assign, judge, lsn_bytes
from dbvip.reader_model import PoolMember, PoolReading, ReaderObservation, ReaderSettings

VIPS = [f"198.51.100.{100 + i}" for i in range(1, 9)]
NODES = [f"n{i}" for i in range(1, 7)]

vip_sets = st.lists(st.sampled_from(VIPS), unique=True, max_size=8)
node_sets = st.lists(st.sampled_from(NODES), unique=True, max_size=6)


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[str], list[str], dict[str, str]]:
    vips = draw(vip_sets)
    pool = draw(node_sets)
    holders = {v: draw(st.sampled_from(NODES)) for v in vips if draw(st.booleans())}
    return vips, pool, holders


@settings(max_examples=500, derandomize=True)
@given(situations())
def test_every_vip_goes_to_a_pool_member_and_the_spread_is_floor_or_ceil(
    case: tuple[list[str], list[str], dict[str, str]],
) -> None:
    vips, pool, holders = case
    target = assign(vips, pool, holders)
    assert set(target) == set(vips)
    if not pool:
        assert all(n is None for n in target.values())
        return
    counts = {n: sum(1 for t in target.values() if t == n) for n in pool}
    low, high = divmod(len(vips), len(pool))[0], -(-len(vips) // len(pool))
    assert all(low <= c <= high for c in counts.values()), counts
    assert all(t in pool for t in target.values())


@settings(max_examples=500, derandomize=True)
@given(situations())
def test_the_target_is_the_same_whatever_order_the_inputs_come_in(
    case: tuple[list[str], list[str], dict[str, str]],
) -> None:
    vips, pool, holders = case
    assert assign(vips, pool, holders) == assign(
        list(reversed(vips)), list(reversed(pool)), dict(reversed(list(holders.items())))
    )


@settings(max_examples=500, derandomize=True)
@given(situations())
def test_sticky_a_settled_assignment_is_its_own_target_and_a_new_node_moves_few(
    case: tuple[list[str], list[str], dict[str, str]],
) -> None:
    vips, pool, holders = case
    settled = {v: n for v, n in assign(vips, pool, holders).items() if n is not None}
    assert {v: n for v, n in assign(vips, pool, settled).items() if n} == settled
    newcomer = next((n for n in NODES if n not in pool), None)
    if newcomer is None or not pool:
        return
    after = assign(vips, [*pool, newcomer], settled)
    moved = [v for v in vips if after[v] != settled[v]]
    # Only what the newcomer needs moves: its share, nothing else.
    assert len(moved) == sum(1 for n in after.values() if n == newcomer)


def test_a_holder_that_left_the_pool_loses_its_vips_to_the_members() -> None:
    target = assign(VIPS[:4], ["n2", "n3"], {VIPS[0]: "n1", VIPS[1]: "n1", VIPS[2]: "n2"})
    # key=str: a None (an unassigned VIP) sorts, then fails the comparison
    assert sorted(target.values(), key=str) == ["n2", "n2", "n3", "n3"]
    assert target[VIPS[2]] == "n2"  # kept where it was


def test_lsn_bytes_reads_postgres_positions_and_refuses_anything_else() -> None:
    assert lsn_bytes("0/3000000") == 0x3000000
    assert lsn_bytes("16/B374D848") == (0x16 << 32) | 0xB374D848
    for bad in (None, "", "3000000", "0/zz", "1/2/3", "-1/0", "100000000/0"):
        assert lsn_bytes(bad) is None, bad


def _obs(role: Role = Role.REPLICA, **kw: object) -> ReaderObservation:
    primary = PoolMember("n1", Role.PRIMARY, False, kw.pop("head", "0/3000000"))  # type: ignore[arg-type]
    # Another replica in the pool, streaming unless told (``other_streams``).
    other = PoolMember("n3", Role.REPLICA, True, "0/3000000", kw.pop("other_streams", True))  # type: ignore[arg-type]
    reading = PoolReading(10, (), (primary, other), "n1")
    base = {
        "now_s": 100.0,
        "role": role,
        "lsn": "0/3000000",
        "streaming": True,
        "presence": {"198.51.100.101": VipPresence.ABSENT},
        "pool": reading,
    }
    return ReaderObservation(**{**base, **kw})  # type: ignore[arg-type]


START = Judgement(False, "not_looked_yet", None, None, None)


def test_a_replay_that_stalls_behind_what_the_replica_received_is_lag_at_once() -> None:
    """The primary's published position is old (it equals the replay), but
    the replica has received 32 MiB it has not replayed: lagging, at once."""
    stalled = judge(_obs(received_lsn="0/5000000"), S, START)
    assert (stalled.in_pool, stalled.why, stalled.lag_bytes) == (False, "lagging", 0x2000000)
    caught_up = judge(_obs(received_lsn="0/3000000"), S, START)
    assert (caught_up.in_pool, caught_up.lag_bytes) == (True, 0)
    # The larger of the two is kept: the primary's position shows more here.
    both = judge(_obs(head="0/4000000", received_lsn="0/3100000"), S, START)
    assert both.lag_bytes == 0x1000000


S = ReaderSettings(vips=("198.51.100.101",))


def test_judge_gives_one_reason_for_each_way_out_of_the_pool() -> None:
    cases = [
        (_obs(), ReaderSettings(no_load_balance=True), "no_load_balance"),
        (_obs(stopping=True), S, "stopping"),
        (_obs(name_conflict=True), S, "name_conflict"),
        (_obs(maintenance=True), S, "maintenance"),
        (_obs(maintenance=None), S, "maintenance_unread"),
        (_obs(Role.PRIMARY), S, "primary"),
        (_obs(Role.DOWN), S, "database_down"),
        (_obs(Role.UNKNOWN), S, "role_unknown"),
        (_obs(pool=None), S, "etcd_unreachable"),
        (_obs(head="0/5000000"), S, "lagging"),
        (_obs(streaming=False), S, "not_streaming"),
    ]
    for obs, settings_, why in cases:
        j = judge(obs, settings_, START)
        assert (j.in_pool, j.why) == (False, why), (obs, j)
    assert judge(_obs(), S, START).in_pool
    assert judge(_obs(streaming=None), S, START).in_pool  # unknown is not "not streaming"


def test_lag_at_the_limit_is_in_and_one_byte_over_is_out() -> None:
    limit = ReaderSettings(max_lag_bytes=0x1000)
    assert judge(_obs(head="0/3001000"), limit, START).in_pool
    assert not judge(_obs(head="0/3001001"), limit, START).in_pool


def test_after_a_lag_exit_the_replica_waits_rejoin_s_below_the_limit() -> None:
    out = judge(_obs(head="0/5000000", now_s=100.0), S, START)
    assert out.why == "lagging"
    back = judge(_obs(now_s=101.0), S, out)
    assert (back.in_pool, back.why) == (False, "rejoining")
    still = judge(_obs(now_s=101.0 + S.rejoin_s - 0.01), S, back)
    assert not still.in_pool
    again = judge(_obs(head="0/5000000", now_s=105.0), S, back)  # over again: the wait restarts
    fine = judge(_obs(now_s=106.0), S, again)
    assert not judge(_obs(now_s=106.0 + S.rejoin_s - 0.01), S, fine).in_pool
    assert judge(_obs(now_s=106.0 + S.rejoin_s), S, fine).in_pool


def test_a_stream_break_is_out_at_once_and_back_as_soon_as_it_streams() -> None:
    # A primary change breaks every replica's stream once: it must not cost
    # each of them rejoin_s (the switchover would leave no replica to read from).
    fine = judge(_obs(now_s=100.0), S, START)
    broke = judge(_obs(streaming=False, now_s=200.0), S, fine)
    assert (broke.in_pool, broke.why) == (False, "not_streaming")
    still = judge(_obs(streaming=False, now_s=203.0), S, broke)
    assert (still.in_pool, still.why, still.stream_broke_s) == (False, "not_streaming", 200.0)
    back = judge(_obs(now_s=204.0), S, still)
    assert (back.in_pool, back.why) == (True, "in_pool")


def test_a_broken_stream_stays_in_the_pool_while_no_other_replica_streams() -> None:
    # A switchover breaks every replica's stream at once: the one within the
    # limit serves on (and says so) until another replica streams again.
    alone = judge(_obs(streaming=False, other_streams=False), S, START)
    assert (alone.in_pool, alone.why) == (True, "in_pool_not_streaming")
    moved = judge(_obs(streaming=False, now_s=101.0), S, alone)
    assert (moved.in_pool, moved.why) == (False, "not_streaming")
    # Past the limit it leaves whoever streams.
    far = judge(_obs(streaming=False, other_streams=False, head="0/5000000"), S, START)
    assert (far.in_pool, far.why) == (False, "lagging")


def test_keys_read_a_member_in_the_pool_with_its_stream_broken() -> None:
    replica = {"role": "replica", "timeline": 1, "lsn": "0/3000000", "vip": [], "reason": "x"}
    broken = pool_member("n2", {**replica, "pool": "in_pool_not_streaming"})
    streaming = pool_member("n2", {**replica, "pool": "in_pool"})
    out = pool_member("n2", {**replica, "pool": "not_streaming"})
    assert broken is not None and (broken.in_pool, broken.streaming) == (True, False)
    assert streaming is not None and (streaming.in_pool, streaming.streaming) == (True, True)
    assert out is not None and not out.in_pool


def test_a_stream_that_breaks_again_soon_after_coming_back_is_damped_like_lag() -> None:
    fine = judge(_obs(now_s=100.0), S, START)
    first = judge(_obs(streaming=False, now_s=200.0), S, fine)
    back = judge(_obs(now_s=201.0), S, first)
    assert back.in_pool
    second = judge(_obs(streaming=False, now_s=201.0 + S.rejoin_s - 0.5), S, back)
    assert second.why == "not_streaming"
    returned_s = 202.0 + S.rejoin_s
    waiting = judge(_obs(now_s=returned_s), S, second)
    assert (waiting.in_pool, waiting.why) == (False, "rejoining")
    assert not judge(_obs(now_s=returned_s + S.rejoin_s - 0.01), S, waiting).in_pool
    assert judge(_obs(now_s=returned_s + S.rejoin_s), S, waiting).in_pool
    # A break long after coming back is a first break again.
    later = judge(_obs(streaming=False, now_s=1000.0), S, back)
    assert judge(_obs(now_s=1001.0), S, later).in_pool


def test_a_stream_break_after_a_lag_exit_keeps_the_lag_wait() -> None:
    lagging = judge(_obs(head="0/5000000", now_s=100.0), S, START)
    broke = judge(_obs(streaming=False, now_s=101.0), S, lagging)
    assert broke.why == "not_streaming"
    assert judge(_obs(now_s=102.0), S, broke).why == "rejoining"


def test_an_unreadable_pool_keeps_the_last_judgement() -> None:
    lagging = judge(_obs(head="0/5000000"), S, START)
    assert judge(_obs(pool=None), S, lagging) == lagging
    fine = judge(_obs(), S, START)
    assert judge(_obs(pool=None), S, fine) == fine
