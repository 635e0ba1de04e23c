"""How a named lab names what it creates, so a later ``down`` can find it all.

Every namespace is ``dbvip-<name>-<host>`` and every file lives under
``<tmp>/dbvip-lab-<name>``. A lab name is short lowercase letters and digits:
no dash, so one lab's prefix can never match another lab's namespaces.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

NAME_RE = re.compile(r"[a-z][a-z0-9]{0,11}")


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"lab name {name!r}: use 1-12 lowercase letters and digits, starting with a letter"
        )
    return name


def netns_prefix(name: str) -> str:
    return f"dbvip-{check_name(name)}"


def netns_name(name: str, host: str) -> str:
    return f"{netns_prefix(name)}-{host}"


def lab_dir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"dbvip-lab-{check_name(name)}"
