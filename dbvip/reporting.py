"""The loop's voice: one log line per change of reason, one line per action,
a snapshot after each decision, events handed over after a whole chain.

Nothing here may stop the safety loop: publishing and handing over are
guarded, and the sinks they call must return at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from dbvip.actions import (
    Action,
    Announced,
    Failed,
    LeaseGone,
    LeaseRefused,
    LeaseRenewed,
    Outcome,
    VipAdded,
    VipRemoved,
)
from dbvip.events import Event, EventTracker
from dbvip.model import (
    Decision,
    Observation,
    Reason,
    Role,
    VipPresence,
)
from dbvip.reader_model import ReaderRefused
from dbvip.shell import ActionResult, ReaderChange, Telemetry

log = logging.getLogger("dbvip")


@dataclass(frozen=True)
class Snapshot:
    """What this node shows the world after each decision."""

    node: str
    reason: str
    detail: str
    facts: dict[str, str]
    role: Role
    timeline: int | None
    lsn: str | None
    vip_present: bool
    lease_id: int | None
    deadline_in_s: float | None
    tick_s: float  # monotonic instant of the decision
    last_failure: str
    # The loop's own etcd requests (not the member reports): when the last
    # answer came (monotonic), and why the latest request got none ("" if it did).
    etcd_answered_s: float | None = None
    etcd_error: str = "no etcd request yet"
    # The reader pool (empty when no reader VIPs are configured): the reader
    # VIPs this node has, its place in the pool ("in_pool" or why not), its
    # lag behind the primary, and the reader policy's reason and detail.
    reader_vips: tuple[str, ...] = ()
    pool: str = ""
    lag_bytes: int | None = None
    reader_reason: str = ""
    reader_detail: str = ""
    # The reader lease this node holds, if any: its member report rides on
    # it (one lease kept alive for both, see ``dbvip.members``).
    reader_lease_id: int | None = None


@dataclass(frozen=True)
class ReaderFacts:
    """The reader pool's part of a snapshot."""

    vips: tuple[str, ...]  # reader VIPs on this node
    pool: str  # "in_pool", or why not
    lag_bytes: int | None
    reason: str
    detail: str
    lease_id: int | None = None  # the reader lease, if any


NO_READERS = ReaderFacts((), "", None, "", "")


class Reporter:
    def __init__(
        self,
        node: str,
        telemetry: Telemetry,
        events: EventTracker,
        publish: Callable[[Snapshot], None],
        on_event: Callable[[Event], None],
    ) -> None:
        self.node = node
        self.telemetry = telemetry
        self.events = events
        self.publish = publish
        self.on_event = on_event  # must not block: hooks run elsewhere
        self._last_reason: tuple[str, str] | None = None
        self._last_failure = ""
        self.reader_facts: Callable[[], ReaderFacts] = lambda: NO_READERS

    def hand_over_events(self) -> None:
        # After the whole chain: a release is reported once the VIP is down
        # and the key released, never in between.
        for event in self.events.take():
            try:
                self.on_event(event)
            except Exception:
                log.exception("event=%s not handed over", event.kind.value)

    def note(self, decision: Decision, obs: Observation) -> None:
        # While holding, details (renewing, refreshing, announcing) change every
        # few seconds; only a change of reason is news there.
        routine = decision.reason is Reason.HOLDING
        key = (decision.reason.value, "" if routine else decision.detail)
        if key != self._last_reason:
            self._last_reason = key
            facts = " ".join(f"{k}={v}" for k, v in decision.facts.items())
            log.info(
                "reason=%s detail=%r %s",
                decision.reason.value,
                decision.detail,
                facts,
                extra={"reason": decision.reason.value, "facts": decision.facts},
            )
        lease = decision.state.lease
        readers = self.reader_facts()
        snapshot = Snapshot(
            node=self.node,
            reason=decision.reason.value,
            detail=decision.detail,
            facts=decision.facts,
            role=obs.role.role,
            timeline=obs.role.timeline,
            lsn=obs.role.lsn,
            vip_present=obs.vip is VipPresence.PRESENT,
            lease_id=lease.lease_id if lease else None,
            deadline_in_s=lease.deadline_s - obs.now_s if lease else None,
            tick_s=obs.now_s,
            last_failure=decision.state.last_failure,
            etcd_answered_s=self.telemetry.etcd_answered_s,
            etcd_error=self.telemetry.etcd_error,
            reader_vips=readers.vips,
            pool=readers.pool,
            lag_bytes=readers.lag_bytes,
            reader_reason=readers.reason,
            reader_detail=readers.detail,
            reader_lease_id=readers.lease_id,
        )
        try:
            self.publish(snapshot)
        except Exception:  # status and metrics must never stop the safety loop
            log.exception("publishing the snapshot failed")

    def report(self, action: Action, outcome: Outcome, decision: Decision) -> None:
        name = type(action).__name__
        # JSON lines carry the decision's reason and facts on its action lines too
        # (text lines stay short: the decision's own line above has them).
        extra = {"action": name, "reason": decision.reason.value, "facts": decision.facts}
        if isinstance(outcome, Failed):
            if outcome.cause != self._last_failure:
                self._last_failure = outcome.cause
                log.warning(
                    "action=%s failed cause=%r",
                    name,
                    outcome.cause,
                    extra={**extra, "cause": outcome.cause},
                )
            return
        self._last_failure = ""
        quiet = isinstance(outcome, LeaseRenewed | Announced) or (
            isinstance(outcome, VipAdded) and outcome.was_present
        )
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "action=%s done %s",
            name,
            describe(outcome),
            extra=extra,
        )


