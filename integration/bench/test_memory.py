"""The memory benchmark's table: KiB per node, the largest in MiB and MB, the goal."""

from __future__ import annotations

from integration.bench.memory import mb, table


def test_the_table_converts_the_largest_node_and_judges_it_against_40_mb() -> None:
    text = table({
        "started": {"n1": 38_000, "n2": 39_000, "n3": 38_500},
        "after faults": {"n1": 38_000, "n2": 39_100, "n3": 38_500},
    })  # fmt: skip
    rows = text.splitlines()
    assert rows[0].startswith("| stage | n1 (KiB) | n2 (KiB) | n3 (KiB) | largest (MiB)")
    # 39,000 KiB = 39.94 MB (within); 39,100 KiB = 40.04 MB (not).
    assert rows[2] == "| started | 38,000 | 39,000 | 38,500 | 38.1 | 39.9 | yes |"
    assert rows[3] == "| after faults | 38,000 | 39,100 | 38,500 | 38.2 | 40.0 | **no** |"
    assert round(mb(39_062), 3) == 39.999
