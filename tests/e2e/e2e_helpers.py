"""Helpers of the end-to-end tests: ``linewatch`` subprocesses, their logs and HTTP probes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from linewatch.common.settings import TopicSettings

ROOT = Path(__file__).resolve().parents[2]
_ASSIGNMENT = re.compile(r"detector\.service\.service: (assigned|revoked) \[([\d, ]*)\]")


def topics_for(unique: str, partitions: int = 8) -> TopicSettings:
    """Topic names of one test."""
    return TopicSettings(frames=f"frames-{unique}", results=f"results-{unique}", breaches=f"breaches-{unique}",
                         dead_letters=f"dead-letters-{unique}", alerts=f"alerts-{unique}",
                         alert_dead_letters=f"alert-dead-letters-{unique}", partitions=partitions)


def line_env(topics: TopicSettings, prefix: str) -> dict[str, str]:
    """Environment that points a ``linewatch`` process at the test's topics and Redis prefix."""
    env = {f"LINEWATCH_TOPICS__{name.upper()}": str(value) for name, value in topics.model_dump().items()}
    env.update({"LINEWATCH_REDIS__KEY_PREFIX": prefix, "LINEWATCH_SESSION_TIMEOUT_MS": "6000",
                "LINEWATCH_COMMIT_INTERVAL_MS": "200", "PYTHONUNBUFFERED": "1"})
    return env


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``linewatch ARGV`` (as ``python -m deploy.cli``) with its output in ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "linewatch.deploy.cli",
                                 *argv], cwd=ROOT, env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT)


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def assignment(log_path: Path) -> set[int]:
    """A detector's current partitions, replayed from its 'assigned'/'revoked' log lines."""
    current: set[int] = set()
    for kind, numbers in _ASSIGNMENT.findall(log_path.read_text(errors="replace")):
        parts = {int(n) for n in numbers.split(",") if n.strip()}
        current = parts if kind == "assigned" else current - parts
    return current


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    """Poll ``condition()`` every 0.2 s; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM, wait, SIGKILL as a last resort; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)
