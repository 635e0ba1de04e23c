"""dbvip's hand-written Prometheus text format, read back by prometheus_client's
parser (an independent reader): names, types, escaping, histogram buckets."""

from __future__ import annotations

import math
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dbvip.exposition import Counter, Gauge, GaugeFamily, Histogram, Registry, number


def samples(registry: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(registry.render().decode()):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def test_counters_and_gauges_with_and_without_labels_read_back() -> None:
    registry = Registry()
    actions = Counter("x_actions_total", "actions", ("kind", "result"))
    registry.add(actions)
    plain = Counter("x_plain_total", "plain")
    registry.add(plain)
    level = Gauge("x_level", "level")
    registry.add(level)
    actions.labels("add", "ok").inc()
    actions.labels("add", "ok").inc(2)
    actions.labels("remove", "failed")  # exists at 0 before its first increment
    plain.inc()
    level.set(-1.5)
    assert samples(registry) == {
        ("x_actions_total", (("kind", "add"), ("result", "ok"))): 3.0,
        ("x_actions_total", (("kind", "remove"), ("result", "failed"))): 0.0,
        ("x_plain_total", ()): 1.0,
        ("x_level", ()): -1.5,
    }
    types = {f.name: f.type for f in text_string_to_metric_families(registry.render().decode())}
    assert types == {"x_actions": "counter", "x_plain": "counter", "x_level": "gauge"}


def test_help_and_label_values_are_escaped() -> None:
    registry = Registry()
    odd = 'a "quoted" \\ back\nslash'
    family = GaugeFamily("x_info", "help with \\ and\nnewline", ("what",))
    family.add_metric([odd], 1.0)
    registry.collector(["x_info"], lambda: iter([family]))
    (parsed,) = text_string_to_metric_families(registry.render().decode())
    assert parsed.documentation == "help with \\ and\nnewline"
    assert [dict(s.labels) for s in parsed.samples] == [{"what": odd}]


def test_a_histogram_writes_cumulative_buckets_count_and_sum() -> None:
    registry = Registry()
    latency = Histogram("x_seconds", "latency", ("op",), (0.1, 1.0))
    registry.add(latency)
    for value in (0.05, 0.1, 0.5, 3.0):  # 0.1 is in the 0.1 bucket: le is inclusive
        latency.labels("get").observe(value)
    got = samples(registry)
    assert got[("x_seconds_bucket", (("le", "0.1"), ("op", "get")))] == 2
    assert got[("x_seconds_bucket", (("le", "1.0"), ("op", "get")))] == 3
    assert got[("x_seconds_bucket", (("le", "+Inf"), ("op", "get")))] == 4
    assert got[("x_seconds_count", (("op", "get"),))] == 4
    assert got[("x_seconds_sum", (("op", "get"),))] == pytest.approx(3.65)


def test_a_scrape_while_other_threads_create_and_observe_sees_whole_histograms() -> None:
    """The HTTP threads render while the loop creates children and observes:
    no error, and in every scrape each histogram is whole (its +Inf bucket is
    its count, its sum that of what was counted)."""
    registry = Registry()
    latency = Histogram("x_seconds", "latency", ("op",), (0.5,))
    registry.add(latency)
    stop = threading.Event()

    def observe() -> None:
        i = 0
        while not stop.is_set():
            latency.labels(f"op{i % 200}").observe(1.0)  # new children for a while
            i += 1

    writer = threading.Thread(target=observe)
    writer.start()
    try:
        for _ in range(60):
            got = samples(registry)
            for (name, labels), value in got.items():
                if name == "x_seconds_count":
                    inf = got[("x_seconds_bucket", (("le", "+Inf"), *labels))]
                    assert inf == value and got[("x_seconds_sum", labels)] == value
    finally:
        stop.set()
        writer.join()


def test_misuse_is_refused() -> None:
    registry = Registry()
    hits = Counter("x_hits_total", "hits", ("who",))
    registry.add(hits)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(Counter("x_hits_total", "again"))
    with pytest.raises(ValueError, match="registered twice"):
        registry.collector(["x_hits_total"], lambda: iter([]))
    registry.add(Histogram("x_wait", "wait", (), (1.0,)))
    with pytest.raises(ValueError, match="x_wait_count registered twice"):
        registry.add(Gauge("x_wait_count", "a gauge named like the histogram's count"))
    with pytest.raises(ValueError, match="labels"):
        hits.labels("a", "b")
    with pytest.raises(ValueError, match="only goes up"):
        hits.labels("a").inc(-1)


def test_numbers_are_written_as_prometheus_reads_them() -> None:
    assert [number(v) for v in (0, 1, 0.25, 1e-05, math.inf, -math.inf)] == [
        "0.0", "1.0", "0.25", "1e-05", "+Inf", "-Inf"
    ]  # fmt: skip
    assert number(math.nan) == "NaN"
