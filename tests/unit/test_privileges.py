"""The start-up check of the two capabilities, on real /proc/<pid>/status texts."""

from __future__ import annotations

import pytest

from dbvip import privileges

ROOT = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
JUST_TWO = "CapPrm:\t0000000000003000\nCapEff:\t0000000000003000\nCapAmb:\t0000000000003000\n"
NONE = "CapEff:\t0000000000000000\n"
ONLY_ADMIN = "CapEff:\t0000000000001000\n"


def test_root_and_exactly_the_two_capabilities_pass() -> None:
    privileges.check(ROOT)
    privileges.check(JUST_TWO)


def test_none_names_both() -> None:
    with pytest.raises(PermissionError, match=r"CAP_NET_ADMIN .* and CAP_NET_RAW"):
        privileges.check(NONE)


def test_one_missing_is_named_alone() -> None:
    with pytest.raises(PermissionError, match="missing capability CAP_NET_RAW") as caught:
        privileges.check(ONLY_ADMIN)
    assert "CAP_NET_ADMIN (" not in str(caught.value)


def test_this_process_status_parses() -> None:
    with open("/proc/self/status") as status:
        assert privileges.effective_capabilities(status.read()) >= 0


def test_a_status_without_capeff_is_an_error() -> None:
    with pytest.raises(ValueError, match="CapEff"):
        privileges.effective_capabilities("Name:\tx\n")
