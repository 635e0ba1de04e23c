"""The simulation's properties and stories (the harness: ``tests.sim``; what
it models and checks: ``tests.sim.world``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from dbvip.actions import (
    Action,
    Failed,
    Outcome,
)
from dbvip.config import TIMING_FIELDS, load
from dbvip.model import (
    KERNEL_EXPIRY_SLACK_S,
    Decision,
    KeyHeld,
    Reason,
    Timing,
)
from dbvip.runner import Runner
from tests.sim.guards import (
    RunnerFactory,
)
from tests.sim.steps import (
    TIMINGS,
    Advance,
    Crash,
    DeleteKey,
    DeliverLate,
    EtcdFault,
    Freeze,
    InvariantViolationError,
    LivenessFailureError,
    Restart,
    RestoreEtcd,
    RoleName,
    SetRole,
    Setup,
    Sigterm,
    SnapshotEtcd,
    Step,
    WipeEtcd,
    WriteGarbage,
)
from tests.sim.strategies import (
    SIM_SETTINGS,
    _fault_events,
    _seconds,
    node_names,
    scenarios,
    setups,
)
from tests.sim.world import (
    Sim,
    simulate,
)

# --------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------


@settings(SIM_SETTINGS, max_examples=400)
@given(setup=setups, steps=scenarios(_fault_events, 25))
def test_safety_under_random_faults(setup: Setup, steps: list[Step]) -> None:
    sim = simulate(steps, setup)
    assert sim.spins == 0, "a runner asked to be woken at once again: it would spin"


# n3 runs with n1's configuration copied (one node name, two hosts).
TWINS = {"n3": "n1"}


@settings(SIM_SETTINGS, max_examples=300)
@given(setup=setups.map(lambda s: replace(s, names=TWINS)), steps=scenarios(_fault_events, 25))
def test_safety_with_two_sidecars_given_one_node_name(setup: Setup, steps: list[Step]) -> None:
    simulate(steps, setup)


@pytest.mark.parametrize("twin_role", ["primary", "replica"])
def test_a_twin_holds_nothing_and_touches_nothing(twin_role: RoleName) -> None:
    """n1 holds the VIP; n3 starts with n1's name on another host, its
    database primary too (or a replica). It never adopts, renews or
    releases n1's key (S5, checked on every call), reports name_conflict."""
    sim = simulate(
        [Advance(1.0), SetRole("n3", twin_role), Advance(1.0), Crash("n3"), Restart("n3")],
        Setup(names=TWINS),
    )
    sim.apply(Advance(3 * sim.timing.ttl_s))
    assert sim.kernel.holders() == {"n1"}
    assert sim.nodes["n3"].runner.state.reason is Reason.NAME_CONFLICT
    assert sim.nodes["n1"].runner.state.reason is Reason.HOLDING


def settle(sim: Sim, winner: str) -> float:
    """Heal every fault with ``winner`` the only primary; return how long it
    took ``winner`` to hold the key and the VIP; then check it keeps them."""
    sim.heal(winner)
    bound_s = sim.timing.ttl_s + 3.0
    start_s = sim.clock.now_s
    got: list[float] = []

    def holds() -> bool:
        truth = sim.writer_truth()
        return sim.kernel.holders() == {winner} and truth is not None and truth[0] == winner

    def track() -> None:
        if not got and holds():
            got.append(sim.clock.now_s)

    while not got and sim.clock.now_s - start_s < bound_s:
        sim.advance(0.1, after_tick=track)
    if not got:
        raise LivenessFailureError(
            f"{winner} has no VIP {bound_s} s after healing; holders {sim.kernel.holders()}, "
            f"key {sim.writer_truth()}\n  " + "\n  ".join(sim.trace)
        )

    def keeps() -> None:
        if not holds():
            raise LivenessFailureError(
                f"{winner} lost the VIP after healing:\n  " + "\n  ".join(sim.trace)
            )

    sim.advance(3.0 * sim.timing.ttl_s, after_tick=keeps)  # no flapping once healed
    return got[0] - start_s


def test_healing_makes_a_stale_primary_the_newest_one() -> None:
    """CI found this: n1 primary on timeline 1, n2 promoted to timeline 2;
    healed with n1 the only primary, n1 must be on a timeline above n2's or
    the cluster rightly keeps calling it superseded."""
    steps: list[Step] = [
        SetRole("n1", "primary"),
        Advance(0.07),
        SetRole("n2", "primary"),
        Advance(1.74),
    ]
    sim = simulate(steps, Setup(watch=False))
    settle(sim, "n1")
    assert sim.nodes["n1"].probe.timeline > sim.nodes["n2"].probe.timeline


