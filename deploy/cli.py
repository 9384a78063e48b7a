"""The ``linewatch`` command: one console script, one subcommand per job.

Each package registers its own subcommands (``register(subparsers)``) so that the
behaviour behind a command lives next to the code it runs; heavy imports (torch)
happen inside the handlers, so ``linewatch camera`` starts fast.

Errors: a :class:`~linewatch.errors.LinewatchError` (a bad setting, flag, data set, model, backend or
broker) ends the command with one line on stderr and the exit status its class documents (see
linewatch/errors.py); a bad flag does the same through argparse (status 2). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from linewatch.alerts import cli as alerts_cli
from linewatch.common.signal_stack import enlarge_signal_stack
from linewatch.common.signals import forget_caught_interrupts
from linewatch.deploy import dashboards, stack_cli
from linewatch.detector import cli as detector_cli
from linewatch.errors import LinewatchError
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


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose errors are one line, like every other error of the command (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests that check deploy files against the CLI)."""
    parser = OneLineErrorParser(prog="linewatch", description=__doc__.splitlines()[0])
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
    except LinewatchError as exc:
        print(f"{command_name(args)}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        forget_caught_interrupts()  # the status returned here is the one the process exits with


def command_name(args: argparse.Namespace) -> str:
    """``linewatch COMMAND [ACTION]`` as typed, for error lines."""
    return " ".join(["linewatch", *(str(part) for part in (args.command, getattr(args, "action", None)) if part)])


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its class name when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints every thread's Python stack to stderr: how a stuck process is diagnosed."""
    if not hasattr(signal, "SIGUSR1"):  # POSIX only
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    except (AttributeError, OSError, ValueError):  # stderr without a file descriptor (e.g. captured in tests)
        log.debug("no stack dump on SIGUSR1: stderr has no file descriptor")
    enlarge_signal_stack()  # faulthandler's alternate stack is too small for AMX state (common/signal_stack.py)


if __name__ == "__main__":
    sys.exit(main())
