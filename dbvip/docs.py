"""The README's reference tables, generated from the code so they cannot drift:
settings from ``dbvip.config.SETTINGS``, metrics from ``dbvip.metric_docs.METRICS``.

    python -m dbvip.docs README.md            # rewrite the generated tables
    python -m dbvip.docs --check README.md    # exit 1 when they are out of date

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dbvip.config import REQUIRED_TO_RUN, SETTINGS
from dbvip.metric_docs import METRICS


def _cell(text: str) -> str:
    # Placeholders like <cluster> would vanish as HTML tags: show them as code.
    text = re.sub(r"(\S*<[^>\s]+>\S*)", r"`\1`", text)
    return text.replace("|", "\\|")


def settings_table() -> str:
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        if s.name in REQUIRED_TO_RUN:
            default = "required"
        elif s.default:
            default = f"`{s.default}`"
        else:
            default = "unset"
        meaning = _cell(s.help) + ("; secret, never shown" if s.secret else "")
        rows.append(f"| `{s.name}` | `{s.env}` | {default} | {meaning} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        rows.append(f"| `{m.name}` | {m.kind} | {labels} | {_cell(m.help)} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"settings": settings_table, "metrics": metrics_table}


def render(readme: str) -> str:
    """``readme`` with every generated table replaced by its current version."""
    for name, table in TABLES.items():
        begin, end = f"<!-- generated: {name} -->", f"<!-- end: {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        found = list(pattern.finditer(readme))
        if len(found) != 1:
            raise ValueError(f"the README needs exactly one {begin} ... {end} block")
        start, stop = found[0].span()
        readme = f"{readme[:start]}{begin}\n{table()}\n{end}{readme[stop:]}"
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbvip.docs", description=__doc__)
    parser.add_argument("readme", type=Path)
    parser.add_argument("--check", action="store_true", help="only report a difference")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    fresh = render(text)
    if args.check:
        if fresh != text:
            print(f"{args.readme}: generated tables are out of date", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(fresh)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
