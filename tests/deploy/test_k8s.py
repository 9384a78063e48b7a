"""deploy/k8s rendered by the real kustomize (kubectl kustomize) agrees with the code, the CRDs and itself.

The README's check block renders the cpu, gpu and topics kustomizations and validates them with
kubernetes-validate --strict and the vendored CRD schemas (fixture ``deploy_checks``); these tests
inspect the rendered objects.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import K8S, ROOT
from deploy_tools import find, load_rendered, one, run_tool

from linewatch.deploy.cli import build_parser
from linewatch.deploy.settings_doc import COMMAND_SETTINGS, is_known, settings_classes

pytestmark = pytest.mark.integration

PROBE_PATHS = {"detect": {"livenessProbe": "/healthz", "readinessProbe": "/readyz"},
               "alerts": {"livenessProbe": "/livez", "readinessProbe": "/health"},
               "camera": {"livenessProbe": "/metrics"}, "audit": {}, "verdicts": {"livenessProbe": "/metrics"},
               "camera-health": {"livenessProbe": "/metrics"}}
SECRETS = K8S / "secrets"
PEM = "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n"


def app(checks: Path, overlay: str = "cpu") -> list[dict[str, Any]]:
    return load_rendered(checks / f"{overlay}.yaml")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def secret_example_keys() -> dict[str, list[str]]:
    """Secret name -> keys, from the secrets kustomization and its *.env.example files."""
    spec = yaml.safe_load((SECRETS / "kustomization.yaml").read_text())
    keys: dict[str, list[str]] = {}
    for generator in spec["secretGenerator"]:
        names = []
        for env in generator.get("envs", []):
            lines = (SECRETS / f"{env}.example").read_text().splitlines()
            names += [line.split("=", 1)[0] for line in lines if line.strip() and not line.startswith("#")]
        names += [item.split("=", 1)[0] for item in generator.get("files", [])]
        keys[generator["name"]] = names
    return keys


def fill_secret_files(folder: Path) -> dict[str, str]:
    """Write every file the secrets kustomization reads, with random values; returns the env values."""
    values: dict[str, str] = {}
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for generator in spec["secretGenerator"]:
        for env in generator.get("envs", []):
            lines = (folder / f"{env}.example").read_text().splitlines()
            names = [line.split("=", 1)[0] for line in lines if line.strip() and not line.startswith("#")]
            values.update({name: secrets.token_urlsafe(32) for name in names})
            (folder / env).write_text("".join(f"{name}={values[name]}\n" for name in names))
        for item in generator.get("files", []):
            (folder / item.split("=", 1)[1]).write_text(PEM)
    return values


def secret_value(key: str) -> str:
    """A random value of the shape the setting validates (a database URL must parse as one)."""
    token = secrets.token_urlsafe(32)
    if key.endswith("DATABASE_URL"):
        return f"postgresql+psycopg://linewatch:{token}@postgres.example:5432/linewatch"
    return token


def container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps from the render, Secrets with example keys, then env."""
    keys = secret_example_keys()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update({key: secret_value(key) for key in keys[source["secretRef"]["name"]]})
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def linewatch_containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(dep["metadata"]["name"], c) for dep in find(docs, "Deployment")
            for c in pod_spec(dep)["containers"] if "/linewatch/linewatch:" in c["image"]]


# --- finding 1: the GPU overlay renders (no cycle), beside the CPU one, from one base ---------------

def test_cpu_and_gpu_overlays_render_the_same_application(deploy_checks: Path) -> None:
    cpu, gpu = app(deploy_checks, "cpu"), app(deploy_checks, "gpu")
    assert {(d["kind"], d["metadata"]["name"]) for d in cpu} == {(d["kind"], d["metadata"]["name"]) for d in gpu}
    assert {d["metadata"].get("namespace") for d in cpu if d["kind"] != "Namespace"} == {"linewatch"}
    gpu_detector = pod_spec(one(gpu, "Deployment", "linewatch-detector"))["containers"][0]
    cpu_detector = pod_spec(one(cpu, "Deployment", "linewatch-detector"))["containers"][0]
    assert gpu_detector["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_detector["image"].endswith("-cuda") and cpu_detector["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in cpu_detector["resources"]["limits"]
    for overlay in ("cpu", "gpu"):  # an overlay must not point at a folder that contains it
        resources = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())["resources"]
        assert all(not (K8S / overlay).resolve().is_relative_to((K8S / overlay / r).resolve()) for r in resources)