@SIM_SETTINGS
@given(setup=setups, steps=scenarios(_fault_events, 15), winner=node_names)
def test_healed_cluster_puts_the_vip_on_its_only_primary(
    setup: Setup, steps: list[Step], winner: str
) -> None:
    settle(simulate(steps, setup), winner)


def test_the_simulated_timings_are_ones_the_config_accepts() -> None:
    for name, timing in TIMINGS.items():
        # failsafe_window_s is 0 with failsafe off, the default.
        flags = {f: str(getattr(timing, f)) for f in TIMING_FIELDS if f != "failsafe_window_s"}
        assert load(flags, {}, required=("ttl_s",)).timing == timing, name


class Mute(Runner):
    """A broken sidecar whose every action fails."""

    def execute(self, action: Action, request_deadline_s: float) -> Outcome:
        return Failed(action, "muted")


def test_the_liveness_check_fires_when_the_primary_never_gets_the_vip() -> None:
    sim = simulate([Advance(1.0)], factories={"n2": Mute})
    with pytest.raises(LivenessFailureError, match="n2 has no VIP"):
        settle(sim, "n2")


# --------------------------------------------------------------------------
# The checker itself: every check fires on a setup broken on purpose.
# --------------------------------------------------------------------------


class AddsWithoutLease(Runner):
    """A broken sidecar that adds the VIP every tick, lease or not."""

    def tick(self, stopping: bool = False) -> Decision:
        self.ports.vip.add(5)
        return super().tick(stopping)


class ReleasesFirst(Runner):
    """A broken sidecar that releases its lease while the VIP is still up."""

    def tick(self, stopping: bool = False) -> Decision:
        if self.state.lease is not None:
            self.ports.store.release(self.state.lease.lease_id, 1.0)
        return super().tick(stopping)


class RenewsByName(Runner):
    """A broken sidecar that renews whatever lease the key naming it is under."""

    def tick(self, stopping: bool = False) -> Decision:
        view = self.ports.store.read_writer(1.0)
        if isinstance(view, KeyHeld) and view.holder == self.node and view.lease_id > 0:
            self.ports.store.keepalive(view.lease_id, 1.0)
        return super().tick(stopping)


class AcquiresAsReplica(Runner):
    """A broken sidecar that tries to take the writer key whatever its role."""

    def tick(self, stopping: bool = False) -> Decision:
        self.ports.store.acquire(self.timing.ttl_s, 1.0)
        return super().tick(stopping)


# Beyond the slack the VIP lifetime is cut by: a kernel this late breaks the
# backstop that covers frozen and crashed sidecars.
TOO_LATE = Setup(lateness_s=KERNEL_EXPIRY_SLACK_S + Timing().margin_s + 1.0)


@pytest.mark.parametrize(
    ("invariant", "factories", "setup", "steps"),
    [
        ("S1", {"n2": AddsWithoutLease}, Setup(), [Advance(1.0)]),
        ("S2", {"n2": AddsWithoutLease}, Setup(), [Advance(1.0)]),
        ("S3", {"n2": AddsWithoutLease}, Setup(), [Crash("n1"), Advance(1.0)]),
        ("S4", {"n1": ReleasesFirst}, Setup(), [Advance(1.0)]),
        ("S4", {"n2": AcquiresAsReplica}, Setup(), [Advance(1.0)]),
        ("S5", {"n3": RenewsByName}, Setup(names=TWINS), [Advance(1.0)]),
        ("S3", {}, TOO_LATE, [Advance(1.0), Freeze("n1", 30.0), Advance(30.0)]),
        (
            "S1",
            {},
            TOO_LATE,
            [
                Advance(1.0),
                Freeze("n1", 30.0),
                SetRole("n1", "replica"),
                SetRole("n2", "primary"),
                Advance(30.0),
            ],
        ),
    ],
    ids=[
        "S1-rogue-add",
        "S2-rogue-add",
        "S3-rogue-add",
        "S4-release-first",
        "S4-acquire-as-replica",
        "S5-renew-by-name",
        "S3-kernel-too-late",
        "S1-kernel-too-late",
    ],
)
def test_each_check_fires_on_a_broken_setup(
    invariant: str, factories: dict[str, RunnerFactory], setup: Setup, steps: list[Step]
) -> None:
    # Only this one invariant is checked, so it cannot hide behind another.
    with pytest.raises(InvariantViolationError) as caught:
        simulate(steps, setup, checks=frozenset({invariant}), factories=factories)
    assert caught.value.invariant == invariant


