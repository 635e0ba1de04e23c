"""Every rule of the decision core, as a table: state + observation -> actions, reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbvip.absorb import absorb
from dbvip.actions import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    Announce,
    Announced,
    Failed,
    LeaseGone,
    LeaseGranted,
    LeaseRefused,
    LeaseRenewed,
    ReleaseLease,
    RemoveVip,
    RenewLease,
    VipAdded,
    VipRemoved,
)
from dbvip.core import decide
from dbvip.guard import vip_lifetime_s
from dbvip.identity import Identity
from dbvip.model import (
    KeyAbsent,
    KeyHeld,
    KeyInvalid,
    KeyUnknown,
    Lease,
    NodeState,
    Observation,
    PeerView,
    Reason,
    Role,
    RoleReading,
    Timing,
    VipPresence,
    WriterView,
)

T = Timing()  # ttl 10, margin 2, probe 0.2, probe timeout 0.5, vip op 0.5, renew 2
NOW = 100.0
ME = Identity("n1", "i1", "h1", "eth0")
PREV = Identity("n1", "i0", "h1", "eth0")  # this sidecar's previous process
TWIN = Identity("n1", "i9", "h2", "eth0")  # another host's sidecar given the name n1
LEASE = Lease(lease_id=0xA, deadline_s=NOW + 7.0, renewed_s=NOW - 1.0, revision=5)
MINE = KeyHeld("n1", 0xA, revision=6, mod_revision=5, identity=ME)
OTHER = KeyHeld("n2", 0xB, revision=6, mod_revision=6)
PRIMARY = RoleReading(Role.PRIMARY, timeline=1, lsn="0/1")
REPLICA = RoleReading(Role.REPLICA, timeline=1, lsn="0/1")
UNKNOWN = RoleReading(Role.UNKNOWN, cause="connection refused")
DOWN = RoleReading(Role.DOWN, cause="No such file or directory")
P, A, U = VipPresence.PRESENT, VipPresence.ABSENT, VipPresence.UNKNOWN
HOLDING = NodeState(lease=LEASE, vip_valid_until_s=NOW + 5.0, last_primary_s=NOW - 0.2)


def obs(
    role: RoleReading = PRIMARY,
    writer: WriterView = MINE,
    vip: VipPresence = P,
    now: float = NOW,
    stopping: bool = False,
    peers: tuple[PeerView, ...] = (),
    maintenance: bool = False,
    same_name: tuple[Identity, ...] = (),
    etcd_reset: str | None = None,
) -> Observation:
    return Observation(
        now_s=now,
        role=role,
        writer=writer,
        vip=vip,
        stopping=stopping,
        peers=peers,
        maintenance=maintenance,
        same_name=same_name,
        etcd_reset=etcd_reset,
    )


NEWER = (PeerView("n2", Role.PRIMARY, 2),)  # a replica promoted while we are primary on 1


LIFETIME = vip_lifetime_s(LEASE, NOW, T)

CASES: list[tuple[str, NodeState, Observation, tuple[Action, ...], Reason]] = [
    # -- not holding ------------------------------------------------------
    (
        "primary, key free: acquire",
        NodeState(),
        obs(writer=KeyAbsent(3), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
    ),
    (
        "primary, key held by another: conflict, no action",
        NodeState(),
        obs(writer=OTHER, vip=A),
        (),
        Reason.CONFLICT,
    ),
    (
        "primary, other holds, VIP here: remove it",
        NodeState(),
        obs(writer=OTHER, vip=P),
        (RemoveVip(),),
        Reason.VIP_WITHOUT_LEASE,
    ),
    (
        "primary, key garbage under a lease: report, no action",
        NodeState(),
        obs(writer=KeyInvalid("not JSON", 0xB, 3), vip=A),
        (),
        Reason.WRITER_KEY_INVALID,
    ),
    (
        "primary, key garbage without a lease (put by hand): replace it",
        NodeState(),
        obs(writer=KeyInvalid("not JSON", 0, 3), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
    ),
    (
        "primary, writer key deleted by hand while its holder's claim lives: wait",
        NodeState(),
        obs(writer=KeyAbsent(7, claimed_by="n2"), vip=A),
        (),
        Reason.KEY_DELETED,
    ),
    (
        "primary, etcd unreachable: nothing to do",
        NodeState(),
        obs(writer=KeyUnknown("refused"), vip=A),
        (),
        Reason.ETCD_UNREACHABLE,
    ),
    (
        "primary, etcd unreachable, VIP here: remove (cannot prove the lease)",
        NodeState(),
        obs(writer=KeyUnknown("refused"), vip=P),
        (RemoveVip(),),
        Reason.VIP_WITHOUT_LEASE,
    ),
    (
        "VIP state unknown counts as maybe present",
        NodeState(),
        obs(writer=KeyUnknown("refused"), vip=U),
        (RemoveVip(),),
        Reason.VIP_WITHOUT_LEASE,
    ),
    (
        "restart: key names me under a live-looking lease: adopt, keep the VIP",
        NodeState(),
        obs(writer=MINE, vip=P),
        (AdoptLease(0xA, 5, 10),),
        Reason.ADOPTING,
    ),
    (
        "adoption already failed for that lease: remove the VIP",
        NodeState(adopt_failed_lease=0xA),
        obs(writer=MINE, vip=P),
        (RemoveVip(),),
        Reason.VIP_WITHOUT_LEASE,
    ),
    (
        "key names me without a lease: never adopt lease 0, replace it",
        NodeState(),
        obs(writer=KeyHeld("n1", 0, 6, 6, ME), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
    ),
    ("replica idle", NodeState(), obs(role=REPLICA, writer=OTHER, vip=A), (), Reason.REPLICA),
    # -- etcd wiped or restored from a snapshot -------------------------------
    (
        "holding, etcd's history went back: the lease is lost, drop; its id proves nothing",
        HOLDING,
        obs(etcd_reset="etcd revision 3 after 900 was seen"),
        (RemoveVip(),),
        Reason.ETCD_RESET,
    ),
    (
        "replica after a restore, its own key back to life: released, proven ours",
        NodeState(reset_until_s=NOW + 5.0),
        obs(role=REPLICA, writer=MINE, vip=A),
        (ReleaseLease(0xA),),
        Reason.DEMOTED,
    ),
    (
        "primary, key free after an etcd reset: take nothing for a TTL",
        NodeState(reset_until_s=NOW + 5.0),
        obs(writer=KeyAbsent(3), vip=A),
        (),
        Reason.ETCD_RESET,
    ),
    (
        "primary, key free once the reset wait is over: acquire",
        NodeState(reset_until_s=NOW),
        obs(writer=KeyAbsent(3), vip=A),
        (AcquireLease(10),),
        Reason.ACQUIRING,
    ),
    # -- identity: a name alone proves nothing (S5) ----------------------------
    (
        "restart: key written by this sidecar's previous process: adopt",
        NodeState(),
        obs(writer=KeyHeld("n1", 0xA, 6, 5, PREV), vip=P),
        (AdoptLease(0xA, 5, 10),),
        Reason.ADOPTING,
    ),
    (
        "primary, key names this node from another host: a twin, never adopt",
        NodeState(),
        obs(writer=KeyHeld("n1", 0xB, 6, 6, TWIN), vip=A),
        (),
        Reason.NAME_CONFLICT,
    ),
    (
        "replica, key names this node from another host: never release it",
        NodeState(),
        obs(role=REPLICA, writer=KeyHeld("n1", 0xB, 6, 6, TWIN), vip=A),
        (),
        Reason.NAME_CONFLICT,
    ),
    (
        "primary, key of format 1 names this node: never adopted by name alone",
        NodeState(),
        obs(writer=KeyHeld("n1", 0xB, 6, 6), vip=A),
        (),
        Reason.CONFLICT,
    ),
    (
        "replica, key of format 1 names this node: never released by name alone",
        NodeState(),
        obs(role=REPLICA, writer=KeyHeld("n1", 0xB, 6, 6), vip=A),
        (),
        Reason.REPLICA,
    ),
    (
        "holding, a twin's report under this name: drop the VIP, release our own lease",
        HOLDING,
        obs(same_name=(ME, TWIN)),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.NAME_CONFLICT,
    ),
    (
        "holding, reports of this process and its predecessor: no conflict",
        HOLDING,
        obs(same_name=(ME, PREV)),
        (),
        Reason.HOLDING,
    ),
    (
        "holding, our lease id under a twin's value (an id reused): lost",
        HOLDING,
        obs(writer=KeyHeld("n1", 0xA, 6, 6, TWIN)),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.KEY_LOST,
    ),
    # -- maintenance: an operator asked this node to stay away ----------------
    (
        "holding, put in maintenance: remove VIP, release",
        HOLDING,
        obs(maintenance=True),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.MAINTENANCE,
    ),
    (
        "primary in maintenance, key free: never acquire",
        NodeState(),
        obs(writer=KeyAbsent(3), vip=A, maintenance=True),
        (),
        Reason.MAINTENANCE,
    ),
    (
        "in maintenance after a restart: release our leftover key, never adopt",
        NodeState(),
        obs(writer=MINE, vip=P, maintenance=True),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.MAINTENANCE,
    ),
    (
        "a replica in maintenance says so",
        NodeState(),
        obs(role=REPLICA, writer=OTHER, vip=A, maintenance=True),
        (),
        Reason.MAINTENANCE,
    ),
    # -- two primaries: the newer timeline wins ------------------------------
    (
        "holding, a peer is primary on a newer timeline: remove VIP, release",
        HOLDING,
        obs(peers=NEWER),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.SUPERSEDED,
    ),
    (
        "superseded and key free: do not acquire",
        NodeState(),
        obs(writer=KeyAbsent(3), vip=A, peers=NEWER),
        (),
        Reason.SUPERSEDED,
    ),
    (
        "superseded after a restart: release our leftover key, never adopt it",
        NodeState(),
        obs(writer=MINE, vip=P, peers=NEWER),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.SUPERSEDED,
    ),
    (
        "a peer primary on the same timeline proves nothing: keep holding",
        HOLDING,
        obs(peers=(PeerView("n2", Role.PRIMARY, 1),)),
        (),
        Reason.HOLDING,
    ),
    (
        "an older or replica peer proves nothing: acquire",
        NodeState(),
        obs(
            writer=KeyAbsent(3),
            vip=A,
            role=RoleReading(Role.PRIMARY, timeline=3),
            peers=(PeerView("n2", Role.PRIMARY, 2), PeerView("n3", Role.REPLICA, 9)),
        ),
        (AcquireLease(10),),
        Reason.ACQUIRING,
    ),
    (
        "own timeline unknown: no comparison, keep holding",
        HOLDING,
        obs(role=RoleReading(Role.PRIMARY), peers=NEWER),
        (),
        Reason.HOLDING,
    ),
    (
        "a report under our own name is not a peer",
        HOLDING,
        obs(peers=(PeerView("n1", Role.PRIMARY, 5),)),
        (),
        Reason.HOLDING,
    ),
    (
        "replica with a stray VIP: remove",
        NodeState(),
        obs(role=REPLICA, writer=OTHER, vip=P),
        (RemoveVip(),),
        Reason.DEMOTED,
    ),
    (
        "replica finds its own key from before a restart: remove, then release it",
        NodeState(),
        obs(role=REPLICA, writer=MINE, vip=P),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.DEMOTED,
    ),
    (
        "role unknown, never primary: never acquire",
        NodeState(),
        obs(role=UNKNOWN, writer=KeyAbsent(3), vip=A),
        (),
        Reason.ROLE_UNKNOWN,
    ),
    (
        "acquire backing off after a failure",
        NodeState(backoff={"acquire": NOW + 0.1}),
        obs(writer=KeyAbsent(3), vip=A),
        (),
        Reason.STANDBY,
    ),
    # -- holding ------------------------------------------------------------
    ("holding, VIP up, nothing due", HOLDING, obs(), (), Reason.HOLDING),
    (
        "holding, VIP absent: add it (take-over)",
        replace(HOLDING, vip_valid_until_s=None),
        obs(vip=A),
        (AddVip(LIFETIME),),
        Reason.TAKING_OVER,
    ),
    (
        "holding, VIP vanished (deleted by hand): add it back",
        HOLDING,
        obs(vip=A),
        (AddVip(LIFETIME),),
        Reason.VIP_RESTORED,
    ),
    (
        "holding, renewal due: renew first",
        replace(HOLDING, lease=replace(LEASE, renewed_s=NOW - 2)),
        obs(),
        (RenewLease(0xA),),
        Reason.HOLDING,
    ),
    (
        "holding, lease renewed since the last refresh: refresh the lifetime",
        replace(HOLDING, vip_valid_until_s=NOW + 3.0),
        obs(),
        (AddVip(LIFETIME),),
        Reason.HOLDING,
    ),
    (
        "holding, announcement due",
        replace(HOLDING, announces_left=2, next_announce_s=NOW),
        obs(),
        (Announce(),),
        Reason.HOLDING,
    ),
    (
        "holding, announcement not yet due",
        replace(HOLDING, announces_left=2, next_announce_s=NOW + 0.01),
        obs(),
        (),
        Reason.HOLDING,
    ),
    (
        "holding, role unknown within grace: keep, add nothing",
        replace(HOLDING, role_unknown_since_s=NOW - 0.5),
        obs(role=UNKNOWN, vip=A),
        (),
        Reason.HOLDING_ROLE_UNSURE,
    ),
    (
        "holding, near the deadline unrenewed: remove the VIP first",
        replace(HOLDING, lease=replace(LEASE, deadline_s=NOW + 1.0, renewed_s=NOW - 6)),
        obs(),
        (RemoveVip(),),
        Reason.LEASE_EXPIRING,
    ),
    (
        "holding, near the deadline, VIP already down: keep trying to renew",
        replace(HOLDING, lease=replace(LEASE, deadline_s=NOW + 1.0, renewed_s=NOW - 6)),
        obs(vip=A),
        (RenewLease(0xA),),
        Reason.LEASE_EXPIRING,
    ),
    (
        "deadline passed: lease lost, VIP down",
        replace(HOLDING, lease=replace(LEASE, deadline_s=NOW)),
        obs(),
        (RemoveVip(),),
        Reason.LEASE_EXPIRED,
    ),
    # -- giving up ----------------------------------------------------------
    (
        "demoted while holding: remove, then release",
        HOLDING,
        obs(role=REPLICA),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.DEMOTED,
    ),
    (
        "role unknown past the grace: remove, then release",
        replace(HOLDING, role_unknown_since_s=NOW - 1.5),
        obs(role=UNKNOWN),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.ROLE_UNKNOWN_PAST_GRACE,
    ),
    (
        "database down while holding: no grace, remove, then release",
        HOLDING,
        obs(role=DOWN),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.DATABASE_DOWN,
    ),
    (
        "database down within an unknown spell: the grace ends at once",
        replace(HOLDING, role_unknown_since_s=NOW - 0.1),
        obs(role=DOWN),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.DATABASE_DOWN,
    ),
    (
        "database down, key free, nothing held: nothing to do",
        NodeState(),
        obs(role=DOWN, writer=KeyAbsent(7), vip=A),
        (),
        Reason.DATABASE_DOWN,
    ),
    (
        "database down, our key left over from before: release it",
        NodeState(),
        obs(role=DOWN, vip=A),
        (ReleaseLease(0xA),),
        Reason.DATABASE_DOWN,
    ),
    (
        "a failed removal blocks the release until it is retried",
        replace(HOLDING, backoff={"vip": NOW + 0.1}),
        obs(role=REPLICA),
        (),
        Reason.DEMOTED,
    ),
    (
        "key taken by another while holding: remove, release",
        HOLDING,
        obs(writer=OTHER),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.KEY_LOST,
    ),
    (
        "key deleted by hand while holding",
        HOLDING,
        obs(writer=KeyAbsent(7)),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.KEY_LOST,
    ),
    (
        "garbage over our key while holding",
        HOLDING,
        obs(writer=KeyInvalid("bad", 0, 7)),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.WRITER_KEY_INVALID,
    ),
    (
        "a view read before our own write is stale, not a loss",
        HOLDING,
        obs(writer=KeyAbsent(4)),
        (),
        Reason.HOLDING,
    ),
    (
        "etcd unknown while holding: keep the VIP, the deadline protects",
        HOLDING,
        obs(writer=KeyUnknown("timeout")),
        (),
        Reason.HOLDING,
    ),
    (
        "same node name, other lease: a twin, not us",
        HOLDING,
        obs(writer=KeyHeld("n1", 0xC, 6, 6, ME)),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.KEY_LOST,
    ),
    (
        "stopping while holding: remove, then release",
        HOLDING,
        obs(stopping=True),
        (RemoveVip(), ReleaseLease(0xA)),
        Reason.STOPPING,
    ),
    (
        "stopping with nothing held",
        NodeState(),
        obs(writer=OTHER, vip=A, stopping=True),
        (),
        Reason.STOPPED,
    ),
]


@pytest.mark.parametrize(
    ("state", "observation", "actions", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule(
    state: NodeState, observation: Observation, actions: tuple[Action, ...], reason: Reason
) -> None:
    decision = decide(state, observation, T, ME)
    assert decision.actions == actions
    assert decision.reason is reason
    assert decision.detail


def test_every_reason_that_a_rule_gives_is_covered() -> None:
    # The failsafe's reasons have their own table (tests/unit/test_failsafe.py).
    covered = {c[4] for c in CASES} | {Reason.FAILSAFE, Reason.FAILSAFE_PROMISE}
    # VIP_RESTORED/TAKING_OVER etc. all appear; STOPPED and friends too.
    missing = set(Reason) - covered
    assert missing == set(), missing


def test_no_add_without_enough_lifetime_left() -> None:
    lease = replace(LEASE, deadline_s=NOW + T.release_lead_s + 0.5, renewed_s=NOW - 0.1)
    state = replace(HOLDING, lease=lease, vip_valid_until_s=None)
    decision = decide(state, obs(vip=A), T, ME)
    assert not any(isinstance(a, AddVip) for a in decision.actions)


def test_lifetime_ends_before_the_deadline_with_kernel_slack() -> None:
    lifetime = vip_lifetime_s(LEASE, NOW, T)
    # The kernel may expire up to ~1 s late; even then it is gone by the deadline.
    assert NOW + lifetime + 1.0 <= LEASE.deadline_s
    assert lifetime >= 1


def test_request_deadline_leaves_time_to_remove_the_vip() -> None:
    decision = decide(HOLDING, obs(), T, ME)
    assert decision.request_deadline_s <= LEASE.deadline_s - T.release_lead_s
    assert decision.request_deadline_s <= NOW + T.request_timeout_s
    idle = decide(NodeState(), obs(role=REPLICA, writer=OTHER, vip=A), T, ME)
    assert idle.request_deadline_s == NOW + T.request_timeout_s


def test_wake_comes_by_the_release_point_and_the_next_announcement() -> None:
    state = replace(HOLDING, announces_left=1, next_announce_s=NOW + 0.05)
    assert decide(state, obs(), T, ME).wake_s == pytest.approx(NOW + 0.05)
    near = replace(HOLDING, lease=replace(LEASE, deadline_s=NOW + T.release_lead_s + 0.1))
    assert decide(near, obs(), T, ME).wake_s == pytest.approx(NOW + 0.1)


def test_grant_gives_a_deadline_from_the_send_instant() -> None:
    state, o = absorb(
        NodeState(),
        obs(writer=KeyAbsent(3), vip=A),
        LeaseGranted(0xA, 10, sent_s=NOW - 0.3, revision=9),
        T,
        ME,
    )
    assert state.lease == Lease(0xA, NOW - 0.3 + 10 - T.margin_s, NOW - 0.3, 9)
    assert o.writer == KeyHeld("n1", 0xA, 9, 9, ME)


def test_renewal_never_moves_the_deadline_back() -> None:
    state, _ = absorb(HOLDING, obs(), LeaseRenewed(0xA, 1, sent_s=NOW), T, ME)
    assert state.lease is not None
    assert state.lease.deadline_s == LEASE.deadline_s
    assert state.lease.renewed_s == NOW


def test_renewal_of_another_lease_is_ignored() -> None:
    state, _ = absorb(HOLDING, obs(), LeaseRenewed(0xB, 10, sent_s=NOW), T, ME)
    assert state.lease == LEASE


def test_lease_gone_drops_it_and_blocks_adoption() -> None:
    state, o = absorb(HOLDING, obs(), LeaseGone(0xA), T, ME)
    assert state.lease is None
    assert state.adopt_failed_lease == 0xA
    assert isinstance(o.writer, KeyUnknown)


def test_refusal_backs_off_and_records_the_holder() -> None:
    state, o = absorb(NodeState(), obs(writer=KeyAbsent(3), vip=A), LeaseRefused("n2", 8), T, ME)
    assert o.writer == KeyHeld("n2", -1, 8, 8)
    assert decide(state, o, T, ME).actions == ()


def test_first_add_schedules_announcements_a_refresh_does_not() -> None:
    fresh, o = absorb(HOLDING, obs(vip=A), VipAdded(5, NOW, was_present=False), T, ME)
    assert fresh.announces_left == T.announce_count
    assert o.vip is P
    refreshed, _ = absorb(HOLDING, obs(), VipAdded(5, NOW, was_present=True), T, ME)
    assert refreshed.announces_left == 0


def test_removal_cancels_pending_announcements() -> None:
    state = replace(HOLDING, announces_left=2)
    after, o = absorb(state, obs(), VipRemoved(was_present=True), T, ME)
    assert after.announces_left == 0
    assert o.vip is A


def test_announcements_are_spaced() -> None:
    state = replace(HOLDING, announces_left=2, next_announce_s=NOW)
    after, _ = absorb(state, obs(), Announced(NOW), T, ME)
    assert after.announces_left == 1
    assert after.next_announce_s == NOW + T.announce_interval_s


def test_failure_backs_off_its_kind_and_is_remembered() -> None:
    state, _ = absorb(HOLDING, obs(), Failed(RemoveVip(), "EPERM"), T, ME)
    assert state.backoff["vip"] == NOW + T.probe_interval_s
    assert "EPERM" in state.last_failure


def test_facts_explain_the_decision() -> None:
    decision = decide(HOLDING, obs(), T, ME)
    assert decision.facts["role"] == "primary"
    assert decision.facts["lease"] == "a"
    assert decision.facts["writer"] == "n1@a"


@pytest.mark.parametrize(("state", "observation"), [c[1:3] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_wake_is_always_in_the_future(state: NodeState, observation: Observation) -> None:
    """Review finding: past instants (a failed renewal's due time, a passed
    release point) made the loop spin without sleeping."""
    assert decide(state, observation, T, ME).wake_s > observation.now_s


def test_stopping_while_a_removal_backs_off_is_not_stopped() -> None:
    state = replace(HOLDING, backoff={"vip": NOW + 0.1})
    decision = decide(state, obs(stopping=True), T, ME)
    assert decision.actions == ()
    assert decision.reason is Reason.STOPPING


def test_a_refusal_naming_this_node_never_adopts_a_fake_lease() -> None:
    state, o = absorb(NodeState(), obs(writer=KeyAbsent(3), vip=A), LeaseRefused("n1", 8), T, ME)
    assert not any(isinstance(a, AdoptLease) for a in decide(state, o, T, ME).actions)