class ReaderReporter:
    """The reader policy's voice: one line per change of its reason, one per
    move (a reader VIP added or removed here), moves counted by reason."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._last: tuple[str, str] | None = None
        self._last_failure = ""

    def note(self, reason: str, detail: str) -> None:
        # "holding" details (refreshing, announcing) are routine, not news.
        key = (reason, "" if reason == "holding" else detail)
        if key != self._last:
            self._last = key
            log.info("readers reason=%s detail=%r", reason, detail, extra={"reason": reason})

    def report(self, action: object, outcome: object, reason: str) -> None:
        name = type(action).__name__
        extra = {"action": name, "reason": reason}
        if isinstance(outcome, Failed):
            if outcome.cause != self._last_failure:
                self._last_failure = outcome.cause
                log.warning("action=%s failed cause=%r", name, outcome.cause, extra=extra)
            return
        self._last_failure = ""
        moved: ReaderChange | None = None
        vip = ""
        if isinstance(outcome, VipAdded) and not outcome.was_present:
            moved, vip = "taken", outcome.vip
        elif isinstance(outcome, VipRemoved) and outcome.was_present:
            moved, vip = "given_back", outcome.vip
        if moved is not None:
            change = moved
            self.telemetry.tell(lambda o: o.reader_moved(vip, change, reason))
            log.info("reader VIP %s %s reason=%s", vip, moved, reason, extra=extra)
            return
        quiet = isinstance(outcome, LeaseRenewed | Announced | VipAdded | VipRemoved)
        log.log(logging.DEBUG if quiet else logging.INFO, "action=%s done %s", name,
                describe(outcome), extra=extra)  # fmt: skip


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def action_kind(action: object) -> str:
    """``AddVip`` -> ``add_vip``: the action's label in metrics."""
    return snake_case(type(action).__name__)


def action_result(outcome: object) -> ActionResult:
    if isinstance(outcome, Failed):
        return "failed"
    if isinstance(outcome, LeaseRefused | ReaderRefused):
        return "refused"
    if isinstance(outcome, LeaseGone):
        return "gone"
    return "ok"


def describe(outcome: object) -> str:
    """An outcome as ``field=value`` pairs, lease ids in hex as etcdctl shows them."""
    fields = vars(outcome)
    return " ".join(f"{k}={v:x}" if k == "lease_id" else f"{k}={v}" for k, v in fields.items())
