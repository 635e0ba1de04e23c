"""The reader pool's rounds within one tick: look, decide, act, report.

Run before the writer's decision in every tick, so that a replica that was
just promoted removes its reader VIPs before (or as) it takes the writer VIP.
Every etcd request here is bounded by the writer lease's limit too: the
reader rounds never make the writer VIP late to come down.
"""

from __future__ import annotations

from dataclasses import replace

from dbvip.acting import Actor
from dbvip.actions import (
    Failed,
    VipAdded,
    VipRemoved,
)
from dbvip.identity import Identity
from dbvip.looking import ReaderLooker
from dbvip.model import (
    Lease,
    NodeState,
    Observation,
    Timing,
    VipPresence,
)
from dbvip.ownership import name_conflict
from dbvip.reader_model import ReaderObservation, ReaderSettings, ReaderState
from dbvip.reader_outcomes import absorb_reader
from dbvip.readers import ReaderDecision, decide_readers
from dbvip.reporting import ReaderReporter
from dbvip.shell import Ports, ReaderPorts, Telemetry

# Rounds of decide/act for the readers within one tick: a give-back, a
# grant, a take and its add, an announcement.
MAX_READER_ROUNDS = 8


class ReaderRounds:
    def __init__(
        self,
        settings: ReaderSettings,
        timing: Timing,
        ports: Ports,
        readers: ReaderPorts,
        actor: Actor,
        telemetry: Telemetry,
        me: Identity,
    ) -> None:
        self.settings = settings
        self.timing = timing
        self.ports = ports
        self.actor = actor
        self.me = me
        self.looker = ReaderLooker(timing, readers, ports.clock, telemetry)
        self.reporter = ReaderReporter(telemetry)
        self.state = ReaderState()
        self.presence: dict[str, VipPresence] = {}

    def changed(self) -> None:
        """Watch callback (via the runner): the pool's keys changed."""
        self.looker.dirty = True

    def lease(self) -> Lease | None:
        return self.state.lease

    def run(self, writer: NodeState, obs: Observation, limit_s: float) -> ReaderDecision:
        """The reader rounds of one tick, given the writer's state and look."""
        clock = self.ports.clock
        reset_until = writer.reset_until_s
        if obs.etcd_reset is not None:
            reset_until = obs.now_s + self.timing.ttl_s
        self.presence = self.looker.presence()
        pool, cause = self.looker.pool(limit_s, obs.stopping)
        look = ReaderObservation(
            now_s=clock.monotonic_s(),
            role=obs.role.role,
            lsn=obs.role.lsn,
            streaming=obs.role.streaming,
            received_lsn=obs.role.received_lsn,
            presence=self.presence,
            pool=pool,
            pool_cause=cause,
            stopping=obs.stopping,
            maintenance=obs.maintenance,
            name_conflict=name_conflict(obs, self.me) is not None,
            holds_writer=writer.lease is not None,
            reset_until_s=reset_until,
            writer_limit_s=limit_s,
        )
        decision = decide_readers(self.state, look, self.settings, self.timing, self.me)
        for _ in range(MAX_READER_ROUNDS):
            self.state = decision.state
            self.reporter.note(decision.reason, decision.detail)
            if not decision.actions:
                break
            for action in decision.actions:
                outcome = self.actor.execute_reader(
                    action, decision.request_deadline_s, lambda: self.state.lease
                )
                self.reporter.report(action, outcome, decision.reason)
                now = clock.monotonic_s()
                self.state = absorb_reader(self.state, outcome, now, self.timing)
                presence = _presence_after(outcome)
                if presence is not None:
                    self.presence = {**self.presence, **presence}
                if isinstance(outcome, Failed):
                    break
            look = replace(look, now_s=clock.monotonic_s(), presence=self.presence)
            decision = decide_readers(self.state, look, self.settings, self.timing, self.me)
        return decision


def _presence_after(outcome: object) -> dict[str, VipPresence] | None:
    if isinstance(outcome, VipAdded):
        return {outcome.vip: VipPresence.PRESENT}
    if isinstance(outcome, VipRemoved):
        return {outcome.vip: VipPresence.ABSENT}
    return None
