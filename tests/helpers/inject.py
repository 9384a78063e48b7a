"""Run ``linewatch ARGS`` as a real process with one fault injected: ``python inject.py FAULT ARGS...``.

Test-only and outside the product: the fault is patched in here, before the ordinary entry point
(``linewatch.deploy.cli.main``) runs, so nothing in the shipped code can trigger it. Everything else is
the real command: argument parsing, signal handlers, threads, the interpreter's exit.

Faults (``NAME:N``):

- ``detector-worker-dies:N``: the model's N-th ``predict`` call raises a ``BaseException`` that
  processing does not catch, like a bug that kills the detector's inference thread.
- ``alerts-loop-raises:N``: the alerts service's N-th batch of records raises an exception its loop does
  not treat as transient (a bug); it must end the process, not be retried or swallowed.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable
from typing import Any


class InjectedWorkerDeath(BaseException):
    """Not an ``Exception``: nothing in batch processing catches it."""


class InjectedBug(Exception):  # noqa: N818
    """An exception type no service loop expects."""


def _fail_on_call(function: Callable[..., Any], n: int, error: BaseException) -> Callable[..., Any]:
    calls = itertools.count(1)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if next(calls) >= n:
            raise error
        return function(*args, **kwargs)

    return wrapper


def _detector_worker_dies(n: int) -> None:
    from linewatch.detector.service import service

    real_load = service.DetectorService._load_model

    def load_model(self: Any) -> Any:
        model = real_load(self)
        model.predict = _fail_on_call(model.predict, n, InjectedWorkerDeath(f"injected: predict call {n}"))
        return model

    service.DetectorService._load_model = load_model  # type: ignore[method-assign]


def _alerts_loop_raises(n: int) -> None:
    from linewatch.alerts.service import AlertsService

    real_process = AlertsService.process
    batches = itertools.count(1)

    def process(self: Any, messages: list[Any]) -> None:
        if messages and next(batches) >= n:  # empty polls do not count
            print(f"injecting a bug into batch {n} (offsets {messages[0].offset()}..)", flush=True)
            raise InjectedBug(f"injected: batch {n}")
        real_process(self, messages)

    AlertsService.process = process  # type: ignore[method-assign]


FAULTS: dict[str, Callable[[int], None]] = {"detector-worker-dies": _detector_worker_dies,
                                            "alerts-loop-raises": _alerts_loop_raises}


def main(argv: list[str]) -> int:
    name, _, n = argv[0].partition(":")
    FAULTS[name](int(n or 1))
    from linewatch.deploy.cli import main as linewatch_main

    return linewatch_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
