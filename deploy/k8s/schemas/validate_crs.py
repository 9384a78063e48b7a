"""Validate custom resources (KEDA, Strimzi, Prometheus Operator) against the CRD schemas vendored here.

    kubectl kustomize deploy/k8s/cpu | python deploy/k8s/schemas/validate_crs.py -

kubernetes-validate covers the built-in kinds but skips custom resources; this covers those. An
object of a custom API group with no vendored schema for its apiVersion/kind is an error (that is
how a version the operator no longer serves, e.g. KafkaTopic v1beta2, shows up). Exit 0 when all
pass, 1 otherwise, with one line per problem.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent
# API groups whose objects kubernetes-validate checks (built-in kinds); everything else is custom.
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}


def schema_file(api_version: str, kind: str) -> Path:
    """Where the schema of ``apiVersion``/``kind`` lives, e.g. keda.sh-v1alpha1-scaledobject.json."""
    group, _, version = api_version.rpartition("/")
    return SCHEMA_DIR / f"{group}-{version}-{kind.lower()}.json"


def is_custom(api_version: str) -> bool:
    """True for an API group that is not built into Kubernetes."""
    group = api_version.rpartition("/")[0]
    return group not in BUILTIN_GROUPS


def problems(doc: dict[str, Any]) -> Iterator[str]:
    """Every schema violation of one custom resource (nothing for built-in kinds)."""
    api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    if not is_custom(api_version):
        return
    name = f"{kind}/{doc.get('metadata', {}).get('name', '?')} ({api_version})"
    path = schema_file(api_version, kind)
    if not path.exists():
        yield f"{name}: no vendored CRD schema {path.name}: is this apiVersion still served?"
        return
    validator = jsonschema.Draft7Validator(json.loads(path.read_text(encoding="utf-8")))
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path) or "(object)"
        yield f"{name}: {where}: {error.message}"


def main(argv: list[str]) -> int:
    """Validate the YAML documents of each file argument (``-``: stdin)."""
    found: list[str] = []
    checked = 0
    for arg in argv[1:] or ["-"]:
        text = sys.stdin.read() if arg == "-" else Path(arg).read_text(encoding="utf-8")
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and is_custom(str(doc.get("apiVersion", ""))):
                checked += 1
                found.extend(problems(doc))
    for line in found:
        print(line, file=sys.stderr)
    print(f"{checked} custom resources checked, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
