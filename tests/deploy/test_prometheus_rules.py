"""The operators' view: Prometheus alerting rules (deploy/prometheus/) and the Grafana dashboard
(deploy/grafana/) read only metrics the bridge exports, every alert has its runbook entry, and the rules
pass promtool's check and their own test cases (each alert firing on the series written for it).

scripts/test unpacks promtool (Debian's `prometheus` package) and sets PROMTOOL; run alone, the
promtool tests use `promtool` from PATH and are skipped without it, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import bridge.observability.metrics  # noqa: F401 - registers the bridge's metrics with REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "bridge-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "bridge-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bridge-dashboard.json"
RUNBOOK = ROOT / "docs" / "alerts.md"
METRIC_NAME = re.compile(r"\b((?:bridge|process)_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name the bridge's process exports (families with their type's suffixes)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def alerts() -> list[dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool not found: scripts/test unpacks it (ensure_promtool in scripts/_common.sh)")
    pytest.skip("promtool not found; scripts/test provides it")


@pytest.mark.parametrize(
    ("source", "expressions"),
    [("alerts", [rule["expr"] for rule in alerts()]), ("dashboard", dashboard_expressions())],
)
def test_expressions_read_only_metrics_the_bridge_exports(source: str, expressions: list[str]) -> None:
    """A renamed or removed metric leaves no alert or panel silently watching nothing."""
    exported = exported_names()
    used = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
    assert used, source
    assert used - exported == set(), f"{source} reads metrics the bridge does not export"


def test_every_alert_has_a_severity_and_its_runbook_entry() -> None:
    """Each alert says how urgent it is and links to a heading of docs/alerts.md that exists."""
    headings = {
        re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for rule in alerts():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/alerts.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, f"docs/alerts.md has no section for {rule['alert']}"


def test_every_alert_has_test_cases() -> None:
    """bridge-alerts.test.yml exercises every alert, so none is shipped without being seen to fire."""
    cases: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text())
    tested = {
        check["alertname"]
        for case in cases["tests"]
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alerts()} - tested == set()


def test_promtool_accepts_the_rules_and_their_cases_pass() -> None:
    """promtool check rules, then promtool test rules (the alerts fire exactly where the cases expect)."""
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
