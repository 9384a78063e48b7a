"""Print deploy/prometheus/rules as one Prometheus Operator ``PrometheusRule`` (one source for both).

    python deploy/prometheus/prometheus_rule.py > deploy/k8s/base/prometheus-rule.yaml

The rule files stay the source: compose's Prometheus loads them directly, Kubernetes gets this
object. ``tests/deploy/test_monitoring_rules.py`` fails when the committed file differs from this output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parent / "rules"
RULE_FILES = ("recording.yml", "alerting.yml")
HEADER = ("# Generated from deploy/prometheus/rules by `python deploy/prometheus/prometheus_rule.py"
          " > deploy/k8s/base/prometheus-rule.yaml`; edit the rule files, not this one.\n")


def prometheus_rule(rules_dir: Path = RULES_DIR) -> dict[str, Any]:
    """The PrometheusRule object holding every group of the rule files, in file order."""
    groups: list[dict[str, Any]] = []
    for name in RULE_FILES:
        groups.extend(yaml.safe_load((rules_dir / name).read_text(encoding="utf-8"))["groups"])
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "linewatch", "labels": {"app.kubernetes.io/part-of": "linewatch"}},
        "spec": {"groups": groups},
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the longer PromQL expressions) as ``|`` blocks, as in the rule files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def render(rules_dir: Path = RULES_DIR) -> str:
    """The YAML text of :func:`prometheus_rule`, with the header that says how it was made."""
    body = yaml.dump(prometheus_rule(rules_dir), Dumper=_BlockDumper, sort_keys=False, width=120,
                     allow_unicode=True)
    return HEADER + body


if __name__ == "__main__":
    sys.stdout.write(render())
