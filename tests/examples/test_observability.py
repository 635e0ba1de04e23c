"""The alert rules (examples/prometheus) under the real promtool, and the
Grafana dashboard (examples/grafana): both may read only metrics, labels and
label values dbvip exports (tests/examples/promql.py), so they cannot drift
from dbvip/metric_docs.py.

promtool comes from the Debian package ``prometheus`` (scripts/setup.sh).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dbvip.metric_docs import METRICS
from dbvip.model import Role
from tests.examples.deploy import EXAMPLES, ROOT, Run
from tests.examples.promql import exported_series, legend_labels, problems, reads, result_labels
from tests.observed import ObservedNode, run

pytestmark = pytest.mark.tools

PROMETHEUS = EXAMPLES / "prometheus"
RULES = PROMETHEUS / "dbvip-alerts.yml"
RULE_TESTS = PROMETHEUS / "dbvip-alerts.test.yml"
SCRAPE = PROMETHEUS / "prometheus.yml"
DASHBOARD = EXAMPLES / "grafana" / "dbvip.json"
README = ROOT / "README.md"
SERIES = exported_series()
# What Grafana puts in a query before Prometheus sees it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$cluster": "main"}


def promtool(*args: str | Path) -> Run:
    path = shutil.which("promtool")
    if path is None:  # not a skip: CI installs it, and an untested rule is a lie
        pytest.fail("promtool is needed (Debian package prometheus; scripts/setup.sh installs it)")
    return Run.of([path, *map(str, args)])


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules()]


def rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return tests


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every panel target and annotation."""
    board = dashboard()
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in board["panels"]
        for t in p["targets"]
    ]
    found += [
        (f"annotation {a['name']!r}", a["expr"], a.get("titleFormat", ""))
        for a in board["annotations"]["list"]
    ]
    return found


def with_rules(directory: Path, mutated: list[dict[str, Any]]) -> Path:
    """The rule tests, run against ``mutated`` rules instead of the real ones."""
    data = yaml.safe_load(RULES.read_text())
    data["groups"][0]["rules"] = mutated
    (directory / RULES.name).write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(RULE_TESTS, directory / RULE_TESTS.name)
    return directory / RULE_TESTS.name


# -- promtool ------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_scrape_configuration() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.code == 0, checked.text
    assert f"SUCCESS: {len(rules())} rules found" in checked.text
    config = promtool("check", "config", SCRAPE)
    assert config.code == 0, config.text


def test_the_rule_unit_tests_pass_under_promtool() -> None:
    done = promtool("test", "rules", RULE_TESTS)
    assert done.code == 0, done.text
    assert "SUCCESS" in done.text


def test_every_rule_is_tested_firing_and_staying_silent() -> None:
    firing: dict[str, int] = {}
    silent: dict[str, int] = {}
    for test in rule_tests():
        for case in test["alert_rule_test"]:
            seen = firing if case["exp_alerts"] else silent
            seen[case["alertname"]] = seen.get(case["alertname"], 0) + 1
    names = alert_names()
    assert len(set(names)) == len(names)
    assert set(firing) == set(names)
    assert set(silent) == set(names)


@pytest.mark.parametrize("name", alert_names())
def test_a_rule_that_never_fires_fails_its_unit_tests(name: str, tmp_path: Path) -> None:
    mutated = copy.deepcopy(rules())
    for rule in mutated:
        if rule["alert"] == name:
            rule["expr"] = "vector(1) == 0"  # an empty result: never fires
    done = promtool("test", "rules", with_rules(tmp_path, mutated))
    assert done.code != 0, done.text
    assert f"alertname: {name}," in done.text


@pytest.mark.parametrize("name", [r["alert"] for r in rules() if "for" in r])
def test_a_rule_that_fires_without_waiting_fails_its_unit_tests(name: str, tmp_path: Path) -> None:
    """Each rule's pending window is asserted silent, not just its end state."""
    mutated = copy.deepcopy(rules())
    for rule in mutated:
        if rule["alert"] == name:
            del rule["for"]
    done = promtool("test", "rules", with_rules(tmp_path, mutated))
    assert done.code != 0, done.text
    assert f"alertname: {name}," in done.text


def test_every_rule_has_a_summary_a_severity_and_a_runbook_in_the_readme() -> None:
    text = README.read_text()
    alerts = text[text.index("### Alerts") :]
    alerts = alerts[: alerts.index("\n## ")]
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        runbook = rule["annotations"]["runbook"]
        assert f"README.md, Alerts, {name}" in runbook
        assert "Operator's guide" in runbook
        # The README's Alerts table has a row for it: meaning and what to do.
        assert re.search(rf"^\| `{name}` \|[^\n]+\|[^\n]+\|", alerts, re.MULTILINE), name