# --- finding 2: topics are KafkaTopic v1 in the Kafka cluster's namespace -----------------------------

def test_topics_are_strimzi_v1_where_the_topic_operator_watches(deploy_checks: Path) -> None:
    topics = find(load_rendered(deploy_checks / "topics.yaml"), "KafkaTopic")
    bootstrap = one(app(deploy_checks), "ConfigMap", "linewatch-kafka")["data"]["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"]
    # Strimzi's bootstrap Service: <cluster>-kafka-bootstrap.<namespace>.svc
    match = re.match(r"^(?P<cluster>[a-z0-9-]+)-kafka-bootstrap\.(?P<namespace>[a-z0-9-]+)\.svc", bootstrap)
    assert match, bootstrap
    assert len(topics) == 7
    for topic in topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1", topic["metadata"]["name"]
        assert topic["metadata"]["namespace"] == match["namespace"], topic["metadata"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == match["cluster"]
        assert topic["spec"]["config"]["min.insync.replicas"] == 2 and "retention.ms" in topic["spec"]["config"]
    assert not find(app(deploy_checks), "KafkaTopic"), "topics belong to the Kafka namespace, not the application"
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "watchedNamespace" in readme and "kubectl apply -k deploy/k8s/topics" in readme


def test_crd_check_rejects_a_version_strimzi_no_longer_serves(deploy_checks: Path, tmp_path: Path) -> None:
    topic = find(load_rendered(deploy_checks / "topics.yaml"), "KafkaTopic")[0]
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump({**topic, "apiVersion": "kafka.strimzi.io/v1beta2"}))
    unknown = tmp_path / "unknown-field.yaml"
    unknown.write_text(yaml.safe_dump({**topic, "spec": {**topic["spec"], "partitionCount": 3}}))
    for path, why in ((stale, "no vendored CRD schema"), (unknown, "partitionCount")):
        result = run_tool(["python", "deploy/k8s/schemas/validate_crs.py", str(path)])
        assert result.returncode == 1 and why in result.stderr, result.stderr


# --- finding 4: no Secret values shipped; the secrets kustomization covers every reference ------------

