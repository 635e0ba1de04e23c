"""Hook settings: a hook that cannot run stops the start, naming setting and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbvip.config import ConfigError, load
from tests.unit.test_config import GOOD_ENV


def script(path: Path, mode: int) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_missing_hook_names_the_setting_and_the_environment_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sh"
    with pytest.raises(ConfigError) as err:
        load({}, {**GOOD_ENV, "DBVIP_HOOK_ACQUIRE": str(missing)})
    message = str(err.value)
    assert message.startswith("hook_acquire = ")
    assert "from environment DBVIP_HOOK_ACQUIRE" in message
    assert "does not exist" in message


def test_non_executable_hook_names_the_setting_and_the_file(tmp_path: Path) -> None:
    hook = script(tmp_path / "page.sh", 0o644)  # no x bit: not executable, even for root
    config = tmp_path / "dbvip.toml"
    config.write_text(f'hook_conflict = "{hook}"\n')
    with pytest.raises(ConfigError) as err:
        load({}, {**GOOD_ENV, "DBVIP_CONFIG": str(config)})
    message = str(err.value)
    assert message.startswith("hook_conflict = ")
    assert f"from file {config}" in message
    assert "is not executable" in message


def test_a_directory_is_not_a_hook(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hook_release = .* from flag --hook-release"):
        load({"hook_release": str(tmp_path)}, GOOD_ENV)


def test_executable_hooks_and_their_timeout_are_taken(tmp_path: Path) -> None:
    hook = script(tmp_path / "move-ip.sh", 0o755)
    config = load(
        {"hook_acquire": str(hook)},
        {**GOOD_ENV, "DBVIP_HOOK_RELEASE": str(hook), "DBVIP_HOOK_TIMEOUT_S": "2.5"},
    )
    assert config["hook_acquire"] == str(hook)
    assert config["hook_release"] == str(hook)
    assert config["hook_conflict"] == ""
    assert config["hook_timeout_s"] == 2.5


def test_no_hooks_by_default() -> None:
    config = load({}, GOOD_ENV)
    assert (config["hook_acquire"], config["hook_release"], config["hook_conflict"]) == ("",) * 3
    assert config["hook_timeout_s"] == 10
