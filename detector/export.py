"""Export a checkpoint to ONNX or TorchScript: uint8 NHWC frames in; scores, normalised scores, verdicts
and maps out.

Pre-processing (resize to the model size, input scaling), the map fusion, the image score rule and the
calibration (threshold, normalisation) are inside the graph (the traced module is
:class:`~linewatch.detector.stfpm.calibrated.CalibratedSTFPM`), so a runtime only feeds decoded frames.
The batch axis is dynamic; frame height and width are dynamic too (the graph resizes any size to the
model size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from linewatch.detector.inference import AnomalyModel

FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("scores", "normalised_scores", "anomalous", "maps")


class ExportError(ValueError):
    """The export could not be written; the message says why."""


def export_model(model_path: str | Path, out: str | Path, fmt: str = "onnx", opset: int = 18) -> Path:
    """Write ``out`` in ``fmt`` from the checkpoint at ``model_path``; returns ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    loaded = AnomalyModel.load(model_path, device="cpu")
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
