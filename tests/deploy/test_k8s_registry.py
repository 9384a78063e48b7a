"""The model lifecycle on Kubernetes: registry database, model store, migration, in-cluster PostgreSQL.

The cpu and gpu overlays and the optional ``overlays/in-cluster-postgres`` are rendered here with the
real kustomize and validated with kubernetes-validate (the Kubernetes versions of the README's check
block) and the vendored CRD schemas, as the check block does for cpu and gpu.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import K8S, ROOT
from deploy_tools import checks_block, find, load_rendered, one, run_tool

from linewatch.deploy.cli import build_parser

pytestmark = pytest.mark.integration

REGISTRY_USERS = ("linewatch-detector", "linewatch-audit", "linewatch-alerts")
REGISTRY_SECRET = "linewatch-registry-credentials"
OVERLAY = K8S / "overlays" / "in-cluster-postgres"


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def env_sources(container: dict[str, Any], kind: str) -> set[str]:
    key = {"secret": "secretRef", "configmap": "configMapRef"}[kind]
    return {source[key]["name"] for source in container.get("envFrom", []) if key in source}


OVERLAYS = {"cpu": K8S / "cpu", "gpu": K8S / "gpu", "in-cluster-postgres": OVERLAY,
            "registry-admin": K8S / "registry-admin"}


@pytest.fixture(scope="module")
def overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by kustomize, after kubernetes-validate and the CRD check accepted it."""
    out = tmp_path_factory.mktemp("registry-overlays")
    files = []
    for name, folder in OVERLAYS.items():
        files.append(str(out / f"{name}.yaml"))
        result = run_tool(["kubectl", "kustomize", str(folder.relative_to(ROOT)), "-o", files[-1]])
        assert result.returncode == 0, result.stderr
    versions = [arg for flag in re.findall(r"-k (\S+)", checks_block()) for arg in ("-k", flag)]
    validated = run_tool(["kubernetes-validate", "--strict", "--quiet", "--no-warn", *versions, *files])
    assert validated.returncode == 0, validated.stdout + validated.stderr
    crds = run_tool(["python", "deploy/k8s/schemas/validate_crs.py", *files])
    assert crds.returncode == 0, crds.stdout + crds.stderr
    return {name: load_rendered(out / f"{name}.yaml") for name in OVERLAYS}


def release(image: str) -> str:
    """The linewatch version of a role image tag (registry/linewatch:0.1.0-detector-cpu -> 0.1.0)."""
    return image.rsplit(":", 1)[-1].split("-", 1)[0]


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "in-cluster-postgres"])
def test_every_registry_user_gets_the_database_secret_and_the_model_store(
        overlay: str, overlays: dict[str, list[dict[str, Any]]]) -> None:
    docs = overlays[overlay]
    store = one(docs, "ConfigMap", "linewatch-registry")["data"]["LINEWATCH_REGISTRY__MODEL_STORE"]
    [claim] = find(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every detector node mounts the store"
    for name in REGISTRY_USERS:
        spec = pod_spec(one(docs, "Deployment", name))
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        for container in spec["containers"]:
            assert REGISTRY_SECRET in env_sources(container, "secret"), (name, container["name"])
            assert "linewatch-registry" in env_sources(container, "configmap"), (name, container["name"])
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert claims.get(mounts.get(store, "")) == claim["metadata"]["name"], (name, container["name"], store)


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "in-cluster-postgres"])
def test_the_schema_is_migrated_before_any_registry_user_starts(
        overlay: str, overlays: dict[str, list[dict[str, Any]]]) -> None:
    docs = overlays[overlay]
    for name in REGISTRY_USERS:
        spec = pod_spec(one(docs, "Deployment", name))
        migrate = spec["initContainers"][-1]  # after the detector's model copy: init containers run in order
        args = build_parser().parse_args(migrate["args"])
        assert (args.command, args.action) == ("models", "migrate"), name
        assert REGISTRY_SECRET in env_sources(migrate, "secret"), name
        assert release(migrate["image"]) == release(spec["containers"][0]["image"]), (
            f"{name}: the revisions migrated to must be the ones the service's own version checks for")


