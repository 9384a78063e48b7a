"""The wheel works on its own: installed outside the checkout, ``linewatch --version`` answers and
``linewatch demo`` replays the bundled real images, keeping its model cache and outputs in the XDG
folders and writing nothing to the folder it was started from.

A clean install of the ``all`` extra unpacks torch with its CUDA libraries (GBs, several minutes on
two cores), so the venv gets the wheel with ``--no-deps`` and reaches the dependencies through a .pth
line naming the project venv's site-packages. The project's own editable linewatch is not reachable
that way (its .pth hook is only run for a site folder, not for a path added by a .pth line), so every
``linewatch`` module imported comes from the wheel, which the test checks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from wheel_helpers import build_wheel, clean_env, create_venv, pip_install, site_packages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["--image-size", "64", "--train-images", "16", "--epochs", "1", "--cameras", "1", "--fps", "3",
        "--duration", "8", "--device", "cpu", "--drain-timeout", "60"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with the wheel installed; returns its ``linewatch`` script."""
    python = create_venv(tmp_path_factory.mktemp("wheel-venv") / "venv")
    pip_install(python, "--no-deps", str(wheel))
    project_packages = sysconfig.get_path("purelib")  # this (the project) venv's site-packages
    (site_packages(python) / "linewatch-project-deps.pth").write_text(project_packages + "\n")
    return python.parent / "linewatch"


def run_linewatch(script: Path, args: list[str], cwd: Path, env: dict[str, str],
                  timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_carries_the_package_and_its_runtime_data_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    data = [n for n in names if not n.endswith(".py") and ".dist-info/" not in n]
    assert {"linewatch/alerts/web/index.html", "linewatch/alerts/web/app.js", "linewatch/deploy/demo_data/LICENSE.md",
            "linewatch/deploy/grafana/dashboards/linewatch-line.json"} <= set(data)
    images = [n for n in data if n.startswith("linewatch/deploy/demo_data/bsdata_sample/")]
    assert len([n for n in images if "/train/good/" in n]) >= 50 and any("/ground_truth/" in n for n in images)
    deployment = [n for n in names if re.search(r"/(k8s|compose|docker|prometheus|alertmanager)/", n)
                  or (n.endswith((".yaml", ".yml", ".md")) and "LICENSE" not in n)]
    assert not deployment, deployment


def test_version_comes_from_the_installed_metadata(wheel_venv: Path, tmp_path: Path) -> None:
    result = run_linewatch(wheel_venv, ["--version"], tmp_path, clean_env(), 60)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"linewatch \d+\.\d+\.\d+\S*", result.stdout.strip()), result.stdout
    assert "unknown" not in result.stdout


@pytest.mark.timeout(420)
def test_installed_demo_replays_the_bundled_images_and_writes_nothing_to_cwd(
        wheel_venv: Path, tmp_path: Path, bootstrap: str, redis_url: str) -> None:
    cwd, cache_home, state_home = tmp_path / "cwd", tmp_path / "xdg-cache", tmp_path / "xdg-state"
    cwd.mkdir()
    env = clean_env(KAFKA_BOOTSTRAP_SERVERS=bootstrap, REDIS_URL=redis_url, XDG_CACHE_HOME=str(cache_home),
                    XDG_STATE_HOME=str(state_home), OMP_NUM_THREADS="2")
    result = run_linewatch(wheel_venv, ["demo", *TINY], cwd, env, 400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    venv_packages = str(wheel_venv.parent.parent)
    data = re.search(r"^data: (\S+);", output, re.M)
    assert data, output[-4000:]
    bundled = Path(data.group(1))
    assert str(bundled).startswith(venv_packages) and bundled.parts[-4:] == ("linewatch", "deploy", "demo_data",
                                                                           "bsdata_sample")
    assert "synthetic" not in output.split("training the demo model", 1)[1].split("\n", 1)[0]
    assert list(cwd.iterdir()) == [], "the demo wrote to the folder it was started from"
    assert list((cache_home / "linewatch" / "models").glob("stfpm-*.safetensors")), "model cache not in XDG_CACHE_HOME"
    out = state_home / "linewatch" / "demo"
    assert (out / "summary.json").is_file() and (out / "summary.html").is_file()


def test_the_wheel_venv_imports_linewatch_from_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    python = wheel_venv.parent / "python"
    code = "import linewatch.deploy.demo as d, linewatch.alerts as a; print(d.__file__); print(a.__file__)"
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    venv = str(wheel_venv.parent.parent)
    assert all(line.startswith(venv) for line in result.stdout.split()), result.stdout
    assert not any(line.startswith(str(Path(sys.executable).parent.parent)) for line in result.stdout.split())
    assert os.sep + "site-packages" + os.sep in result.stdout
