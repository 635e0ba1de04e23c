"""Prometheus metrics, in a registry of their own (never the global one).

Gauges describe the latest published snapshot and are computed at scrape
time, all from the same snapshot. Counters and histograms are fed by the
runner's observer hook; each update is an in-memory increment under the
metric's own short lock, so the loop never waits on a scrape. Written in
the Prometheus text format by ``dbvip.exposition`` (why not
prometheus_client: there).

``dbvip.metric_docs.METRICS`` documents every metric; the README's table is
generated from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, get_args

from dbvip.board import Board
from dbvip.events import EventKind
from dbvip.exposition import Counter, Family, Gauge, GaugeFamily, Histogram, Registry
from dbvip.hooks import HookResult
from dbvip.metric_docs import ACTION_KINDS, HOOK_RESULTS, LABEL_VALUES, doc
from dbvip.model import Reason, Role
from dbvip.reader_model import IN_POOL, IN_POOL_NOT_STREAMING
from dbvip.reporting import Snapshot
from dbvip.shell import ActionResult, EtcdOperation, PeerAnswerKind, ReaderChange

_M = TypeVar("_M", Counter, Gauge, Histogram)

# From a fast loopback answer up to the longest timeouts one would configure.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The registry, the runner's ``Observer`` and a publish hook for counts."""

    def __init__(
        self,
        board: Board,
        cluster: str,
        node: str,
        vip: str,
        refusal: bool = False,
        *,
        reader_vips: Sequence[str] = (),
        failsafe: bool = False,
    ) -> None:
        """``refusal``: refuse_s is on (the refusal's metrics are exported);
        ``reader_vips``: the configured reader VIPs, addresses as in the keys;
        ``failsafe``: failsafe is on (the peer answers are exported)."""
        self.registry = Registry()
        self._board = board
        self._last_reason = ""

        def counter(name: str) -> Counter:
            d = doc(name)
            return self._add(Counter(d.name, d.help, d.labels))

        def histogram(name: str) -> Histogram:
            d = doc(name)
            return self._add(Histogram(d.name, d.help, d.labels, BUCKETS_S))

        self._actions = counter("dbvip_actions_total")
        self._conflicts = counter("dbvip_conflicts_total")
        self._hooks = counter("dbvip_hook_runs_total")
        self._reader_moves = counter("dbvip_reader_moves_total")
        self._action_s = histogram("dbvip_action_duration_seconds")
        self._probe_s = histogram("dbvip_probe_duration_seconds")
        self._etcd_s = histogram("dbvip_etcd_request_duration_seconds")
        for kind in ACTION_KINDS:  # every series exists from the start, at 0
            for result in ("ok", "failed"):
                self._actions.labels(kind, result)
        # A counter's first increment must be a step up from 0, or increase()
        # in an alert rule does not see it.
        for event in LABEL_VALUES["event"]:
            for result in HOOK_RESULTS:
                self._hooks.labels(event, result)
        snapshots = _SnapshotCollector(
            board, {"cluster": cluster, "node": node, "vip": vip}, tuple(reader_vips)
        )
        self.registry.collector(snapshots.names(), snapshots.collect)
        self._refusal_ready: Gauge | None = None
        self._ended: Counter | None = None
        if refusal:
            d = doc("dbvip_refusal_ready")
            self._refusal_ready = self._add(Gauge(d.name, d.help))
            self._refusal_ready.set(1)  # until a setting fails
            self._ended = counter("dbvip_connections_ended_total")
        self._peer_answers: Counter | None = None
        self._peers: Gauge | None = None
        if failsafe:
            self._peer_answers = counter("dbvip_failsafe_peer_answers_total")
            d = doc("dbvip_failsafe_peers")
            self._peers = self._add(Gauge(d.name, d.help, d.labels))
            for kind in get_args(PeerAnswerKind):  # every series from the start, at 0
                self._peer_answers.labels(kind)
                self._peers.labels(kind)

    def _add(self, metric: _M) -> _M:
        self.registry.add(metric)
        return metric

    # -- the runner's Observer ----------------------------------------------

    def action_done(self, kind: str, result: ActionResult, seconds: float) -> None:
        self._actions.labels(kind, result).inc()
        self._action_s.labels(kind).observe(seconds)

    def probe_done(self, role: Role, seconds: float) -> None:
        self._probe_s.labels(role.value).observe(seconds)

    def etcd_done(self, operation: EtcdOperation, answered: bool, seconds: float) -> None:
        self._etcd_s.labels(operation, "ok" if answered else "failed").observe(seconds)

    def reader_moved(self, vip: str, change: ReaderChange, reason: str) -> None:
        self._reader_moves.labels(vip, change, reason).inc()

    def peers_answered(self, answers: dict[PeerAnswerKind, int]) -> None:
        if self._peer_answers is None or self._peers is None:
            return
        for kind, count in answers.items():
            self._peer_answers.labels(kind).inc(count)
            self._peers.labels(kind).set(count)

    # -- the hook runner's observer (called on its worker thread) -------------

    def hook_done(self, event: EventKind, result: HookResult) -> None:
        self._hooks.labels(event.value, result).inc()

    # -- the refusal's observer (called on the loop thread) -------------------

    def refusal_done(self, ready: bool) -> None:
        if self._refusal_ready is not None:
            self._refusal_ready.set(1 if ready else 0)

    def connections_ended(self, count: int) -> None:
        if self._ended is not None:
            self._ended.inc(count)

    # -- publish hook ---------------------------------------------------------

    def offer(self, snapshot: Snapshot) -> None:
        """Counts episodes of conflict (called on the loop thread only)."""
        if snapshot.reason == Reason.CONFLICT.value != self._last_reason:
            self._conflicts.inc()
        self._last_reason = snapshot.reason

    def render(self) -> bytes:
        return self.registry.render()


