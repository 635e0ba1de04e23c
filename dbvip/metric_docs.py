"""The metrics dbvip exports, as data: name, kind, labels, help, and every
value a label can take. The exporter (``dbvip.metrics``) builds its series
from these; the README's table (``dbvip.docs``) and the example rules' and
dashboard's checks read them, without importing the exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from dbvip.actions import (
    Action,
)
from dbvip.events import EventKind
from dbvip.hooks import HookResult
from dbvip.model import (
    Reason,
    Role,
)
from dbvip.reader_model import POOL_WHYS
from dbvip.reporting import snake_case
from dbvip.shell import ActionResult, EtcdOperation, PeerAnswerKind, ReaderChange

ACTION_KINDS = tuple(snake_case(cls.__name__) for cls in get_args(Action))
HOOK_RESULTS: tuple[str, ...] = get_args(HookResult)


@dataclass(frozen=True)
class MetricDoc:
    name: str  # as exposed; histograms add _bucket, _sum and _count
    kind: str
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricDoc, ...] = (
    MetricDoc(
        "dbvip_role",
        "gauge",
        ("role",),
        "1 for the role the last probe gave, 0 for the others: " + ", ".join(r.value for r in Role),
    ),
    MetricDoc("dbvip_lease_held", "gauge", (), "1 while this node holds the writer lease"),
    MetricDoc(
        "dbvip_vip_present", "gauge", (), "1 when the VIP was on the interface at the last look"
    ),
    MetricDoc(
        "dbvip_lease_deadline_remaining_seconds",
        "gauge",
        (),
        "seconds left until the lease deadline, at scrape time (negative: past it); "
        "absent while no lease is held",
    ),
    MetricDoc(
        "dbvip_decision_reason",
        "gauge",
        ("reason",),
        "1 for the reason of the last decision, 0 for every other reason: "
        + ", ".join(r.value for r in Reason),
    ),
    MetricDoc(
        "dbvip_last_decision_age_seconds",
        "gauge",
        (),
        "seconds since the last decision (the loop's heartbeat)",
    ),
    MetricDoc(
        "dbvip_info",
        "gauge",
        ("cluster", "node", "vip"),
        "always 1; its labels name this sidecar (join on instance to label other metrics)",
    ),
    MetricDoc("dbvip_alive", "gauge", (), "1 when /healthz answers 200 (the loop is deciding)"),
    MetricDoc("dbvip_ready", "gauge", (), "1 when /readyz answers 200"),
    MetricDoc(
        "dbvip_etcd_answering",
        "gauge",
        (),
        "1 when the loop's latest etcd request was answered, within the etcd window "
        "(the etcd half of /readyz)",
    ),
    MetricDoc(
        "dbvip_actions_total",
        "counter",
        ("action", "result"),
        "actions executed, by kind (acquire_lease, adopt_lease, renew_lease, "
        "release_lease, add_vip, remove_vip, announce) and result (ok, refused: the "
        "key was held; gone: the lease no longer existed; failed)",
    ),
    MetricDoc(
        "dbvip_action_duration_seconds", "histogram", ("action",), "time one action took, by kind"
    ),
    MetricDoc(
        "dbvip_probe_duration_seconds",
        "histogram",
        ("role",),
        "time one PostgreSQL role probe took, by the role it gave (unknown: failed)",
    ),
    MetricDoc(
        "dbvip_etcd_request_duration_seconds",
        "histogram",
        ("operation", "result"),
        "time one etcd request of the loop took, by operation (read_writer, "
        "acquire_lease, adopt_lease, renew_lease, release_lease) and result (ok: "
        "answered, failed: no answer)",
    ),
    MetricDoc(
        "dbvip_conflicts_total",
        "counter",
        (),
        "times the decision turned to conflict: this node's database is primary "
        "while another node holds the writer key",
    ),
    MetricDoc(
        "dbvip_refusal_ready",
        "gauge",
        (),
        "1 when the last setting of the refusal (refuse_s: connections that still reach "
        "this node for a VIP it gave away are reset) worked, 0 when it failed (clients "
        "then wait for a TCP retry in a hand-off); absent when refuse_s is 0",
    ),
    MetricDoc(
        "dbvip_connections_ended_total",
        "counter",
        (),
        "connections on the VIP this node ended (a reset to each client) just before "
        "removing it; absent when refuse_s is 0",
    ),
    MetricDoc(
        "dbvip_failsafe_window_remaining_seconds",
        "gauge",
        (),
        "failsafe: seconds left of the window every peer acknowledged, at scrape time; "
        "absent while there is none",
    ),
    MetricDoc(
        "dbvip_failsafe_promise_remaining_seconds",
        "gauge",
        (),
        "failsafe: seconds left of the promise this node gave a holder not to take the "
        "writer VIP, at scrape time; absent while there is none",
    ),
    MetricDoc(
        "dbvip_failsafe_peer_answers_total",
        "counter",
        ("answer",),
        "failsafe: answers this holder got from its peers, by answer (acked; declined: "
        "the peer may not promise; unreachable: no answer, or none proven to come from "
        "the peer asked); absent with failsafe off",
    ),
    MetricDoc(
        "dbvip_failsafe_peers",
        "gauge",
        ("answer",),
        "failsafe: the last ask's peers by answer (acked, declined, unreachable); the "
        "holder keeps the VIP past its lease only while every peer acked; absent with "
        "failsafe off",
    ),
    MetricDoc(
        "dbvip_reader_vip_held",
        "gauge",
        ("reader_vip",),
        "1 when this node had the reader VIP on its interface at the last decision, 0 "
        "when not; one series per configured reader VIP (none without reader_vips)",
    ),
    MetricDoc(
        "dbvip_reader_moves_total",
        "counter",
        ("reader_vip", "change", "reason"),
        "reader VIPs added to (change taken) or removed from (given_back) this node, "
        "by the reader policy's reason (lagging, maintenance, rebalance, ...)",
    ),
    MetricDoc(
        "dbvip_lag_bytes",
        "gauge",
        (),
        "this replica's replay position behind the primary's WAL position as published "
        "in etcd, or behind its own received position if more, in bytes; absent when "
        "unknown or without reader_vips",
    ),
    MetricDoc(
        "dbvip_in_pool",
        "gauge",
        ("why",),
        "1 while this node is in the reader pool (why in_pool, or in_pool_not_streaming), "
        "else 0 with why saying "
        "why not (lagging, rejoining, not_streaming, maintenance, primary, ...); "
        "absent without reader_vips",
    ),
    MetricDoc(
        "dbvip_hook_runs_total",
        "counter",
        ("event", "result"),
        "hook runs, by event (" + ", ".join(k.value for k in EventKind) + ") and result "
        "(ok; failed: non-zero exit or killed by a signal; timeout: killed past "
        "hook_timeout_s; error: could not be started; dropped: never run, the queue "
        "was full or the sidecar stopping)",
    ),
)
_BY_NAME = {m.name: m for m in METRICS}

# Every value each label can take (dbvip_info's are the configuration's own):
# the series a rule or a dashboard may select, checked by tests/examples.
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "role": tuple(r.value for r in Role),
    "reason": tuple(r.value for r in Reason),
    "action": ACTION_KINDS,
    "event": tuple(k.value for k in EventKind),
    "operation": get_args(EtcdOperation),
    "change": get_args(ReaderChange),
    "answer": get_args(PeerAnswerKind),
    "why": POOL_WHYS,
}
# Labels whose values are open-ended (the configuration's): not checked
# against a list.
OPEN_LABELS = frozenset({"cluster", "node", "vip", "reader_vip"})
# A label that means something else on one metric; None: open-ended.
METRIC_LABEL_VALUES: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("dbvip_reader_moves_total", "reason"): None,  # the reader policy's reasons
}
# "result" means something else on each metric.
RESULT_VALUES: dict[str, tuple[str, ...]] = {
    "dbvip_actions_total": get_args(ActionResult),
    "dbvip_etcd_request_duration_seconds": ("ok", "failed"),
    "dbvip_hook_runs_total": HOOK_RESULTS,
}


def doc(name: str) -> MetricDoc:
    return _BY_NAME[name]
