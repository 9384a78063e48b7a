"""A second SIGINT/SIGTERM ends a long-running ``linewatch`` command at once, even when its graceful stop hangs.

Each command runs as its own OS process through the real entry point (``deploy.cli.main``: parser, settings,
the service runner's signal handlers), with only the service body replaced by one that stops on the first
signal and then never finishes its drain, the case an operator's second Ctrl-C or an orchestrator's second
SIGTERM is for. The body logs where it is, and the test waits on those lines, not on time. A command that
sets an event on every signal (and so ignores the second one) hangs here and fails on the exit guard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.faults import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

API_TOKEN = "Ex1tsTokn_Pl-XeCTIXxWlI8N-cRYvJLGmuE7gx8FLFs"
EXIT_GUARD_S = 60  # a process still alive this long after its last signal is hung: the failure this test finds
SERVING, DRAINING = "fake service: serving", "fake service: draining, and the drain never ends"

# Replaces ``MODULE.ATTRIBUTE`` (the service body a command calls) and runs ``linewatch ARGS``.
# HANG=1: after the first signal the body never returns; HANG=0: it returns (a graceful stop).
FAKE_SERVICE = f"""
import importlib, logging, os, sys, threading

log = logging.getLogger("fake")


def body(*args, **kwargs):
    stop = next(value for value in (*args, *kwargs.values()) if isinstance(value, threading.Event))
    log.warning("{SERVING}")
    while not stop.wait(1.0):
        pass
    if os.environ["HANG"] == "1":
        log.warning("{DRAINING}")
        while True:
            threading.Event().wait(1.0)


module, attribute = os.environ["FAKE_TARGET"].rsplit(".", 1)
setattr(importlib.import_module(module), attribute, body)
from linewatch.deploy.cli import main

sys.exit(main(sys.argv[1:]))
"""

# command -> the body it runs (what FAKE_SERVICE replaces)
COMMANDS = {
    "alerts": (["alerts", "--no-api"], "linewatch.alerts.service.run_alerts"),
    "verdicts": (["verdicts"], "linewatch.plant.service.run_verdicts"),
    "camera-health": (["camera-health"], "linewatch.health.service.run_health"),
    "audit run": (["audit", "run"], "linewatch.detector.registry.audit_cli._consume"),
    "camera": (["camera", "--source", "synthetic:"], "linewatch.ingest.cli._run_camera"),
}


def _start(command: str, hang: bool, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    argv, target = COMMANDS[command]
    env = {key: value for key, value in os.environ.items() if not key.startswith("LINEWATCH_")}
    env |= {"LINEWATCH_API_TOKEN": API_TOKEN, "FAKE_TARGET": target, "HANG": "1" if hang else "0"}
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_SERVICE, *argv], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    return proc, log_path


def _wait_for_line(proc: subprocess.Popen[bytes], log_path: Path, line: str) -> None:
    def logged() -> bool:
        text = log_path.read_text(errors="replace")
        assert proc.poll() is None, f"exited {proc.returncode} before logging {line!r}:\n{text[-3000:]}"
        return line in text

    wait_until(logged, 120, repr(line))


def _exit_status(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    try:
        return proc.wait(EXIT_GUARD_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"still running after the signals (hung):\n{log_path.read_text()[-3000:]}") from None


@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_second_signal_ends_a_hung_stop_at_once(command: str, signum: signal.Signals, tmp_path: Path) -> None:
    proc, log_path = _start(command, hang=True, tmp_path=tmp_path)
    try:
        _wait_for_line(proc, log_path, SERVING)
        proc.send_signal(signum)
        _wait_for_line(proc, log_path, DRAINING)  # the first signal was handled: the service is stopping
        proc.send_signal(signum)
        status = _exit_status(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log_path.read_text(errors="replace")
    assert status == -signum, text[-3000:]  # ended by the signal itself: no cleanup, no traceback
    assert "exiting without finishing" in text
    assert "Traceback" not in text


@pytest.mark.timeout(240)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_one_signal_stops_gracefully_with_status_0(command: str, tmp_path: Path) -> None:
    proc, log_path = _start(command, hang=False, tmp_path=tmp_path)
    try:
        _wait_for_line(proc, log_path, SERVING)
        proc.send_signal(signal.SIGTERM)
        status = _exit_status(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log_path.read_text(errors="replace")
    assert status == 0, text[-3000:]
    assert "Traceback" not in text
