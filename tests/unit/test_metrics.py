"""Metrics and health verdicts of a real Runner over the in-memory fakes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbvip.actions import (
    AskPeers,
    LeaseGone,
    LeaseRefused,
    LeaseRenewed,
)
from dbvip.board import etcd_window_s, liveness_window_s
from dbvip.failsafe import Acked, Declined
from dbvip.identity import Identity
from dbvip.metric_docs import (
    LABEL_VALUES,
    METRIC_LABEL_VALUES,
    METRICS,
    OPEN_LABELS,
    RESULT_VALUES,
)
from dbvip.metrics import Metrics
from dbvip.model import (
    PeerView,
    Reason,
    Role,
    Seat,
)
from dbvip.ports import Unknown
from dbvip.promises import Failsafe
from dbvip.runner import Snapshot, action_result
from tests.observed import VIP, ObservedNode, T, run
from tests.unit.test_core import HOLDING, MINE, obs
from tests.unit.test_promises import Channel, Records


def test_a_take_over_shows_in_every_gauge_and_counter() -> None:
    n1 = ObservedNode()
    assert n1.value("dbvip_role", role="unknown") == 1  # before the first decision
    assert n1.value("dbvip_lease_held") == 0
    run([n1], 1.0)

    assert n1.value("dbvip_role", role="primary") == 1
    assert n1.value("dbvip_role", role="replica") == 0
    assert n1.value("dbvip_lease_held") == 1
    assert n1.value("dbvip_vip_present") == 1
    assert n1.value("dbvip_decision_reason", reason="holding") == 1
    assert sum(n1.value("dbvip_decision_reason", reason=r.value) or 0 for r in Reason) == 1
    assert n1.value("dbvip_actions_total", action="acquire_lease", result="ok") == 1
    assert n1.value("dbvip_actions_total", action="add_vip", result="ok") == 1
    assert n1.value("dbvip_actions_total", action="announce", result="ok") == T.announce_count
    assert n1.value("dbvip_actions_total", action="release_lease", result="ok") == 0
    assert (
        n1.value(
            "dbvip_etcd_request_duration_seconds_count", operation="acquire_lease", result="ok"
        )
        == 1
    )
    # The key read alone, or with the members in one request: each counted as made.
    reads, members = n1.store.calls.count("read"), n1.store.calls.count("members")
    assert reads + members > 0
    assert (
        n1.value("dbvip_etcd_request_duration_seconds_count", operation="read_writer", result="ok")
        or 0
    ) == reads
    assert (
        n1.value("dbvip_etcd_request_duration_seconds_count", operation="read_members", result="ok")
        == members
    )
    assert n1.value("dbvip_probe_duration_seconds_count", role="primary") == len(
        {s.tick_s for s in n1.published}
    )
    assert n1.value("dbvip_ready") == 1

    # The deadline counts down at scrape time, from the same snapshot.
    deadline = n1.value("dbvip_lease_deadline_remaining_seconds")
    assert deadline is not None
    assert 0 < deadline <= T.ttl_s - T.margin_s
    n1.clock.advance(0.5)
    assert n1.value("dbvip_lease_deadline_remaining_seconds") == pytest.approx(deadline - 0.5)
    assert n1.value("dbvip_last_decision_age_seconds") == pytest.approx(0.5 + T.probe_interval_s)


def test_a_hanging_etcd_shows_in_latencies_failures_and_the_lost_lease() -> None:
    n1 = ObservedNode()
    run([n1], 1.0)
    n1.store.fault = "hang"  # every request eats its whole budget, then fails
    run([n1], T.ttl_s)

    assert n1.value("dbvip_actions_total", action="renew_lease", result="failed")
    assert n1.value("dbvip_actions_total", action="remove_vip", result="ok") == 1
    assert n1.value("dbvip_lease_held") == 0
    assert n1.value("dbvip_vip_present") == 0
    assert n1.value("dbvip_lease_deadline_remaining_seconds") is None  # absent, not 0
    failed = n1.value(
        "dbvip_etcd_request_duration_seconds_count", operation="read_writer", result="failed"
    )
    total_s = n1.value(
        "dbvip_etcd_request_duration_seconds_sum", operation="read_writer", result="failed"
    )
    assert failed and total_s
    # Hung reads take their whole timeout (on the fake clock): the histogram
    # saw durations, not zeros.
    assert total_s / failed > 0.5 * T.request_timeout_s
    assert (
        n1.value(
            "dbvip_etcd_request_duration_seconds_bucket",
            operation="read_writer",
            result="failed",
            le="0.5",
        )
        == 0
    )
    assert n1.value("dbvip_ready") == 0
    assert "etcd unreachable" in n1.board.readiness().why


def test_conflicts_count_episodes_not_ticks() -> None:
    n1 = ObservedNode("n1")
    n2 = ObservedNode("n2", clock=n1.clock, etcd=n1.etcd, kernel=n1.kernel)
    run([n1], 1.0)
    run([n1, n2], 2.0)  # both primary: n2 sees n1 holding the key, tick after tick
    assert n2.value("dbvip_decision_reason", reason="conflict") == 1
    assert n2.value("dbvip_conflicts_total") == 1
    assert n1.value("dbvip_conflicts_total") == 0
    assert n2.board.readiness().ok  # etcd answered "held by n1": an answer all the same
    n2.probe.role = Role.REPLICA
    run([n1, n2], 1.0)
    assert n2.value("dbvip_decision_reason", reason="conflict") == 0
    n2.probe.role = Role.PRIMARY
    run([n1, n2], 1.0)
    assert n2.value("dbvip_conflicts_total") == 2


def test_results_name_what_etcd_answered() -> None:
    assert action_result(LeaseRefused("n2", 5)) == "refused"
    assert action_result(LeaseGone(0x10)) == "gone"
    assert action_result(LeaseRenewed(0x10, 10, 1.0)) == "ok"


READERS = ("198.51.100.21", "198.51.100.22")


def with_pool(node: ObservedNode, here: tuple[str, ...], pool: str, lag: int | None) -> None:
    """The node's last snapshot as the reader rounds would have filled it."""
    latest = node.board.latest()
    assert latest is not None
    node.board.offer(replace(latest, reader_vips=here, pool=pool, lag_bytes=lag))


