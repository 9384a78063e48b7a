"""Accuracy-controlled INT8 (NNCF ``quantize_with_accuracy_control``) for one set's checkpoint: a lead, not a default.

Only good images exist at export time, so the controlled "accuracy" is fidelity: the mean, over held-out
good images, of the correlation between the INT8 and fp32 graphs' log anomaly maps. NNCF quantizes with
the export's default scope (teacher only, stems and head fp32), then returns quantized operations to fp32,
most harmful first, until that fidelity is within ``--max-drop`` of fp32's. The result is evaluated like
benchmarks/int8_accuracy.py levers (image and pixel AUROC on the set's dev and test halves).

Needs the work folder of an int8_accuracy.py run (its checkpoint, ONNX graph and fp32 IR):

    .venv/bin/python benchmarks/int8_accuracy.py --sets mvtec3d_tire --epochs 15 --max-train 96 \\
        --levers "teacher only, fp32 stem" --work /tmp/int8-cheap --out /tmp/int8-cheap.json
    .venv/bin/python benchmarks/int8_accuracy_control.py --set mvtec3d_tire --work /tmp/int8-cheap
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import int8_accuracy as lever_sweep
import numpy as np
import torch

import common
from linewatch.common.images import list_train_good, load_rgb
from linewatch.detector.evaluation.metrics import quantile_edges
from linewatch.detector.model.export import HEAD_OP_TYPES, calibration_items
from linewatch.detector.model.inference import AnomalyModel


def map_fidelity(reference: list[np.ndarray], maps: list[np.ndarray]) -> float:
    """Mean correlation of log maps (1.0: the same maps up to scale and offset in the log domain)."""
    logs = [(np.log(np.maximum(a, 1e-12)).ravel(), np.log(np.maximum(b, 1e-12)).ravel())
            for a, b in zip(reference, maps, strict=True)]
    return float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in logs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True)
    parser.add_argument("--work", type=Path, required=True, help="an int8_accuracy.py --work folder")
    parser.add_argument("--max-drop", type=float, default=0.002, help="allowed fidelity drop (absolute)")
    args = parser.parse_args()
    import nncf
    import openvino as ov

    torch.set_num_threads(2)
    data = common.dataset(args.set)
    base = AnomalyModel.load(args.work / f"{args.set}.safetensors", "cpu")
    good = list_train_good(data)
    calibration = list(calibration_items(base, [load_rgb(r.path) for r in good[::4][:96]]))
    # good images the sweep's models never trained on (they train on every 4th)
    validation = list(calibration_items(base, [load_rgb(r.path) for r in good[1::8][:24]]))
    core = ov.Core()
    fp32_graph = core.read_model(str(args.work / f"{args.set}.onnx"))

    def maps_of(compiled: Any, _items: Any = None) -> list[np.ndarray]:
        return [np.asarray(compiled(item)[compiled.output("maps")])[0] for item in validation]

    reference = maps_of(core.compile_model(fp32_graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
    started = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        fp32_graph, nncf.Dataset(calibration), nncf.Dataset(validation),
        validation_fn=lambda compiled, items: map_fidelity(reference, maps_of(compiled, items)),
        max_drop=args.max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(types=list(HEAD_OP_TYPES), patterns=[".*/student/.*", ".*_conv_stem.*"],
                                        validate=False))
    print(f"quantized in {time.perf_counter() - started:.0f} s", flush=True)
    xml = args.work / f"{args.set}-int8-controlled.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    records = lever_sweep.halves(args.set, data)
    fp32 = lever_sweep.graph_model(base, args.work / f"{args.set}-fp32.xml", "fp32")
    int8 = lever_sweep.graph_model(base, xml, "int8")
    for half, half_records in records.items():
        images = [load_rgb(r.path) for r in half_records]
        expected, got = lever_sweep.predictions(fp32, images), lever_sweep.predictions(int8, images)
        edges = quantile_edges(np.concatenate([m.ravel()[::7] for m in expected[1]]), 4096)
        print(half, "fp32", lever_sweep.metrics(*expected, half_records, edges),
              "int8", lever_sweep.metrics(*got, half_records, edges), flush=True)


if __name__ == "__main__":
    main()