class _SnapshotCollector:
    """The gauges, all read from one snapshot at scrape time."""

    def __init__(
        self, board: Board, identity: dict[str, str], reader_vips: tuple[str, ...]
    ) -> None:
        self._board = board
        self._identity = identity
        self._reader_vips = reader_vips

    def names(self) -> list[str]:
        """Declared up front, so a clash is found at registration."""
        families = self._families(None, 0.0, _Verdicts(alive=False, ready=False, etcd=False))
        return [family.name for family in families]

    def collect(self) -> Iterator[Family]:
        board = self._board
        verdicts = _Verdicts(
            alive=board.liveness().ok, ready=board.readiness().ok, etcd=board.etcd_answering()
        )
        return self._families(board.latest(), board.now_s(), verdicts)

    def _families(self, snap: Snapshot | None, now_s: float, v: _Verdicts) -> Iterator[Family]:
        def gauge(name: str) -> GaugeFamily:
            d = doc(name)
            return GaugeFamily(d.name, d.help, d.labels)

        def flag(name: str, on: bool) -> GaugeFamily:
            family = gauge(name)
            family.add_metric([], 1.0 if on else 0.0)
            return family

        info = gauge("dbvip_info")
        info.add_metric([self._identity[label] for label in doc("dbvip_info").labels], 1.0)
        yield info

        role = gauge("dbvip_role")
        current = snap.role if snap else Role.UNKNOWN
        for each_role in Role:
            role.add_metric([each_role.value], 1.0 if each_role is current else 0.0)
        yield role
        reason = gauge("dbvip_decision_reason")
        for each_reason in Reason:
            shown = snap is not None and snap.reason == each_reason.value
            reason.add_metric([each_reason.value], 1.0 if shown else 0.0)
        yield reason
        held = gauge("dbvip_lease_held")
        held.add_metric([], 1.0 if snap and snap.lease_id is not None else 0.0)
        yield held
        vip = gauge("dbvip_vip_present")
        vip.add_metric([], 1.0 if snap and snap.vip_present else 0.0)
        yield vip
        yield flag("dbvip_alive", v.alive)
        yield flag("dbvip_ready", v.ready)
        yield flag("dbvip_etcd_answering", v.etcd)
        deadline = gauge("dbvip_lease_deadline_remaining_seconds")
        if snap and snap.deadline_in_s is not None:
            deadline.add_metric([], snap.deadline_in_s - (now_s - snap.tick_s))
        yield deadline
        age = gauge("dbvip_last_decision_age_seconds")
        if snap:
            age.add_metric([], now_s - snap.tick_s)
        yield age
        for name, fact in (
            ("dbvip_failsafe_window_remaining_seconds", "failsafe_window_in_s"),
            ("dbvip_failsafe_promise_remaining_seconds", "promised_for_s"),
        ):
            left = gauge(name)
            if snap and fact in snap.facts:
                left.add_metric([], float(snap.facts[fact]) - (now_s - snap.tick_s))
            yield left
        yield from self._reader_families(snap, gauge)

    def _reader_families(
        self, snap: Snapshot | None, gauge: Callable[[str], GaugeFamily]
    ) -> Iterator[Family]:
        held = gauge("dbvip_reader_vip_held")
        here = set(snap.reader_vips) if snap else set()
        for reader_vip in self._reader_vips:
            held.add_metric([reader_vip], 1.0 if reader_vip in here else 0.0)
        yield held
        lag = gauge("dbvip_lag_bytes")
        if snap and snap.pool and snap.lag_bytes is not None:
            lag.add_metric([], float(snap.lag_bytes))
        yield lag
        in_pool = gauge("dbvip_in_pool")
        if snap and snap.pool:
            in_pool.add_metric(
                [snap.pool], 1.0 if snap.pool in (IN_POOL, IN_POOL_NOT_STREAMING) else 0.0
            )
        yield in_pool


@dataclass(frozen=True)
class _Verdicts:
    alive: bool
    ready: bool
    etcd: bool
