"""The failsafe rules (``dbvip.failsafe``) and how the core uses them, as tables."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbvip.absorb import absorb
from dbvip.actions import (
    AcquireLease,
    Action,
    AddVip,
    AskPeers,
    Failed,
    PeersAcked,
    RemoveVip,
)
from dbvip.core import decide
from dbvip.failsafe import (
    CLOCK_RATE_SLACK,
    Acked,
    Declined,
    PeerLocal,
    answer,
    ask_set,
    hold_until_s,
    record_blocks,
    record_for,
    vip_lifetime_until_s,
)
from dbvip.identity import Identity
from dbvip.model import (
    KERNEL_EXPIRY_SLACK_S,
    FailsafeRecord,
    KeyAbsent,
    KeyUnknown,
    NodeState,
    Observation,
    Reason,
    Role,
    Seat,
    Timing,
    VipPresence,
)
from tests.unit.test_core import (
    HOLDING,
    LEASE,
    ME,
    MINE,
    NOW,
    OTHER,
    PREV,
    REPLICA,
    UNKNOWN,
    A,
    obs,
)

TF = Timing(failsafe_window_s=10.0)  # failsafe on; ask lead 5 s
GONE = KeyUnknown("connection refused")  # etcd unreachable
SOON = replace(LEASE, deadline_s=NOW + 4.5)  # within the ask lead
# The lease's deadline has passed; every peer promised until NOW + 9.
ACKED = NodeState(failsafe_until_s=NOW + 9.0, vip_valid_until_s=NOW + 5.0, last_primary_s=NOW - 0.2)
N2, N3 = Seat("n2", "h2", "eth0"), Seat("n3", "h3", "eth0")
OTHERS_RECORD = FailsafeRecord(N2, (N3,))  # n2 holds, asks n3 only: not this node


def fs_obs(
    promised: float | None = None, record: FailsafeRecord | None = None, **kw: object
) -> Observation:
    return replace(obs(**kw), promised_until_s=promised, failsafe_record=record)  # type: ignore[arg-type]


FAILSAFE_CASES: list[tuple[str, NodeState, Observation, tuple[Action, ...], Reason, Timing]] = [
    # -- the holder ---------------------------------------------------------
    (
        "etcd unreachable, deadline beyond the ask lead: holding, no ask yet",
        replace(HOLDING, lease=replace(LEASE, deadline_s=NOW + 6.0)),
        obs(writer=GONE),
        (),
        Reason.HOLDING,
        TF,
    ),
    (
        "etcd unreachable, deadline within the ask lead: ask every peer",
        replace(HOLDING, lease=SOON),
        obs(writer=GONE),
        (AskPeers(10.0),),
        Reason.FAILSAFE,
        TF,
    ),
    (
        "failsafe off: never ask",
        replace(HOLDING, lease=SOON),
        obs(writer=GONE),
        (),
        Reason.HOLDING,
        Timing(),
    ),
    (
        "etcd answers: renewals do the work, no ask",
        replace(HOLDING, lease=SOON),
        obs(writer=MINE),
        (),
        Reason.HOLDING,
        TF,
    ),
    (
        "role unknown within the grace: no ask (the database must say primary)",
        replace(HOLDING, lease=SOON),
        obs(writer=GONE, role=UNKNOWN),
        (),
        Reason.HOLDING_ROLE_UNSURE,
        TF,
    ),
    (
        "deadline passed without a window: down, as today",
        replace(HOLDING, lease=replace(LEASE, deadline_s=NOW - 0.1)),
        obs(writer=GONE),
        (RemoveVip(),),
        Reason.LEASE_EXPIRED,
        TF,
    ),
    (
        "deadline passed within an acknowledged window: keep, refresh to the window",
        replace(ACKED, lease=replace(LEASE, deadline_s=NOW - 0.1)),
        obs(writer=GONE),
        (AddVip(vip_lifetime_until_s(NOW + 9.0, NOW, TF)),),
        Reason.FAILSAFE,
        TF,
    ),
    (
        "a window beyond the deadline: the VIP is refreshed before a renewal that may hang",
        replace(
            ACKED,
            lease=replace(LEASE, deadline_s=NOW + 2.5, renewed_s=NOW - 3.0),
            vip_valid_until_s=NOW + 1.0,
        ),
        obs(writer=GONE),
        (AddVip(vip_lifetime_until_s(NOW + 9.0, NOW, TF)),),
        Reason.HOLDING,
        TF,
    ),
    (
        "window within the ask lead: ask again",
        replace(ACKED, failsafe_until_s=NOW + 4.0),
        obs(writer=GONE),
        (AskPeers(10.0),),
        Reason.FAILSAFE,
        TF,
    ),
    (
        "window ending: the VIP comes down before it ends",
        replace(ACKED, failsafe_until_s=NOW + TF.release_lead_s - 0.01),
        obs(writer=GONE),
        (RemoveVip(),),
        Reason.FAILSAFE,
        TF,
    ),
    (
        "etcd back, key free (our lease ran out): take it again, VIP stays",
        ACKED,
        obs(writer=KeyAbsent(9)),
        (AcquireLease(10),),
        Reason.FAILSAFE,
        TF,
    ),
    (
        "etcd back, another holds the key: down at once",
        ACKED,
        obs(writer=OTHER),
        (RemoveVip(),),
        Reason.KEY_LOST,
        TF,
    ),
    (
        "database demoted within the window: down at once",
        ACKED,
        obs(writer=GONE, role=REPLICA),
        (RemoveVip(),),
        Reason.DEMOTED,
        TF,
    ),
    (
        "the VIP vanished within the window: not added back without a lease",
        ACKED,
        obs(writer=GONE, vip=A),
        (),
        Reason.ETCD_UNREACHABLE,
        TF,
    ),
    # -- a peer ---------------------------------------------------------------
    (
        "promised a holder: a promoted peer does not take the free key",
        NodeState(),
        fs_obs(promised=NOW + 3.0, writer=KeyAbsent(3), vip=A),
        (),
        Reason.FAILSAFE_PROMISE,
        TF,
    ),
    (
        "promised a holder: not even its own key left over from before",
        NodeState(),
        fs_obs(promised=NOW + 3.0, writer=replace(MINE, identity=PREV), vip=A),
        (),
        Reason.FAILSAFE_PROMISE,
        TF,
    ),
    (
        "promise ended: take the free key",
        NodeState(),
        fs_obs(promised=NOW, writer=KeyAbsent(3), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
        TF,
    ),
    (
        "record of another holder not listing this node: no take",
        NodeState(),
        fs_obs(record=OTHERS_RECORD, writer=KeyAbsent(3), vip=A),
        (),
        Reason.FAILSAFE,
        TF,
    ),
    (
        "record listing this node: take",
        NodeState(),
        fs_obs(record=FailsafeRecord(N2, (Seat.of(ME),)), writer=KeyAbsent(3), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
        TF,
    ),
    (
        "record naming this node's seat as holder (an earlier process): take",
        NodeState(),
        fs_obs(record=FailsafeRecord(Seat.of(PREV), (N2,)), writer=KeyAbsent(3), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
        TF,
    ),
]


@pytest.mark.parametrize(
    ("state", "observation", "actions", "reason", "timing"),
    [c[1:] for c in FAILSAFE_CASES],
    ids=[c[0] for c in FAILSAFE_CASES],
)
def test_failsafe_rule(
    state: NodeState,
    observation: Observation,
    actions: tuple[Action, ...],
    reason: Reason,
    timing: Timing,
) -> None:
    decision = decide(state, observation, timing, ME)
    assert decision.actions == actions
    assert decision.reason is reason
    assert decision.detail


def test_every_failsafe_reason_is_covered() -> None:
    assert {c[4] for c in FAILSAFE_CASES} >= {Reason.FAILSAFE, Reason.FAILSAFE_PROMISE}


def test_an_acknowledgement_sets_the_window_from_before_the_ask_was_sent() -> None:
    sent = NOW - 0.3  # the answers took 0.3 s to come back
    state, _ = absorb(HOLDING, obs(writer=GONE), PeersAcked(sent, 10.0, 2), TF, ME)
    assert state.failsafe_until_s == pytest.approx(sent + 10.0 * (1 - CLOCK_RATE_SLACK))
    assert state.failsafe_until_s is not None and state.failsafe_until_s < sent + 10.0
    # An older, shorter acknowledgement never shortens a window.
    later, _ = absorb(state, obs(writer=GONE), PeersAcked(sent - 5.0, 10.0, 2), TF, ME)
    assert later.failsafe_until_s == state.failsafe_until_s


def test_a_refused_ask_backs_off_one_tick_and_the_vip_still_goes_by_the_deadline() -> None:
    held = replace(HOLDING, lease=SOON)
    state, o = absorb(held, obs(writer=GONE), Failed(AskPeers(10.0), "n2 declined"), TF, ME)
    again = decide(state, o, TF, ME)
    assert not any(isinstance(a, AskPeers) for a in again.actions)
    late = decide(state, replace(o, now_s=SOON.deadline_s - TF.release_lead_s), TF, ME)
    assert late.actions == (RemoveVip(),)
    assert late.reason is Reason.LEASE_EXPIRING


def test_the_vip_lifetime_in_a_window_ends_before_the_window_even_if_the_kernel_is_late() -> None:
    for left in (3.0, 5.5, 9.9, 30.0):
        lifetime = vip_lifetime_until_s(NOW + left, NOW, TF)
        assert NOW + lifetime + KERNEL_EXPIRY_SLACK_S <= NOW + left


def test_hold_until_is_the_later_of_the_deadline_and_the_window() -> None:
    assert hold_until_s(NodeState()) is None
    assert hold_until_s(HOLDING) == LEASE.deadline_s
    assert hold_until_s(replace(HOLDING, failsafe_until_s=NOW + 20)) == NOW + 20
    assert hold_until_s(replace(HOLDING, failsafe_until_s=NOW + 1)) == LEASE.deadline_s
    assert hold_until_s(ACKED) == NOW + 9.0


IDLE = PeerLocal(Role.REPLICA, holds_lease=False, vip=VipPresence.ABSENT, taking=False)
ANSWERS: list[tuple[str, PeerLocal, float, float, Acked | Declined]] = [
    ("replica holding nothing: acks for the window asked", IDLE, 10.0, 30.0, Acked(NOW + 10, 10)),
    ("a longer ask than this node allows: acks its maximum", IDLE, 60.0, 30.0, Acked(NOW + 30, 30)),
    (
        "role unknown, holding nothing: acks",
        replace(IDLE, role=Role.UNKNOWN),
        10.0,
        30.0,
        Acked(NOW + 10, 10),
    ),
    ("database primary", replace(IDLE, role=Role.PRIMARY), 10.0, 30.0, Declined("")),
    ("holds the writer lease", replace(IDLE, holds_lease=True), 10.0, 30.0, Declined("")),
    ("VIP here", replace(IDLE, vip=VipPresence.PRESENT), 10.0, 30.0, Declined("")),
    (
        "VIP unknown (netlink broken)",
        replace(IDLE, vip=VipPresence.UNKNOWN),
        10.0,
        30.0,
        Declined(""),
    ),
    ("a take under way", replace(IDLE, taking=True), 10.0, 30.0, Declined("")),
    ("failsafe off here", IDLE, 10.0, 0.0, Declined("")),
    ("a window that is no window", IDLE, 0.0, 30.0, Declined("")),
]


@pytest.mark.parametrize(
    ("local", "window", "max_window", "expected"),
    [a[1:] for a in ANSWERS],
    ids=[a[0] for a in ANSWERS],
)
def test_peer_answer(
    local: PeerLocal, window: float, max_window: float, expected: Acked | Declined
) -> None:
    got = answer(local, window, NOW, max_window)
    if isinstance(expected, Acked):
        assert got == expected
    else:
        assert isinstance(got, Declined) and got.reason


def test_the_record_lets_only_its_holder_and_the_peers_it_lists_take() -> None:
    me = Seat.of(ME)
    assert record_blocks(None, ME) is None
    assert record_blocks(FailsafeRecord(me, (N2,)), ME) is None
    assert record_blocks(FailsafeRecord(N2, (me, N3)), ME) is None
    blocked = record_blocks(OTHERS_RECORD, ME)
    assert blocked is not None and "n2" in blocked


def test_the_ask_set_is_the_confirmed_record_and_every_peer_seen_since() -> None:
    mine = record_for(ME, (N3, N2, N2))
    assert mine == FailsafeRecord(Seat.of(ME), (N2, N3))
    assert ask_set(None, None, (N2,), ME) is None  # no record: no failsafe
    assert ask_set(OTHERS_RECORD, None, (N2,), ME) is None  # another's record
    n4, n5 = Seat("n4", "h4", "eth0"), Seat("n5", "h5", "eth0")
    assert ask_set(mine, mine, (n4, Seat.of(ME)), ME) == (N2, N3, n4)
    assert ask_set(FailsafeRecord(Seat.of(ME), ()), None, (), ME) == ()
    # Another holder's record, written late over ours: everyone it lets take is asked.
    assert ask_set(mine, FailsafeRecord(n5, (Seat.of(ME), n4)), (), ME) == (N2, N3, n4, n5)


def test_an_identity_restarted_keeps_its_seat() -> None:
    assert Seat.of(ME) == Seat.of(Identity("n1", "other-instance", "h1", "eth0"))
    assert Seat.of(ME) != Seat.of(Identity("n1", "i1", "h2", "eth0"))


def test_etcd_requests_end_by_the_lease_deadline_while_it_lives_then_by_the_window() -> None:
    # With a lease, renewals never run into the window (the asks come first).
    with_lease = decide(replace(ACKED, lease=SOON), obs(writer=GONE), TF, ME)
    assert with_lease.request_deadline_s <= SOON.deadline_s - TF.release_lead_s
    # Without one, reads end in time to take the VIP down by the window's end.
    late = replace(ACKED, failsafe_until_s=NOW + 1.5)
    assert (
        decide(late, obs(writer=GONE), TF, ME).request_deadline_s <= NOW + 1.5 - TF.release_lead_s
    )