def test_application_ships_no_secret_and_the_secrets_kustomization_fills_every_reference(
        deploy_checks: Path, tmp_path: Path) -> None:
    for overlay in ("cpu", "gpu"):
        assert not find(app(deploy_checks, overlay), "Secret"), f"{overlay}: apply -k would reset real Secrets"
    tracked = subprocess.run(["git", "ls-files", "deploy/k8s"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert not [p for p in tracked if p.endswith((".env", ".crt", ".pem", ".key"))], tracked
    for example in SECRETS.glob("*.env.example"):
        for line in example.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert line.endswith("="), f"{example.name}: ships a value: {line}"
    # The README's command, run in a copy of deploy/k8s (the operator's files are never in the tree).
    copy = tmp_path / "deploy" / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("*.env", "*.crt"))
    command = ["kubectl", "kustomize", "deploy/k8s/secrets"]
    assert " ".join(command) in (ROOT / "deploy" / "README.md").read_text()
    empty = run_tool(command, cwd=tmp_path)
    assert empty.returncode != 0, "the secrets kustomization rendered without the operator's files"
    values = fill_secret_files(copy / "secrets")
    rendered = run_tool(command, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    generated = {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered.stdout) if d}
    assert all(d["metadata"]["namespace"] == "linewatch" for d in generated.values())
    docs = app(deploy_checks)
    referenced: set[tuple[str, str | None]] = set()
    for dep in find(docs, "Deployment"):
        spec = pod_spec(dep)
        for container in spec["containers"] + spec.get("initContainers", []):
            referenced |= {(s["secretRef"]["name"], None) for s in container.get("envFrom", []) if "secretRef" in s}
        referenced |= {(v["secret"]["secretName"], None) for v in spec.get("volumes", []) if "secret" in v}
    for auth in find(docs, "TriggerAuthentication"):
        referenced |= {(ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    for name, key in referenced:
        assert name in generated, f"{name} is referenced but not generated"
        if key is not None:
            assert key in generated[name]["data"], (name, key)
    assert values and "change-me" not in rendered.stdout


# --- finding 5: alerts liveness = the process; Redis is readiness --------------------------------------

def test_alerts_liveness_survives_a_redis_outage_readiness_does_not(deploy_checks: Path) -> None:
    import redis
    from fastapi.testclient import TestClient

    from linewatch.alerts.api import create_app
    from linewatch.alerts.metrics import AlertsMetrics
    from linewatch.alerts.settings import AlertsSettings
    from linewatch.deploy.local import free_port

    container = pod_spec(one(app(deploy_checks), "Deployment", "linewatch-alerts"))["containers"][0]
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    settings = AlertsSettings(api_token=secrets.token_urlsafe(32))  # type: ignore[call-arg]
    client = TestClient(create_app(settings, AlertsMetrics(), client=dead, state_client=dead))
    live = client.get(container["livenessProbe"]["httpGet"]["path"])
    ready = client.get(container["readinessProbe"]["httpGet"]["path"])
    assert live.status_code == 200, "a Redis outage would restart the pod (CrashLoopBackOff)"
    assert ready.status_code == 503, "readiness must report Redis"


# --- finding 10: model by init container, images with a registry, KEDA owns replicas, PDB, spread ----

def test_detector_gets_its_model_without_a_shared_volume_and_keda_owns_replicas(deploy_checks: Path) -> None:
    for overlay in ("cpu", "gpu"):
        docs = app(deploy_checks, overlay)
        # The one claim is the registry's model store (tests/deploy/test_k8s_registry.py); the model the
        # detector starts with never needs one: a ReadOnlyMany PVC leaves pods Pending on most CSI drivers.
        assert [c["spec"]["accessModes"] for c in find(docs, "PersistentVolumeClaim")] == [["ReadWriteMany"]]
        detector = one(docs, "Deployment", "linewatch-detector")
        assert "replicas" not in detector["spec"], "a replicas field resets KEDA's choice on every apply"
        spec = pod_spec(detector)
        model_dir = str(Path(one(docs, "ConfigMap", "linewatch-detector")["data"]["LINEWATCH_MODEL"]).parent)
        volumes = {v["name"]: v for v in spec["volumes"]}
        init = spec["initContainers"][0]
        init_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == model_dir)
        assert "emptyDir" in volumes[init_mount["name"]]
        assert "linewatch-model:" in init["image"] and init["command"][-1].startswith(model_dir)
        main_mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert main_mounts[model_dir] == init_mount["name"]
        pdb = one(docs, "PodDisruptionBudget", "linewatch-detector")
        pod_labels = detector["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
        for dep in find(docs, "Deployment"):
            for container in pod_spec(dep)["containers"] + pod_spec(dep).get("initContainers", []):
                image = container["image"]
                registry, _, rest = image.partition("/")
                assert "." in registry and ":" in rest.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


# --- consistency with the code (kept from the raw-manifest tests, now on the rendered objects) --------

def test_config_and_secret_keys_are_linewatch_settings(deploy_checks: Path) -> None:
    classes = list(settings_classes().values())
    keys = [(m["metadata"]["name"], k) for m in find(app(deploy_checks), "ConfigMap") for k in m["data"]]
    keys += [(name, k) for name, names in secret_example_keys().items() for k in names if k != "ca.crt"]
    for name, key in keys:
        assert key.startswith("LINEWATCH_") and any(is_known(cls, key) for cls in classes), (name, key)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_containers_match_cli_settings_and_probes(overlay: str, deploy_checks: Path, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    docs = app(deploy_checks, overlay)
    containers = linewatch_containers(docs)
    assert {name for name, _ in containers} == {"linewatch-detector", "linewatch-alerts", "linewatch-camera-sim",
                                                "linewatch-audit", "linewatch-verdicts", "linewatch-camera-health"}
    for name, container in containers:
        args = build_parser().parse_args(container["args"])
        cls = settings_classes()[COMMAND_SETTINGS[args.command]]
        env = container_env(container, docs)
        unknown = [key for key in env if not is_known(cls, key)]
        assert not unknown, f"{name}: {cls.__name__} has no field for {unknown}"
        for key in list(os.environ):
            if key.startswith("LINEWATCH_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        settings: Any = cls()  # validates every value, e.g. the SASL mechanism spelling
        assert settings.kafka.security_protocol == "SASL_SSL"
        if overlay == "gpu" and args.command == "detect":
            assert settings.device == "cuda"
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        served = args.port if args.command == "alerts" else getattr(args, "metrics_port", None)  # audit: no port
        for probe, path in PROBE_PATHS[args.command].items():
            get = container[probe]["httpGet"]
            assert get["path"] == path and ports[get["port"]] == served, (name, probe)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(settings.kafka.ssl_ca_location).parent) in mounts
        if args.command == "verdicts":  # the plant broker's CA is mounted where the settings look for it
            assert settings.mqtt.tls and str(Path(settings.mqtt.tls_ca_file).parent) in mounts
        if args.command == "camera-health":  # the drift reference is the model the init container copies
            assert settings.reference_checkpoints == [one(docs, "ConfigMap", "linewatch-detector")["data"][
                "LINEWATCH_MODEL"]]
            assert str(Path(settings.reference_checkpoints[0]).parent) in mounts


def test_keda_caps_replicas_at_the_partition_count(deploy_checks: Path) -> None:
    docs = app(deploy_checks)
    scaled = one(docs, "ScaledObject", "linewatch-detector")
    one(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    kafka = one(docs, "ConfigMap", "linewatch-kafka")["data"]
    partitions = int(kafka["LINEWATCH_TOPICS__PARTITIONS"])
    topics = {t["metadata"]["name"]: t for t in find(load_rendered(deploy_checks / "topics.yaml"), "KafkaTopic")}
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["topic"] == kafka["LINEWATCH_TOPICS__FRAMES"]
    assert all(t["spec"]["partitions"] == partitions for t in topics.values())
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    assert trigger["allowIdleConsumers"] == "false"
    assert trigger["consumerGroup"] == one(docs, "ConfigMap", "linewatch-detector")["data"]["LINEWATCH_GROUP_ID"]
    assert trigger["bootstrapServers"] == kafka["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"]


def test_topics_match_the_compose_topic_job(deploy_checks: Path) -> None:
    from test_compose import _topic_configs

    compose = _topic_configs()
    topics = {t["metadata"]["name"]: t for t in find(load_rendered(deploy_checks / "topics.yaml"), "KafkaTopic")}
    assert set(topics) == set(compose)
    frames = topics["frames"]["spec"]["config"]
    assert frames["compression.type"] == compose["frames"]["compression.type"] == "uncompressed"
    guard = int(one(app(deploy_checks), "ConfigMap", "linewatch-camera-sim")["data"]["LINEWATCH_MAX_MESSAGE_BYTES"])
    assert guard + 16 * 1024 <= frames["max.message.bytes"]
    assert topics["dead-letters"]["spec"]["config"]["max.message.bytes"] > frames["max.message.bytes"]
    for name, topic in topics.items():
        assert topic["spec"]["config"]["compression.type"] == compose[name]["compression.type"]
        if "retention.ms" in compose[name] and compose[name]["retention.ms"].isdigit():
            assert topic["spec"]["config"]["retention.ms"] == int(compose[name]["retention.ms"])


# --- verdicts and camera-health ------------------------------------------------------------------

def test_camera_health_writes_to_a_managed_topic_and_copies_the_model_like_the_detector(deploy_checks: Path) -> None:
    docs = app(deploy_checks)
    health = one(docs, "ConfigMap", "linewatch-camera-health")["data"]
    topics = {t["metadata"]["name"] for t in find(load_rendered(deploy_checks / "topics.yaml"), "KafkaTopic")}
    assert health["LINEWATCH_HEALTH_TOPIC"] in topics, "with ACLs the service may not create its own topic"
    spec = pod_spec(one(docs, "Deployment", "linewatch-camera-health"))
    detector_init = pod_spec(one(docs, "Deployment", "linewatch-detector"))["initContainers"][0]
    assert spec["initContainers"][0]["image"] == detector_init["image"]  # one model tag for both
    assert spec["initContainers"][0]["command"] == detector_init["command"]
    deployment = one(docs, "Deployment", "linewatch-camera-health")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_verdicts_are_never_interrupted_by_a_rollout(deploy_checks: Path) -> None:
    deployment = one(app(deploy_checks), "Deployment", "linewatch-verdicts")
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate" and rolling["maxUnavailable"] == 0
    verdicts = one(app(deploy_checks), "ConfigMap", "linewatch-verdicts")["data"]
    assert verdicts["LINEWATCH_DEADLINES__LATE_POLICY"] == "reject", "a late part must fail safe"
    assert "LINEWATCH_MQTT__PASSWORD" in secret_example_keys()["linewatch-verdicts-credentials"]
