"""The ``linewatch`` command: one console script, one subcommand per job.

Each package registers its own subcommands (``register(subparsers)``) so that the
behaviour behind a command lives next to the code it runs; heavy imports (torch)
happen inside the handlers, so ``linewatch camera`` starts fast.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence
from importlib import metadata

from linewatch.alerts import cli as alerts_cli
from linewatch.deploy import dashboards, stack_cli
from linewatch.detector import cli as detector_cli
from linewatch.health import cli as health_cli
from linewatch.ingest import cli as ingest_cli
from linewatch.plant import cli as verdicts_cli

log = logging.getLogger(__name__)


def installed_version() -> str:
    """The installed distribution's version (what the image and the wheel were built as)."""
    try:
        return metadata.version("linewatch")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests that check deploy files against the CLI)."""
    parser = argparse.ArgumentParser(prog="linewatch", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"linewatch {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (ingest_cli, detector_cli, alerts_cli, verdicts_cli, health_cli, stack_cli, dashboards):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``linewatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _dump_stacks_on_sigusr1()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints every thread's Python stack to stderr: how a stuck process is diagnosed."""
    if not hasattr(signal, "SIGUSR1"):  # POSIX only
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    except (AttributeError, OSError, ValueError):  # stderr without a file descriptor (e.g. captured in tests)
        log.debug("no stack dump on SIGUSR1: stderr has no file descriptor")


if __name__ == "__main__":
    sys.exit(main())
