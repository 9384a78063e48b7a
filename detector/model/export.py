"""Export a checkpoint to ONNX or TorchScript: uint8 NHWC frames in; scores, normalised scores, verdicts
and maps out.

Pre-processing (resize to the model size, input scaling), the map fusion, the image score rule and the
calibration (threshold, normalisation) are inside the graph (the traced module is
:class:`~linewatch.detector.model.stfpm.calibrated.CalibratedSTFPM`), so a runtime only feeds decoded frames.
The batch axis is dynamic; frame height and width are dynamic too (the graph resizes any size to the
model size).

The runtime backends (:mod:`linewatch.detector.model.backends`) run a second graph, :func:`export_graph`: the
same CalibratedSTFPM from the pre-processed (N, 3, S, S) input on, with a ``thresholds`` (N,) input so
per-camera thresholds go through the graph's own head, and a ``masks`` (N, S, S) input, so per-camera
regions of interest (``detector/model/roi.py``) are applied by that head too (all ones: no region). Their
pre-processing is ``STFPM.preprocess`` in the one shared wrapper
(:class:`~linewatch.detector.model.inference.AnomalyModel`), so letterboxed models and batches of mixed frame
sizes work alike everywhere. ``--format openvino`` writes such a graph as OpenVINO
IR into a folder with ``linewatch.json`` (the checkpoint metadata), optionally INT8-quantized with NNCF
on the model's own good training images.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from linewatch.detector.evaluation.metrics import rank_correlation
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.stfpm.calibrated import CalibratedSTFPM
from linewatch.detector.model.tiling import cut_tiles
from linewatch.errors import ModelError

FORMATS = ("onnx", "torchscript", "openvino")
OUTPUT_NAMES = ("scores", "normalised_scores", "anomalous", "maps")
GRAPH_INPUTS = ("pixels", "thresholds", "masks")
GRAPH_VERSION = 2  # 2: region masks are a graph input; cached graphs of another version are exported again
EXPORT_INFO = "linewatch.json"  # metadata file of an export folder
# OpenVINO op types of the map fusion and calibrated head (layer distance, product, upsampling, score,
# normalisation, verdict); the backbones (convolutions, residual adds, activations) get INT8
HEAD_OP_TYPES = ("Subtract", "Divide", "ReduceL2", "Power", "ReduceSum", "Multiply", "GreaterEqual", "Interpolate",
                 "Maximum", "Minimum", "Log", "Sigmoid", "ReduceMax", "TopK", "ReduceMean", "Sqrt")
CALIBRATION_SUBSET = 300  # NNCF's default subset size; more good images do not move the ranges
FIDELITY_IMAGES = 48  # good images held out of the INT8 calibration to measure its fidelity to fp32
INT8_RISK = ("INT8 kept image and pixel AUROC within 0.005 of fp32 on the three shared sets, but with one more "
             "block quantized it moved the RGB tyres' image AUROC by 0.015 (benchmarks/results/int8_accuracy.md): "
             "a rank correlation well below 1 above is the warning sign; check this export with "
             "`linewatch evaluate` on your own defects before using it.")


class ExportError(ModelError, ValueError):
    """The export could not be written; the message says why."""


def export_model(model_path: str | Path, out: str | Path, fmt: str = "onnx", opset: int = 18) -> Path:
    """Write ``out`` in ``fmt`` from the checkpoint at ``model_path``; returns ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "openvino":
        return export_openvino(model_path, out)
    loaded = AnomalyModel.load(model_path, device="cpu")
    if loaded.metadata.tiling != "none":  # the file would squash whole frames into one tile, silently wrong
        raise ExportError(f"a tiled model ({loaded.metadata.tiling}) cannot be exported as a standalone {fmt} "
                          "frame graph: tiling and stitching run in linewatch's predict. Use --format openvino "
                          "(its folder keeps the tiling) or load the checkpoint with --backend onnxruntime")
    model, size, resize_mode = loaded.calibrated.eval(), loaded.image_size, loaded.metadata.resize_mode
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # an example whose size differs from the model's, so the resize is traced into the graph
    example = torch.randint(0, 256, (2, size + 16, size + 8, 3), dtype=torch.uint8)
    try:
        if fmt == "torchscript":
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(model, (example,), check_trace=False)
            traced.save(str(out))
        else:
            with torch.no_grad():
                batch, height, width = (torch.export.Dim(n, min=2, max=8192) for n in ("batch", "height", "width"))
                spatial = {1: height, 2: width} if resize_mode == "squash" else {}  # letterbox pads by size
                program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                            input_names=["frames"], output_names=list(OUTPUT_NAMES),
                                            dynamic_shapes=({0: batch, **spatial},), verbose=False)
                if program is None:
                    raise ExportError("the ONNX exporter returned no program")
                program.save(str(out))
    except Exception as exc:  # exporter failures are deep; report one line
        raise ExportError(f"{fmt} export failed: {type(exc).__name__}: {exc}") from exc
    return out


