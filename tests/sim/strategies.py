"""Hypothesis strategies that draw the simulation's schedules and setups."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.sim.steps import (
    MAX_LATENESS_S,
    NODES,
    TIMINGS,
    Advance,
    Crash,
    DeleteKey,
    DeliverLate,
    EtcdFault,
    Freeze,
    NetlinkDelay,
    NetlinkFault,
    NicFault,
    ProbeHang,
    Restart,
    RoleName,
    SetRole,
    Setup,
    Sigterm,
    Step,
    StoreFault,
    WriteGarbage,
)

# --------------------------------------------------------------------------
# Strategies.
# --------------------------------------------------------------------------


def _seconds(high: float) -> st.SearchStrategy[float]:
    return st.integers(0, int(high * 100)).map(lambda cs: cs / 100)


node_names = st.one_of(st.just("n1"), st.sampled_from(NODES))  # n1 starts as the holder
role_names: st.SearchStrategy[RoleName] = st.sampled_from(("primary", "replica", "down", "unknown"))
# ``late``: a request that times out but lands later (found the adoption
# defect, fixed by adopting onto a fresh lease; its tests are below).
faults: st.SearchStrategy[StoreFault] = st.sampled_from(
    ("ok", "refuse", "hang", "lose_reply", "late")
)
nic_faults: st.SearchStrategy[NicFault] = st.sampled_from(("ok", "missing", "refuse"))

# Short steps explore races around one instant, long ones reach deadlines,
# lease expiry and kernel lifetimes.
durations = st.one_of(st.none(), _seconds(8.0))  # None: until changed again
advances = st.one_of(_seconds(0.5), _seconds(2.0), _seconds(12.0)).map(Advance)
_fault_events: list[st.SearchStrategy[Step]] = [
    st.builds(SetRole, node_names, role_names, durations),
    st.builds(SetRole, node_names, st.just("primary"), durations),
    st.builds(ProbeHang, node_names, st.booleans(), durations),
    st.builds(EtcdFault, node_names, faults, durations),
    st.builds(NetlinkFault, node_names, nic_faults, durations),
    st.builds(NetlinkDelay, node_names, _seconds(TIMINGS["default"].vip_op_timeout_s)),
    st.builds(Crash, node_names),
    st.builds(Restart, node_names),
    st.builds(Freeze, node_names, _seconds(15.0)),
    st.builds(Sigterm, node_names),
    st.just(WriteGarbage()),
    st.just(DeleteKey()),  # safe with the claim: see the operator tests
    st.just(DeliverLate()),
]


def scenarios(
    events: list[st.SearchStrategy[Step]], max_events: int, swarm: bool = True
) -> st.SearchStrategy[list[Step]]:
    """Events, each followed by some time passing (possibly none).

    Swarm testing: each example draws from a random subset of the kinds of
    event, so rare combinations (say, late requests with role flips and no
    crashes to interrupt them) come up far more often than from all at once.
    """

    def among(kinds: list[st.SearchStrategy[Step]]) -> st.SearchStrategy[list[Step]]:
        pairs = st.lists(st.tuples(st.one_of(kinds), advances), min_size=3, max_size=max_events)
        return pairs.map(lambda ps: [step for pair in ps for step in pair])

    if not swarm:
        return among(events)
    enabled = st.lists(st.sampled_from(events), min_size=1, max_size=len(events), unique=True)
    return enabled.flatmap(among)


setups = st.builds(
    Setup,
    lateness_s=_seconds(MAX_LATENESS_S),
    timing=st.sampled_from(sorted(TIMINGS)),
    order=st.permutations(NODES).map(tuple),
    watch=st.booleans(),
)

SIM_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
