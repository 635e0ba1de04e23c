"""Settings read from flags, ``DBVIP_*`` variables and a TOML file, against
the one table (``dbvip.settings``).

Precedence: flags > environment > file > defaults. Every error names the
setting and where its value came from; nothing is ever adjusted silently.
Secrets may come from files (``DBVIP_ETCD_PASSWORD_FILE``, the container
convention) and are masked wherever settings are printed.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from dbvip import dsn
from dbvip.config_checks import (
    check_failsafe,
    check_pairs,
    check_reader_vips,
    check_secrets,
    check_timing,
)
from dbvip.model import Timing
from dbvip.parsers import ConfigError, Listen
from dbvip.reader_model import ReaderSettings
from dbvip.settings import (
    BY_NAME,
    CONFIG_ENV,
    ENV_PREFIX,
    HOOK_FACTS,
    MAX_FILE_BYTES,
    MAX_VALUE_CHARS,
    REQUIRED_FOR_STATUS,
    REQUIRED_TO_RUN,
    SETTINGS,
    TIMING_FIELDS,
    TOML_TYPES,
    Setting,
)

__all__ = [
    "BY_NAME",
    "HOOK_FACTS",
    "REQUIRED_FOR_STATUS",
    "REQUIRED_TO_RUN",
    "SETTINGS",
    "TIMING_FIELDS",
    "Config",
    "ConfigError",
    "Listen",
    "check_timing",
    "load",
]


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def readers(self) -> ReaderSettings:
        vips = self.values.get("reader_vips") or ()
        return ReaderSettings(
            vips=tuple(v.ip.compressed for v in vips),
            max_lag_bytes=self.values["reader_max_lag_bytes"],
            rejoin_s=self.values["reader_rejoin_s"],
            fallback_to_primary=self.values["reader_fallback_to_primary"],
            no_load_balance=self.values["no_load_balance"],
        )

    @property
    def timing(self) -> Timing:
        values = {name: self.values[name] for name in TIMING_FIELDS}
        if self.values.get("failsafe", "off") != "on":
            values["failsafe_window_s"] = 0.0  # off: the core never asks
        return Timing(**values)

    def secret(self, name: str) -> str:
        """A secret's value, read from its ``*_file`` setting when given."""
        path = self.values.get(f"{name}_file") or ""
        return Path(path).read_text().strip() if path else str(self.values.get(name) or "")

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, printable value, source) with secrets masked."""
        rows = []
        for s in SETTINGS:
            raw = self.values.get(s.name)
            shown = "" if raw in (None, "") else str(raw)
            if raw is not None and isinstance(raw, tuple):
                shown = ",".join(str(r) for r in raw)
            if isinstance(raw, bool):
                shown = "on" if raw else "off"
            if s.secret and shown:
                shown = "********"
            if s.name == "pg_dsn" and shown:
                shown = dsn.shown(shown)
            rows.append((s.name, shown, self.sources.get(s.name, "default")))
        return rows


def load(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    required: tuple[str, ...] = REQUIRED_TO_RUN,
    config_file: str | None = None,
) -> Config:
    """Merge the layers, parse, validate. Raises ConfigError."""
    raw: dict[str, tuple[str, str]] = {
        s.name: (s.default, "default") for s in SETTINGS if s.default is not None
    }
    path = config_file or environ.get(CONFIG_ENV)
    if path:
        source = f"--config {path}" if config_file else f"{CONFIG_ENV}={path}"
        raw.update(_read_file(path, source))
    for key in environ:
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
            name = key[len(ENV_PREFIX) :].lower()
            if name not in BY_NAME and key.removeprefix("DBVIP_HOOK_") in HOOK_FACTS:
                continue  # a hook's fact, passed on by a hook that calls dbvip
            if name not in BY_NAME:
                raise ConfigError(f"unknown environment variable {key}{_hint(name, True)}")
            raw[name] = (environ[key], f"environment {key}")
    for name, value in flags.items():
        if value is not None:
            raw[name] = (value, f"flag {BY_NAME[name].flag}")

    values: dict[str, Any] = {}
    for name, (text, source) in raw.items():
        if text == "" and BY_NAME[name].default == "":
            values[name] = ""  # optional and not set
            continue
        try:
            values[name] = BY_NAME[name].parse(_plain(name, text))
        except ValueError as e:
            message = f"{name} = {_shown(BY_NAME[name], text)} from {source}: {e}"
            raise ConfigError(_URL_CREDENTIALS.sub("://********@", message)) from None
    sources = {name: source for name, (_, source) in raw.items()}
    for name in required:
        if values.get(name) in (None, ""):
            s = BY_NAME[name]
            raise ConfigError(
                f"{name} is required: set {s.flag}, {s.env} or '{name}' in a config file"
            )
    config = Config(values, sources)
    check_pairs(config)
    check_reader_vips(config)
    check_secrets(config)
    if "ttl_s" in required or "node" in required:
        check_timing(config)
    if "node" in required:
        check_failsafe(config)
    return config


# user:password@ in a URL: masked in any message, whatever the setting.
_URL_CREDENTIALS = re.compile(r"://[^/@\s,]*@")


def _shown(setting: Setting, text: str) -> str:
    """A refused value as an error message may show it: secrets masked, the
    DSN only as parsed with its passwords masked, and not too long."""
    if setting.secret:
        return "********"
    if setting.name == "pg_dsn":
        return repr(dsn.shown(text))
    shown = repr(text)
    return shown if len(shown) <= 120 else f"{shown[:100]}... ({len(text)} characters)"


def _plain(name: str, text: str) -> str:
    """Refuse what no setting may hold: control characters, overlong text."""
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"is longer than {MAX_VALUE_CHARS} characters")
    # A DSN may span lines in a TOML file; nothing else has a use for them.
    allowed = "\t\n\r" if name == "pg_dsn" else ""
    if any(not c.isprintable() and c not in allowed for c in text):
        raise ValueError("contains a control character (a NUL, a newline, an escape...)")
    return text


def _read_file(path: str, source: str) -> dict[str, tuple[str, str]]:
    try:
        # A FIFO or /dev/zero would block or never end: a regular file only.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"config file {path} (from {source}) is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file from {source}: {e.strerror}: {path}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {path} (from {source}) is over {MAX_FILE_BYTES} bytes")
    import tomllib  # noqa: PLC0415  (a sidecar without a file never pays 0.15 MiB for it)

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} (from {source}) is not UTF-8 (byte {e.start}); TOML is UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} (from {source}) is not valid TOML: {e}") from None
    out = {}
    for key, value in data.items():
        if key not in BY_NAME:
            raise ConfigError(f"unknown key {key!r} in {path}{_hint(key, False)}")
        out[key] = (_toml_text(BY_NAME[key], value, path), f"file {path}")
    return out


def _toml_text(setting: Setting, value: object, path: str) -> str:
    """A TOML value as the text the parsers take, if its type fits the setting."""
    kind = setting.kind
    wanted = {
        "text": "a string",
        "int": "an integer (not a string, not a float)",
        "seconds": "a number of seconds (not a string)",
        "list": "a string or a list of strings",
        "bool": "true or false (or the strings on/off)",
    }[kind]
    # bool is an int in Python; in TOML it is neither a number nor a string.
    ok = isinstance(value, TOML_TYPES[kind]) and (kind == "bool") == isinstance(value, bool)
    if kind == "bool" and isinstance(value, str):
        ok = True
    if ok and isinstance(value, list):
        ok = bool(value) and all(isinstance(v, str) for v in value)
    if not ok:
        shown = "********" if setting.secret else repr(value)[:80]
        raise ConfigError(
            f"{setting.name} = {shown} from file {path}: must be {wanted}, "
            f"not {type(value).__name__}"
        )
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, float):
        # Plain decimals (0.00001, not 1e-05); nan and inf stay as they are, refused.
        return format(Decimal(repr(value)), "f") if math.isfinite(value) else repr(value)
    return str(value)


def _hint(name: str, env: bool) -> str:
    import difflib  # noqa: PLC0415  (only on the way to an error: 0.2 MiB otherwise resident)

    close = difflib.get_close_matches(name, BY_NAME, n=1)
    if not close:
        return ""
    return f" (did you mean {BY_NAME[close[0]].env if env else close[0]}?)"
