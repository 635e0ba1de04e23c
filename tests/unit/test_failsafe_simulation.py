"""Property-based simulation of failsafe: the three sidecars of
``test_simulation`` with failsafe on, a peer channel between them that can
be cut or refuse, and etcd outages for everyone or for some.

Checked after every state change, besides S1 (one writer), S4 and S5:

- F (replaces S2 and S3, which failsafe relaxes by design): a VIP in the
  kernel is backed by the live etcd lease it was added under, or every
  other running sidecar has promised not to take the VIP until after the
  kernel expires it (its lateness included). An add or refresh that makes
  the VIP outlive both is a violation at once.

A crashed sidecar promises nothing (its book is gone) and cannot take while
down; restarted, it assumes a promise of one window (``dbvip.promises``).

The default run draws a few thousand schedules; ``DBVIP_SIM_EXAMPLES`` sets
how many each property draws (the long run: 10000, see the README).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbvip.failsafe import record_blocks
from dbvip.identity import Identity
from dbvip.model import Reason, Seat, Timing
from dbvip.ports import Unknown
from dbvip.promises import Failsafe, PeerAnswer
from dbvip.runner import Ports, Runner
from tests.fakes import FakeWaiter
from tests.sim.guards import (
    RunnerFactory,
)
from tests.sim.steps import (
    NODES,
    TIMINGS,
    Advance,
    Crash,
    EtcdFault,
    InvariantViolationError,
    Restart,
    SetRole,
    Setup,
    Step,
)
from tests.sim.strategies import (
    SIM_SETTINGS,
    _fault_events,
    _seconds,
    durations,
    node_names,
    scenarios,
    setups,
)
from tests.sim.world import (
    Sim,
)

EXAMPLES = int(os.environ.get("DBVIP_SIM_EXAMPLES", "0"))
FS_TIMINGS = {name: replace(t, failsafe_window_s=w) for (name, t), w in zip(
    TIMINGS.items(), (10.0, 6.0), strict=True
)}  # fmt: skip
PeerFault = Literal["ok", "hang", "refuse"]
FS_CHECKS = frozenset({"S1", "S4", "S5", "F"})
DEFAULT = Setup()


@dataclass(frozen=True)
class PeerCut:
    """The node's peer channel (both ways) hangs or refuses."""

    node: str
    fault: PeerFault
    for_s: float | None = None


@dataclass(frozen=True)
class EtcdOutage:
    """etcd down for every node (hangs or refuses), for a while or for good."""

    fault: Literal["ok", "hang", "refuse"]
    for_s: float | None = None


FsStep: TypeAlias = Step | PeerCut | EtcdOutage


class SimChannel:
    """The peer channel between the simulated sidecars."""

    def __init__(self) -> None:
        self.sim: FailsafeSim | None = None

    def ask_all(
        self, holder: Identity, peers: tuple[Seat, ...], window_s: float, timeout_s: float
    ) -> tuple[tuple[Seat, PeerAnswer], ...]:
        sim = self.sim
        assert sim is not None
        answers: list[tuple[Seat, PeerAnswer]] = []
        hung = False
        asking = next(n for n in sim.nodes.values() if n.store.identity == holder)
        for seat in peers:
            target = next(
                (n for n in sim.nodes.values() if Seat.of(n.store.identity) == seat), None
            )
            faults = {sim.peer_fault[asking.name]}
            if target is not None:
                faults.add(sim.peer_fault[target.name])
            if "refuse" in faults:
                answers.append((seat, Unknown("connection refused")))
            elif (
                "hang" in faults
                or target is None
                or not target.awake(sim.clock.now_s)
                or not isinstance(target.runner, FsRunner)
            ):
                hung = True
                answers.append((seat, Unknown(f"no answer in {timeout_s:.3f} s")))
            else:
                answer = target.runner.book.answer(holder, window_s)
                sim.note(f"{target.name} answers {asking.name}: {answer}")
                answers.append((seat, answer))
        if hung:  # asked all at once: one timeout for all
            sim.clock.advance(timeout_s)
        return tuple(answers)


class FsRunner(Runner):
    book: Failsafe


def fs_factory(channel: SimChannel) -> RunnerFactory:
    def make(
        node: str, timing: Timing, ports: Ports, waiter: FakeWaiter, publish: object
    ) -> Runner:
        runner = FsRunner(node, timing, ports, waiter, publish)  # type: ignore[arg-type]
        store = ports.store
        book = Failsafe(store.identity, timing, ports.clock, channel, store)  # type: ignore[arg-type]
        runner.failsafe = runner.book = book
        return runner

    return make


