"""What a PromQL expression (or a Grafana query) reads, checked against what
dbvip exports: metric names, label names and label values.

A small lexer, not a full parser: it finds every selector (a name, with its
``{...}`` matchers), every grouping or matching label list (``by``,
``without``, ``on``, ``ignoring``, ``group_left``, ``group_right``) and every
function call, and refuses what it does not understand (a selector without
a name, an unknown function, an unknown character) rather than let it pass
unchecked. Strings and ranges are consumed whole, so nothing inside them is
mistaken for a name; Grafana variables (``$cluster``, ``$__rate_interval``)
are skipped, and a matcher whose value holds one has its value unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from dbvip.metric_docs import LABEL_VALUES, METRIC_LABEL_VALUES, METRICS, RESULT_VALUES

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){},@])
  """,
    re.VERBOSE,
)

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week", "delta",
    "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log2",
    "log10", "max_over_time", "min_over_time", "minute", "month", "predict_linear",
    "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn",
    "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "time", "timestamp", "vector", "year",
}  # fmt: skip
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = ("job", "instance")
# Series that are not dbvip's but that a rule may read: the scrape's health.
FOREIGN: dict[str, tuple[str, ...]] = {"up": TARGET_LABELS}


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


@dataclass
class Reads:
    selectors: list[Selector] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)  # in by/on/... lists
    functions: set[str] = field(default_factory=set)


class PromqlError(ValueError):
    pass


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromqlError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "space":
            yield kind, m.group()


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def reads(expr: str) -> Reads:
    """Every selector, label list and function of ``expr``."""
    out = Reads()
    toks = list(_tokens(expr))
    i = 0

    def peek(at: int) -> str:
        return toks[at][1] if at < len(toks) else ""

    while i < len(toks):
        kind, text = toks[i]
        if kind == "op" and text == "{":
            raise PromqlError(f"a selector without a metric name in {expr!r}")
        if kind != "name":
            i += 1
            continue
        word = text.lower()
        if word in LABEL_LISTS:
            i += 1
            if peek(i) == "(":
                i += 1
                while peek(i) != ")":
                    k, t = toks[i]
                    if k == "name":
                        out.labels.add(t)
                    elif t != ",":
                        raise PromqlError(f"{t!r} in the label list of {word} in {expr!r}")
                    i += 1
                i += 1
            continue
        if word in AGGREGATIONS or word in KEYWORDS:
            i += 1
            continue
        if peek(i + 1) == "(":
            if text not in FUNCTIONS:
                raise PromqlError(f"unknown function {text}() in {expr!r}")
            out.functions.add(text)
            i += 1
            continue
        matchers: list[tuple[str, str, str]] = []
        i += 1
        if peek(i) == "{":
            i += 1
            while peek(i) != "}":
                if peek(i) == ",":
                    i += 1
                    continue
                (k1, label), (k2, op), (k3, value) = toks[i : i + 3]
                if k1 != "name" or k2 != "op" or k3 != "string":
                    raise PromqlError(f"cannot read the matchers of {text} in {expr!r}")
                matchers.append((label, op, _unquote(value)))
                i += 3
            i += 1
        out.selectors.append(Selector(text, tuple(matchers)))
    return out


# -- what dbvip exports ---------------------------------------------------------


def exported_series() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Every series name dbvip's registry can expose -> (documented metric,
    kind, its labels), histograms' and counters' extra series included."""
    series: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for m in METRICS:
        labels = (*m.labels, *TARGET_LABELS)
        if m.kind in ("gauge", "counter"):
            series[m.name] = (m.name, m.kind, labels)
        else:
            for suffix in ("_sum", "_count"):
                series[m.name + suffix] = (m.name, m.kind, labels)
            series[m.name + "_bucket"] = (m.name, m.kind, (*labels, "le"))
    return series


def label_values(metric: str, label: str) -> tuple[str, ...] | None:
    """The values ``label`` of ``metric`` can take; None when open-ended."""
    if label == "result":
        return RESULT_VALUES[metric]
    if (metric, label) in METRIC_LABEL_VALUES:
        return METRIC_LABEL_VALUES[metric, label]
    return LABEL_VALUES.get(label)


def problems(expr: str, series: Mapping[str, tuple[str, str, tuple[str, ...]]]) -> list[str]:
    """Everything ``expr`` reads that dbvip does not export ([] when none)."""
    try:
        r = reads(expr)
    except PromqlError as e:
        return [str(e)]
    found: list[str] = []
    known_labels: set[str] = set()
    for sel in r.selectors:
        if sel.name in FOREIGN:
            metric, labels = sel.name, FOREIGN[sel.name]
        elif sel.name in series:
            metric, _, labels = series[sel.name]
        else:
            found.append(f"{sel.name}: not a series dbvip exports")
            continue
        known_labels.update(labels)
        for label, op, value in sel.matchers:
            if label not in labels:
                found.append(f"{sel.name}: no label {label!r}")
                continue
            allowed = None if metric in FOREIGN else label_values(metric, label)
            if allowed is None or "$" in value:
                continue
            if op in ("=~", "!~"):
                if not re.fullmatch(r"\w+(\|\w+)*", value):
                    found.append(f"{sel.name}: use a plain a|b|c alternation, not {value!r}")
                    continue
                wanted = value.split("|")
            else:
                wanted = [value]
            for v in wanted:
                if v not in allowed:
                    found.append(f"{sel.name}: {label}={v!r} is never exported")
    for label in sorted(r.labels - known_labels):
        found.append(f"label {label!r} is on none of the series read")
    if not r.selectors:
        found.append("reads no series at all")
    return found


def legend_labels(legend: str) -> set[str]:
    """The labels a Grafana legend (``{{node}} {{reason}}``) shows."""
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))


def result_labels(expr: str, series: Mapping[str, tuple[str, str, tuple[str, ...]]]) -> set[str]:
    """Every label any series read by ``expr`` has (an upper bound of what its
    result can carry)."""
    labels: set[str] = set()
    for sel in reads(expr).selectors:
        labels.update(FOREIGN.get(sel.name) or series.get(sel.name, ("", "", ()))[2])
    return labels
