"""Fixtures of the verdicts tests: a Mosquitto broker and an OPC UA 'PLC' per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mosquitto import MOSQUITTO, Mosquitto
from verdict_helpers import FakePlc


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Our own mosquitto (Debian package) on a free port, so tests do not depend on the machine's."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def plc() -> Iterator[FakePlc]:
    """An asyncua server with writable gate nodes for cameras cam-a and cam-b."""
    server = FakePlc(["cam-a", "cam-b"])
    yield server
    server.stop()
