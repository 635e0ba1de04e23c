"""What the outage part compares: pure data, every value written into
results.json and the report, so the report states every setting.

Without Patroni the database side is the lab's plain PostgreSQL for every
system (n1 primary, two streaming replicas, nobody promotes anything); the
Patroni systems let Patroni run the same three databases (its own decisions
are part of what is measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from integration.bench.setups import Setup, setup
from integration.lab.patroni import MAX_LAG_ON_FAILOVER_BYTES, TIMING


@dataclass(frozen=True)
class OutageSystem:
    setup: Setup
    patroni: bool = False  # Patroni runs the databases (failsafe_mode as dbvip's failsafe)

    @property
    def key(self) -> str:
        return self.setup.key

    @property
    def failsafe(self) -> bool:
        return dict(self.setup.params).get("DBVIP_FAILSAFE") == "on"

    def patroni_settings(self) -> dict[str, object]:
        if not self.patroni:
            return {}
        return {
            **TIMING,
            "failsafe_mode": self.failsafe,  # the lab pairs it with dbvip's failsafe
            "maximum_lag_on_failover": MAX_LAG_ON_FAILOVER_BYTES,
        }


_FAILSAFE_ON = (("DBVIP_FAILSAFE", "on"),)
_FAILSAFE_NOTE = (
    "failsafe_window_s 10 (its default); the lab gives each node its peer endpoint "
    "(DBVIP_FAILSAFE_LISTEN, its own address, port 8009) and one shared secret file "
    "(DBVIP_FAILSAFE_SECRET_FILE); every other setting at its default"
)
_DEFAULTS = "every setting at its default (ttl_s 10, probe_interval_s 0.2, renew_interval_s 2)"

# Ordered so that a round-robin over two workers pairs systems of similar cost
# (the Patroni labs take longest to build).
SYSTEMS: tuple[OutageSystem, ...] = (
    OutageSystem(Setup("dbvip", "failsafe-off", (), _DEFAULTS, phase_s=2.0)),
    OutageSystem(setup("vip-manager", "default")),
    OutageSystem(Setup("dbvip", "failsafe-on", _FAILSAFE_ON, _FAILSAFE_NOTE, phase_s=2.0)),
    OutageSystem(setup("keepalived", "default")),
    OutageSystem(
        Setup(
            "dbvip",
            "patroni-failsafe",
            _FAILSAFE_ON,
            _FAILSAFE_NOTE + "; Patroni runs the databases with failsafe_mode: true",
            phase_s=2.0,
        ),
        patroni=True,
    ),
    OutageSystem(
        Setup(
            "dbvip",
            "patroni-no-failsafe",
            (),
            _DEFAULTS + "; Patroni runs the databases without failsafe_mode (its default): "
            "for context, Patroni demotes its leader when etcd is gone",
            phase_s=2.0,
        ),
        patroni=True,
    ),
)
KEYS = tuple(s.key for s in SYSTEMS)


def system(key: str) -> OutageSystem:
    for s in SYSTEMS:
        if s.key == key:
            return s
    raise ValueError(f"unknown system {key!r}: one of {', '.join(KEYS)}")