class FailsafeSim(Sim):
    def __init__(self, setup: Setup, checks: frozenset[str] = FS_CHECKS) -> None:
        channel = SimChannel()
        self.peer_fault: dict[str, PeerFault] = dict.fromkeys(NODES, "ok")
        self.vip_until: dict[str, float] = {}
        super().__init__(setup, checks, dict.fromkeys(NODES, fs_factory(channel)))
        self.timing = FS_TIMINGS[setup.timing]
        for node in self.nodes.values():
            node.runner = node.fresh_runner()  # with the failsafe timing
        channel.sim = self

    # -- F replaces S2 and S3 ------------------------------------------------

    def before_add(self, name: str) -> None:
        # S5 (a twin never adds) is checked by the base class; S2 is not
        # what failsafe promises, F is (checked once the lifetime is known).
        checks = self.checks
        self.checks = checks - {"S2"}
        try:
            super().before_add(name)
        finally:
            self.checks = checks

    def vip_added(self, name: str, lifetime_s: int) -> None:
        super().vip_added(name, lifetime_s)
        self.vip_until[name] = self.clock.now_s + lifetime_s + self.kernel.lateness_s
        self.check_f(name)

    def check(self, where: str = "") -> None:
        checks = self.checks
        self.checks = checks - {"S3"}
        try:
            super().check(where)
        finally:
            self.checks = checks
        for node in sorted(self.kernel.holders()):
            self.check_f(node)

    def _check_clock_jump(self, t0: float, t1: float) -> None:
        pass  # F covers the VIP's whole kernel lifetime at each add

    def check_f(self, name: str) -> None:
        if name not in self.kernel.holders():
            return
        until = self.vip_until.get(name, float("inf"))
        lease = self.vip_lease.get(name)
        if lease is not None and lease in self.etcd.leases and self.etcd.leases[lease][1] >= until:
            return  # backed by its live lease to the end
        for other in self.nodes.values():
            if other.name == name or not other.running:
                continue
            if record_blocks(self.etcd.failsafe_record, other.store.identity) is not None:
                continue  # the record does not list it: it takes nothing (S1 still checked)
            runner = other.runner
            assert isinstance(runner, FsRunner)
            promise, _ = runner.book.promise()
            if promise is None or promise < until:
                self.fail(
                    "F",
                    f"{name}'s VIP lives until {until:.3f} without its lease, but "
                    f"{other.name} promised only until {promise}",
                )

    # -- the new steps --------------------------------------------------------

    def apply(self, step: FsStep) -> None:
        match step:
            case PeerCut(name, fault, for_s):
                self.note(f"step {step}")
                was = self.peer_fault[name]
                self.peer_fault[name] = fault
                if for_s is not None:
                    self.timers.append(
                        (self.clock.now_s + for_s, self._revert_cut(name, fault, was))
                    )
            case EtcdOutage(fault, for_s):
                for name in NODES:
                    super().apply(EtcdFault(name, "ok" if fault == "ok" else fault, for_s))
            case _:
                super().apply(step)

    def _revert_cut(self, name: str, fault: PeerFault, was: PeerFault) -> Callable[[], None]:
        def revert() -> None:
            if self.peer_fault[name] == fault:
                self.peer_fault[name] = was

        return revert


def fs_simulate(
    steps: list[FsStep], setup: Setup = DEFAULT, checks: frozenset[str] = FS_CHECKS
) -> FailsafeSim:
    sim = FailsafeSim(setup, checks)
    sim.check("start")
    for step in steps:
        sim.apply(step)
    return sim


# --------------------------------------------------------------------------
# Strategies: the base faults plus outages and cut peer channels.
# --------------------------------------------------------------------------

peer_faults: st.SearchStrategy[PeerFault] = st.sampled_from(("ok", "hang", "refuse"))
long_outages = st.one_of(st.none(), _seconds(60.0))
_failsafe_events: list[st.SearchStrategy[FsStep]] = [
    *_fault_events,
    st.builds(EtcdOutage, st.sampled_from(("hang", "refuse")), long_outages),
    st.builds(EtcdOutage, st.just("ok")),
    st.builds(EtcdFault, node_names, st.sampled_from(("hang", "refuse")), long_outages),
    st.builds(PeerCut, node_names, peer_faults, durations),
    # A replica promoted while etcd is down (as Patroni might, or a human).
    st.builds(SetRole, st.sampled_from(NODES), st.just("primary"), durations),
]


def _examples(default: int) -> int:
    return EXAMPLES or default


# --------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------


@settings(SIM_SETTINGS, max_examples=_examples(800))
@given(setup=setups, steps=scenarios(_failsafe_events, 25))  # type: ignore[arg-type]
def test_failsafe_safety_under_random_faults_outages_and_partitions(
    setup: Setup, steps: list[FsStep]
) -> None:
    sim = fs_simulate(steps, setup)
    assert sim.spins == 0, "a runner asked to be woken at once again: it would spin"


