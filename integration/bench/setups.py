"""What is compared: each system at its default and at its fastest sensible settings.

Pure data; every value here is written into results.json and the report, so
the report states every setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from integration.lab.lab import FAST_TIMING

SYSTEMS = ("dbvip", "vip-manager", "keepalived")
SETTINGS = ("default", "fast")
SCENARIOS = ("switchover", "crash", "dead-holder")

# keepalived runs its track script at most once a second (`interval` is a whole
# number of seconds, 1 at least: 2.2.7 refuses 0.1), so the script sets the
# pace; advert_int only sets the master-down timer, 3 x advert_int + skew.
# 0.01 s is the least it accepts (VRRPv3 hundredths; 0.005 is refused), and it
# held here: with two nodes' scripts passing (two primaries) for 30 s on a
# 2-core machine at load 4, the backup never took over (nor at 0.02, 0.05, 0.1).
KEEPALIVED_FAST_ADVERT_S = "0.01"


@dataclass(frozen=True)
class Setup:
    system: str
    setting: str
    params: tuple[tuple[str, str], ...]  # what the system is given, as its own names
    note: str
    # The longest period among the system's timers at these settings: each
    # fault waits a random pause up to this long, so that it falls at a random
    # phase of them (a repetition's start is otherwise tied to them).
    phase_s: float

    @property
    def key(self) -> str:
        return f"{self.system}/{self.setting}"

    def param(self, name: str) -> str:
        return dict(self.params)[name]


def _dbvip(setting: str) -> Setup:
    if setting == "default":
        note = "every setting at its default (ttl_s 10, probe_interval_s 0.2, renew_interval_s 2)"
        return Setup("dbvip", setting, (), note, phase_s=2.0)  # the renew interval
    # The lab's short lease timing (what its fault scenarios use), probing the
    # database every 50 ms.
    params = (*FAST_TIMING.items(), ("DBVIP_PROBE_INTERVAL_S", "0.05"))
    note = "the lab's fast lease timing, probe every 50 ms"
    return Setup("dbvip", setting, tuple(params), note, phase_s=1.0)  # the renew interval


def _vip_manager(setting: str) -> Setup:
    interval_ms = "1000" if setting == "default" else "100"
    params = (
        ("interval", interval_ms),
        ("retry-after", "250"),
        ("retry-num", "3"),
        ("dcs-type", "etcd"),
        ("netmask", "32"),
    )
    note = (
        "etcd v2 trigger key /service/<lab>/leader written by the orchestrator right before "
        "it signals the promotion and deleted after a clean demotion (as Patroni does)"
    )
    return Setup("vip-manager", setting, params, note, phase_s=int(interval_ms) / 1000)


def _keepalived(setting: str) -> Setup:
    advert_s = "1" if setting == "default" else KEEPALIVED_FAST_ADVERT_S
    params = (
        ("vrrp_version", "3"),
        ("advert_int", advert_s),
        ("script interval", "1"),
        ("script rise", "1"),
        ("script fall", "1"),
        ("priority", "100 on every node"),
        ("state", "BACKUP"),
        ("nopreempt", "yes"),
        ("unicast", "unicast_src_ip/peer"),
    )
    note = (
        "track_script: psql over the node's Unix socket as postgres, passes only when "
        "pg_is_in_recovery() is false; VIP /32 on eth0"
    )
    return Setup("keepalived", setting, params, note, phase_s=1.0)  # the script interval


_MAKERS = {"dbvip": _dbvip, "vip-manager": _vip_manager, "keepalived": _keepalived}


def setup(system: str, setting: str) -> Setup:
    if system not in _MAKERS:
        raise ValueError(f"unknown system {system!r}: one of {', '.join(SYSTEMS)}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}: one of {', '.join(SETTINGS)}")
    return _MAKERS[system](setting)
