"""The repository stands alone: what it points a reader to is in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Files that lived beside the repository once, never in it.
OUTSIDE = re.compile(r"\.\./shared|\bLAB\.md\b|/work/shared")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / f for f in listed if f.endswith((".py", ".md", ".toml", ".sh", ".txt"))]


def test_no_file_points_outside_the_repository() -> None:
    files = tracked_text_files()
    assert ROOT / "README.md" in files
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in files
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_every_relative_link_in_the_docs_resolves() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert ROOT / "docs" / "DESIGN.md" in docs
    broken = [
        f"{doc.relative_to(ROOT)} -> {target}"
        for doc in docs
        for target, _ in LINK.findall(doc.read_text())
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert broken == []
