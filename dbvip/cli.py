"""``dbvip run | status | check-config``: the only place that exits."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence

from dbvip import __version__
from dbvip.config import REQUIRED_FOR_STATUS, REQUIRED_TO_RUN, SETTINGS, Config, ConfigError, load
from dbvip.parsers import seconds

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_CONFIRMED = 4
WATCH_INTERVAL_S = 1.0


def _interval(text: str) -> float:
    from dbvip.watch import MIN_INTERVAL_S  # noqa: PLC0415

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= MIN_INTERVAL_S or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"a number of seconds >= {MIN_INTERVAL_S:g} is needed, not {text!r}"
        )
    return value


def _wait_s(text: str) -> float:
    """``maintenance --wait-s``: argparse reports the error and exits 2."""
    try:
        return seconds(0, False, 3600)(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbvip",
        description="Moves the PostgreSQL writer VIP to the primary under an etcd lease.",
        epilog="Every setting is also DBVIP_<NAME> in the environment and <name> in a TOML "
        "file given by --config or DBVIP_CONFIG. Precedence: flags > environment > file > "
        "defaults.",
    )
    parser.add_argument("--version", action="version", version=f"dbvip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "hold the writer VIP while this node's database is primary"),
        ("status", "show the writer key's holder, its lease and every member"),
        ("check-config", "validate the settings and show each one with its source"),
        (
            "maintenance",
            "on: the node (--node / DBVIP_NODE) removes the VIP, releases the writer key and "
            "stays away from the VIP until `maintenance off`; waits until its sidecar confirms",
        ),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", metavar="PATH", help="TOML file of settings")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print JSON")
            sub.add_argument(
                "--watch", action="store_true",
                help="show it again every --interval-s until Ctrl-C: in place on a terminal, "
                "appended otherwise (with --json: one JSON object per line)",
            )  # fmt: skip
            sub.add_argument(
                "--interval-s", type=_interval, metavar="SECONDS",
                help=f"time between two looks with --watch (default {WATCH_INTERVAL_S:g})",
            )  # fmt: skip
        if name == "maintenance":
            sub.add_argument("state", choices=("on", "off"))
            sub.add_argument(
                "--wait-s", type=_wait_s, default=15.0, metavar="SECONDS",
                help="how long to wait for the sidecar's confirmation (0: do not wait)",
            )  # fmt: skip
        group = sub.add_argument_group("settings")
        for s in SETTINGS:
            default = f" (default {s.default})" if s.default else ""
            group.add_argument(s.flag, dest=s.name, metavar="VALUE", help=f"{s.help}{default}")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status" and args.interval_s is not None and not args.watch:
        print("dbvip: --interval-s is given without --watch", file=sys.stderr)
        return EXIT_CONFIG
    env = os.environ if environ is None else environ
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    required = {
        "status": REQUIRED_FOR_STATUS,
        "maintenance": (*REQUIRED_FOR_STATUS, "node"),
    }.get(args.command, REQUIRED_TO_RUN)
    try:
        config = load(flags, env, required, args.config)
    except ConfigError as e:
        print(f"dbvip: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "status" and args.watch:
        return _watch(config, args.json, args.interval_s or WATCH_INTERVAL_S)
    if args.command == "status":
        return _status(config, args.json)
    if args.command == "maintenance":
        return _maintenance(config, args.state == "on", args.wait_s)
    return _run(config)


def _check_config(config: Config) -> int:
    rows = config.rows()
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value or '-':<40}  {source}")
    t = config.timing
    print(
        f"\nok: lease deadline {t.ttl_s - t.margin_s:g} s after each renewal; the VIP comes "
        f"down at least {t.release_lead_s:g} s before it; renewals every {t.renew_interval_s:g}"
        " s."
    )
    return 0


def _status(config: Config, as_json: bool) -> int:
    from dbvip.wiring import read_cluster  # noqa: PLC0415  (keeps check-config light)

    try:
        view = read_cluster(config)
    except Exception as e:  # a status command reports, it does not trace back
        print(f"dbvip: cannot read the cluster from etcd: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if as_json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return 0
    from dbvip.status_view import render  # noqa: PLC0415

    print(render(view))
    return 0


def _watch(config: Config, as_json: bool, interval_s: float) -> int:
    from dbvip.status_view import render  # noqa: PLC0415
    from dbvip.watch import utc_now, watch  # noqa: PLC0415
    from dbvip.wiring import read_cluster  # noqa: PLC0415

    def frame() -> str:
        try:
            view = read_cluster(config)
        except Exception as e:  # shown in the frame; the watch goes on
            if as_json:
                return json.dumps({"at": utc_now(), "error": str(e)}, sort_keys=True)
            return f"dbvip: cannot read the cluster from etcd: {e}"
        if as_json:
            return json.dumps({"at": utc_now(), **view}, sort_keys=True)
        return render(view)

    terminal = sys.stdout.isatty() and not as_json
    try:
        watch(frame, sys.stdout, interval_s, terminal=terminal, stamped=not as_json)
    except BrokenPipeError:  # the reader went away (| head): done, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _maintenance(config: Config, on: bool, wait_s: float) -> int:
    from dbvip.wiring import read_cluster, set_maintenance  # noqa: PLC0415

    node = config["node"]
    try:
        set_maintenance(config, node, on)
    except Exception as e:
        print(f"dbvip: cannot set maintenance {'on' if on else 'off'}: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"{node}: maintenance flag {'set' if on else 'removed'} in etcd")
    if wait_s <= 0:
        return 0
    # The sidecar reads the flag every renew interval and confirms it in its
    # member report; a node without a report (sidecar stopped) obeys at start.
    deadline = time.monotonic() + wait_s
    while True:
        try:
            members = {m["node"]: m for m in read_cluster(config)["members"]}
        except Exception as e:
            if time.monotonic() >= deadline:
                print(f"dbvip: cannot read the cluster from etcd: {e}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            time.sleep(0.2)  # a passing etcd hiccup: the flag is set, keep waiting
            continue
        report = members.get(node)
        if report is None:
            print(f"{node}: no sidecar reports; the flag applies when it starts")
            return 0
        reason = report.get("reason")
        # "on" is done once the report also shows the VIP gone: the first
        # report with the new reason may be published before the removal.
        if (reason == "maintenance") == on and not (on and report.get("vip")):
            vips = ", ".join(report.get("vip") or []) or "none"
            print(f"{node}: sidecar confirms (reason {reason}, VIP on it: {vips})")
            return 0
        if time.monotonic() >= deadline:
            print(f"dbvip: {node} has not confirmed within {wait_s:g} s (reason {reason})",
                  file=sys.stderr)  # fmt: skip
            return EXIT_NOT_CONFIRMED
        time.sleep(0.2)


# glibc's mallopt parameter for the number of malloc arenas (<malloc.h>).
M_ARENA_MAX = -8


def _one_malloc_arena() -> None:
    """glibc gives every thread that allocates an arena of its own (up to 8 per
    core); the sidecar's threads hold little each and the GIL serialises them
    anyway. One arena keeps 0.5-0.8 MiB fewer pages resident (measured with
    eight threads); the same as MALLOC_ARENA_MAX=1, without relying on the
    container's environment. Elsewhere than glibc (musl): nothing to do."""
    import ctypes  # noqa: PLC0415  (psycopg has loaded it already)

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 1)


def _run(config: Config) -> int:
    from dbvip import logs, privileges  # noqa: PLC0415
    from dbvip.wiring import Sidecar, StartError, SystemClock  # noqa: PLC0415

    _one_malloc_arena()  # before the first thread starts
    listener = logs.setup(config["log_level"], config["log_format"])
    try:
        privileges.check()
        privileges.keep_from_children()
        sidecar = Sidecar(config, SystemClock())
    except (StartError, ConfigError) as e:
        # A setting that cannot work here (a port in use): restarting will not help.
        print(f"dbvip: configuration error: {e}", file=sys.stderr)
        listener.stop()
        return EXIT_CONFIG
    except Exception as e:
        print(f"dbvip: cannot start: {e}", file=sys.stderr)
        listener.stop()
        return EXIT_UNAVAILABLE
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sidecar.runner.stop())
    try:
        sidecar.run()
    finally:
        sidecar.close()
        listener.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
