"""Alert state lives in a Redis that never evicts and persists; the heatmap cache stays bounded.

Checked on what the real tools render (docker-compose config with .env.example, kubectl kustomize of the
cpu and gpu overlays): which Redis each service uses is what its own settings class makes of its rendered
environment, and the Redis options are parsed from the containers' start-up scripts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import IMAGE_ENV, TEST_SECRETS, env_example, linewatch_services
from deploy_tools import find, one
from redis_deploy import (
    option,
    redis_server_options,
    render_compose,
    render_kustomization,
    start_up_script,
    url_host,
)
from test_compose import settings_under_env
from test_k8s import container_env, linewatch_containers, pod_spec, secret_example_keys

from linewatch.deploy.cli import build_parser
from linewatch.deploy.settings_doc import COMMAND_SETTINGS, settings_classes

pytestmark = pytest.mark.integration

REDIS_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


@pytest.fixture(scope="module")
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose renders it with .env.example (secrets filled in), gpu profile on."""
    shipped_values = {name: value for name, value in env_example().items() if value}
    return render_compose(tmp_path_factory.mktemp("compose"), shipped_values)


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    """Overlay -> the objects kubectl kustomize renders."""
    return {overlay: render_kustomization(overlay) for overlay in ("cpu", "gpu")}


def redis_bytes(size: str) -> int:
    """A redis.conf memory size (``512mb``: 1024-based, ``512m``: 1000-based) in bytes."""
    match = re.fullmatch(r"(\d+)([a-z]*)", size.lower())
    assert match and match.group(2) in REDIS_UNITS, f"not a Redis memory size: {size!r}"
    return int(match.group(1)) * REDIS_UNITS[match.group(2)]


def k8s_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"unexpected quantity {quantity!r}"
    return int(match.group(1)) * K8S_UNITS[match.group(2)]


def state_settings_users(commands: dict[str, list[str]]) -> list[str]:
    """The services (name -> argv) whose settings class has ``state_redis``: they keep non-cache state."""
    users = []
    for name, argv in commands.items():
        cls = settings_classes()[COMMAND_SETTINGS[build_parser().parse_args(argv).command]]
        if "state_redis" in cls.model_fields:
            users.append(name)
    return users


def service_settings(env: dict[str, str], argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The settings the service's command builds from exactly ``env`` (its rendered environment)."""
    cls = settings_classes()[COMMAND_SETTINGS[build_parser().parse_args(argv).command]]
    return settings_under_env(cls, env, monkeypatch, tmp_path)


# --- compose ---------------------------------------------------------------------------------------------

def compose_redis_options(service: dict[str, Any]) -> list[str]:
    return redis_server_options(start_up_script(service))


def rendered_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items() if k not in IMAGE_ENV}


