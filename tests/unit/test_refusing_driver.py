"""RefusingVipDriver's order of steps, with in-memory fakes (the kernel side is
tests/adapters/test_refusal.py)."""

from __future__ import annotations

from dbvip.adapters.refusal import RefusingVipDriver
from dbvip.model import KERNEL_EXPIRY_SLACK_S
from dbvip.ports import Done, Unknown, VipChanged
from tests.fakes import FakeClock, FakeKernel, FakeVipDriver


class FakeRefusal:
    """Records each arming in the same list as the VIP driver's changes."""

    table = "dbvip_eth0_test"

    def __init__(self, ops: list[tuple[str, float]], broken: str = "") -> None:
        self.ops = ops
        self.broken = broken
        self.closed = False

    def prepare(self) -> Done | Unknown:
        return Unknown(self.broken) if self.broken else Done()

    def refuse_for(self, seconds: float, closing_s: float = 0) -> Done | Unknown:
        if self.broken:
            return Unknown(self.broken)
        self.ops.append(("refuse+close" if closing_s else "refuse", seconds))
        return Done()

    def end_connections(self) -> int | Unknown:
        if self.broken:
            return Unknown(self.broken)
        self.ops.append(("end", 0.0))
        return 0

    def close(self) -> None:
        self.closed = True


def make(broken: str = "") -> tuple[RefusingVipDriver, FakeVipDriver, FakeRefusal]:
    inner = FakeVipDriver(FakeKernel(FakeClock()), "n1")
    refusal = FakeRefusal(inner.ops, broken)
    return RefusingVipDriver(inner, refusal, refuse_s=5), inner, refusal


def test_the_refusal_is_armed_before_the_vip_is_removed() -> None:
    driver, inner, _ = make()
    driver.add(7)
    inner.ops.clear()
    assert driver.remove() == VipChanged(was_present=True)
    # Armed first: no instant in which the VIP is gone and a SYN would be dropped;
    # closed to new connections, then the old ones ended while their resets can
    # still leave this node; closed no longer once the VIP is gone.
    assert [op for op, _ in inner.ops] == ["refuse+close", "end", "remove", "refuse"]
    assert inner.ops[0][1] == 5


def test_a_held_vip_keeps_the_refusal_armed_past_its_kernel_lifetime() -> None:
    driver, inner, _ = make()
    assert driver.add(7) == VipChanged(was_present=False)
    assert inner.ops[0][0] == "add"
    # A frozen or killed holder whose VIP the kernel expires refuses from then on.
    assert inner.ops[1] == ("refuse", 7 + KERNEL_EXPIRY_SLACK_S + 5)


def test_a_failed_vip_change_arms_nothing_more() -> None:
    driver, inner, _ = make()
    inner.fault = "refuse"
    assert isinstance(driver.add(7), Unknown)
    assert inner.ops == []


def test_a_broken_refusal_is_reported_and_never_changes_the_vip_outcome() -> None:
    driver, inner, _ = make(broken="nf_tables: operation not supported")
    driver.prepare()
    assert driver.last_error == "nf_tables: operation not supported"
    assert driver.add(7) == VipChanged(was_present=False)
    assert driver.remove() == VipChanged(was_present=True)
    assert [op for op, _ in inner.ops] == ["add", "remove"]


class Seen:
    def __init__(self) -> None:
        self.ready: list[bool] = []
        self.ended: list[int] = []

    def refusal_done(self, ready: bool) -> None:
        self.ready.append(ready)

    def connections_ended(self, count: int) -> None:
        self.ended.append(count)


def test_the_observer_hears_every_setting_and_every_ending() -> None:
    driver, _, refusal = make()
    seen = Seen()
    driver.observer = seen
    driver.add(7)
    driver.remove()
    assert seen.ready == [True, True, True]  # armed on add; closed, then opened on remove
    assert seen.ended == [0]
    refusal.broken = "nf_tables: no such file"
    driver.add(7)
    driver.remove()
    assert seen.ready[-1] is False
    assert seen.ended == [0]  # could not look: nothing counted


def test_an_address_the_driver_will_not_delete_is_never_closed_nor_its_connections_ended() -> None:
    driver, inner, _ = make()
    driver.add(7)
    inner.ops.clear()
    inner.fault = "refuse"  # e.g. the node's own address given as the VIP
    assert isinstance(driver.remove(), Unknown)
    assert inner.ops == []


class Exploding(FakeRefusal):
    def refuse_for(self, seconds: float, closing_s: float = 0) -> Done | Unknown:
        raise ValueError("a bug in the refusal")

    def end_connections(self) -> int | Unknown:
        raise RuntimeError("another one")


class Broken(Seen):
    def refusal_done(self, ready: bool) -> None:
        raise RuntimeError("metrics broke")


def test_nothing_the_refusal_or_its_observer_raises_stops_a_vip_change() -> None:
    inner = FakeVipDriver(FakeKernel(FakeClock()), "n1")
    driver = RefusingVipDriver(inner, Exploding(inner.ops), refuse_s=5, observer=Broken())
    assert driver.add(7) == VipChanged(was_present=False)
    assert driver.remove() == VipChanged(was_present=True)
    assert [op for op, _ in inner.ops] == ["add", "remove"]
    assert "ValueError: a bug in the refusal" in driver.last_error


def test_close_closes_both() -> None:
    driver, _, refusal = make()
    driver.close()
    assert refusal.closed