def test_in_cluster_postgres_adds_a_database_the_registry_url_can_reach(
        overlays: dict[str, list[dict[str, Any]]]) -> None:
    docs, cpu = overlays["in-cluster-postgres"], overlays["cpu"]
    added = {(d["kind"], d["metadata"]["name"]) for d in docs} - {(d["kind"], d["metadata"]["name"]) for d in cpu}
    assert added == {("StatefulSet", "linewatch-postgres"), ("Service", "linewatch-postgres"),
                     ("NetworkPolicy", "linewatch-postgres")}
    assert not find(docs, "Secret"), "apply -k of the application would reset the database password"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"linewatch"}
    postgres = one(docs, "StatefulSet", "linewatch-postgres")
    service = one(docs, "Service", "linewatch-postgres")
    pod_labels = postgres["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert postgres["spec"]["serviceName"] == service["metadata"]["name"]
    assert [c["spec"]["accessModes"] for c in postgres["spec"]["volumeClaimTemplates"]] == [["ReadWriteOnce"]]
    data = postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    container = pod_spec(postgres)["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    data_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == data)
    assert env["PGDATA"]["value"].startswith(data_mount + "/"), "initdb refuses a volume root with lost+found"
    # The URL the overlay tells operators to write reaches this Service with this user and database.
    url = re.search(r"LINEWATCH_REGISTRY__DATABASE_URL=(\S+)", (OVERLAY / "kustomization.yaml").read_text())
    assert url is not None
    assert url[1] == (f"postgresql+psycopg://{env['POSTGRES_USER']['value']}:PASSWORD@{service['metadata']['name']}:"
                      f"{service['spec']['ports'][0]['port']}/{env['POSTGRES_DB']['value']}")
    policy = one(docs, "NetworkPolicy", "linewatch-postgres")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    [allowed] = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"]
    for name in REGISTRY_USERS:
        labels = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels[allowed["key"]] in allowed["values"], f"{name} could not reach the database"


def test_the_database_password_secret_is_generated_from_the_operators_file(
        overlays: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    copy = tmp_path / "secrets"
    shutil.copytree(OVERLAY / "secrets", copy, ignore=shutil.ignore_patterns("*.env"))
    assert run_tool(["kubectl", "kustomize", str(copy)]).returncode != 0, "rendered without the operator's file"
    keys = [line.split("=", 1)[0] for line in (copy / "postgres.env.example").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(line.endswith("=") for line in (copy / "postgres.env.example").read_text().splitlines()
               if line.strip() and not line.startswith("#")), "the example ships a value"
    (copy / "postgres.env").write_text("".join(f"{key}=test-{key.lower()}\n" for key in keys))
    result = run_tool(["kubectl", "kustomize", str(copy)])
    assert result.returncode == 0, result.stderr
    [secret] = [d for d in yaml.safe_load_all(result.stdout) if d]
    container = pod_spec(one(overlays["in-cluster-postgres"], "StatefulSet", "linewatch-postgres"))["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert refs and all(r["name"] == secret["metadata"]["name"] and r["key"] in secret["data"] for r in refs)
    assert secret["metadata"]["namespace"] == "linewatch"
    ignored = run_tool(["git", "check-ignore", "-q", str((OVERLAY / "secrets" / "postgres.env").relative_to(ROOT))])
    assert ignored.returncode == 0, "the operator's password file would be committable"


def test_the_admin_pod_writes_to_the_store_the_detectors_read(overlays: dict[str, list[dict[str, Any]]]) -> None:
    app, [admin] = overlays["cpu"], find(overlays["registry-admin"], "Pod")
    store = one(app, "ConfigMap", "linewatch-registry")["data"]["LINEWATCH_REGISTRY__MODEL_STORE"]
    [claim] = find(app, "PersistentVolumeClaim")
    container = admin["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == store)
    volume = next(v for v in admin["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    assert {REGISTRY_SECRET, "linewatch-kafka-credentials"} <= env_sources(container, "secret")
    assert {"linewatch-registry", "linewatch-kafka"} <= env_sources(container, "configmap")
    assert admin["metadata"]["namespace"] == "linewatch"
    detector = pod_spec(one(app, "Deployment", "linewatch-detector"))["containers"][0]
    assert release(container["image"]) == release(detector["image"]), "register with the version that loads it"
    allowed = one(overlays["in-cluster-postgres"], "NetworkPolicy", "linewatch-postgres")["spec"]["ingress"][0]
    [rule] = allowed["from"][0]["podSelector"]["matchExpressions"]
    assert admin["metadata"]["labels"][rule["key"]] in rule["values"]
    # The README's steps use this pod by its name and the paths it mounts.
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert f"exec {admin['metadata']['name']} -- linewatch models promote" in readme
    assert "kubectl apply -k deploy/k8s/registry-admin" in readme
