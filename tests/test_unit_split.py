"""The unit/integration split of tests/conftest.py is enforced, not just labelled: a pytest run of tiny
test files with that conftest as a plugin shows which tests it calls unit, and that unit ones cannot
reach a service."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
TESTS = Path(__file__).resolve().parent

CASES = """
import socket

import pytest


@pytest.fixture
def stack():  # stands in for the session's broker and Redis
    return None


def test_pure():
    assert sum([1, 2]) == 3


def test_connects():
    with socket.socket() as sock:
        sock.connect(("127.0.0.1", PORT))


def test_swallows_the_error():
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=5).close()
    except Exception:
        pass


def test_uses_a_service_fixture(stack):
    socket.create_connection(("127.0.0.1", PORT), timeout=5).close()


@pytest.mark.integration
def test_says_it_is_integration():
    socket.create_connection(("127.0.0.1", PORT), timeout=5).close()
"""


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    unit: u\n    integration: i\n    slow: s\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "-rA",
                           *args], cwd=folder, env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_unit_tests_cannot_reach_a_service_and_service_users_are_not_unit(tmp_path: Path) -> None:
    with socket.socket() as listener:  # a real local server: reachable, so only the guard can stop a connect
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        (tmp_path / "test_cases.py").write_text(CASES.replace("PORT", str(port)))
        run = _pytest(tmp_path, "-m", "unit")
    outcomes = dict((name, status) for status, name in
                    re.findall(r"^(PASSED|FAILED|ERROR) test_cases\.py::(\w+)", run.stdout, re.M))
    assert outcomes == {"test_pure": "PASSED", "test_connects": "FAILED",
                        "test_swallows_the_error": "ERROR"}, run.stdout + run.stderr  # ERROR: failed at teardown
    assert "mark it integration" in run.stdout
    assert "2 deselected" in run.stdout  # the fixture user and the self-declared integration test


def test_a_unit_mark_on_a_service_user_is_refused_at_collection(tmp_path: Path) -> None:
    (tmp_path / "test_wrong.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef redis_url():\n    return 'redis://x'\n\n"
        "@pytest.mark.unit\ndef test_claims_unit(redis_url):\n    pass\n\n"
        "@pytest.mark.unit\n@pytest.mark.integration\ndef test_claims_both():\n    pass\n")
    proc = _pytest(tmp_path, "--collect-only")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "test_claims_unit: marked unit but uses the service fixture(s) redis_url" in proc.stderr
    assert "test_claims_both: marked both unit and integration" in proc.stderr