def test_the_exposition_holds_exactly_the_documented_metrics() -> None:
    n1 = ObservedNode(reader_vips=READERS)
    run([n1], 1.0)
    with_pool(n1, READERS[:1], "in_pool", 0)
    n1.metrics.reader_moved(READERS[0], "taken", "taking")
    exposed = {}
    for family in text_string_to_metric_families(n1.metrics.render().decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels} - {"le"}
        exposed[name] = (family.type, labels)
    documented = {m.name: (m.kind, set(m.labels)) for m in METRICS}
    assert exposed == documented


def test_liveness_follows_the_last_decision_and_its_window() -> None:
    n1 = ObservedNode(role=Role.REPLICA)
    assert not n1.board.liveness().ok  # no decision yet
    run([n1], 1.0)
    assert n1.board.liveness().ok
    n1.clock.advance(liveness_window_s(T))  # the loop stopped deciding
    verdict = n1.board.liveness()
    assert not verdict.ok
    assert "past the 3.6 s window" in verdict.why


def test_readiness_needs_a_known_role_and_a_recent_etcd_answer() -> None:
    n1 = ObservedNode(role=Role.REPLICA)
    assert n1.board.readiness().why == "no decision yet"
    run([n1], 1.0)
    assert n1.board.readiness().ok

    # A settled replica reads the key only every renew interval: still ready.
    run([n1], 3 * T.renew_interval_s)
    assert n1.board.readiness().ok

    n1.probe.role = Role.UNKNOWN
    run([n1], T.probe_interval_s)
    verdict = n1.board.readiness()
    assert not verdict.ok
    assert verdict.why == "role unknown: connection refused"

    n1.probe.role = Role.REPLICA
    n1.store.fault = "refuse"
    run([n1], T.renew_interval_s + 2 * T.probe_interval_s)
    assert n1.board.readiness().why == "etcd unreachable: connection refused"

    n1.store.fault = "ok"
    run([n1], T.renew_interval_s + 2 * T.probe_interval_s)
    assert n1.board.readiness().ok
    n1.clock.advance(etcd_window_s(T) + 0.01)  # the loop went silent
    assert "etcd last answered" in n1.board.readiness().why


