"""Subcommands of ``linewatch`` that belong to the detector package."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add this package's subcommands to the ``linewatch`` parser."""
    from detector.evaluate_cli import register_evaluate
    from detector.service.cli import register_detect

    register_evaluate(subparsers)
    register_detect(subparsers)
