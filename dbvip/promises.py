"""The failsafe's shell: this node's promises to holders, and its asks as a
holder, between the loop and the peer channel.

One lock guards the promise and what the loop is doing: an ask is answered
(the check and the promise in one step) only while no take is under way,
and the loop starts a take (acquire, adopt, add the VIP) only while no
promise runs. So an acknowledgement never races a take in progress.

At start a promise is assumed to run for one whole window: this process
cannot know what the one before it promised.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Protocol

from dbvip.actions import (
    AcquireLease,
    Action,
    AddVip,
    AdoptLease,
    AskPeers,
    Failed,
    Outcome,
    PeersAcked,
)
from dbvip.failsafe import (
    Acked,
    Declined,
    PeerLocal,
    answer,
    ask_set,
    promised,
    record_for,
    record_may_change,
)
from dbvip.identity import Identity
from dbvip.model import (
    FailsafeRecord,
    KeyUnknown,
    NodeState,
    Observation,
    PeerView,
    Role,
    Seat,
    Timing,
    VipPresence,
)
from dbvip.ports import Clock, Done, Unknown
from dbvip.shell import PeerAnswerKind

log = logging.getLogger("dbvip.failsafe")

PeerAnswer = Acked | Declined | Unknown


class PeerChannel(Protocol):
    """Asks peers for a failsafe acknowledgement (``dbvip.adapters.peers``)."""

    def ask_all(
        self, holder: Identity, peers: tuple[Seat, ...], window_s: float, timeout_s: float
    ) -> tuple[tuple[Seat, PeerAnswer], ...]:
        """Every peer's answer, all asked at once and back by ``timeout_s``;
        Unknown for a peer that could not be reached or whose answer could
        not be proven to come from it."""
        ...


class RecordStore(Protocol):
    def write_failsafe_record(self, record: FailsafeRecord, timeout_s: float) -> Done | Unknown: ...


class Failsafe:
    def __init__(
        self,
        me: Identity,
        timing: Timing,
        clock: Clock,
        channel: PeerChannel | None,
        store: RecordStore,
    ) -> None:
        self.me = me
        self.timing = timing
        self.clock = clock
        self.channel = channel  # None until the wiring gives it one
        self.store = store
        self._lock = threading.Lock()
        self._promised_until_s: float | None = clock.monotonic_s() + timing.failsafe_window_s
        self._promised_to = "an earlier process of this sidecar, maybe"
        self._local = PeerLocal(Role.UNKNOWN, False, VipPresence.UNKNOWN, False)
        self._confirmed: FailsafeRecord | None = None
        self._read: FailsafeRecord | None = None
        self._read_s = float("-inf")
        self._seen: tuple[Seat, ...] = ()
        self._endpoints: dict[Seat, str] = {}
        self.last_asks: tuple[tuple[Seat, PeerAnswer], ...] = ()
        self._last_peers: tuple[Seat, ...] = ()

    # -- a peer's side (the peer channel's server thread) ---------------------

    def answer(self, holder: Identity, window_s: float) -> Acked | Declined:
        with self._lock:
            now = self.clock.monotonic_s()
            if Seat.of(holder) == Seat.of(self.me):
                return Declined("asked by itself")
            result = answer(self._local, window_s, now, self.timing.failsafe_window_s)
            if isinstance(result, Acked) and (
                self._promised_until_s is None or result.until_s > self._promised_until_s
            ):
                self._promised_until_s = result.until_s
                self._promised_to = holder.short()
        log.info(
            "failsafe ask from %s window_s=%g answer=%s",
            holder.short(),
            window_s,
            result,
            extra={"reason": "failsafe_promise"},
        )
        return result

    # -- the loop's side ----------------------------------------------------------

    def look(self, obs: Observation, peers: tuple[PeerView, ...]) -> Observation:
        """The promise this node runs under, and the record as last read."""
        self._seen = tuple(Seat.of(p.identity) for p in peers if p.identity is not None)
        for p in peers:
            if p.identity is not None and p.failsafe:
                self._endpoints[Seat.of(p.identity)] = p.failsafe
        with self._lock:
            until = self._promised_until_s
        if until is not None and not promised(until, obs.now_s):
            until = None
        return replace(obs, promised_until_s=until, failsafe_record=self._read)

    def record_read(self, record: FailsafeRecord | None, read_s: float) -> None:
        """The record as the members read at ``read_s`` found it (None: there
        is none); an older read than the last one taken is no news."""
        if read_s <= self._read_s:
            return
        self._read_s = read_s
        self._read = record
        if record is not None and record == self._confirmed:
            return
        if record is not None and record.holder == Seat.of(self.me):
            self._confirmed = record

    def keep_record(self, state: NodeState, obs: Observation, timeout_s: float) -> None:
        """While holding the writer lease and reading etcd, keep the record
        listing exactly the peers seen; the asks go to what it lists."""
        if state.lease is None or isinstance(obs.writer, KeyUnknown) or timeout_s <= 0:
            return
        if not record_may_change(state, obs.now_s):
            return
        want = record_for(self.me, self._seen)
        if want == self._read and want == self._confirmed:
            return
        written = self.store.write_failsafe_record(want, timeout_s)
        if isinstance(written, Unknown):
            log.warning("failsafe record not written cause=%r", written.cause)
            return
        self._confirmed = self._read = want

    def may_start(self, action: Action) -> str | None:
        """Before a take: why it must not start (a promise runs), or None
        (and the take counts as under way until ``settle``)."""
        if not isinstance(action, AcquireLease | AdoptLease | AddVip):
            return None
        with self._lock:
            now = self.clock.monotonic_s()
            if promised(self._promised_until_s, now):
                assert self._promised_until_s is not None
                return (
                    f"failsafe promise to {self._promised_to} runs "
                    f"{self._promised_until_s - now:.2f} s more"
                )
            self._local = replace(self._local, taking=True)
        return None

    def settle(self, state: NodeState, obs: Observation) -> None:
        """After a tick: what this node holds, for the next answer."""
        holds = state.lease is not None or state.failsafe_until_s is not None
        with self._lock:
            self._local = PeerLocal(obs.role.role, holds, obs.vip, taking=False)

    def ask(self, action: AskPeers, deadline_s: float) -> Outcome:
        peers = ask_set(self._confirmed, self._read, self._seen, self.me)
        self.last_asks, self._last_peers = (), peers or ()
        if peers is None:
            return Failed(action, "no failsafe record of this node in etcd: nobody to ask")
        if self.channel is None:
            return Failed(action, "no peer channel")
        sent = self.clock.monotonic_s()
        timeout = min(self.timing.request_timeout_s, deadline_s - sent)
        if timeout <= 0:
            return Failed(action, "no time left to ask")
        answers = self.channel.ask_all(self.me, peers, action.window_s, timeout)
        self.last_asks = answers
        got = dict(answers)
        missing = [f"{s.node}: not asked" for s in peers if s not in got]
        bad = [
            f"{s.node}: {a.reason if isinstance(a, Declined) else a.cause}"
            for s, a in answers
            if not isinstance(a, Acked)
        ]
        if missing or bad:
            return Failed(action, "; ".join(missing + bad))
        granted = min((a.window_s for a in got.values() if isinstance(a, Acked)), default=0.0)
        window = min(action.window_s, granted) if peers else action.window_s
        return PeersAcked(sent, window, len(peers))

    def endpoint_of(self, seat: Seat) -> tuple[str, int] | None:
        """Where a peer's failsafe endpoint is, as its member report said."""
        endpoint = self._endpoints.get(seat)
        if endpoint is None:
            return None
        host, _, port = endpoint.rpartition(":")
        if not port.isdigit():
            return None
        return host.strip("[]"), int(port)

    def promise(self) -> tuple[float | None, str]:
        """The promise this node gave (until when, monotonic; None: none
        given) and to whom."""
        with self._lock:
            return self._promised_until_s, self._promised_to

    def tally(self) -> dict[PeerAnswerKind, int]:
        """The last ask's answers by kind; a peer in the record that was not
        asked counts as unreachable."""
        asked = dict(self.last_asks)
        kinds: dict[PeerAnswerKind, int] = {"acked": 0, "declined": 0, "unreachable": 0}
        for seat in self._last_peers:
            kinds[_kind(asked.get(seat))] += 1
        return kinds


def _kind(answer_: PeerAnswer | None) -> PeerAnswerKind:
    if isinstance(answer_, Acked):
        return "acked"
    if isinstance(answer_, Declined):
        return "declined"
    return "unreachable"  # no answer, or none proven to come from the peer asked
