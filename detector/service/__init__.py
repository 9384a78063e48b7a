"""The streaming detector service: Kafka frames -> micro-batched STFPM -> results, breaches, heatmaps.

Entry point for other code: :func:`run_detector` (blocking) with :class:`DetectorSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linewatch.detector.service.service import DetectorService, run_detector
    from linewatch.detector.service.settings import DetectorSettings

__all__ = ["DetectorService", "DetectorSettings", "run_detector"]

_HOMES = {"DetectorService": "service", "run_detector": "service", "DetectorSettings": "settings"}


def __getattr__(name: str) -> Any:
    """Import on first use: the service pulls in torch, and ``linewatch --help`` (which imports the
    package for its subcommand) should not pay seconds for it."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