def test_s3_check_sees_a_violation_that_begins_and_ends_inside_one_clock_jump() -> None:
    steps: list[Step] = [Advance(1.0), Crash("n1"), Crash("n2"), Crash("n3")]
    sim = simulate(steps, TOO_LATE)
    with pytest.raises(InvariantViolationError, match="dies at") as caught:
        sim.apply(Advance(60.0))  # nothing ticks: one single jump of the clock
    assert caught.value.invariant == "S3"
    # At the far end of the jump both the lease and the VIP are gone, so
    # checks at instants alone would have seen nothing.
    sim.clock.now_s += 60.0
    assert sim.kernel.holders() == set()
    assert not sim.lease_alive(sim.vip_lease["n1"])


def test_the_search_finds_the_broken_kernel_backstop() -> None:
    """The same search as the safety property finds two writers, or a VIP
    outliving its lease, once the kernel is later than the slack allows."""
    too_late = setups.map(lambda s: replace(s, lateness_s=s.lateness_s + TOO_LATE.lateness_s))

    @settings(SIM_SETTINGS, phases=[Phase.generate], report_multiple_bugs=False)
    @given(setup=too_late, steps=scenarios(_fault_events, 25))
    def search(setup: Setup, steps: list[Step]) -> None:
        simulate(steps, setup)

    with pytest.raises(InvariantViolationError) as caught:
        search()
    assert caught.value.invariant in {"S1", "S3"}


# --------------------------------------------------------------------------
# Defects the search found. Each is a scenario family (a property over its
# timings and settings) plus the shrunk counterexample replayed verbatim.
# The late release (a release that times out, then lands after the node has
# taken its key again) is fixed: adoption moves the key onto a fresh lease,
# so the late delete fails its comparison and the late revoke finds an empty
# lease. The comments give the violation each replay showed before the fix.
# Deleting the writer key by hand was a gap, closed by the claim: a second key
# put with the writer key under the holder's lease, which a taker must also
# find free (tests below).
# --------------------------------------------------------------------------


@settings(SIM_SETTINGS, max_examples=100)
@given(
    setup=setups,
    drop=st.sampled_from(("replica", "down", "unknown", "sigterm")),
    back_after_s=_seconds(3.0),
    late_by_s=_seconds(8.0),
    rival=st.booleans(),
)
def test_a_release_in_doubt_never_leaves_a_vip_without_its_lease(
    setup: Setup,
    drop: Literal["replica", "down", "unknown", "sigterm"],
    back_after_s: float,
    late_by_s: float,
    rival: bool,
) -> None:
    """n1 holds the VIP; its etcd requests start timing out yet still take
    effect later; its database drops (or the sidecar stops), so it releases;
    then etcd answers again and n1 is primary (or restarted) once more."""
    steps: list[Step] = [Advance(0.5)]
    if rival:  # n2's database wrongly claims to be primary as well
        steps.append(SetRole("n2", "primary"))
    steps.append(EtcdFault("n1", "late"))
    if drop == "sigterm":
        steps += [Sigterm("n1"), EtcdFault("n1", "ok"), Advance(back_after_s), Restart("n1")]
    else:
        steps += [SetRole("n1", drop if drop in ("down", "unknown") else "replica"), Advance(2.5)]
        steps += [EtcdFault("n1", "ok"), Advance(back_after_s), SetRole("n1", "primary")]
    steps += [Advance(late_by_s), DeliverLate(), Advance(1.0)]
    simulate(steps, setup)


def test_late_release_after_sigterm_cannot_touch_the_readopted_key() -> None:
    # S3 at t=1002.0: n1 has the VIP but its lease 4097 is not alive in etcd.
    simulate(
        [
            Advance(0.0),
            EtcdFault("n1", "late"),
            Sigterm("n1"),  # removes the VIP; the release times out, lands later
            EtcdFault("n1", "ok"),
            Restart("n1"),
            Advance(0.0),  # the fresh sidecar adopts lease 4097 and adds the VIP
            DeliverLate(),  # the old release deletes the key and revokes 4097
        ]
    )


def test_late_release_after_demotion_cannot_touch_the_key_readopted_on_promotion() -> None:
    # S3 at t=1006.7: n1 has the VIP but its lease 4097 is not alive in etcd.
    simulate(
        [
            Advance(0.5),
            EtcdFault("n1", "late", for_s=1.0),
            SetRole("n1", "replica", for_s=2.0),  # release in doubt, then primary again
            Advance(4.0),  # n1 re-adopts lease 4097 and adds the VIP
            DeliverLate(),
        ]
    )


def test_late_release_never_gives_two_writers_when_another_database_claims_primary() -> None:
    # S1 at t=1002.0: ['n1', 'n2'] all have the VIP.
    simulate(
        [
            Advance(0.0),
            SetRole("n2", "primary"),
            EtcdFault("n1", "late"),
            Sigterm("n1"),
            EtcdFault("n1", "ok"),
            Restart("n1"),
            Advance(0.0),
            DeliverLate(),  # the key vanishes: n2's watch fires, n2 takes it at once
            Advance(0.0),
        ],
        Setup(order=("n2", "n1", "n3")),
        checks=frozenset({"S1"}),
    )


