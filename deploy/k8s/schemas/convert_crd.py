"""Turn one served version of an upstream CRD into the strict JSON Schema vendored here.

    python deploy/k8s/schemas/convert_crd.py CRD.yaml VERSION "SOURCE (repo, tag, commit, path)" > FILE.json

See README.md in this folder for the sources of the committed schemas.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

DROPPED = {"description", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
           "x-kubernetes-validations", "x-kubernetes-embedded-resource"}


def convert(node: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) -> JSON Schema draft 7, unknown fields rejected."""
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED:
            continue
        out[key] = {k: convert(v) for k, v in value.items()} if key == "properties" else convert(value)
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    # The API server prunes undeclared fields; strict validation (kubectl --validate=strict) rejects them.
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_schema(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    """The JSON Schema of ``version`` of ``crd``, with apiVersion/kind fixed and ``source`` noted."""
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served"))
    schema = convert(served["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    comment = (f"openAPIV3Schema of {crd['metadata']['name']} {version} from {source}; "
               "descriptions dropped; unknown fields rejected.")
    return {"$schema": "http://json-schema.org/draft-07/schema#", "$comment": comment, **schema}


def main(argv: list[str]) -> int:
    """Print the schema of argv[2] of the CRD file argv[1]; argv[3] says where it came from."""
    crd = yaml.safe_load(Path(argv[1]).read_text(encoding="utf-8"))
    sys.stdout.write(json.dumps(crd_schema(crd, argv[2], argv[3]), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