class ScoredGraph(nn.Module):
    """CalibratedSTFPM from the pre-processed input on: (pixels, thresholds, masks) -> scores, normalised,
    verdicts, maps."""

    def __init__(self, calibrated: CalibratedSTFPM) -> None:
        super().__init__()
        self.calibrated = calibrated

    def forward(self, pixels: torch.Tensor, thresholds: torch.Tensor, masks: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same head as the torch runtime, so per-frame thresholds and regions need no second implementation."""
        maps, score_maps = self.calibrated.model.scored_maps(pixels)
        return self.calibrated.head(maps, thresholds, masks, score_maps)


def export_graph(model: AnomalyModel, out: str | Path, opset: int = 18) -> Path:
    """ONNX of :class:`ScoredGraph` (inputs ``pixels`` (N, 3, S, S) float32, ``thresholds`` (N,) and
    ``masks`` (N, S, S)); dynamic N."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = ScoredGraph(model.calibrated).to("cpu").eval()
    size = model.image_size
    example = (torch.randn(2, 3, size, size), torch.full((2,), model.image_threshold), torch.ones(2, size, size))
    axes = {name: {0: "batch"} for name in (*GRAPH_INPUTS, *OUTPUT_NAMES)}
    try:
        # the TorchScript-based exporter: this graph has no shape branches, and it exports in a few
        # seconds where the dynamo exporter takes half a minute (backends export at first load)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(out), dynamo=False, opset_version=min(opset, 17),
                              input_names=list(GRAPH_INPUTS), output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
    except Exception as exc:  # exporter failures are deep; report one line
        raise ExportError(f"graph export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.calibrated.to(model.device)
    return out


def export_info(model: AnomalyModel, precision: str, **extra: Any) -> dict[str, Any]:
    """What an export folder's ``linewatch.json`` holds: the checkpoint metadata and the graph's contract."""
    return {"metadata": model.metadata.to_dict(), "model_version": model.model_version, "precision": precision,
            "inputs": list(GRAPH_INPUTS), "outputs": list(OUTPUT_NAMES), "graph_version": GRAPH_VERSION,
            "torch": torch.__version__, **extra}


def export_openvino(model_path: str | Path, out_dir: str | Path, *, int8: bool = False,
                    calibration_data: str | Path | None = None, subset: int = CALIBRATION_SUBSET) -> Path:
    """OpenVINO IR (``model.xml``/``.bin``) + ``linewatch.json`` in ``out_dir``; INT8 via NNCF when asked.

    INT8 ranges come from the model's own good training images (``calibration_data``: the folder it
    was trained on, MVTec layout or plain). Their names and sizes are hashed as training does; a
    different folder is used but reported (``calibration.matches_training`` false). The INT8 graph's
    fidelity to fp32 on good images (:func:`fidelity`) is printed and kept as ``int8_fidelity``: only good
    images exist at export time, and INT8 moved image AUROC on the shared sets.
    """
    import openvino as ov

    if int8 and calibration_data is None:
        raise ExportError("--int8 needs --calibration-data DIR: the model's good training images")
    model = AnomalyModel.load(model_path, device="cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_graph(model, out_dir / "graph.onnx")
    ov_model = ov.Core().read_model(str(onnx_path))
    extra: dict[str, Any] = {}
    checked: list[np.ndarray] = []
    if int8:
        assert calibration_data is not None
        ov_model, extra["calibration"], checked = _quantize(model, ov_model, Path(calibration_data), subset)
    ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
    if checked:
        extra["int8_fidelity"] = _int8_fidelity(model, onnx_path, out_dir / "model.xml", checked)
    onnx_path.unlink()
    info = export_info(model, "int8" if int8 else "fp32", format="openvino", **extra)
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=1))
    return out_dir


def _quantize(model: AnomalyModel, ov_model: Any, data_dir: Path, subset: int
              ) -> tuple[Any, dict[str, Any], list[np.ndarray]]:
    """NNCF post-training INT8 of ``ov_model`` on the pre-processed good images of ``data_dir``.

    Also returns the good images the INT8 graph's fidelity to fp32 is measured on (at most
    FIDELITY_IMAGES): ones beyond the calibration subset where the folder has them, else every 5th
    calibration image (the ranges are per tensor over all of them, so one image weighs little).
    """
    from linewatch.common.images import list_train_good, load_rgb

    records = list_train_good(data_dir)
    digest = hashlib.sha256()
    for record in records:  # the training set's identity, as detector/model/training/train.py computes it
        digest.update(f"{record.path.name}|{record.path.stat().st_size}\n".encode())
    trained_on = str(model.metadata.training.get("data_sha256", ""))
    matches = digest.hexdigest() == trained_on
    if not matches:
        print(f"export: warning: {data_dir} is not the set this model was trained on (data_sha256 differs); "
              "calibrating on it anyway", file=sys.stderr)
    images = [load_rgb(r.path) for r in records[:subset]]
    quantized = quantize_graph(model, ov_model, images)
    spare = records[subset:]
    checked = [load_rgb(r.path) for r in spare[::max(1, len(spare) // FIDELITY_IMAGES)][:FIDELITY_IMAGES]]
    return quantized, {"images": len(images), "folder": str(data_dir), "data_sha256": digest.hexdigest(),
                       "matches_training": matches, "fidelity_on_uncalibrated_images": bool(checked)
                       }, checked or images[::5][:FIDELITY_IMAGES]


def _int8_fidelity(model: AnomalyModel, fp32_graph: Path, int8_xml: Path, good: Sequence[np.ndarray]
                   ) -> dict[str, Any]:
    """:func:`fidelity` of the INT8 graph to the fp32 graph on good images, printed for the user (stderr)."""
    from linewatch.detector.model.backends.graph import GraphModel
    from linewatch.detector.model.backends.runners import openvino_runner

    def on(path: Path, precision: str) -> GraphModel:
        runner = openvino_runner(path, torch.get_num_threads(), "cpu", precision)
        return GraphModel(model.model, model.metadata, model.model_version, torch.device("cpu")).attach(
            runner, "openvino", precision)

    measured = fidelity(on(fp32_graph, "fp32"), on(int8_xml, "int8"), good)
    print(f"export: INT8 vs fp32 on {measured['images']} good images: image-score "
          f"rank correlation {measured['spearman']:.3f}, normalised score moved by up to "
          f"{measured['max_normalised_shift']:.3f} (median {measured['median_normalised_shift']:.3f}; 0.5 is the "
          f"threshold), same verdict on {100 * measured['same_verdict']:.0f}%. {INT8_RISK}", file=sys.stderr)
    return measured


@dataclass(frozen=True)
class Int8Options:
    """Which parts of the graph NNCF quantizes and how (the levers benchmarks/int8_accuracy.py compares).

    ``scope``: "backbones" (teacher and student) or "teacher" (the student stays fp32);
    ``fp32_stems``: keep each backbone's first convolution fp32 (it sees raw pixels);
    ``fp32_first_block``: keep each backbone's first block (a depthwise convolution and its projection, at full
    resolution) fp32 too: NNCF's accuracy-controlled quantization returned exactly these two operations of the
    teacher to fp32 on both mvtec3d_tire models, which restored pixel AUROC parity there;
    ``preset``: "mixed" (asymmetric activations) or "performance" (symmetric);
    ``smooth_quant_conv``: SmoothQuant alpha for convolutions (negative: off);
    ``widest_ranges``: activation ranges from the min/max over all calibration images (not averaged
    per image): an anomaly's features are outliers, and clipping them hides it;
    ``fp32_patterns``: further node-name regexes kept fp32 (e.g. ``.*_blocks\\.[0-2]/.*``).
    """

    # the default was chosen on the shared sets' dev halves (benchmarks/results/model_speed.md): of the
    # levers tried it moved AUROC least and kept the normalised scores of good images closest to fp32
    scope: str = "teacher"
    fp32_stems: bool = True
    fp32_first_block: bool = True
    preset: str = "mixed"
    fast_bias_correction: bool = True
    smooth_quant_conv: float = -1.0
    widest_ranges: bool = False
    fp32_patterns: tuple[str, ...] = ()


def quantize_graph(model: AnomalyModel, ov_model: Any, images: Sequence[np.ndarray],
                   options: Int8Options = Int8Options()) -> Any:
    """NNCF INT8 of ``ov_model`` (an exported :class:`ScoredGraph`), ranges from ``images``; the head stays fp32
    and, by default, the student and both stems too (:class:`Int8Options`)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    items = list(calibration_items(model, images))
    dataset = nncf.Dataset(items)
    # never the head: it takes small differences of normalised teacher and student features, and 8-bit
    # inputs to it turned every map into quantization noise (tiny model: maps off by 60% of range)
    patterns = [".*/student/.*"] if options.scope == "teacher" else []
    patterns += [".*_conv_stem.*"] if options.fp32_stems else []
    patterns += [r".*_blocks\.0/.*"] if options.fp32_first_block else []
    patterns += list(options.fp32_patterns)
    scope = nncf.IgnoredScope(types=list(HEAD_OP_TYPES), patterns=patterns, validate=False)
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=options.smooth_quant_conv, matmul=-1))
    if options.widest_ranges:
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    preset = nncf.QuantizationPreset.PERFORMANCE if options.preset == "performance" else nncf.QuantizationPreset.MIXED
    # SmoothQuant runs only in NNCF's transformer pipeline; this graph has no transformer ops it would treat apart
    model_type = nncf.ModelType.TRANSFORMER if options.smooth_quant_conv >= 0 else None
    return nncf.quantize(ov_model, dataset, subset_size=len(items), preset=preset, ignored_scope=scope,
                         fast_bias_correction=options.fast_bias_correction, model_type=model_type,
                         advanced_parameters=advanced)


def calibration_items(model: AnomalyModel, images: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """One graph input per image (per tile of a tiled model: what the graph sees), pre-processed by the
    model's own ``preprocess``."""
    with torch.inference_mode():
        for image in (tile for whole in images for tile in cut_tiles(whole, model.metadata.tiling)):
            pixels = model.model.preprocess(torch.from_numpy(np.ascontiguousarray(image))[None])
            yield {"pixels": pixels.numpy(), "thresholds": np.array([model.image_threshold], np.float32),
                   "masks": np.ones((1, model.image_size, model.image_size), np.float32)}


def fidelity(reference: Any, quantized: Any, images: Sequence[np.ndarray]) -> dict[str, float]:
    """How closely ``quantized`` follows ``reference`` (both InferenceModels) on good images ``images``.

    Only good images exist at export time, so this is what can be measured there: the rank agreement of
    the image scores (Spearman), the largest and median change of the normalised score (0.5 is the
    threshold), and the share of images with the same verdict.
    """
    ref, got = [], []
    for start in range(0, len(images), 16):
        batch = list(images[start:start + 16])
        ref.append(reference.predict(batch))
        got.append(quantized.predict(batch))
    ref_scores = np.concatenate([p.image_scores for p in ref])
    got_scores = np.concatenate([p.image_scores for p in got])
    shift = np.abs(np.concatenate([p.normalised_scores for p in got])
                   - np.concatenate([p.normalised_scores for p in ref]))
    same = np.concatenate([p.anomalous for p in got]) == np.concatenate([p.anomalous for p in ref])
    return {"images": len(images), "spearman": round(rank_correlation(ref_scores, got_scores), 4),
            "max_normalised_shift": round(float(shift.max()), 4),
            "median_normalised_shift": round(float(np.median(shift)), 4),
            "same_verdict": round(float(same.mean()), 4)}

