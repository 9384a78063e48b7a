"""``linewatch stack``: run the local broker and Redis until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

from linewatch.common.signals import interrupt_on_signals


def register(subparsers: Any) -> None:
    """Add the ``stack`` subcommand (``demo`` is added by :mod:`deploy.demo`)."""
    stack = subparsers.add_parser("stack", help="run a local Kafka-protocol broker and Redis until Ctrl-C")
    stack.add_argument("--log-dir", type=Path, default=None, help="where service logs go")
    stack.set_defaults(func=run_stack)
    try:
        from linewatch.deploy import demo
    except ImportError:  # pragma: no cover - demo is part of the package
        return
    demo.register(subparsers)


def run_stack(args: argparse.Namespace) -> int:
    """Start the stack, print its endpoints, wait for SIGINT/SIGTERM, stop it."""
    from linewatch.deploy.local import start_local_stack

    # A signal is how this command ends: stop the services (even mid-start), then exit 0.
    with contextlib.suppress(KeyboardInterrupt), interrupt_on_signals():
        stack = start_local_stack(args.log_dir)  # stops what it started when interrupted
        try:
            print(f"KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap_servers}")
            print(f"REDIS_URL={stack.redis_url}")
            print(f"logs: {stack.log_dir}", flush=True)
            _wait_for_a_signal()
        finally:
            stack.stop()
    return 0


def _wait_for_a_signal() -> None:
    """Sleep until a signal handler raises, waking every second.

    Python runs signal handlers in the main thread, but the kernel may deliver a process signal to any
    thread that does not block it (torch and OpenCV start native threads here). A signal delivered
    elsewhere does not interrupt a lock wait in the main thread, so a bare ``Event().wait()`` could
    sleep through it; a bounded sleep returns to the interpreter, which then runs the pending handler.
    """
    while True:
        time.sleep(1.0)
