"""Child processes of ``linewatch demo``: start them as ``linewatch`` subcommands, wait for them, stop them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class PortTakenError(RuntimeError):
    """A child could not listen on the port it was given: something else took it after ``free_port`` chose it."""


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], name: str, log_path: Path) -> None:
    """Wait until ``url`` answers 200; raise when ``proc`` exits first (``PortTakenError`` when it exited
    because its port was taken) or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            error = PortTakenError if "address already in use" in tail.lower() else RuntimeError
            raise error(f"{name} exited with code {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{name} was not ready at {url} within {timeout_s:.0f}s (log: {log_path})")


class Processes:
    """Child processes of the demo; stopped newest first (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``python -m deploy.cli ARGV`` (``linewatch ARGV``), its output in ``log_dir/NAME.log``."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "linewatch.deploy.cli", *argv], env={**os.environ, **env},
                                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, proc))
        return proc, log_path

    def stop(self) -> None:
        """SIGTERM each (they drain and commit), SIGKILL what is still up after 30 s."""
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in 30s; killing it", name)
                    proc.kill()
                    proc.wait(timeout=10)
        self.started.clear()


def model_summary(model: Any) -> dict[str, Any]:
    """The model part of the summary (paths as strings)."""
    values = asdict(model)
    values["path"] = str(values["path"])
    return values
