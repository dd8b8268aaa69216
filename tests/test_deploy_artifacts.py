"""The operations artifacts in deploy/ stay true to the metrics the code exports.

A renamed metric breaks these tests instead of silently emptying a dashboard panel or an alert. The
alert rules themselves are proven by promtool's unit tests (deploy/alerts.test.yml), run from here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Every metric callboard exports (docs/DESIGN.md "Metrics", docs/operations.md "Metrics"), by kind.
COUNTERS = {
    "callboard_calls_entered_total",
    "callboard_calls_answered_total",
    "callboard_calls_abandoned_total",
    "callboard_ws_messages_sent_total",
    "callboard_ws_slow_consumer_closes_total",
    "callboard_webhook_rejected_total",
    "callboard_redis_errors_total",
    "callboard_spool_dropped_total",
    "callboard_offers_total",  # routing (offer mode), routing/router.py
}
HISTOGRAMS = {
    "callboard_queue_wait_seconds",
    "callboard_call_handle_seconds",
    "callboard_presence_batch_size",
    "callboard_presence_flush_seconds",
    "callboard_webhook_duration_seconds",
    "callboard_offer_latency_seconds",  # routing (offer mode), routing/router.py
}
# Gauges of state shared through Redis: every instance reports the same value, so take max() across
# instances before anything else (summing would multiply them by the number of instances).
SHARED_GAUGES = {
    "callboard_agents",
    "callboard_queue_agents",
    "callboard_queue_calls_waiting",
    "callboard_queue_oldest_call_enqueued_timestamp_seconds",
    "callboard_service_level_ratio",
    "callboard_service_level_target_ratio",
}
PROCESS_GAUGES = {
    "callboard_ws_connections",
    "callboard_presence_pending_intents",
    "callboard_spool_depth",
    "callboard_follower_lag_seconds",
    "callboard_build_info",
}
KNOWN_METRICS = COUNTERS | HISTOGRAMS | SHARED_GAUGES | PROCESS_GAUGES

METRIC_RE = re.compile(r"\bcallboard_[a-z0-9_]+")
# Grafana variables, replaced so that the expressions are plain PromQL for promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$queue": ".*", "$team": ".*"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        panels = [panel, *panel.get("panels", [])]
        exprs += [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    return exprs


def alert_exprs() -> list[str]:
    # Rule expressions are block scalars or one-liners after `expr:`; a YAML parser is not a dependency.
    text = ALERTS.read_text()
    exprs = []
    for match in re.finditer(r"^(\s*)expr: *(\|)?(.*)$", text, re.MULTILINE):
        indent, block, rest = match.groups()
        if not block:
            exprs.append(rest.strip())
            continue
        body = []
        for line in text[match.end() + 1 :].splitlines():
            if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
                break
            body.append(line.strip())
        exprs.append(" ".join(body).strip())
    return exprs


def all_exprs() -> list[tuple[str, str]]:
    return [("dashboard", e) for e in dashboard_exprs()] + [("alerts.yml", e) for e in alert_exprs()]


def base_name(metric: str) -> str:
    """The exported metric a series name belongs to (histogram series carry a suffix)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if metric.endswith(suffix) and metric.removesuffix(suffix) in HISTOGRAMS:
            return metric.removesuffix(suffix)
    return metric


def test_dashboard_and_alerts_reference_only_exported_metrics() -> None:
    exprs = all_exprs()
    assert len(dashboard_exprs()) > 30 and len(alert_exprs()) >= 8
    unknown = {
        (where, m) for where, e in exprs for m in METRIC_RE.findall(e) if base_name(m) not in KNOWN_METRICS
    }
    assert not unknown, f"metrics not exported by callboard: {sorted(unknown)}"


def test_every_exported_metric_is_on_the_dashboard_and_documented() -> None:
    on_dashboard = {base_name(m) for e in dashboard_exprs() for m in METRIC_RE.findall(e)}
    assert KNOWN_METRICS - on_dashboard == set()
    operations = OPERATIONS.read_text()
    assert {m for m in KNOWN_METRICS if f"`{m}" not in operations} == set()


def test_counters_and_histograms_are_only_used_through_rate_or_increase() -> None:
    for where, expr in all_exprs():
        for match in METRIC_RE.finditer(expr):
            metric = match.group()
            if metric in COUNTERS or base_name(metric) in HISTOGRAMS:
                before = expr[: match.start()]
                assert re.search(r"\b(rate|increase)\(\s*$", before), (
                    f"{where}: {metric} outside rate(): {expr}"
                )


def test_shared_gauges_are_collapsed_with_max_across_instances() -> None:
    for where, expr in all_exprs():
        for match in METRIC_RE.finditer(expr):
            if match.group() in SHARED_GAUGES:
                before = expr[: match.start()]
                enclosing = re.search(r"(\w+)\s*(?:by\s*\([^)]*\)\s*)?\(\s*$", before)
                assert enclosing and enclosing.group(1) == "max", (
                    f"{where}: {match.group()} not under max(): {expr}"
                )


def test_known_metrics_are_what_the_code_exports() -> None:
    """The list above matches wallboard.metrics (per-process) and wallboard.shared_gauges (scrape-time)."""
    metrics = pytest.importorskip("wallboard.metrics")
    by_kind = {"counter": COUNTERS, "histogram": HISTOGRAMS, "gauge": PROCESS_GAUGES}
    exported = set()
    registry = metrics.Metrics().registry
    from routing.router import RoutingMetrics

    RoutingMetrics(registry)  # registered on the same registry in offer mode
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name  # as exposed
        assert name in by_kind[family.type], f"{name} is a {family.type} in the code"
        exported.add(name)
    # Shared gauges are built at scrape time from the mirror, which needs a running app: read their names.
    shared_source = (ROOT / "wallboard" / "shared_gauges.py").read_text()
    exported |= set(re.findall(r'GaugeMetricFamily\(\s*"(callboard_\w+)"', shared_source))
    assert exported == KNOWN_METRICS


def test_dashboard_uses_the_datasource_variable_and_the_queue_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["queue"]["definition"] == "label_values(callboard_queue_calls_waiting, queue)"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not on PATH; CI installs it (Debian/Ubuntu package `prometheus`)")
        pytest.skip(reason="promtool is not on PATH (apt-get install prometheus provides /usr/bin/promtool)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_alert_rules_are_valid() -> None:
    result = run(promtool(), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run(promtool(), "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_example_config_is_valid() -> None:
    result = run(promtool(), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query as a recording rule, Grafana variables filled in."""
    tool = promtool()
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    result = run(tool, "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
