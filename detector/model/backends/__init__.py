"""Runtimes behind :class:`~linewatch.detector.model.inference.InferenceModel`: torch, ONNX Runtime, OpenVINO.

``load_model(path, backend=...)`` is the one entry point. Every backend returns the same
:class:`~linewatch.detector.model.inference.Prediction`: pre-processing runs in the shared torch wrapper
(``AnomalyModel``), the network, map fusion, score rule, normalisation and verdicts run in the graph
exported from :class:`~linewatch.detector.model.stfpm.calibrated.CalibratedSTFPM` (with per-frame thresholds
as a graph input), so no backend re-implements any of them.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any

from linewatch.detector.model.backends.errors import BackendError
from linewatch.detector.model.backends.names import BACKENDS

if TYPE_CHECKING:
    from linewatch.detector.model.backends.loader import available_backends, load_model, load_to_calibrate

__all__ = ["BACKENDS", "BackendError", "available_backends", "load_model", "load_to_calibrate"]


def __getattr__(name: str) -> Any:
    """The loader imports torch: load it on first use, so ``linewatch --help`` and the CLI stay light."""
    if name in ("available_backends", "load_model", "load_to_calibrate"):
        import linewatch.detector.model.backends.loader as loader_module

        return getattr(loader_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