@settings(SIM_SETTINGS, max_examples=100)
@given(
    setup=setups,
    holder=st.sampled_from(("running", "frozen", "crashed", "etcd hangs")),
    garbage_first=st.booleans(),
    wait_s=_seconds(4.0),
)
def test_an_operator_edit_of_the_writer_key_never_gives_two_writers(
    setup: Setup, holder: str, garbage_first: bool, wait_s: float
) -> None:
    """n1 holds the VIP, n2's database is (or believes it is) primary, and an
    operator deletes the writer key, or overwrites it and then deletes it."""
    steps: list[Step] = [Advance(1.0), SetRole("n2", "primary")]
    holder_faults: dict[str, list[Step]] = {
        "running": [],
        "frozen": [Freeze("n1", 20.0)],
        "crashed": [Crash("n1")],
        "etcd hangs": [EtcdFault("n1", "hang")],
    }
    steps += holder_faults[holder]
    steps += [Advance(wait_s)]
    steps += [WriteGarbage(), DeleteKey()] if garbage_first else [DeleteKey()]
    steps += [Advance(3.0)]
    simulate(steps, setup)


def test_deleting_the_key_of_a_crashed_holder_never_gives_two_writers() -> None:
    # S1 at t=1002.0: ['n1', 'n2'] all had the VIP before the claim. The
    # "help" an operator might give a failover: n1's sidecar died, so delete
    # its stale key. n1's claim, under its lease, keeps n2 waiting.
    sim = simulate(
        [
            Advance(1.0),
            Crash("n1"),
            SetRole("n2", "primary"),
            Advance(1.0),
            DeleteKey(),  # n1's lease is alive and so is its VIP, for 4 s more
            Advance(0.5),
        ]
    )
    assert sim.kernel.holders() == {"n1"}
    assert sim.nodes["n2"].runner.state.reason is Reason.KEY_DELETED
    sim.apply(Advance(sim.timing.ttl_s))  # n1's lease runs out, and its claim with it
    assert sim.kernel.holders() == {"n2"}


# A wiped or restored etcd no longer has the lease a VIP was added under: S3
# and S5 (lease ids are granted again) cannot hold across it by design; what
# must hold is one writer (S1), adds only under a live key (S2), and S4.
AFTER_RESET = frozenset({"S1", "S2", "S4"})


@settings(SIM_SETTINGS, max_examples=150)
@given(
    setup=setups,
    wipe=st.booleans(),
    moved=st.booleans(),
    rival=st.booleans(),
    holder=st.sampled_from(("running", "frozen", "etcd hangs")),
    before_s=_seconds(6.0),
    after_s=_seconds(4.0),
)
def test_etcd_wiped_or_restored_never_gives_two_writers(
    setup: Setup,
    wipe: bool,
    moved: bool,
    rival: bool,
    holder: str,
    before_s: float,
    after_s: float,
) -> None:
    """n1 holds the VIP; a snapshot is taken; maybe the VIP moves to n2; maybe
    another database claims primary too; the holder freezes, or loses etcd,
    or runs on; then etcd is wiped, or restored from the snapshot (which
    brings n1's old key and lease back to life)."""
    steps: list[Step] = [Advance(1.0), SnapshotEtcd(), Advance(before_s)]
    current = "n1"
    if moved:
        steps += [SetRole("n1", "replica"), SetRole("n2", "primary"), Advance(3.0)]
        current = "n2"
    if rival:
        steps.append(SetRole("n3", "primary"))
    by_holder: dict[str, list[Step]] = {
        "running": [],
        "frozen": [Freeze(current, 5.0)],
        "etcd hangs": [EtcdFault(current, "hang", for_s=3.0)],
    }
    steps += by_holder[holder]
    steps += [WipeEtcd() if wipe else RestoreEtcd(), Advance(after_s), Advance(15.0)]
    simulate(steps, setup, checks=AFTER_RESET)


def test_after_a_wipe_a_frozen_holder_and_a_second_primary_never_overlap() -> None:
    # Without the reset rule: S1, n3 takes the key at once while n1's VIP
    # lives on to its deadline (etcd forgot n1's lease and its claim).
    sim = simulate(
        [Advance(1.0), SetRole("n3", "primary"), Advance(1.0), Freeze("n1", 4.0), WipeEtcd()],
        checks=AFTER_RESET,
    )
    sim.apply(Advance(0.5))
    assert sim.nodes["n3"].runner.state.reason is Reason.ETCD_RESET
    sim.apply(Advance(2 * sim.timing.ttl_s))
    assert len(sim.kernel.holders()) == 1  # and afterwards someone holds it again
