"""The chart's alerts and dashboard ask only for metrics that exist.

A PromQL expression naming a metric nobody exports is silent: the alert never fires, the
panel stays empty. So every metric name in the rendered PrometheusRule and Grafana
dashboard is looked up in what a real worker (``/metrics``) and the real test Triton
(its metrics port) export, after some tweets went through both; and every ``reason`` a
rule matches on is a transient error class the worker counts retries under.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from tests.chart.render import Rendered, render
from tests.support.pipeline import PipelineFactory
from tests.support.waiting import wait_until
from worker import errors

pytestmark = [pytest.mark.chart, pytest.mark.integration]

OBSERVABILITY = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_FUNCTION_OR_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords dropped)."""
    text = _MATCHERS.sub(" ", expr)
    text = _STRINGS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPINGS.sub(" ", text)
    names = set()
    for match in _FUNCTION_OR_NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can produce, from its TYPE lines
    (a labelled counter nobody incremented yet has no sample, only its TYPE)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            name, kind = parts[2], parts[3]
            names.add(name)
            if kind == "counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind in {"histogram", "summary"}:
                names.update({f"{name}_sum", f"{name}_count"})
                if kind == "histogram":
                    names.add(f"{name}_bucket")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def expressions(objects: Rendered) -> list[str]:
    """Every PromQL expression of the rendered alerts and dashboard."""
    found = [
        str(rule["expr"])
        for rule_object in objects.of_kind("PrometheusRule")
        for group in rule_object["spec"]["groups"]
        for rule in group["rules"]
    ]
    for config_map in objects.of_kind("ConfigMap"):
        for document in config_map["data"].values():
            dashboard: dict[str, Any] = json.loads(document)
            found += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return found


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        'sum by (namespace, topic) (max by (topic, partition) (delta(lag_x{job="a", '
        'topic="tweets"}[10m]))) > 5 and on (x) rate(b_total[5m]) / '
        "histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))"
    )
    assert metric_names(expr) == {"lag_x", "b_total", "c_bucket"}


def test_alerts_and_dashboard_use_only_exported_metrics(
    helm: str, make_pipeline: PipelineFactory, triton_server: Any
) -> None:
    pipeline = make_pipeline()
    run = pipeline.start_worker()
    ids = pipeline.seed(20)
    pipeline.wait_for_results(ids, 120)
    wait_until(lambda: run.metric("emotion_worker_published_total") >= len(ids), 60, run.log_tail)
    worker_metrics = run.metrics_text()
    server = getattr(triton_server, "server", None)
    assert server is not None, "the test Triton exposes no metrics port (testcontainers?)"
    with urllib.request.urlopen(server.metrics_url, timeout=10) as answer:
        triton_metrics = answer.read().decode()
    exported = exported_names(worker_metrics) | exported_names(triton_metrics)
    assert "emotion_worker_consumer_lag" in exported and "nv_inference_request_success" in exported

    objects = render(helm, OBSERVABILITY)
    queries = expressions(objects)
    assert len(queries) >= 10, queries
    used = set().union(*(metric_names(q) for q in queries))
    assert used, "no metric names found in the rendered rules and dashboard"
    missing = sorted(used - exported)
    assert not missing, f"not exported by the worker or Triton: {missing}"

    # A rule on retries of one reason must name a class the worker counts retries under.
    reasons = {r for q in queries for r in re.findall(r'reason="([^"]+)"', q)}
    assert reasons
    for reason in reasons:
        error = getattr(errors, reason, None)
        assert isinstance(error, type) and issubclass(error, errors.TransientError), reason
