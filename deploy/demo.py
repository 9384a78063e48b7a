"""``linewatch demo``: the whole line on one machine (filled in by the demo issue)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
