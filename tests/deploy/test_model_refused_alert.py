"""LinewatchModelRefused: the promtool unit test of the rule names version, product and reason, and the
committed Alertmanager config (checked by amtool) routes it to the team that promotes models, one
notification per refused version."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY
from deploy_tools import missing_debian_tools, run_tool

pytestmark = pytest.mark.integration

RULE_TESTS = DEPLOY / "prometheus" / "tests" / "alerting_test.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = missing_debian_tools()
    if missing:
        pytest.skip(f"needs {missing} (Debian packages prometheus, prometheus-alertmanager: make system-deps)")


def refused_alerts_expected() -> list[dict[str, Any]]:
    """The alerts the committed promtool tests expect LinewatchModelRefused to fire."""
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    return [alert for case in cases if case["alertname"] == "LinewatchModelRefused"
            for alert in case.get("exp_alerts", [])]


def test_the_rule_fires_naming_version_product_and_reason_in_promtool() -> None:
    result = run_tool(["promtool", "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    expected = refused_alerts_expected()
    assert expected, "no promtool case where LinewatchModelRefused fires"
    for alert in expected:
        labels, annotations = alert["exp_labels"], alert["exp_annotations"]
        for name in ("version", "product", "reason"):
            assert all(labels[name] in text for text in annotations.values()), (name, annotations)


def test_the_alertmanager_config_is_valid_and_routes_a_refusal_to_the_platform_team() -> None:
    checked = run_tool(["amtool", "check-config", str(ALERTMANAGER)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routed = run_tool(["amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                       "alertname=LinewatchModelRefused", "product=bracket", "version=9f3a2c1d4e5b",
                       "reason=model_file", "severity=major"])
    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.strip().split(",") == ["platform-team"]  # no page: the previous model keeps scoring
    route = next(r for r in yaml.safe_load(ALERTMANAGER.read_text())["route"]["routes"]
                 if r["matchers"] == ['alertname="LinewatchModelRefused"'])
    assert {"product", "version"} <= set(route["group_by"]), "two refused versions must not merge"
