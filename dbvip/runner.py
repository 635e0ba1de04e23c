"""The loop: look, decide, act in order, report.

The only place that sleeps. What it calls is bounded in time (see
``looking`` and ``acting``); the three parts it sequences live in their own
modules so each can be read alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from dbvip.absorb import absorb
from dbvip.acting import Actor
from dbvip.actions import (
    Action,
    AskPeers,
    Failed,
    Outcome,
)
from dbvip.core import decide
from dbvip.events import Event, EventTracker
from dbvip.failsafe import held_lease
from dbvip.looking import Looker
from dbvip.model import (
    Decision,
    NodeState,
    Observation,
    Reason,
    Timing,
    VipPresence,
)
from dbvip.promises import Failsafe
from dbvip.reader_loop import ReaderRounds
from dbvip.reader_model import IN_POOL, IN_POOL_NOT_STREAMING, ReaderSettings
from dbvip.reporting import (
    ReaderFacts,
    Reporter,
    Snapshot,
    action_kind,
    action_result,
    describe,
)
from dbvip.schedule import request_deadline_s
from dbvip.shell import ActionResult, EtcdOperation, NoObserver, Observer, Ports, Telemetry

__all__ = [
    "ActionResult",
    "EtcdOperation",
    "EventWaiter",
    "NoObserver",
    "Observer",
    "Ports",
    "Runner",
    "Snapshot",
    "Waiter",
    "action_kind",
    "action_result",
    "describe",
]

# Rounds of decide/act within one tick: enough for acquire, add, announce.
MAX_ROUNDS = 6


class Waiter(Protocol):
    """Sleeps until a timeout or a wake-up (signal, watch event)."""

    def wait(self, timeout_s: float) -> None: ...

    def wake(self) -> None: ...


class EventWaiter:
    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, timeout_s: float) -> None:
        self._event.wait(max(0.0, timeout_s))
        self._event.clear()

    def wake(self) -> None:
        self._event.set()


class Runner:
    def __init__(
        self,
        node: str,
        timing: Timing,
        ports: Ports,
        waiter: Waiter,
        publish: Callable[[Snapshot], None] = lambda _: None,
        observer: Observer | None = None,
        on_event: Callable[[Event], None] = lambda _: None,
        reader_settings: ReaderSettings | None = None,
    ) -> None:
        self.node = node
        # The identity the store writes into every value: the core acts only
        # on keys and leases that carry it (or this sidecar's from before).
        self.identity = ports.store.identity
        self.timing = timing
        self.ports = ports
        self.waiter = waiter
        self.telemetry = Telemetry(ports.clock, observer)
        self.looker = Looker(node, timing, ports, self.telemetry)
        self.actor = Actor(timing, ports, self.telemetry)
        events = EventTracker(ports.clock.wall_iso)
        self.reporter = Reporter(node, self.telemetry, events, publish, on_event)
        self.state = NodeState()
        self.stopping = threading.Event()
        self.failsafe: Failsafe | None = None  # set by the wiring when failsafe is on
        self.readers: ReaderRounds | None = None
        if ports.readers is not None and reader_settings is not None and reader_settings.vips:
            self.readers = ReaderRounds(
                reader_settings, timing, ports, ports.readers, self.actor, self.telemetry,
                self.identity,
            )  # fmt: skip
            self.reporter.reader_facts = self._reader_facts
            self.readers.looker.shared = lambda: self.looker.pool_seen

    @property
    def observer(self) -> Observer:
        return self.telemetry.observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self.telemetry.observer = observer

    @property
    def publish(self) -> Callable[[Snapshot], None]:
        return self.reporter.publish

    @publish.setter
    def publish(self, publish: Callable[[Snapshot], None]) -> None:
        self.reporter.publish = publish

    @property
    def on_event(self) -> Callable[[Event], None]:
        return self.reporter.on_event

    @on_event.setter
    def on_event(self, on_event: Callable[[Event], None]) -> None:
        self.reporter.on_event = on_event

    # -- wiring ---------------------------------------------------------------

    def key_changed(self) -> None:
        """Watch callback: the writer key, a maintenance flag, the failsafe
        record or this node's own report changed (or the watch started
        afresh): one read of the cluster's keys at once."""
        self.looker.key_dirty = True
        self.looker.members_dirty = True
        self.waiter.wake()

    def pool_changed(self) -> None:
        """Watch callback: the reader pool's keys or members changed."""
        if self.readers is not None:
            self.readers.changed()
        self.waiter.wake()

    def stop(self) -> None:
        """Signal handler: release everything, then leave ``run``."""
        self.stopping.set()
        self.waiter.wake()

    # -- loop -----------------------------------------------------------------

    def run(self, shutdown_attempts: int = 5) -> NodeState:
        while not self.stopping.is_set():
            decision = self.tick()
            if not self.stopping.is_set():
                self.waiter.wait(decision.wake_s - self.ports.clock.monotonic_s())
        # Release everything; a failed removal is retried after its backoff,
        # a few times, before giving up (the kernel lifetime still bounds it).
        for _ in range(shutdown_attempts):
            decision = self.tick(stopping=True)
            if decision.reason is Reason.STOPPED and self._readers_released():
                break
            self.waiter.wait(decision.wake_s - self.ports.clock.monotonic_s())
        return self.state

    def tick(self, stopping: bool = False) -> Decision:
        held = self.state.lease  # a release reports the lease it was under
        events = self.reporter.events
        obs = self.observe(stopping)
        fs = self.failsafe
        if fs is not None:
            fs.record_read(self.looker.failsafe_record, self.looker.members_read_s)
            limit = request_deadline_s(self.state, obs.now_s, obs.vip, self.timing)
            fs.keep_record(self.state, obs, limit - obs.now_s)
            obs = fs.look(
                replace(obs, now_s=self.ports.clock.monotonic_s()), self.looker.peers_seen
            )
        reader_wake_s = float("inf")
        if self.readers is not None:
            # Before the writer decides: a replica just promoted gives its
            # reader VIPs up before (or as) it takes the writer VIP.
            limit = request_deadline_s(self.state, obs.now_s, obs.vip, self.timing)
            reader_wake_s = self.readers.run(self.state, obs, limit).wake_s
            obs = replace(obs, now_s=self.ports.clock.monotonic_s())
        decision = decide(self.state, obs, self.timing, self.identity)
        for _ in range(MAX_ROUNDS):
            self.state = decision.state
            self.reporter.note(decision, obs)
            events.decided(decision, obs, self.state.lease or held)
            if not decision.actions:
                break
            for action in decision.actions:
                outcome = self.execute(action, decision.request_deadline_s)
                self.reporter.report(action, outcome, decision)
                events.happened(outcome, decision, obs, self.state.lease or held)
                self.state, obs = absorb(self.state, obs, outcome, self.timing, self.identity)
                if isinstance(outcome, Failed):
                    break  # the rest of the chain is only safe after this one
            obs = replace(obs, now_s=self.ports.clock.monotonic_s())
            decision = decide(self.state, obs, self.timing, self.identity)
        if fs is not None:
            fs.settle(self.state, obs)
        self.reporter.hand_over_events()
        if reader_wake_s < decision.wake_s:
            decision = replace(decision, wake_s=reader_wake_s)
        return decision

    def _readers_released(self) -> bool:
        r = self.readers
        if r is None:
            return True
        present = any(p is not VipPresence.ABSENT for p in r.presence.values())
        return r.state.lease is None and not present

    def _reader_facts(self) -> ReaderFacts:
        r = self.readers
        assert r is not None
        st = r.state
        here = tuple(v for v, p in r.presence.items() if p is VipPresence.PRESENT)
        # In the pool, the judgement's why is "in_pool" or "in_pool_not_streaming".
        in_pool = st.why if st.why in (IN_POOL, IN_POOL_NOT_STREAMING) else IN_POOL
        pool = in_pool if st.in_pool else st.why
        lease_id = st.lease.lease_id if st.lease is not None else None
        return ReaderFacts(here, pool, st.lag_bytes, st.reason, st.detail, lease_id)

    def observe(self, stopping: bool = False) -> Observation:
        return self.looker.observe(self.state, stopping)

    def execute(self, action: Action, request_deadline_s: float) -> Outcome:
        """Run one action; an adapter that raises is a failure, never a crash."""
        fs = self.failsafe
        if isinstance(action, AskPeers):
            started = self.ports.clock.monotonic_s()
            outcome = fs.ask(action, request_deadline_s) if fs else Failed(action, "failsafe off")
            seconds = self.ports.clock.monotonic_s() - started
            result = action_result(outcome)
            self.telemetry.tell(lambda o: o.action_done("ask_peers", result, seconds))
            if fs is not None:
                tally = fs.tally()
                self.telemetry.tell(lambda o: o.peers_answered(tally))
            return outcome
        why = fs.may_start(action) if fs is not None else None
        if why is not None:
            return Failed(action, why)
        # The VIP's kernel lifetime ends by the lease's deadline, or by the end
        # of an acknowledged failsafe window when that is later.
        return self.actor.execute(action, request_deadline_s, lambda: held_lease(self.state))
