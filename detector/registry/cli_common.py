"""Helpers shared by the registry's subcommands (kept apart so the command modules do not import each other)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from linewatch.detector.registry.settings import RegistrySettings

Handler = Callable[[argparse.Namespace], int]


def guarded(handler: Handler) -> Handler:
    """Expected failures -> one line on stderr, exit 2."""
    def run(args: argparse.Namespace) -> int:
        from linewatch.common.topics import TopicError

        try:
            return handler(args)
        except (ValueError, TopicError) as exc:  # RegistryError, CheckpointError, WireFormatError, ShadowError
            print(f"linewatch {args.command}: error: {exc}", file=sys.stderr)
            return 2

    return run


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` (default: LINEWATCH_REGISTRY__DATABASE_URL)."""
    parser.add_argument("--database-url", help="SQLAlchemy URL of the registry (default: "
                                               "LINEWATCH_REGISTRY__DATABASE_URL or sqlite:///.linewatch/registry.db)")


def load(args: argparse.Namespace) -> RegistrySettings:
    """Settings from the environment with the command line's overrides."""
    from linewatch.common.settings import load_settings

    settings = load_settings(RegistrySettings)
    updates = {key: value for key, value in (("database_url", getattr(args, "database_url", None)),
                                             ("model_store", getattr(args, "model_store", None))) if value}
    if updates:
        settings.registry = settings.registry.model_copy(update=updates)
    if getattr(args, "bootstrap_servers", None):
        settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    return settings
