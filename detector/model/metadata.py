"""What a checkpoint says about its model: architecture, input geometry, scoring rule and calibration.

A typed object instead of a loose dict: every consumer (inference, export, evaluate, the service, the
demo) reads the same fields, and a checkpoint that lacks one is refused in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from linewatch.detector.model.calibrate import Calibration
from linewatch.detector.model.geometry import RESIZE_MODES
from linewatch.detector.model.tiling import TILINGS
from linewatch.errors import ModelError


class MetadataError(ModelError, ValueError):
    """Checkpoint metadata that does not describe a usable model; the message names the field."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything but the weights; ``to_dict`` is what the checkpoint header stores."""

    backbone: str
    taps: tuple[int, ...]
    image_size: int
    calibration: Calibration
    sigma: float = 0.0  # Gaussian smoothing of the fused map, in model-input pixels
    resize_mode: str = "squash"
    score_top_k: int = 1  # image score = mean of the k largest map values (1: the maximum)
    tap_weights: tuple[float, ...] = ()  # exponents of the layer maps in the fused product (empty: all 1)
    map_taps: tuple[int, ...] = ()  # the taps whose product is the map shown (empty: every tap)
    score_taps: tuple[int, ...] = ()  # the taps whose product the image score is read from (empty: the map shown)
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()
    map_cells: tuple[int, int] = (0, 0)  # fused map size in feature cells (height, width) before upsampling
    tiling: str = "none"  # "long-axis": long images run as overlapping square tiles (detector/model/tiling.py)
    # thresholds from the same held-out good images scored at another precision ("bf16"): a model runs
    # at a precision other than fp32 under `--backend auto` only with its own calibration there
    precision_calibrations: dict[str, Calibration] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise MetadataError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.tiling not in TILINGS:
            raise MetadataError(f"tiling must be one of {TILINGS}, got {self.tiling!r}")
        if self.tiling != "none" and self.resize_mode != "squash":  # tiles are square: nothing to letterbox
            raise MetadataError(f"tiling {self.tiling!r} needs resize_mode 'squash', got {self.resize_mode!r}")
        if self.image_size < 16 or not self.taps or self.score_top_k < 1 or self.sigma < 0:
            raise MetadataError(f"implausible model geometry: image_size {self.image_size}, taps {self.taps}, "
                                f"score_top_k {self.score_top_k}, sigma {self.sigma}")
        if self.tap_weights and (len(self.tap_weights) != len(self.taps)
                                 or not all(math.isfinite(w) and w > 0 for w in self.tap_weights)):
            raise MetadataError(f"tap_weights must be one positive number per tap {self.taps}, got {self.tap_weights}")
        for name in ("map_taps", "score_taps"):
            subset = getattr(self, name)
            if not set(subset) <= set(self.taps) or len(set(subset)) != len(subset):
                raise MetadataError(f"{name} must be distinct taps among {self.taps}, got {subset}")

    def calibration_at(self, precision: str) -> Calibration | None:
        """The calibration measured at ``precision`` (fp32: the model's own), or None where there is none."""
        return self.calibration if precision == "fp32" else self.precision_calibrations.get(precision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored in the checkpoint."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["calibration"] = self.calibration.to_dict()
        out["precision_calibrations"] = {name: c.to_dict() for name, c in self.precision_calibrations.items()}
        for name in ("taps", "tap_weights", "map_taps", "score_taps", "input_mean", "input_std", "map_cells"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Parse a checkpoint header's metadata; older checkpoints get the defaults of newer fields."""
        try:
            calibration = Calibration.from_dict(dict(data["calibration"]))
            return cls(backbone=str(data["backbone"]), taps=tuple(int(t) for t in data["taps"]),
                       image_size=int(data["image_size"]), calibration=calibration,
                       sigma=float(data.get("sigma", 0.0)), resize_mode=str(data.get("resize_mode", "squash")),
                       score_top_k=int(data.get("score_top_k", 1)),
                       tap_weights=tuple(float(w) for w in data.get("tap_weights") or ()),
                       map_taps=tuple(int(t) for t in data.get("map_taps") or ()),
                       score_taps=tuple(int(t) for t in data.get("score_taps") or ()),
                       input_mean=tuple(float(v) for v in data.get("input_mean", ())),
                       input_std=tuple(float(v) for v in data.get("input_std", ())),
                       map_cells=tuple(int(v) for v in data.get("map_cells", (0, 0)))[:2],  # type: ignore[arg-type]
                       tiling=str(data.get("tiling") or "none"),
                       precision_calibrations={str(name): Calibration.from_dict(dict(c)) for name, c
                                               in dict(data.get("precision_calibrations") or {}).items()},
                       training=dict(data.get("training") or {}), versions=dict(data.get("versions") or {}))
        except KeyError as exc:
            raise MetadataError(f"checkpoint metadata has no {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"checkpoint metadata is malformed: {exc}") from None