def test_a_failing_observer_or_publisher_never_stops_the_loop() -> None:
    n1 = ObservedNode()

    class Broken:
        def action_done(self, *_: object) -> None:
            raise RuntimeError("metrics bug")

        probe_done = etcd_done = reader_moved = peers_answered = action_done

    def broken_publish(_: Snapshot) -> None:
        raise RuntimeError("publish bug")

    n1.runner.observer = Broken()
    n1.runner.publish = broken_publish
    run([n1], 1.0)
    holder = n1.etcd.writer_holder()
    assert holder is not None
    assert holder[0] == "n1"
    assert n1.kernel.holders() == {"n1"}


def test_info_names_the_sidecar_for_joins() -> None:
    n1 = ObservedNode("n1")
    assert n1.value("dbvip_info", cluster="main", node="n1", vip=VIP) == 1
    families = text_string_to_metric_families(n1.metrics.render().decode())
    (info,) = [f for f in families if f.name == "dbvip_info"]
    assert len(info.samples) == 1


def test_alive_and_etcd_answering_are_the_halves_of_the_health_verdicts() -> None:
    n1 = ObservedNode(role=Role.REPLICA)
    assert (n1.value("dbvip_alive"), n1.value("dbvip_etcd_answering")) == (0, 0)  # no decision
    run([n1], 1.0)
    assert (n1.value("dbvip_alive"), n1.value("dbvip_etcd_answering")) == (1, 1)

    # The database does not answer: not ready, but etcd still answers.
    n1.probe.role = Role.UNKNOWN
    run([n1], T.probe_interval_s)
    assert (n1.value("dbvip_ready"), n1.value("dbvip_etcd_answering")) == (0, 1)

    # etcd refuses: the etcd gauge says so, whatever the role.
    n1.probe.role = Role.REPLICA
    n1.store.fault = "refuse"
    run([n1], T.renew_interval_s + 2 * T.probe_interval_s)
    assert (n1.value("dbvip_ready"), n1.value("dbvip_etcd_answering")) == (0, 0)
    assert n1.value("dbvip_alive") == 1  # the loop itself keeps deciding

    n1.store.fault = "ok"
    run([n1], T.renew_interval_s + 2 * T.probe_interval_s)
    assert n1.value("dbvip_etcd_answering") == 1
    n1.clock.advance(liveness_window_s(T) + 0.01)  # the loop went silent
    assert n1.value("dbvip_alive") == 0
    n1.clock.advance(etcd_window_s(T))
    assert n1.value("dbvip_etcd_answering") == 0


def test_every_exported_label_value_is_a_declared_one() -> None:
    n1 = ObservedNode("n1", reader_vips=READERS)
    n2 = ObservedNode("n2", Role.REPLICA, n1.clock, n1.etcd, n1.kernel, reader_vips=READERS)
    run([n1, n2], 1.0)
    n1.store.fault = "hang"
    run([n1, n2], T.ttl_s)
    with_pool(n2, READERS, "lagging", 1 << 30)
    n2.metrics.reader_moved(READERS[1], "given_back", "lagging")
    for node in (n1, n2):
        for family in text_string_to_metric_families(node.metrics.render().decode()):
            name = family.name + ("_total" if family.type == "counter" else "")
            for sample in family.samples:
                for label, value in sample.labels.items():
                    if label == "result":
                        assert value in RESULT_VALUES[name], (name, value)
                    elif (name, label) in METRIC_LABEL_VALUES:
                        allowed = METRIC_LABEL_VALUES[name, label]
                        assert allowed is None or value in allowed, (name, label, value)
                    elif label in LABEL_VALUES:
                        assert value in LABEL_VALUES[label], (family.name, label, value)
                    else:
                        assert label == "le" or label in OPEN_LABELS, (family.name, label)


