"""The failsafe shell (``dbvip.promises``): the promise book shared by the
peer endpoint and the loop, the record it keeps, the asks it makes."""

from __future__ import annotations

import threading
from dataclasses import replace

from dbvip.actions import (
    AcquireLease,
    AddVip,
    AskPeers,
    Failed,
    PeersAcked,
)
from dbvip.failsafe import Acked, Declined, record_for
from dbvip.identity import Identity
from dbvip.model import (
    FailsafeRecord,
    KeyUnknown,
    NodeState,
    PeerView,
    Role,
    RoleReading,
    Seat,
    Timing,
    VipPresence,
)
from dbvip.ports import Done, Unknown
from dbvip.promises import Failsafe, PeerAnswer
from tests.fakes import FakeClock
from tests.unit.test_core import HOLDING, MINE, obs

TF = Timing(failsafe_window_s=10.0)
ME = Identity("n2", "i2", "h2", "eth0")
HOLDER = Identity("n1", "i1", "h1", "eth0")
N3 = Identity("n3", "i3", "h3", "eth0")
IDLE = obs(role=RoleReading(Role.REPLICA), writer=MINE, vip=VipPresence.ABSENT)


class Records:
    def __init__(self) -> None:
        self.written: list[FailsafeRecord] = []
        self.fail = False

    def write_failsafe_record(self, record: FailsafeRecord, timeout_s: float) -> Done | Unknown:
        if self.fail:
            return Unknown("timed out")
        self.written.append(record)
        return Done()


class Channel:
    def __init__(self, answers: dict[Seat, PeerAnswer]) -> None:
        self.answers = answers
        self.asked: list[tuple[Seat, ...]] = []

    def ask_all(
        self, holder: Identity, peers: tuple[Seat, ...], window_s: float, timeout_s: float
    ) -> tuple[tuple[Seat, PeerAnswer], ...]:
        self.asked.append(peers)
        return tuple((s, self.answers.get(s, Unknown("no answer"))) for s in peers)


def book(clock: FakeClock, channel: Channel | None = None, me: Identity = ME) -> Failsafe:
    return Failsafe(me, TF, clock, channel, Records())


def settled(clock: FakeClock) -> Failsafe:
    """A book past its start-up promise, its node an idle replica."""
    fs = book(clock)
    clock.advance(TF.failsafe_window_s)
    fs.settle(NodeState(), IDLE)
    return fs


def test_at_start_a_whole_window_is_promised_and_nothing_acknowledged() -> None:
    clock = FakeClock()
    fs = book(clock)
    assert fs.may_start(AcquireLease(10)) is not None
    assert isinstance(fs.answer(HOLDER, 10.0), Declined)  # not settled: VIP unknown
    clock.advance(TF.failsafe_window_s)
    assert fs.may_start(AcquireLease(10)) is None


def test_an_acknowledgement_forbids_every_take_until_it_ends() -> None:
    clock = FakeClock()
    fs = settled(clock)
    assert fs.answer(HOLDER, 10.0) == Acked(clock.now_s + 10.0, 10.0)
    for action in (AcquireLease(10), AddVip(5)):
        why = fs.may_start(action)
        assert why is not None and "n1" in why
    looked = fs.look(replace(IDLE, now_s=clock.now_s), ())
    assert looked.promised_until_s == clock.now_s + 10.0
    clock.advance(10.0)
    assert fs.may_start(AcquireLease(10)) is None


def test_a_take_under_way_is_never_acknowledged_until_the_loop_settles() -> None:
    clock = FakeClock()
    fs = settled(clock)
    assert fs.may_start(AcquireLease(10)) is None  # the loop starts a take
    assert fs.answer(HOLDER, 10.0) == Declined("taking the writer VIP")
    held = replace(HOLDING, lease=HOLDING.lease)
    fs.settle(held, replace(IDLE, vip=VipPresence.PRESENT))  # it took the lease and VIP
    assert isinstance(fs.answer(HOLDER, 10.0), Declined)