def test_the_readme_lists_no_alert_the_rules_lack() -> None:
    text = README.read_text()
    alerts = text[text.index("### Alerts") :]
    alerts = alerts[: alerts.index("\n## ")]
    assert set(re.findall(r"^\| `(Dbvip\w+)` \|", alerts, re.MULTILINE)) == set(alert_names())


# -- drift: only what dbvip exports ----------------------------------------------


def test_the_drift_check_knows_every_series_the_registry_exposes() -> None:
    node = ObservedNode()
    run([node], 1.0)
    families = list(text_string_to_metric_families(node.metrics.render().decode()))
    exposed = {s.name for f in families for s in f.samples}
    assert exposed <= set(SERIES)
    documented = {m.name.removesuffix("_total") for m in METRICS}
    assert {f.name for f in families} == documented


def test_promtool_accepts_the_sidecars_exposition(tmp_path: Path) -> None:
    """dbvip writes the text format by hand (dbvip.exposition): the real
    promtool parses and lints full scrapes of a primary and of a replica in
    the pool (between them, every family with samples)."""
    readers = ("198.51.100.101", "198.51.100.102")
    n1 = ObservedNode(reader_vips=readers)
    n2 = ObservedNode("n2", Role.REPLICA, n1.clock, n1.etcd, n1.kernel, reader_vips=readers)
    run([n1, n2], 1.0)
    # A failsafe window runs on n1, n2 gave it its promise (facts as published).
    primary, replica = n1.board.latest(), n2.board.latest()
    assert primary is not None and replica is not None
    n1.board.offer(replace(primary, facts={**primary.facts, "failsafe_window_in_s": "3.0"}))
    n2.board.offer(replace(replica, reader_vips=readers, pool="in_pool", lag_bytes=0,
                           facts={**replica.facts, "promised_for_s": "3.0"}))  # fmt: skip
    n2.metrics.reader_moved(readers[0], "taken", "taking")
    promtool("--version")  # fails the test, with why, if promtool is missing
    with_samples = set()
    for name, node in (("n1", n1), ("n2", n2)):
        exposition = node.metrics.render()
        families = text_string_to_metric_families(exposition.decode())
        with_samples |= {f.name for f in families if f.samples}
        text = tmp_path / f"{name}.txt"
        text.write_bytes(exposition)
        checked = Run.of(["sh", "-c", 'exec promtool check metrics < "$0"', str(text)])
        assert checked.code == 0 and checked.text.strip() == "", checked.text
    assert with_samples == {m.name.removesuffix("_total") for m in METRICS}


@pytest.mark.parametrize("name", alert_names())
def test_each_rule_reads_only_what_dbvip_exports(name: str) -> None:
    (rule,) = [r for r in rules() if r["alert"] == name]
    assert problems(rule["expr"], SERIES) == []
    # The summary's labels are on the result.
    used = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]))
    assert used <= result_labels(rule["expr"], SERIES)


def test_the_dashboard_reads_only_what_dbvip_exports() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    for where, expr, legend in queries:
        assert problems(expr, SERIES) == [], where
        assert legend_labels(legend) <= result_labels(expr, SERIES), where
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
            assert query, variable["name"]
            metric, label = query.groups()
            assert label in SERIES[metric][2], variable["name"]