def _sample(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def test_the_refusal_metrics_follow_its_observer_and_exist_only_when_it_is_on() -> None:
    on = ObservedNode().metrics
    assert _sample(on.render().decode(), "dbvip_refusal_ready") == 1.0
    on.refusal_done(False)
    on.connections_ended(0)
    on.connections_ended(3)
    text = on.render().decode()
    assert _sample(text, "dbvip_refusal_ready") == 0.0
    assert _sample(text, "dbvip_connections_ended_total") == 3.0
    on.refusal_done(True)
    assert _sample(on.render().decode(), "dbvip_refusal_ready") == 1.0

    node = ObservedNode()
    off = Metrics(node.board, "main", "n1", VIP)  # refuse_s = 0
    off.refusal_done(False)
    off.connections_ended(2)
    text = off.render().decode()
    assert "dbvip_refusal_ready" not in text
    assert "dbvip_connections_ended" not in text
    off.peers_answered({"acked": 1, "declined": 0, "unreachable": 2})  # failsafe off
    assert "dbvip_failsafe_peer" not in off.render().decode()


def test_the_reader_metrics_follow_the_snapshot_and_count_moves_by_reason() -> None:
    n2 = ObservedNode("n2", Role.REPLICA, reader_vips=READERS)
    run([n2], 1.0)
    for reader_vip in READERS:  # configured, not held yet: 0, not absent
        assert n2.value("dbvip_reader_vip_held", reader_vip=reader_vip) == 0
    assert n2.value("dbvip_lag_bytes") is None

    with_pool(n2, READERS, "in_pool", 4096)
    assert [n2.value("dbvip_reader_vip_held", reader_vip=v) for v in READERS] == [1, 1]
    assert n2.value("dbvip_lag_bytes") == 4096
    assert n2.value("dbvip_in_pool", why="in_pool") == 1

    with_pool(n2, READERS[1:], "lagging", 1 << 30)
    assert [n2.value("dbvip_reader_vip_held", reader_vip=v) for v in READERS] == [0, 1]
    assert n2.value("dbvip_lag_bytes") == 1 << 30
    assert n2.value("dbvip_in_pool", why="lagging") == 0
    assert n2.value("dbvip_in_pool", why="in_pool") is None  # one series: the current why

    n2.metrics.reader_moved(READERS[0], "given_back", "lagging")
    n2.metrics.reader_moved(READERS[0], "given_back", "lagging")
    n2.metrics.reader_moved(READERS[0], "taken", "taking")
    moves = "dbvip_reader_moves_total"
    labels = {"reader_vip": READERS[0], "change": "given_back", "reason": "lagging"}
    assert n2.value(moves, **labels) == 2
    assert n2.value(moves, **{**labels, "change": "taken", "reason": "taking"}) == 1


def test_without_reader_vips_no_reader_series_is_exported() -> None:
    n1 = ObservedNode()
    run([n1], 1.0)
    text = n1.metrics.render().decode()
    for name in ("dbvip_reader_vip_held", "dbvip_lag_bytes", "dbvip_in_pool"):
        assert _sample(text, name) is None
    assert "dbvip_reader_moves_total{" not in text


def test_a_failsafe_ask_counts_every_peer_answer_and_shows_the_last_one() -> None:
    n1 = ObservedNode()
    me = n1.store.identity
    peers = [Identity(f"n{i}", f"i{i}", f"h{i}", "eth0") for i in (2, 3, 4)]
    channel = Channel(
        {
            Seat.of(peers[0]): Acked(n1.clock.now_s + 10.0, 10.0),
            Seat.of(peers[1]): Declined("database is primary"),
            Seat.of(peers[2]): Unknown("connection refused"),
        }
    )
    fs = Failsafe(me, replace(T, failsafe_window_s=10.0), n1.clock, channel, Records())
    n1.runner.failsafe = fs
    looked = fs.look(obs(writer=MINE), tuple(PeerView(p.node, Role.REPLICA, 1, p) for p in peers))
    fs.keep_record(HOLDING, looked, 1.0)
    for _ in range(2):
        n1.runner.execute(AskPeers(10.0), n1.clock.monotonic_s() + 1.0)

    for answer in ("acked", "declined", "unreachable"):
        assert n1.value("dbvip_failsafe_peers", answer=answer) == 1
        assert n1.value("dbvip_failsafe_peer_answers_total", answer=answer) == 2
    assert n1.value("dbvip_actions_total", action="ask_peers", result="failed") == 2

    channel.answers = {Seat.of(p): Acked(n1.clock.now_s + 10.0, 10.0) for p in peers}
    n1.runner.execute(AskPeers(10.0), n1.clock.monotonic_s() + 1.0)
    assert n1.value("dbvip_failsafe_peers", answer="acked") == 3
    assert n1.value("dbvip_failsafe_peers", answer="unreachable") == 0
    assert n1.value("dbvip_failsafe_peer_answers_total", answer="acked") == 5
    assert n1.value("dbvip_actions_total", action="ask_peers", result="ok") == 1
