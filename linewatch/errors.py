"""The errors a ``linewatch`` command expects, and the exit status each ends the command with.

Code raises one of these (or a subclass kept under its own name, e.g. ``CheckpointError``) for a failure
the user can act on; the command line (deploy/cli.py) catches :class:`LinewatchError` once and prints one
line, ``linewatch COMMAND: error: MESSAGE``, then exits with the class's ``exit_code``. Any other
exception is a bug and keeps its traceback (exit status 1).

Exit statuses:

====  ========================  ===================================================================
0     success
1     a bug, or a service that failed while running (the log says why)
2     ConfigurationError        a bad setting, flag or configuration file (argparse also exits 2)
3     DataError                 input data that cannot be used: images, a data set folder, records
4     ModelError                a checkpoint or export that cannot be used: corrupt, wrong metadata
5     BackendError              the model runtime or device cannot run here (not installed, absent)
6     BrokerError               Kafka, Redis or another server is unreachable or refused the request
130   interrupted (Ctrl-C)
====  ========================  ===================================================================

A long-running service that gets a second SIGINT/SIGTERM ends at once with the signal's status (128+N).

Imports nothing: every layer may raise these, and light modules (settings, parsers) must stay light.
"""

from __future__ import annotations

from typing import ClassVar


class LinewatchError(Exception):
    """A failure the user can act on; its message is the one line the command prints."""

    exit_code: ClassVar[int] = 1


class ConfigurationError(LinewatchError):
    """A setting, flag or configuration file is invalid; the message names it."""

    exit_code: ClassVar[int] = 2


class DataError(LinewatchError):
    """Input data cannot be used (unreadable images, an empty or mislaid data set, malformed records)."""

    exit_code: ClassVar[int] = 3


class ModelError(LinewatchError):
    """A model file cannot be used (corrupt, unknown backbone, metadata that does not fit)."""

    exit_code: ClassVar[int] = 4


class BackendError(LinewatchError):
    """A model runtime or device cannot run here (not installed, no such device, unreadable export)."""

    exit_code: ClassVar[int] = 5


class BrokerError(LinewatchError):
    """A server the command needs (Kafka, Redis, Grafana) is unreachable or refused the request."""

    exit_code: ClassVar[int] = 6



class InvalidValueError(ConfigurationError, ValueError):
    """A bad setting or argument raised by library code whose callers also catch :class:`ValueError`."""


class InvalidDataError(DataError, ValueError):
    """Unusable input data raised by library code whose callers also catch :class:`ValueError`."""