@settings(SIM_SETTINGS, max_examples=_examples(300))
@given(
    setup=setups,
    before_s=_seconds(8.0),
    outage_s=_seconds(60.0),
    cut=st.sampled_from(("none", "n2", "n3", "holder")),
    promote=st.sampled_from(("none", "n2", "n3")),
    holder_only=st.booleans(),
)
def test_failsafe_outage_patterns(
    setup: Setup, before_s: float, outage_s: float, cut: str, promote: str, holder_only: bool
) -> None:
    """The lab scenarios, as a family: etcd down for all (or for the holder
    only), maybe a peer's channel cut, maybe a replica promoted meanwhile."""
    steps: list[FsStep] = [Advance(before_s)]
    steps.append(EtcdFault("n1", "hang") if holder_only else EtcdOutage("hang"))
    if cut != "none":
        steps.append(PeerCut("n1" if cut == "holder" else cut, "hang"))
    steps.append(Advance(3.0))
    if promote != "none":
        steps += [SetRole("n1", "replica"), SetRole(promote, "primary")]
    steps += [Advance(outage_s), EtcdOutage("ok"), PeerCut("n1", "ok"), Advance(15.0)]
    fs_simulate(steps, setup)


# This search found, on 2026-12-05, a late joiner listed while a window
# granted without it ran (timing "tight", lateness 0.22 s, watch on, etcd
# refusing 20.86 s, back, refused again: "n1's VIP lives until 1026.220 without
# its lease, but n3 promised only until 1024.4"). The holder now keeps its
# record as it is while such a window runs (``failsafe.record_may_change``;
# the story test below).
@settings(SIM_SETTINGS, max_examples=_examples(100))
@given(setup=setups, steps=scenarios(_failsafe_events, 20))  # type: ignore[arg-type]
def test_failsafe_safety_with_a_node_that_joins_late(setup: Setup, steps: list[FsStep]) -> None:
    """n3 has never reported when the holder writes its record (its sidecar
    down from the start), so it is neither listed nor asked; it comes back
    at some point of the schedule (a Restart in the steps, or here)."""
    fs_simulate([Crash("n3"), *steps, Restart("n3"), Advance(30.0)], setup)


# --------------------------------------------------------------------------
# Stories: the rule at work (and each check firing when it is broken).
# --------------------------------------------------------------------------


# Every sidecar starts under the promise its earlier process may have given
# (one window): nobody takes the VIP before that runs out.
WINDOW_S = FS_TIMINGS["default"].failsafe_window_s
START = Advance(WINDOW_S + 2.0)


def _holds(sim: FailsafeSim, node: str) -> bool:
    return sim.kernel.holders() == {node}


def test_the_holder_keeps_the_vip_through_a_long_outage_and_takes_the_key_back() -> None:
    sim = fs_simulate([START, EtcdOutage("hang")])
    for _ in range(60):  # one minute of outage, looked at every second
        sim.apply(Advance(1.0))
        assert _holds(sim, "n1"), sim.trace
    assert sim.nodes["n1"].runner.state.reason is Reason.FAILSAFE
    sim.apply(EtcdOutage("ok"))
    for _ in range(20):
        sim.apply(Advance(0.5))
        assert _holds(sim, "n1"), sim.trace  # no blink on the way back
    truth = sim.writer_truth()
    assert truth is not None and truth[0] == "n1"


def test_without_failsafe_the_holder_drops_by_its_deadline() -> None:
    sim = fs_simulate([START])
    for node in sim.nodes.values():
        runner = node.runner
        assert isinstance(runner, FsRunner)
        runner.failsafe = None
        runner.timing = replace(runner.timing, failsafe_window_s=0.0)
    sim.apply(EtcdOutage("hang"))
    sim.apply(Advance(sim.timing.ttl_s))
    assert sim.kernel.holders() == set()


def test_a_peer_out_of_reach_means_the_vip_goes_by_the_deadline() -> None:
    sim = fs_simulate([START, EtcdOutage("hang"), PeerCut("n3", "hang")])
    sim.apply(Advance(sim.timing.ttl_s))
    assert sim.kernel.holders() == set()
    runner = sim.nodes["n1"].runner
    assert isinstance(runner, FsRunner)
    answers = dict(runner.book.last_asks)
    assert {seat.node for seat in answers} == {"n2", "n3"}
    assert [seat.node for seat, a in answers.items() if isinstance(a, Unknown)] == ["n3"]