def test_answers_and_takes_racing_on_threads_never_both_win() -> None:
    """Many rounds of an ask and a take started at once from two threads:
    either the ask was acknowledged and the take refused, or the reverse."""
    clock = FakeClock()
    for _ in range(200):
        fs = settled(clock)
        results: dict[str, object] = {}
        go = threading.Barrier(2)

        def ask(
            fs: Failsafe = fs, results: dict[str, object] = results, go: threading.Barrier = go
        ) -> None:
            go.wait()
            results["ask"] = fs.answer(HOLDER, 10.0)

        def take(
            fs: Failsafe = fs, results: dict[str, object] = results, go: threading.Barrier = go
        ) -> None:
            go.wait()
            results["take"] = fs.may_start(AcquireLease(10))

        threads = [threading.Thread(target=ask), threading.Thread(target=take)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        acked = isinstance(results["ask"], Acked)
        took = results["take"] is None
        assert acked != took, results


def test_a_holder_asked_by_itself_declines() -> None:
    clock = FakeClock()
    fs = settled(clock)
    assert isinstance(fs.answer(Identity("n2", "other", "h2", "eth0"), 10.0), Declined)


def test_the_record_is_written_while_holding_and_the_asks_go_to_what_it_lists() -> None:
    clock = FakeClock()
    records = Records()
    channel = Channel({Seat.of(ME): Acked(0.0, 10.0), Seat.of(N3): Acked(0.0, 8.0)})
    fs = Failsafe(HOLDER, TF, clock, channel, records)
    peers = (PeerView("n2", Role.REPLICA, 1, ME), PeerView("n3", Role.REPLICA, 1, N3))
    fs.record_read(None, 1.0)
    looked = fs.look(obs(writer=MINE), peers)
    fs.keep_record(HOLDING, looked, 1.0)
    assert records.written == [record_for(HOLDER, (Seat.of(ME), Seat.of(N3)))]
    fs.record_read(None, 1.0)  # the same (older) read again: no news
    fs.keep_record(HOLDING, looked, 1.0)  # unchanged: not written again
    assert len(records.written) == 1
    fs.record_read(None, 2.0)  # a newer read: someone deleted it
    fs.keep_record(HOLDING, looked, 1.0)
    assert len(records.written) == 2
    outcome = fs.ask(AskPeers(10.0), clock.now_s + 1.0)
    assert outcome == PeersAcked(clock.now_s, 8.0, 2)  # the shortest window granted
    assert channel.asked == [(Seat.of(ME), Seat.of(N3))]


def test_no_record_of_its_own_no_failsafe() -> None:
    clock = FakeClock()
    records = Records()
    records.fail = True
    fs = Failsafe(HOLDER, TF, clock, Channel({}), records)
    looked = fs.look(obs(writer=MINE), (PeerView("n2", Role.REPLICA, 1, ME),))
    fs.keep_record(HOLDING, looked, 1.0)
    outcome = fs.ask(AskPeers(10.0), clock.now_s + 1.0)
    assert isinstance(outcome, Failed) and "record" in outcome.cause
    # Nor is it written while etcd cannot be read.
    records.fail = False
    fs.keep_record(HOLDING, replace(looked, writer=KeyUnknown("down")), 1.0)
    assert records.written == []


def test_one_peer_declining_or_silent_fails_the_ask() -> None:
    clock = FakeClock()
    records = Records()
    channel = Channel({Seat.of(ME): Declined("database is primary")})
    fs = Failsafe(HOLDER, TF, clock, channel, records)
    looked = fs.look(
        obs(writer=MINE), (PeerView("n2", Role.REPLICA, 1, ME), PeerView("n3", Role.REPLICA, 1, N3))
    )
    fs.keep_record(HOLDING, looked, 1.0)
    outcome = fs.ask(AskPeers(10.0), clock.now_s + 1.0)
    assert isinstance(outcome, Failed)
    assert "database is primary" in outcome.cause and "n3" in outcome.cause
    assert fs.tally() == {"acked": 0, "declined": 1, "unreachable": 1}
