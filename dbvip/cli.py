"""``dbvip run | status | check-config``: the only place that exits."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from dbvip import __version__
from dbvip.config import REQUIRED_FOR_STATUS, REQUIRED_TO_RUN, SETTINGS, Config, ConfigError, load

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


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
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", metavar="PATH", help="TOML file of settings")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print JSON")
        group = sub.add_argument_group("settings")
        for s in SETTINGS:
            default = f" (default {s.default})" if s.default else ""
            group.add_argument(s.flag, dest=s.name, metavar="VALUE", help=f"{s.help}{default}")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    required = REQUIRED_FOR_STATUS if args.command == "status" else REQUIRED_TO_RUN
    try:
        config = load(flags, env, required, args.config)
    except ConfigError as e:
        print(f"dbvip: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "status":
        return _status(config, args.json)
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
    print(_status_table(view))
    return 0


def _status_table(view: Mapping[str, Any]) -> str:
    writer = view.get("writer") or {}
    if not writer:
        head = "writer: none (the writer key is free)"
    elif writer.get("error"):
        head = f"writer: INVALID value ({writer['error']}); delete it with etcdctl del"
    else:
        head = (
            f"writer: {writer.get('node')}  vip {writer.get('vip')}  lease "
            f"{writer.get('lease')}  ttl {writer.get('ttl_s')} s  since {writer.get('since')}"
        )
    lines = [f"cluster {view.get('cluster')}  {head}", ""]
    cols = ("node", "role", "timeline", "lsn", "vip", "reason", "ttl_s", "updated")
    rows = [
        [str(m.get(c, "")) if m.get(c) is not None else "-" for c in cols]
        for m in view.get("members", [])
    ]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(cols)]
    lines.append("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if not rows:
        lines.append("(no members reporting)")
    return "\n".join(lines)


def _run(config: Config) -> int:
    from dbvip import logs  # noqa: PLC0415
    from dbvip.wiring import Sidecar, SystemClock  # noqa: PLC0415

    listener = logs.setup(config["log_level"], config["log_format"])
    try:
        sidecar = Sidecar(config, SystemClock())
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
