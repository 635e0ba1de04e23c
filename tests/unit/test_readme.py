"""The README documents every setting, metric and endpoint, from the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbvip.config import SETTINGS
from dbvip.docs import main, render
from dbvip.health import PATHS
from dbvip.metric_docs import METRICS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_generated_tables_in_the_readme_are_up_to_date() -> None:
    text = README.read_text()
    # On failure, run: python -m dbvip.docs README.md
    assert render(text) == text
    assert main(["--check", str(README)]) == 0


def test_every_setting_metric_and_endpoint_is_in_the_readme() -> None:
    text = README.read_text()
    for s in SETTINGS:
        assert f"| `{s.name}` | `{s.env}` |" in text
    for m in METRICS:
        assert f"| `{m.name}` | {m.kind} |" in text
    for path in PATHS:
        assert f"`GET {path}`" in text


def test_a_stale_table_is_caught_and_rewritten(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.read_text().replace("| `ttl_s` |", "| `ttl` |"))
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0
    assert stale.read_text() == README.read_text()


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="generated: settings"):
        render("# no tables here\n")
