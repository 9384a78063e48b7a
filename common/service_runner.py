"""How every long-running ``linewatch`` command runs (camera, cameras, detect, alerts, verdicts, camera-health,
audit run): settings from the environment with the command line's overrides, validated together; the
two-signal stop of :func:`~linewatch.common.signals.stop_on_signals`; an exit status.

Expected failures are :class:`~linewatch.errors.LinewatchError` and reach the command line's ``main``,
which prints their one line and exits with their status. A bad flag is named as the flag
(``--port (LINEWATCH_HTTP__PORT): ...``), a bad variable as the variable.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic_settings import BaseSettings

from linewatch.common.settings import load_settings
from linewatch.common.signals import stop_on_signals
from linewatch.errors import LinewatchError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)
Body = Callable[[threading.Event], int | None]


class Overrides:
    """Settings values given on the command line, by dotted field path, with the flag that gave each."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.flags: dict[str, str] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace, fields: Mapping[str, str]) -> Overrides:
        """The flags of ``fields`` (argparse dest -> dotted field path) that were given.

        A flag counts as given unless it is None, or False (an unset ``store_true``).
        """
        overrides = cls()
        for dest, field in fields.items():
            value = getattr(args, dest, None)
            if value is not None and value is not False:
                overrides.set(field, value, "--" + dest.replace("_", "-"))
        return overrides

    def set(self, field: str, value: Any, flag: str) -> None:
        """Override ``field`` (e.g. ``http.port``) with ``value``; errors about it name ``flag``."""
        self.values[field] = value
        self.flags[field] = flag

    def nested(self) -> dict[str, Any]:
        """The overrides as nested mappings, the shape the settings classes take."""
        nested: dict[str, Any] = {}
        for field, value in self.values.items():
            *parents, leaf = field.split(".")
            level = nested
            for parent in parents:
                level = level.setdefault(parent, {})
            level[leaf] = value
        return nested

    def load(self, cls: type[SettingsT]) -> SettingsT:
        """``cls`` from the environment with these overrides merged in, validated as a whole.

        Raises:
            ConfigError: a variable or flag is invalid; the message names it.
        """
        return load_settings(cls, flags=self.flags, **self.nested())


def run_until_signalled(body: Body, fatal: tuple[type[Exception], ...] = ()) -> int:
    """Run ``body(stop)``: the first SIGINT/SIGTERM sets ``stop``, a second ends the process at once.

    Returns ``body``'s exit status (None: 0). ``fatal`` are the exceptions by which the service reports
    that it failed while running (it has logged the details): they become a one-line error, status 1.
    """
    with stop_on_signals() as stop:
        try:
            status = body(stop)
        except fatal as exc:
            raise LinewatchError(str(exc)) from exc
    return 0 if status is None else int(status)


def run_service(cls: type[SettingsT], overrides: Overrides,
                serve: Callable[[SettingsT, threading.Event], int | None],
                fatal: tuple[type[Exception], ...] = ()) -> int:
    """Load ``cls`` with ``overrides``, then :func:`run_until_signalled` ``serve(settings, stop)``."""
    settings = overrides.load(cls)
    return run_until_signalled(lambda stop: serve(settings, stop), fatal)
