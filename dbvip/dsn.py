"""The PostgreSQL connection string: checked without ever showing a secret.

libpq accepts two forms, ``key=value`` and ``postgresql://user:pw@host/db``;
both may carry a password, and libpq's own error messages quote pieces of
the string (``missing "=" after "secret"``). So the string is shown only as
rebuilt from its parsed options with every secret masked, and an error keeps
only the quoted pieces that are option names.
"""

from __future__ import annotations

import re
from functools import cache

MASK = "********"
# Options whose value is a secret (libpq 17's list; more are masked, not fewer).
SECRET_OPTIONS = frozenset(
    {"password", "sslpassword", "scram_client_key", "scram_server_key", "oauth_client_secret"}
)
_QUOTED = re.compile(r'"([^"]*)"')


@cache
def _keywords() -> frozenset[str]:
    from psycopg.pq import Conninfo  # noqa: PLC0415  (heavy import, only here)

    return frozenset(o.keyword.decode() for o in Conninfo.get_defaults())


def options(text: str) -> dict[str, str]:
    """The options of a connection string; ``ValueError`` with a redacted reason."""
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    if "\0" in text:
        raise ValueError("contains a NUL byte")
    try:
        parsed = conninfo_to_dict(text)
    except Exception as e:
        raise ValueError(f"is not a libpq connection string: {redact_error(str(e))}") from None
    return {k: str(v) for k, v in parsed.items() if v is not None}


def redact_error(message: str) -> str:
    """libpq's message with every quoted piece that is not an option name hidden."""

    def keep(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1) in _keywords() else '"…"'

    return _QUOTED.sub(keep, message.strip().splitlines()[0] if message.strip() else "")


def check(text: str) -> str:
    opts = options(text)
    for name in ("port", "connect_timeout"):
        value = opts.get(name, "")
        if value and not all(p.isascii() and p.isdigit() for p in value.split(",")):
            raise ValueError(f"option {name} must be a whole number (or a comma-separated list)")
    return text


def has_password(text: str) -> bool:
    return bool(options(text).get("password"))


def shown(text: str) -> str:
    """The string as ``check-config`` prints it: as given when it holds no
    secret, else rebuilt as key=value with every secret masked."""
    from psycopg.conninfo import make_conninfo  # noqa: PLC0415

    try:
        opts = options(text)
    except ValueError:
        return MASK  # unparsable: show nothing of it
    if not SECRET_OPTIONS & opts.keys():
        return text
    return make_conninfo("", **{k: MASK if k in SECRET_OPTIONS else v for k, v in opts.items()})
