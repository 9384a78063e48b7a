"""Alerting rules: promtool unit tests cover every alert firing and not firing, also under the job
labels the Kubernetes PodMonitor produces; the PrometheusRule is generated from the rule files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY
from deploy_tools import find, load_rendered, one, run_tool

pytestmark = pytest.mark.integration

RULES = DEPLOY / "prometheus" / "rules"
UNIT_TESTS = DEPLOY / "prometheus" / "tests" / "alerting_test.yml"


def alert_names() -> list[str]:
    groups = yaml.safe_load((RULES / "alerting.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def rule_jobs() -> set[str]:
    """Every job the alerting rules select (``job="..."``)."""
    return set(re.findall(r'job="([^"]+)"', (RULES / "alerting.yml").read_text()))


def podmonitor_job(monitor: dict[str, Any], pod_labels: dict[str, str]) -> str:
    """The ``job`` label the Prometheus Operator gives a PodMonitor target: the value of the pod label
    named by spec.jobLabel, else "<namespace>/<PodMonitor name>"."""
    label = monitor["spec"].get("jobLabel")
    if label and label in pod_labels:
        return pod_labels[label]
    return f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"


# --- finding 9 (and 3): every alert fires and stays quiet in promtool unit tests ------------------------

def test_every_alert_has_a_firing_and_a_quiet_promtool_case(deploy_checks: Path) -> None:
    # deploy_checks ran `promtool test rules deploy/prometheus/tests/alerting_test.yml`; here: coverage.
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = alert_names()
    assert {"LinewatchCameraDown", "LinewatchCameraGone", "LinewatchCameraAbsent"} <= set(names)
    assert {"LinewatchVerdictsDown", "LinewatchVerdictsStalled", "LinewatchVerdictSinkFailing",
            "LinewatchVerdictsLate", "LinewatchCameraHealthDown", "LinewatchCameraHealthStalled"} <= set(names)
    assert not set(names) - fired, f"never tested firing: {sorted(set(names) - fired)}"
    assert not set(names) - quiet, f"never tested quiet: {sorted(set(names) - quiet)}"
    assert not (fired | quiet) - set(names), "tests name an alert that does not exist"


# --- finding 3: the PodMonitor's job labels are the ones the rules select ------------------------------

def test_podmonitor_jobs_are_the_jobs_the_rules_select(deploy_checks: Path, tmp_path: Path) -> None:
    docs = load_rendered(deploy_checks / "cpu.yaml")
    monitor = one(docs, "PodMonitor", "linewatch")
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    jobs = {}
    for dep in find(docs, "Deployment"):
        template = dep["spec"]["template"]
        if monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items():
            served = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            assert served & ports, f"{dep['metadata']['name']}: no port the PodMonitor scrapes"
            jobs[dep["metadata"]["name"]] = podmonitor_job(monitor, template["metadata"]["labels"])
    compose_jobs = {c["job_name"] for c in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())[
        "scrape_configs"]}
    assert rule_jobs() <= set(jobs.values()) and rule_jobs() <= compose_jobs, (jobs, rule_jobs())
    assert {"linewatch-verdicts", "linewatch-camera-health"} <= rule_jobs()
    assert all(jobs[name] == name for name in ("linewatch-verdicts", "linewatch-camera-health")), jobs
    detector, camera = jobs["linewatch-detector"], jobs["linewatch-camera-sim"]
    # The rules under the PodMonitor's own labels: a healthy detector does not page, a dead one does.
    target = 'namespace="linewatch", endpoint="metrics", instance="{instance}", pod="{pod}", container="{container}"'
    detector_target = target.format(instance="10.0.0.7:9108", pod="det-0", container="detector")
    camera_target = target.format(instance="10.0.0.8:9100", pod="cam-0", container="camera")
    detector_up = f'up{{job="{detector}", {detector_target}}}'
    camera_up = f'up{{job="{camera}", {camera_target}}}'
    labels = {"namespace": "linewatch", "endpoint": "metrics"}
    tests = {
        "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerting.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {"name": "healthy detector under PodMonitor labels", "interval": "1m",
             "input_series": [{"series": detector_up, "values": "1x20"}, {"series": camera_up, "values": "1x20"}],
             "alert_rule_test": [{"eval_time": "15m", "alertname": name, "exp_alerts": []}
                                 for name in ("LinewatchNoDetector", "LinewatchDetectorDown", "LinewatchCameraDown")]},
            {"name": "dead detector and camera under PodMonitor labels", "interval": "1m",
             "input_series": [{"series": detector_up, "values": "0x20"}, {"series": camera_up, "values": "0x20"}],
             "alert_rule_test": [
                 {"eval_time": "15m", "alertname": "LinewatchDetectorDown", "exp_alerts": [{
                     "exp_labels": {**labels, "severity": "critical", "job": detector, "instance": "10.0.0.7:9108",
                                    "pod": "det-0", "container": "detector"},
                     "exp_annotations": {"summary": "detector 10.0.0.7:9108 is not answering /metrics"}}]},
                 {"eval_time": "15m", "alertname": "LinewatchCameraDown", "exp_alerts": [{
                     "exp_labels": {**labels, "severity": "major", "job": camera, "instance": "10.0.0.8:9100",
                                    "pod": "cam-0", "container": "camera"},
                     "exp_annotations": {"summary": "camera process 10.0.0.8:9100 is not answering /metrics"}}]}]},
        ],
    }
    path = tmp_path / "podmonitor_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_tool(["promtool", "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_is_generated_from_the_rule_files(deploy_checks: Path) -> None:
    rule = one(load_rendered(deploy_checks / "cpu.yaml"), "PrometheusRule", "linewatch")
    files = ("recording.yml", "alerting.yml")
    groups = [g for name in files for g in yaml.safe_load((RULES / name).read_text())["groups"]]
    assert rule["spec"]["groups"] == groups
    assert rule["metadata"]["namespace"] == "linewatch"


# --- verdict and camera-health alerts ---------- reach the people who act on them ---------------------

ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"


def receivers(*labels: str) -> list[str]:
    """Receivers the committed Alertmanager routes an alert with ``labels`` to (amtool's route test)."""
    result = run_tool(["amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(",")


@pytest.mark.parametrize(("labels", "expected"), [
    # Gates reject every part while no verdict arrives: the line is paged, the platform team fixes it.
    (["alertname=LinewatchVerdictsDown", "severity=critical"], ["line-operators-page", "platform-team"]),
    (["alertname=LinewatchVerdictSinkFailing", "sink=opcua_plc"], ["line-operators-page", "platform-team"]),
    (["alertname=LinewatchVerdictsLate", "camera=cam-1"], ["line-operators"]),
    (["alertname=LinewatchCameraHealthDown"], ["platform-team"]),
    # Camera faults from the service go to the line, never to the defect page.
    (["alertname=LinewatchCameraHealth", "kind=camera_health", "check=focus", "severity=critical"],
     ["line-operators"]),
    (["alertname=LinewatchDefect", "severity=critical"], ["line-operators-page"]),
    (["alertname=LinewatchDefect", "severity=critical", "suspect=false"], ["line-operators-page"]),
    # A defect seen while the camera is unhealthy is more likely the camera: the line hears of it, no page.
    (["alertname=LinewatchDefect", "severity=critical", "suspect=true"], ["line-operators"]),
], ids=["verdicts-down", "sink-failing", "late", "camera-health-down", "camera-fault", "defect-unchanged",
        "defect-not-suspect", "defect-suspect"])
def test_alertmanager_routes_verdict_and_camera_health_alerts(labels: list[str], expected: list[str],
                                                              deploy_checks: Path) -> None:
    assert receivers(*labels) == expected


def test_camera_faults_are_grouped_per_check() -> None:
    routes = yaml.safe_load(ALERTMANAGER.read_text())["route"]["routes"]
    health = next(r for r in routes if r["matchers"] == ['alertname="LinewatchCameraHealth"'])
    assert {"camera", "check"} <= set(health["group_by"]), "a focus and a drift alert must not merge"
