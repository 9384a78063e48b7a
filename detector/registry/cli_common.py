"""Helpers shared by the registry's subcommands (kept apart so the command modules do not import each other)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from linewatch.common.service_runner import Overrides
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.errors import BrokerError

Handler = Callable[[argparse.Namespace], int]


def guarded(handler: Handler) -> Handler:
    """``handler`` with the registry's own failures raised as :class:`~linewatch.errors.LinewatchError`.

    A database that cannot be reached becomes a BrokerError. The expected failures (RegistryError,
    CheckpointError, WireFormatError, ShadowError, TopicError) already are LinewatchErrors and reach
    ``linewatch``'s one-line error as they are.
    """
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import OperationalError

        try:
            return handler(args)
        except OperationalError as exc:
            raise BrokerError(f"cannot use the registry database: {exc.orig or exc}") from exc

    return run


def moment(text: str) -> str:
    """A ``--since``/``--until`` value, checked when parsed (90s, 30m, 2h, 7d or an ISO time)."""
    from linewatch.detector.registry.times import parse_since

    try:
        parse_since(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 2h, 7d or an ISO time such as "
                                         f"2026-11-29T08:00:00+00:00, got {text!r}") from None
    return text


def duration(text: str) -> float:
    """A ``--duration`` value in seconds, checked when parsed (90s, 30m, 2h, 7d)."""
    from linewatch.detector.registry.times import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` (default: LINEWATCH_REGISTRY__DATABASE_URL)."""
    parser.add_argument("--database-url", help="SQLAlchemy URL of the registry (default: "
                                               "LINEWATCH_REGISTRY__DATABASE_URL or sqlite:///.linewatch/registry.db)")


# argparse dest -> the RegistrySettings field it overrides (each command has some of these flags)
FLAGS = {"database_url": "registry.database_url", "model_store": "registry.model_store",
         "bootstrap_servers": "kafka.bootstrap_servers"}


def overrides(args: argparse.Namespace) -> Overrides:
    """The registry flags given on the command line."""
    return Overrides.from_args(args, FLAGS)


def load(args: argparse.Namespace) -> RegistrySettings:
    """Settings from the environment with the command line's overrides, validated together."""
    return overrides(args).load(RegistrySettings)
