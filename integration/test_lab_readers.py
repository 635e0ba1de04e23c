"""The lab's reader-pool machinery on its own, with no sidecar: HAProxy in front
of the reader VIPs, the reading clients, the kernel and etcd views, and the
monitor's S1 check per reader VIP. The VIPs are put on nodes by hand (netlink),
so what is tested here is the lab's instruments, not dbvip's policy
(integration/test_readers.py tests that)."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dbvip.adapters.arp import PacketAnnouncer
from dbvip.adapters.netlink import NetlinkVipDriver
from dbvip.ports import Done, VipChanged
from integration.conftest import MakeLab
from integration.lab.eventually import eventually
from integration.lab.haproxy import HAPROXY, render_config, server_name
from integration.lab.lab import Lab
from integration.lab.reader import Read, tally
from integration.lab.readers import balanced, parse_reader_vips, readers_prefix

pytestmark = pytest.mark.real
VIPS = ("198.51.100.101/32", "198.51.100.102/32", "198.51.100.103/32", "198.51.100.104/32")
READERS = (("DBVIP_READER_VIPS", ",".join(VIPS)),)
LIFETIME_S = 3600


@contextmanager
def by_hand(lab: Lab, node: str, vip: str) -> Iterator[NetlinkVipDriver]:
    """``vip`` on ``node``'s interface, put there with netlink and announced with
    a gratuitous ARP (as a sidecar would: HAProxy's host may still have the
    previous holder's MAC), removed at the end."""
    address = ipaddress.ip_interface(vip)
    driver = NetlinkVipDriver("eth0", address, netns=lab.netns(node))
    announcer = PacketAnnouncer("eth0", address.ip, netns=lab.netns(node))
    try:
        assert isinstance(driver.add(LIFETIME_S), VipChanged)
        assert isinstance(announcer.announce(), Done)
        yield driver
    finally:
        driver.remove()
        driver.close()
        announcer.close()


def answered_since(reads: list[Read], after_s: float) -> set[str | None]:
    return {r.node for r in reads if r.ok and r.started_s >= after_s}


def test_haproxy_sends_reads_to_the_reader_vips_and_follows_them_when_they_move(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(sidecars=False, sidecar_settings=READERS)
    assert lab.haproxy is not None and lab.haproxy.pid is not None
    names = {server_name(v.ip) for v in lab.reader_vips}
    assert lab.haproxy.up_servers() == set()  # no node has any reader VIP yet
    with lab.watched() as monitor:
        first, second = by_hand(lab, "n2", VIPS[0]), by_hand(lab, "n2", VIPS[1])
        third, fourth = by_hand(lab, "n3", VIPS[2]), by_hand(lab, "n3", VIPS[3])
        with first as moving, second, third, fourth:
            lab.haproxy.wait_up(names)
            assert lab.reader_counts() == {"n1": 0, "n2": 2, "n3": 2}
            assert balanced([2, 2], 4) and not balanced([3, 1], 4)
            per_read, long_lived = lab.start_reader("per-read"), lab.start_reader("long-lived")
            eventually(lambda: answered_since(per_read.reads(), 0) == {"n2", "n3"}, timeout_s=30)
            eventually(lambda: any(r.ok for r in long_lived.reads()), timeout_s=30)
            (one,) = lab.client_reads()
            assert one.ok and one.node in ("n2", "n3") and one.recovery is True, one
            # The same through the lab's command line, on the lab by name.
            cli = subprocess.run([sys.executable, "-m", "integration.lab", "read", "--name",
                                  lab.name, "--count", "4"], capture_output=True, text=True,
                                 timeout=120, check=False)  # fmt: skip
            assert cli.returncode == 0 and "4 reads, 4 ok, 0 failed" in cli.stdout, cli
            status = subprocess.run([sys.executable, "-m", "integration.lab", "status", "--name",
                                     lab.name], capture_output=True, text=True, timeout=120,
                                    check=False)  # fmt: skip
            assert f"reader VIP {lab.reader_vips[0].ip}: on n2;" in status.stdout, status
            # The VIP moves from n2 to n3 (remove before add): reads go on.
            moving.remove()
            lab.haproxy.wait_up(names - {server_name(lab.reader_vips[0].ip)})
            with by_hand(lab, "n3", VIPS[0]):
                lab.haproxy.wait_up(names)
                holders = lab.reader_holders()
                assert holders[lab.reader_vips[0].ip] == {"n3"}
                assert eventually(lambda: monitor.reader_holders()[str(lab.reader_vips[0].ip)]
                                  == frozenset({"n3"}), timeout_s=5)  # fmt: skip
                moved_s = time.monotonic()
                eventually(lambda: len([r for r in per_read.reads()
                                        if r.ok and r.started_s >= moved_s]) >= 20,
                           timeout_s=30)  # fmt: skip
        reads = per_read.stop()
        kept = long_lived.stop()
    report = monitor.report()
    assert report.reader_double_holders == ()
    assert {e.vip for e in report.reader_vip_events} >= {str(v.ip) for v in lab.reader_vips}
    for made in (reads, kept):
        ok = [r for r in made if r.ok]
        assert ok and all(r.recovery is True and r.node in ("n2", "n3") for r in ok), tally(made)
        # Each read reached one of the reader VIPs, never a node's own address.
        assert {r.server for r in ok} <= {str(v.ip) for v in lab.reader_vips}
    # After the move, the per-read client reached the moved VIP on n3.
    moved = [r for r in reads if r.ok and r.server == str(lab.reader_vips[0].ip)]
    assert moved and moved[-1].node == "n3"
    assert "reads" in tally(reads) and "answered by" in tally(reads)


def test_the_monitor_reports_a_reader_vip_on_two_nodes_and_no_writer_trouble(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(sidecars=False, sidecar_settings=READERS, db_nodes=2)
    monitor = lab.monitor()
    monitor.start()
    try:
        with by_hand(lab, "n1", VIPS[1]), by_hand(lab, "n2", VIPS[1]):
            vip = str(lab.reader_vips[1].ip)
            eventually(lambda: monitor.reader_holders()[vip] == frozenset({"n1", "n2"}),
                       timeout_s=10)  # fmt: skip
            assert lab.reader_holders()[lab.reader_vips[1].ip] == {"n1", "n2"}
    finally:
        report = monitor.stop()
    (double,) = report.reader_double_holders
    assert double.vip == vip and double.hosts == frozenset({"n1", "n2"})
    with pytest.raises(AssertionError, match=re.escape("reader VIP 198.51.100.102")):
        report.assert_one_holder_per_reader_vip()
    report.assert_one_writer()  # the writer VIP was on nobody
    assert "reader VIPs" in report.summary() and "reader VIP 198.51.100.102" in report.timeline()


def test_reader_keys_are_read_from_etcd_with_their_holder_and_lease(make_lab: MakeLab) -> None:
    """Written here with etcdctl as a sidecar would: the view must find them.
    (HAProxy asked for explicitly, with no pool: a readers backend with no server.)"""
    lab = make_lab(sidecars=False, haproxy=True, db_nodes=1)
    assert lab.reader_vips == () and lab.haproxy is not None
    assert lab.haproxy.server_states() == {} and "writer" in lab.haproxy.server_states("writer")
    lease = lab.etcdctl("lease", "grant", "30").split()[1]
    key = readers_prefix(lab.name) + "198.51.100.103"
    value = {"node": "n1", "vip": VIPS[2], "lease": lease}
    lab.etcdctl("put", "--lease", lease, key, json.dumps(value))
    # Under the prefix, a key whose last part is no address is no reader key.
    lab.etcdctl("put", key + "/x", "garbage")
    keys = lab.reader_keys()
    found = keys[ipaddress.ip_address("198.51.100.103")]
    assert found.holder == "n1" and found.lease == int(lease, 16) and found.under_named_lease
    assert list(keys) == [ipaddress.ip_address("198.51.100.103")]


def test_the_pool_setting_is_parsed_once_and_a_typo_fails_early() -> None:
    assert parse_reader_vips({"DBVIP_READER_VIPS": " 198.51.100.101/32, 2001:db8::101/128 "}) == (
        ipaddress.ip_interface("198.51.100.101/32"),
        ipaddress.ip_interface("2001:db8::101/128"),
    )
    assert parse_reader_vips({}) == ()
    with pytest.raises(ValueError, match=re.escape("DBVIP_READER_VIPS: '198.51.100.1o1/32'")):
        parse_reader_vips({"DBVIP_READER_VIPS": "198.51.100.1o1/32"})


def test_the_labs_haproxy_configuration_is_valid_for_both_families(tmp_path: Path) -> None:
    readers = [ipaddress.ip_address("198.51.100.101"), ipaddress.ip_address("2001:db8::101")]
    text = render_config(readers, ipaddress.ip_address("198.51.100.100"),
                         [ipaddress.ip_address("127.0.0.1")], tmp_path / "x.sock")  # fmt: skip
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    done = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True,
                          check=False, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "server r-2001-db8--101 ipv6@2001:db8::101:5432" in text
