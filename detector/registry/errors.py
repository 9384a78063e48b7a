"""The registry's error, in a module of its own so that the database layer and its migrations can both raise it."""

from __future__ import annotations

from linewatch.errors import DataError


class RegistryError(DataError, ValueError):
    """A registry operation that cannot be done; the message says why (unknown version, nothing to roll back)."""