def test_the_dashboard_shows_what_an_on_call_engineer_needs() -> None:
    """Each panel the issue asks for, by the series it reads."""
    read_by_panel = {
        p["title"]: {s.name for t in p["targets"] for s in reads(t["expr"]).selectors}
        for p in dashboard()["panels"]
    }
    wanted = {
        "Writer VIP holder": "dbvip_vip_present",
        "Decisions and their reasons (hand-offs)": "dbvip_decision_reason",
        "Hand-offs": "dbvip_actions_total",
        "Lease deadline remaining": "dbvip_lease_deadline_remaining_seconds",
        "PostgreSQL probe latency (p50, p99)": "dbvip_probe_duration_seconds_bucket",
        "etcd request latency (p99) and failures": "dbvip_etcd_request_duration_seconds_bucket",
        "Actions by result": "dbvip_actions_total",
        "Reader VIP holders": "dbvip_reader_vip_held",
        "Replica lag behind the primary": "dbvip_lag_bytes",
        "Reader VIP moves by reason": "dbvip_reader_moves_total",
    }
    for title, series in wanted.items():
        assert series in read_by_panel[title], title
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:  # every query goes to the data source the user picks
        assert p["datasource"]["uid"] == "${datasource}"


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables filled in) as a rule."""
    records = []
    for i, (where, query, _) in enumerate(dashboard_queries()):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, where
        records.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = promtool("check", "rules", path)
    assert done.code == 0, done.text


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("dbvip_vip_presnt == 1", "dbvip_vip_presnt: not a series dbvip exports"),
        ("rate(dbvip_probe_duration_seconds[5m])", "not a series dbvip exports"),
        ("dbvip_actions == 1", "dbvip_actions: not a series"),
        ('dbvip_lease_held{role="primary"}', "no label 'role'"),
        ('dbvip_decision_reason{reason="conflicts"}', "reason='conflicts' is never exported"),
        ('dbvip_actions_total{action=~"add_vip|remove_vips"}', "action='remove_vips'"),
        ('dbvip_actions_total{result="timeout"}', "result='timeout' is never exported"),
        ('dbvip_hook_runs_total{result="refused"}', "result='refused' is never exported"),
        ('dbvip_in_pool{why=~"lagging|lagged"}', "why='lagged' is never exported"),
        ('dbvip_role{role=~"prim.*"}', "plain a|b|c alternation"),
        ("sum by (nod) (dbvip_info)", "label 'nod' is on none of the series read"),
        ("rat(dbvip_conflicts_total[5m])", "unknown function rat()"),
        ('{__name__="dbvip_ready"}', "without a metric name"),
        ("node_load1 > 1", "node_load1: not a series dbvip exports"),
        ("vector(1)", "reads no series at all"),
    ],
)
def test_the_drift_check_refuses_what_dbvip_does_not_export(expr: str, complaint: str) -> None:
    found = problems(expr, SERIES)
    assert any(complaint in p for p in found), found


def test_the_drift_check_reads_names_not_strings_or_ranges() -> None:
    expr = (
        'label_replace(dbvip_ready, "dbvip_not_a_metric", "$1", "instance", "(.*)") '
        "and on (instance) max_over_time(up[5m]) offset 1m"
    )
    assert problems(expr, SERIES) == []
    assert [s.name for s in reads(expr).selectors] == ["dbvip_ready", "up"]
    assert legend_labels("{{node}}: {{ reason }}") == {"node", "reason"}


def test_the_dashboard_names_each_node_of_the_chosen_cluster_only(tmp_path: Path) -> None:
    """Two panels' queries under promtool, on series of two clusters: the
    join on dbvip_info puts the node's name on each line, and only the
    chosen cluster's nodes are shown."""
    board = {p["title"]: p for p in dashboard()["panels"]}

    def query(title: str) -> str:
        return str(board[title]["targets"][0]["expr"]).replace("$cluster", "main")

    def info(node: str, cluster: str) -> dict[str, str]:
        labels = f'job="dbvip", instance="{node}:8008", cluster="{cluster}", node="{node}"'
        return {"series": f'dbvip_info{{{labels}, vip="198.51.100.10"}}', "values": "1+0x10"}

    def gauge(name: str, node: str, value: int, extra: str = "") -> dict[str, str]:
        return {
            "series": f'{name}{{job="dbvip", instance="{node}:8008"{extra}}}',
            "values": f"{value}+0x10",
        }

    series = [info("pg1", "main"), info("pg2", "main"), info("pg3", "other")]
    series += [gauge("dbvip_vip_present", n, v) for n, v in (("pg1", 1), ("pg2", 0), ("pg3", 1))]
    for node, reason in (("pg1", "holding"), ("pg2", "replica"), ("pg3", "holding")):
        for each in ("holding", "replica", "conflict"):
            series.append(
                gauge("dbvip_decision_reason", node, int(each == reason), f', reason="{each}"')
            )
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": query("Writer VIP holder"),
                        "eval_time": "1m",
                        "exp_samples": [
                            {"labels": '{node="pg1"}', "value": 1},
                            {"labels": '{node="pg2"}', "value": 0},
                        ],
                    },
                    {
                        "expr": query("Decisions and their reasons (hand-offs)"),
                        "eval_time": "1m",
                        "exp_samples": [
                            {"labels": '{node="pg1", reason="holding"}', "value": 1},
                            {"labels": '{node="pg2", reason="replica"}', "value": 1},
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "dashboard.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", path)
    assert done.code == 0, done.text