def test_a_replica_promoted_during_the_outage_waits_for_its_promise() -> None:
    """etcd is back for n2 only, the key is free (n1's lease ran out in etcd)
    and n2's database is promoted: n2 keeps its promise until it ends, and
    then n1 is refused (n2 is primary) and drops: never two writers."""
    sim = fs_simulate([START, EtcdOutage("hang"), Advance(12.0)])
    assert _holds(sim, "n1")
    sim.apply(EtcdFault("n2", "ok"))
    sim.apply(SetRole("n2", "primary"))
    sim.apply(Advance(1.0))
    assert _holds(sim, "n1")
    assert sim.nodes["n2"].runner.state.reason is Reason.FAILSAFE_PROMISE
    sim.apply(Advance(2 * sim.timing.failsafe_window_s))
    assert sim.kernel.holders() == {"n2"}


def test_a_restarted_peer_keeps_the_promise_its_earlier_process_may_have_given() -> None:
    sim = fs_simulate([START, EtcdOutage("hang"), Advance(12.0)])
    assert _holds(sim, "n1")
    sim.apply(Crash("n2"))
    sim.apply(Restart("n2"))
    sim.apply(EtcdFault("n2", "ok"))
    sim.apply(SetRole("n2", "primary"))
    sim.apply(Advance(1.0))
    assert sim.nodes["n2"].runner.state.reason is Reason.FAILSAFE_PROMISE


class Forgetful(FsRunner):
    """A broken peer that acks and then forgets every promise at once."""

    def tick(self, stopping: bool = False) -> object:  # type: ignore[override]
        self.book._promised_until_s = None
        return super().tick(stopping)


def test_the_f_check_and_s1_fire_when_a_peer_breaks_its_promise() -> None:
    channel = SimChannel()
    base = fs_factory(channel)

    def forgetful(
        node: str, timing: Timing, ports: Ports, waiter: FakeWaiter, publish: object
    ) -> Runner:
        runner = base(node, timing, ports, waiter, publish)
        assert isinstance(runner, FsRunner)
        runner.__class__ = Forgetful
        return runner

    steps: list[FsStep] = [
        START,
        EtcdOutage("hang"),
        Advance(12.0),
        EtcdFault("n2", "ok"),
        SetRole("n2", "primary"),
        Advance(2.0),
    ]
    for invariant in ("F", "S1"):
        sim = FailsafeSim(Setup(), frozenset({invariant}))
        channel.sim = sim
        sim.nodes["n2"].factory = forgetful
        sim.nodes["n2"].runner = sim.nodes["n2"].fresh_runner()
        with pytest.raises(InvariantViolationError) as caught:
            for step in steps:
                sim.apply(step)
        assert caught.value.invariant == invariant


def test_a_node_that_joined_after_the_record_takes_nothing_while_it_names_another() -> None:
    sim = fs_simulate([Crash("n3"), START, EtcdFault("n1", "hang"), Advance(1.0)])
    record = sim.etcd.failsafe_record
    assert record is not None and [m.node for m in record.members] == ["n2"]
    sim.apply(Restart("n3"))
    sim.apply(SetRole("n3", "primary"))
    sim.apply(Advance(2 * WINDOW_S))  # n1's lease long gone in etcd; n3 reads it free
    assert sim.kernel.holders() == {"n1"}  # on n2's promise alone: n3 is not asked
    assert sim.nodes["n3"].runner.state.reason is Reason.FAILSAFE


def test_a_late_joiner_is_not_listed_while_a_window_granted_without_it_runs() -> None:
    """n1 keeps the VIP on n2's promise alone (n3 down since the start);
    etcd answers again and n3 comes back: n1 takes its key back at once but
    lists n3 only once that window has run out, since n3 promised nothing
    for it (listing it earlier freed n3 to take while n1's VIP could still
    live: the search's counterexample, 2026-12-05)."""
    sim = fs_simulate([Crash("n3"), START, EtcdOutage("hang")])
    sim.apply(Advance(sim.timing.ttl_s + 0.5))  # the lease's deadline has passed
    assert _holds(sim, "n1") and sim.nodes["n1"].runner.state.reason is Reason.FAILSAFE
    window_until = sim.nodes["n1"].runner.state.failsafe_until_s
    assert window_until is not None
    sim.apply(Restart("n3"))
    sim.apply(EtcdOutage("ok"))
    sim.apply(Advance(window_until - sim.clock.now_s - 0.5))  # n3 has reported by now
    truth = sim.writer_truth()
    assert truth is not None and truth[0] == "n1"  # its key back, no blink
    record = sim.etcd.failsafe_record
    assert record is not None and [m.node for m in record.members] == ["n2"]
    sim.apply(Advance(window_until - sim.clock.now_s + 2.0))
    record = sim.etcd.failsafe_record
    assert record is not None and [m.node for m in record.members] == ["n2", "n3"]
    assert _holds(sim, "n1")
