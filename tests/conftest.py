"""Shared fixtures and the unit/integration split.

Fixtures: one real local broker and one real Redis per test session (``stack``, ``bootstrap``,
``redis_url``), a ``unique`` name per test, the real data set (``magnetic_tile``) and one tiny
calibrated model per session (``tiny_model``).

Every test is exactly one of ``unit`` or ``integration``:

- a test that requests a fixture in ``SERVICE_FIXTURES`` (directly or through another fixture)
  talks to a real service and is ``integration``;
- a test may say so itself (``pytest.mark.integration``), e.g. when it starts its services as
  subprocesses; everything else is ``unit``.

The ``unit`` label is checked, not trusted: a test marked ``unit`` that requests a service fixture
is a collection error, and while a unit test runs, any TCP/UDP connect from Python (loopback
included: a local Redis or HTTP server is a service too) fails the test. The Kafka client connects
from C (librdkafka), out of this check's sight; the broker is only reachable through the ``stack``
fixtures, which the first rule covers.

``LINEWATCH_FULL=1`` switches the slow suites (training, fault injection, soak) from
their reduced size to full size; see the README.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linewatch.deploy.local import LocalStack, start_local_stack

FULL_SIZE = os.environ.get("LINEWATCH_FULL") == "1"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"

# Fixtures that are (or start) a real service: the session's broker and Redis, and the suites' own
# servers (Alertmanager, webhook/recorder HTTP receivers, a browser, a fake Grafana, an AUTH Redis,
# PostgreSQL).
SERVICE_FIXTURES = frozenset({"stack", "bootstrap", "redis_url", "alertmanager", "webhook", "recorder", "browser",
                              "grafana", "secured_redis", "postgres_url"})
LAYERS = ("unit", "integration")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one of ``unit``/``integration`` (see the module docstring)."""
    errors = [error for item in items if (error := _classify(item))]
    if errors:
        raise pytest.UsageError("wrong unit/integration markers:\n  " + "\n  ".join(errors))


def _classify(item: pytest.Item) -> str | None:
    explicit = [name for name in LAYERS if item.get_closest_marker(name)]
    services = sorted(SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if len(explicit) > 1:
        return f"{item.nodeid}: marked both unit and integration"
    if explicit == ["unit"] and services:
        return f"{item.nodeid}: marked unit but uses the service fixture(s) {', '.join(services)}"
    if not explicit:
        item.add_marker("integration" if services else "unit")
    return None


# `make unit` (unit and not slow) should stay under a minute on 2 cores: a test over this budget is named
# in the summary, to be made smaller or marked slow. A report, not a failure: timing depends on the machine.
UNIT_BUDGET_S = 5.0
_unit_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when in ("setup", "call") and "unit" in report.keywords and "slow" not in report.keywords:
        _unit_seconds[report.nodeid] = _unit_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    over = sorted(((s, n) for n, s in _unit_seconds.items() if s > UNIT_BUDGET_S), reverse=True)
    if over:
        terminalreporter.write_sep("-", f"unit tests over {UNIT_BUDGET_S:.0f} s (setup included): "
                                        "make them smaller or mark them slow")
        for seconds, nodeid in over:
            terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")


class ServiceInUnitTestError(RuntimeError):
    """A ``unit`` test tried to reach a service over the network."""


@pytest.fixture(autouse=True)
def _unit_tests_reach_no_service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a ``unit`` test that connects a TCP/UDP socket (even when the code under test swallows the error)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    attempts: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise ServiceInUnitTestError(f"unit test connected to {address}: mark it integration")

    def connect(sock: socket.socket, address: Any) -> None:
        refuse(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        refuse(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield
    if attempts:
        pytest.fail(f"unit test connected to {attempts}: it needs a service, mark it integration")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The real broker (Tansu) and Redis, started once for the whole session."""
    local = start_local_stack(tmp_path_factory.mktemp("stack"))
    yield local
    local.stop()


@pytest.fixture
def bootstrap(stack: LocalStack) -> str:
    """``bootstrap.servers`` of the session's broker."""
    return stack.bootstrap_servers


@pytest.fixture
def redis_url(stack: LocalStack) -> str:
    """URL of the session's Redis."""
    return stack.redis_url


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Iterator[str]:
    """A short unique name for topics, groups and Redis key prefixes of one test.

    A test that also uses the session's Redis gets every key containing the name deleted afterwards:
    some keys have no TTL by design (the alerts service's per-partition epoch, index and history), and the
    machine's Redis must not collect them run after run.
    """
    name = uuid.uuid4().hex[:10]
    redis_url = request.getfixturevalue("redis_url") if "redis_url" in request.fixturenames else None
    yield name
    if redis_url is not None:
        _delete_keys_containing(redis_url, name)


def _delete_keys_containing(redis_url: str, text: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{text}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


@pytest.fixture
def magnetic_tile() -> Path:
    """The real magnetic_tile data set; the test is skipped when it is absent."""
    if not (SHARED_DATA / "train" / "good").is_dir():
        pytest.skip(f"real data set not found at {SHARED_DATA} (only present beside a linewatch checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated 64 px model trained on synthetic good parts, once per session (seconds on 2 cores).

    Every suite that needs *a* trained model uses this one; the training itself is tested in tests/model.
    """
    import torch

    from linewatch.detector.model.training.train import train_synthetic_model

    torch.set_num_threads(2)
    return train_synthetic_model(tmp_path_factory.mktemp("tiny-model") / "tiny.safetensors", epochs=1,
                                 image_size=64)
