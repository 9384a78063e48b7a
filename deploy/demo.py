"""``linewatch demo``: the whole line on one machine, then a summary.

Local broker and Redis -> (cached or freshly trained) model -> ``linewatch detect`` and
``linewatch alerts`` as subprocesses -> cameras replaying the test split at a set rate for a
bounded time -> wait for the line to drain -> summary printed and written to ``--out``.
Everything started here is stopped on exit, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    from linewatch.deploy.demo_model import DEMO_EPOCHS

    p = subparsers.add_parser("demo", help="run the whole line locally for a bounded time and print a summary",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="MVTec-layout data set (train/good, test/<type>); synthetic parts when it is absent")
    p.add_argument("--synthetic", action="store_true", help="use synthetic parts even when --data exists")
    p.add_argument("--duration", type=float, default=90.0, help="seconds the cameras run (default 90)")
    p.add_argument("--cameras", type=int, default=4, help="number of cameras (default 4)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second per camera (default 2)")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                   help=f"training epochs (default {DEMO_EPOCHS}: the full default budget, ~5 min on 2 cores)")
    p.add_argument("--image-size", type=int, help="model input size (default: TrainConfig's, 128)")
    p.add_argument("--train-images", type=int, default=0, help="limit the good training images (0: all)")
    p.add_argument("--retrain", action="store_true", help="train even when a cached model matches")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/models"), help="where trained models are kept")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="summary.json, summary.html and logs")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (training and detector)")
    p.add_argument("--port", type=int, default=0, help="port of the alerts web page (default: a free one)")
    p.add_argument("--drain-timeout", type=float, default=90.0, help="seconds to wait for the line to catch up")
    p.set_defaults(func=run_demo)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], name: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")
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


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``linewatch demo``; returns 0 when every frame sent got a result or a dead letter."""
    from linewatch.deploy.local import LocalServiceError, start_local_stack

    data = None if args.synthetic or not (args.data / "test").is_dir() else args.data
    if data is None and not args.synthetic:
        print(f"no data set at {args.data}: using the synthetic part generator", flush=True)
    out: Path = args.out
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    processes = Processes(log_dir)
    stack = None
    try:
        stack = start_local_stack(log_dir / "stack")
        print(f"broker {stack.bootstrap_servers}, Redis {stack.redis_url}", flush=True)
        from linewatch.deploy.demo_run import DemoRun

        return DemoRun(args, data, stack, processes).run()
    except (LocalServiceError, RuntimeError, ValueError, OSError) as exc:
        print(f"linewatch demo: {exc}", file=sys.stderr)
        return 1
    finally:
        processes.stop()
        if stack is not None:
            stack.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def model_summary(model: Any) -> dict[str, Any]:
    """The model part of the summary (paths as strings)."""
    values = asdict(model)
    values["path"] = str(values["path"])
    return values
