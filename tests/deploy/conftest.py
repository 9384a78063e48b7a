"""Fixtures of the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def deploy_model(tiny_model: Path) -> Path:
    """The session's tiny calibrated model (``tiny_model`` of tests/conftest.py)."""
    return tiny_model


@pytest.fixture(scope="session")
def deploy_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run deploy/README.md's check block once (real kubectl, kubernetes-validate, docker-compose,
    hadolint, promtool, amtool); returns the folder it rendered into (cpu/gpu/topics.yaml, compose.json)."""
    from deploy_tools import missing_debian_tools, run_checks

    missing = missing_debian_tools()
    if missing:
        pytest.skip(f"needs {missing} (Debian packages prometheus, prometheus-alertmanager: make system-deps)")
    out = tmp_path_factory.mktemp("deploy-checks")
    result = run_checks(out)
    if result.returncode != 0:
        pytest.fail(f"deploy/README.md checks failed (rc {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return out
