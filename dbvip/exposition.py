"""Counters, gauges and histograms with labels, written in the Prometheus
text format (version 0.0.4): what dbvip's ``/metrics`` needs, on the standard
library.

Why not prometheus_client: importing it (with the standard library modules it
pulls in: wsgiref, urllib.request, http.client, platform, mmap, ...) cost
1.6 MiB of resident memory in a sidecar, 4% of its 40 MB budget, which the
sidecar with a reader pool was over; dbvip used its registry, three metric
types and ``generate_latest``, nothing else. Unlike prometheus_client, no
``_created`` series are written (Prometheus reads counters without them; the
client library can be told to drop them too).

Updates take a short lock per metric: the loop, the hook worker and the HTTP
threads touch them concurrently, and a scrape must never see half an update
of a histogram (its buckets, count and sum move together).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # name, labels, value


@dataclass
class Family:
    """One metric's HELP, TYPE and samples, as written."""

    name: str
    help: str
    kind: str  # counter, gauge, histogram
    samples: list[Sample] = field(default_factory=list)


def number(value: float) -> str:
    """A sample's value as Prometheus (Go's ParseFloat) reads it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for name, labels, value in family.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                lines.append(f"{name}{{{inner}}} {number(value)}")
            else:
                lines.append(f"{name} {number(value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


class _Metric:
    """Children by label values, created on first use (or up front, so that
    a series exists at 0 before its first increment)."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], list[float]] = {}
        if not self.labelnames:
            self._children[()] = self._zero()

    def _zero(self) -> list[float]:
        return [0.0]

    def _child(self, values: tuple[str, ...]) -> list[float]:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, got values {values}")
        child = self._children.get(values)
        if child is None:
            with self._lock:
                child = self._children.setdefault(values, self._zero())
        return child

    def _labels(self, values: tuple[str, ...], *extra: tuple[str, str]) -> Labels:
        return (*zip(self.labelnames, values, strict=True), *extra)

    def family(self) -> Family:
        with self._lock:
            children = sorted((k, list(v)) for k, v in self._children.items())
        family = Family(self.name, self.help, self.kind)
        for values, state in children:
            family.samples += self._samples(values, state)
        return family

    def _samples(self, values: tuple[str, ...], state: list[float]) -> list[Sample]:
        return [(self.name, self._labels(values), state[0])]


class Counter(_Metric):
    """``name`` ends in ``_total``, as written (and as documented)."""

    kind = "counter"

    def labels(self, *values: str) -> CounterChild:
        return CounterChild(self, self._child(values))

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)


@dataclass(frozen=True)
class CounterChild:
    metric: Counter
    state: list[float]

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.metric.name}: a counter only goes up, not by {amount}")
        with self.metric._lock:
            self.state[0] += amount


class Gauge(_Metric):
    kind = "gauge"

    def labels(self, *values: str) -> GaugeChild:
        return GaugeChild(self, self._child(values))

    def set(self, value: float) -> None:
        self.labels().set(value)


@dataclass(frozen=True)
class GaugeChild:
    metric: Gauge
    state: list[float]

    def set(self, value: float) -> None:
        with self.metric._lock:
            self.state[0] = float(value)


class Histogram(_Metric):
    """Cumulative buckets (``le``), then ``_count`` and ``_sum``."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.bounds = (*sorted(buckets), math.inf)
        super().__init__(name, help, labelnames)

    def _zero(self) -> list[float]:
        return [0.0] * (len(self.bounds) + 1)  # one per bucket, then the sum

    def labels(self, *values: str) -> HistogramChild:
        return HistogramChild(self, self._child(values))

    def _samples(self, values: tuple[str, ...], state: list[float]) -> list[Sample]:
        out: list[Sample] = []
        running = 0.0
        for bound, count in zip(self.bounds, state, strict=False):
            running += count
            out.append(
                (f"{self.name}_bucket", self._labels(values, ("le", number(bound))), running)
            )
        out.append((f"{self.name}_count", self._labels(values), running))
        out.append((f"{self.name}_sum", self._labels(values), state[-1]))
        return out


@dataclass(frozen=True)
class HistogramChild:
    metric: Histogram
    state: list[float]

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value (le is inclusive); +Inf last.
        index = min(bisect.bisect_left(self.metric.bounds, value), len(self.metric.bounds) - 1)
        with self.metric._lock:
            self.state[index] += 1
            self.state[-1] += value


class GaugeFamily(Family):
    """Gauges computed at scrape time: ``add_metric(label values, value)``."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, "gauge")
        self.labelnames = tuple(labelnames)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        labels = tuple(zip(self.labelnames, values, strict=True))
        self.samples.append((self.name, labels, float(value)))


class Registry:
    """Metrics and scrape-time collectors; a name registered twice is refused."""

    def __init__(self) -> None:
        self._parts: list[_Metric | Callable[[], Iterator[Family]]] = []
        self._names: set[str] = set()

    def add(self, metric: _Metric) -> None:
        suffixes = ("", "_bucket", "_count", "_sum") if isinstance(metric, Histogram) else ("",)
        self._claim([metric.name + suffix for suffix in suffixes])
        self._parts.append(metric)

    def collector(self, names: Iterable[str], collect: Callable[[], Iterator[Family]]) -> None:
        """``collect`` yields families named only from ``names`` at each scrape."""
        self._claim(names)
        self._parts.append(collect)

    def _claim(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self._names:
                raise ValueError(f"metric {name} registered twice")
            self._names.add(name)

    def render(self) -> bytes:
        families: list[Family] = []
        for part in self._parts:
            if isinstance(part, _Metric):
                families.append(part.family())
            else:
                families.extend(part())
        return render(families)
