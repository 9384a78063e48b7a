"""Subcommands of ``linewatch`` that belong to the ingest package."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add this package's subcommands to the ``linewatch`` parser."""
