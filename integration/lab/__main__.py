"""``dbvip-lab``: bring a lab up, look at it, break it, take it down.

    dbvip-lab demo                  the README's demo (up, switchover, crash failover, down;
                                    reader VIPs moving on a replica crash; --readers 0: none)
    dbvip-lab up [--name lab]       bring a lab up and leave it running (--patroni: Patroni runs it;
                                    --readers 4: a pool of reader VIPs and HAProxy in front of it)
    dbvip-lab status                roles, VIP holders (writer and readers), the writer key
    dbvip-lab switchover [--to n2]  demote the primary cleanly, promote a replica
    dbvip-lab failover [--to n2]    crash the primary's database, promote a replica
    dbvip-lab write                 one write through the VIP from the client host
    dbvip-lab read [--count 20]     reads through HAProxy from the client host (who answered)
    dbvip-lab down [--name lab]     remove every namespace, process and file of the lab
    dbvip-lab list                  labs that exist on this machine

Runs as root (network namespaces). Installs nothing: ``scripts/setup.sh`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence

from dbvip.model import Role
from integration.lab import cleanup
from integration.lab.demo import run_demo
from integration.lab.lab import FAST_TIMING, Lab, LabSpec
from integration.lab.patroni import PATRONICTL
from integration.lab.reader import MODES, tally
from integration.lab.readers import READER_VIPS, pool

START_S = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START_S:7.3f} s] {text}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbvip-lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="up, switchover, crash failover, timeline, down")
    demo.add_argument(
        "--readers", type=int, default=4, metavar="N",
        help="reader VIPs and HAProxy (default 4; 0: the writer VIP alone)",
    )  # fmt: skip
    up = sub.add_parser("up", help="bring a lab up and leave it running")
    up.add_argument("--nodes", type=int, default=3, help="database nodes (default 3)")
    up.add_argument("--etcd", type=int, choices=(1, 3), default=1, help="etcd members")
    up.add_argument("--fast", action="store_true", help="short lease timing (ttl 5 s)")
    up.add_argument("--patroni", action="store_true", help="Patroni runs the databases")
    up.add_argument("--readers", type=int, default=0, metavar="N",
                    help="N reader VIPs (198.51.100.101...) and HAProxy on host lb")  # fmt: skip
    for name in ("status", "down", "write"):
        sub.add_parser(name)
    for name in ("switchover", "failover"):
        sub.add_parser(name).add_argument("--to", help="node to promote (default: a replica)")
    read = sub.add_parser("read", help="reads through HAProxy from the client host")
    read.add_argument("--count", type=int, default=1, help="reads, one after the other")
    read.add_argument("--mode", choices=MODES, default="per-read")
    sub.add_parser("list")
    for command in sub.choices.values():
        command.add_argument("--name", default="lab", help="lab name (default: lab)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("dbvip-lab: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    # SIGTERM (a CI timeout) unwinds through the finally blocks like Ctrl-C,
    # in this process only: pyroute2 forks helpers that inherit the handler.
    main_pid = os.getpid()

    def interrupt(*_: object) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return COMMANDS[args.command](args)
    except (RuntimeError, ValueError) as e:
        print(f"dbvip-lab {args.command}: {e}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(say, args.readers)


def cmd_up(args: argparse.Namespace) -> int:
    settings = tuple(FAST_TIMING.items()) if args.fast else ()
    if args.readers:
        settings += ((READER_VIPS, pool(args.readers)),)
    spec = LabSpec(args.name, db_nodes=args.nodes, etcd_members=args.etcd,
                   sidecar_settings=settings, patroni=args.patroni)  # fmt: skip
    lab = Lab.create(spec)
    # The processes outlive this command on purpose; `down` removes them.
    lab.wait_holder("n1")
    say(f"lab {lab.name} is up; n1 holds the VIP {lab.vip.ip}")
    if lab.haproxy is not None:
        vips = ", ".join(str(v.ip) for v in lab.reader_vips)
        say(f"  reads:  HAProxy at {lab.haproxy.address}:5432 in front of the reader VIPs "
            f"{vips} (dbvip-lab read --count 20)")  # fmt: skip
    say(f"  look:   ip netns exec {lab.netns('etcd')} etcdctl "
        f"--endpoints={','.join(spec.etcd_endpoints)} get --prefix /dbvip/")  # fmt: skip
    say(f"  logs:   {lab.dir / 'logs'}")
    if lab.patroni is not None:
        say(f"  Patroni: ip netns exec {lab.netns('n1')} runuser -u postgres -- {PATRONICTL} "
            f"-c {lab.patroni.config_path('n1')} list")  # fmt: skip
    say(f"  remove: dbvip-lab down --name {lab.name}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.name)
    holders = lab.holders()
    for node in lab.spec.nodes:
        role = lab.role(node)
        print(f"{node}: role={role.value} vip={'yes' if node in holders else 'no'}")
    print(f"writer key {lab.writer_key}: {json.dumps(lab.writer_value())}")
    readers = lab.reader_holders()
    keys = lab.reader_keys() if readers else {}
    for address, nodes in readers.items():
        key = keys.get(address)
        print(f"reader VIP {address}: on {', '.join(sorted(nodes)) or 'nobody'}; key holder "
              f"{key.holder if key else 'none'}")  # fmt: skip
    return 0 if len(holders) <= 1 and all(len(n) <= 1 for n in readers.values()) else 2


def _pick(lab: Lab, to: str | None) -> tuple[str, str]:
    if lab.spec.patroni:
        raise RuntimeError("Patroni runs this lab's databases: ask patronictl (see `up`)")
    primaries = lab.primaries()
    if len(primaries) != 1:
        raise RuntimeError(f"need exactly one primary, found {primaries or 'none'}")
    old = primaries[0]
    new = to or next(n for n in lab.spec.nodes if n != old and lab.role(n) is Role.REPLICA)
    return old, new


def cmd_switchover(args: argparse.Namespace) -> int:
    return _hand_over(args, crash=False)


def cmd_failover(args: argparse.Namespace) -> int:
    return _hand_over(args, crash=True)


def _hand_over(args: argparse.Namespace, crash: bool) -> int:
    """Take the primary out (cleanly or not), promote ``--to``, time the VIP."""
    lab = Lab.attach(args.name)
    old, new = _pick(lab, args.to)
    if crash:
        say(f"crash failover {old} -> {new}: {old}'s database stopped immediately")
        lab.crash_db(old)
    else:
        say(f"switchover {old} -> {new}: {old} demoted cleanly")
        lab.demote(old)
    promote_s = lab.promote(new)
    primary_s = lab.wait_primary(new)
    held_s = lab.wait_holder(new)
    say(f"{new} primary {primary_s - promote_s:.3f} s after pg_ctl promote; "
        f"VIP on {new} {held_s - primary_s:.3f} s after that")  # fmt: skip
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    attempt = Lab.attach(args.name).client_write()
    if attempt.ok:
        print(
            f"write acknowledged by {attempt.node} in {attempt.ended_s - attempt.started_s:.3f} s"
        )
        return 0
    print(f"write failed ({attempt.phase}): {attempt.error}")
    return 2


def cmd_read(args: argparse.Namespace) -> int:
    reads = Lab.attach(args.name).client_reads(args.count, args.mode)
    for r in reads:
        answer = (f"{r.node} ({'replica' if r.recovery else 'primary'}) via {r.server}" if r.ok
                  else f"failed ({r.phase}): {r.error}")  # fmt: skip
        print(f"read in {r.ended_s - r.started_s:.3f} s: {answer}")
    print(tally(reads))
    return 0 if all(r.ok for r in reads) else 2


def cmd_down(args: argparse.Namespace) -> int:
    found = cleanup.down(args.name)
    say(f"lab {args.name}: removed {found.describe()}")
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    for name in cleanup.lab_names():
        print(name)
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "up": cmd_up,
    "status": cmd_status,
    "switchover": cmd_switchover,
    "failover": cmd_failover,
    "write": cmd_write,
    "read": cmd_read,
    "down": cmd_down,
    "list": cmd_list,
}

if __name__ == "__main__":
    sys.exit(main())