def test_compose_keeps_alert_state_in_a_redis_that_never_evicts_and_persists(
        compose_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = compose_model
    services = model["services"]
    linewatch = linewatch_services(model)
    stateful = state_settings_users({name: [str(a) for a in svc["command"]] for name, svc in linewatch.items()})
    assert "alerts" in stateful
    detector = service_settings(rendered_env(services["detector"]), services["detector"]["command"], monkeypatch,
                                tmp_path)
    cache = url_host(detector.redis.url)
    state_hosts = {name: url_host(service_settings(rendered_env(linewatch[name]), linewatch[name]["command"],
                                                   monkeypatch, tmp_path).state_store_redis().url)
                   for name in stateful}
    for name, state in state_hosts.items():
        assert state != cache, f"{name}: alert state goes to the heatmap cache's Redis ({cache!r})"
        assert services[name]["depends_on"][state]["condition"] == "service_healthy", name
    state_redis = services[state_hosts["alerts"]]
    options = compose_redis_options(state_redis)
    assert option(options, "maxmemory-policy") == "noeviction"
    assert option(options, "appendonly") == "yes"
    assert redis_bytes(option(options, "maxmemory") or "0") < int(state_redis["mem_limit"])
    data = option(options, "dir") or "/data"  # the redis image's working directory
    (volume,) = [v for v in state_redis["volumes"] if v["target"] == data]
    assert volume["type"] == "volume" and volume["source"] in model["volumes"], volume
    assert "healthcheck" in state_redis


def test_compose_heatmap_cache_stays_bounded_and_evicting(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    cache = services[url_host(services["detector"]["environment"]["LINEWATCH_REDIS__URL"])]
    options = compose_redis_options(cache)
    assert option(options, "maxmemory-policy") == "volatile-ttl"
    assert 0 < redis_bytes(option(options, "maxmemory") or "0") < int(cache["mem_limit"])


def test_compose_state_redis_has_its_own_password(compose_model: dict[str, Any]) -> None:
    model = compose_model
    alerts = model["services"]["alerts"]["environment"]

    def secret_value(service: str) -> str:
        (secret,) = model["services"][service]["secrets"]
        return TEST_SECRETS[model["secrets"][secret["source"]]["environment"]]

    state, cache = url_host(alerts["LINEWATCH_STATE_REDIS__URL"]), url_host(alerts["LINEWATCH_REDIS__URL"])
    assert alerts["LINEWATCH_STATE_REDIS__PASSWORD"] == secret_value(state)
    assert alerts["LINEWATCH_REDIS__PASSWORD"] == secret_value(cache) != secret_value(state)


# --- Kubernetes ------------------------------------------------------------------------------------------

def redis_statefulset(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one StatefulSet that runs redis-server, and its container."""
    found = [(sts, c) for sts in find(docs, "StatefulSet") for c in pod_spec(sts)["containers"]
             if "redis-server" in " ".join(c.get("args", []) + c.get("command", []))]
    assert len(found) == 1, f"expected one redis-server StatefulSet, found {len(found)}"
    return found[0]


def service_for(docs: list[dict[str, Any]], pod_labels: dict[str, str]) -> dict[str, Any]:
    (service,) = [s for s in find(docs, "Service") if s["spec"]["selector"].items() <= pod_labels.items()]
    return service


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_ships_a_state_redis_that_never_evicts_on_a_persistent_volume(
        overlay: str, k8s: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = k8s[overlay]
    sts, redis = redis_statefulset(docs)
    options = redis_server_options(start_up_script(redis))
    assert option(options, "maxmemory-policy") == "noeviction"
    assert option(options, "appendonly") == "yes"
    assert redis_bytes(option(options, "maxmemory") or "0") < k8s_bytes(redis["resources"]["limits"]["memory"])
    claims = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in redis["volumeMounts"]}
    claim = claims[mounts[option(options, "dir") or ""]]  # the AOF directory is the claimed volume
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    assert sts["spec"]["replicas"] == 1

    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    service = service_for(docs, pod_labels)
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    containers = dict(linewatch_containers(docs))
    stateful = state_settings_users({name: c["args"] for name, c in containers.items()})
    assert stateful == ["linewatch-alerts"]
    for name in stateful:
        settings = service_settings(container_env(containers[name], docs), containers[name]["args"], monkeypatch,
                                    tmp_path)
        heatmap_url, state_url = settings.redis.url, settings.state_store_redis().url
        assert url_host(state_url).split(".")[0] == service["metadata"]["name"], (name, state_url)
        assert url_host(heatmap_url) != url_host(state_url), f"{name}: heatmaps and state in one Redis"
    detector = containers["linewatch-detector"]
    assert "linewatch-state-redis" not in [s.get("configMapRef", {}).get("name") for s in detector["envFrom"]]


def test_k8s_state_redis_password_comes_from_a_secret_only_alerts_share(k8s: dict[str, list[dict[str, Any]]]) -> None:
    docs = k8s["cpu"]
    sts, redis = redis_statefulset(docs)
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}  # the data volume is a claim template, not here
    (secret,) = [volumes[m["name"]]["secret"] for m in redis["volumeMounts"] if "secret" in volumes.get(m["name"], {})]
    keys = secret_example_keys()
    assert [item["key"] for item in secret["items"]] == ["LINEWATCH_STATE_REDIS__PASSWORD"]
    assert "LINEWATCH_STATE_REDIS__PASSWORD" in keys[secret["secretName"]]
    users = [name for name, c in linewatch_containers(docs)
             if secret["secretName"] in [s.get("secretRef", {}).get("name") for s in c["envFrom"]]]
    assert users == ["linewatch-alerts"]
    policy = one(docs, "NetworkPolicy", sts["metadata"]["name"])
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    alerts_labels = one(docs, "Deployment", "linewatch-alerts")["spec"]["template"]["metadata"]["labels"]
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [{"app.kubernetes.io/name":
                                                                             alerts_labels["app.kubernetes.io/name"]}]
    pod_security, container_security = pod_spec(sts)["securityContext"], redis["securityContext"]
    assert pod_security["runAsNonRoot"] and pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert container_security["readOnlyRootFilesystem"] and not container_security["allowPrivilegeEscalation"]
    assert container_security["capabilities"]["drop"] == ["ALL"]
