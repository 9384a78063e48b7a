"""deploy/k8s manifests parse and agree with the real CLI, the settings classes and the topics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import K8S, image_is_pinned, load_k8s

from linewatch.deploy.cli import build_parser
from linewatch.deploy.settings_doc import COMMAND_SETTINGS, is_known, settings_classes

PROBE_PATHS = {"detect": {"livenessProbe": "/healthz", "readinessProbe": "/readyz"},
               "alerts": {"livenessProbe": "/health", "readinessProbe": "/health"},
               "camera": {"livenessProbe": "/metrics"}}


def by_kind(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in (docs or load_k8s()) if d.get("kind") == kind
            and not d["__file__"].startswith("gpu/")}


def container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps/Secrets from the manifests, then env."""
    maps, secrets = by_kind("ConfigMap", docs), by_kind("Secret", docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def linewatch_containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, dep in by_kind("Deployment", docs).items()
            for c in dep["spec"]["template"]["spec"]["containers"] if c["image"].startswith("linewatch:")]


def test_manifests_parse_and_kustomizations_list_existing_files() -> None:
    docs = load_k8s()
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc["__file__"]
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], doc["__file__"]
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for resource in spec.get("resources", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: missing {resource}"
        for patch in spec.get("patches", []):
            assert (kustomization.parent / patch["path"]).exists()
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_image_is_pinned() -> None:
    for doc in load_k8s():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            assert image_is_pinned(container["image"]), (doc["__file__"], container["image"])


def test_config_and_secret_keys_are_linewatch_settings() -> None:
    docs = load_k8s()
    classes = list(settings_classes().values())
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        for name, doc in by_kind(kind, docs).items():
            for key in doc[field]:
                assert key.startswith("LINEWATCH_") and any(is_known(cls, key) for cls in classes), (name, key)


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu-overlay"])
def test_containers_match_cli_settings_and_probes(gpu: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = load_k8s()
    containers = linewatch_containers(docs)
    assert {name for name, _ in containers} == {"linewatch-detector", "linewatch-alerts", "linewatch-camera-sim"}
    if gpu:
        patch = next(d for d in docs if d["__file__"] == "gpu/detector-gpu.yaml")
        patched = patch["spec"]["template"]["spec"]["containers"][0]
        base = dict(next(c for n, c in containers if n == "linewatch-detector"))
        base.update(image=patched["image"], args=patched["args"], env=patched["env"])
        containers = [("linewatch-detector", base)]
        assert patched["resources"]["limits"]["nvidia.com/gpu"] == "1" and image_is_pinned(patched["image"])
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
        if gpu:
            assert settings.device == "cuda"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        served = args.port if args.command == "alerts" else args.metrics_port
        for probe, path in PROBE_PATHS[args.command].items():
            get = container[probe]["httpGet"]
            assert get["path"] == path and ports[get["port"]] == served, (name, probe)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(settings.kafka.ssl_ca_location).parent) in mounts


def test_keda_caps_replicas_at_the_partition_count() -> None:
    docs = load_k8s()
    scaled = by_kind("ScaledObject", docs)["linewatch-detector"]
    detector = by_kind("Deployment", docs)[scaled["spec"]["scaleTargetRef"]["name"]]
    kafka = by_kind("ConfigMap", docs)["linewatch-kafka"]["data"]
    partitions = int(kafka["LINEWATCH_TOPICS__PARTITIONS"])
    topics = by_kind("KafkaTopic", docs)
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["topic"] == kafka["LINEWATCH_TOPICS__FRAMES"]
    assert topics[trigger["topic"]]["spec"]["partitions"] == partitions
    assert all(t["spec"]["partitions"] == partitions for t in topics.values())
    assert scaled["spec"]["minReplicaCount"] <= detector["spec"]["replicas"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= partitions
    assert trigger["allowIdleConsumers"] == "false"
    assert trigger["consumerGroup"] == by_kind("ConfigMap", docs)["linewatch-detector"]["data"]["LINEWATCH_GROUP_ID"]
    assert trigger["bootstrapServers"] == kafka["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"]
    auth = by_kind("TriggerAuthentication", docs)[scaled["spec"]["triggers"][0]["authenticationRef"]["name"]]
    secrets = by_kind("Secret", docs)
    for ref in auth["spec"]["secretTargetRef"]:
        if ref["name"] in secrets:
            assert ref["key"] in secrets[ref["name"]]["stringData"]


def test_topics_match_the_compose_topic_job() -> None:
    from test_compose import _topic_configs

    compose = _topic_configs()
    topics = by_kind("KafkaTopic")
    assert set(topics) == set(compose)
    frames = topics["frames"]["spec"]["config"]
    assert frames["compression.type"] == compose["frames"]["compression.type"] == "uncompressed"
    guard = int(by_kind("ConfigMap")["linewatch-camera-sim"]["data"]["LINEWATCH_MAX_MESSAGE_BYTES"])
    assert guard + 16 * 1024 <= frames["max.message.bytes"]
    assert topics["dead-letters"]["spec"]["config"]["max.message.bytes"] > frames["max.message.bytes"]
    for name, topic in topics.items():
        assert topic["spec"]["config"]["compression.type"] == compose[name]["compression.type"]
        if "retention.ms" in compose[name] and compose[name]["retention.ms"].isdigit():
            assert topic["spec"]["config"]["retention.ms"] == int(compose[name]["retention.ms"])
