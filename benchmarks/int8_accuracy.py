"""INT8 (NNCF post-training quantization, OpenVINO) against fp32 on every shared set: which levers keep accuracy.

Per set, a cheap model of the DEFAULT architecture (efficientnet_lite0, default taps, default 192 px) is
trained on every 4th good training image (at most ``--max-train``); its OpenVINO fp32 graph is the
reference (it equals torch to 4 decimals, tests/backends/test_backends_realdata.py). Every lever is an
NNCF configuration (ignored scope, preset, bias correction, SmoothQuant for convolutions, calibration
size; the list: ``benchmarks/sweeps/int8_accuracy.toml``); each is quantized once and evaluated on both
halves of the set's test images (benchmarks/splits/<set>.json): the lever is CHOSEN on the dev halves and
REPORTED on the test halves. Beside AUROC, each lever's fidelity to fp32 on held-out good training images
(never used for training or calibration) is recorded: what ``linewatch export --int8`` can measure without defects.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/int8_accuracy.py --out /tmp/int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import common
from linewatch.common.images import ImageRecord, list_test, list_train_good, load_mask, load_rgb
from linewatch.detector.evaluation.metrics import PixelAccumulator, auroc, quantile_edges
from linewatch.detector.model.backends.graph import GraphModel
from linewatch.detector.model.backends.runners import openvino_runner
from linewatch.detector.model.export import Int8Options, export_graph, fidelity, quantize_graph
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.training.train import TrainConfig, train

ALL = "all"  # calibrate on up to 300 good training images (not the held-out ones), not just the training subset


def load_levers(sweep: dict[str, Any]) -> dict[str, tuple[Int8Options, str]]:
    """Lever name -> (options, calibration source) from benchmarks/sweeps/int8_accuracy.toml, in file order."""
    bases = sweep.get("bases", {})
    levers = {}
    for lever in sweep["levers"]:
        fields = {**bases.get(lever.get("base", ""), {}), **lever.get("options", {})}
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        levers[lever["name"]] = (Int8Options(**fields), lever["calibration"])
    return levers


LEVERS: dict[str, tuple[Int8Options, str]] = load_levers(common.load_sweep("int8_accuracy"))


def graph_model(base: AnomalyModel, xml: Path, precision: str) -> GraphModel:
    """``base`` with its network and head run by the OpenVINO graph at ``xml``."""
    model = GraphModel(base.model, base.metadata, base.model_version, torch.device("cpu"))
    return model.attach(openvino_runner(xml, torch.get_num_threads(), "cpu", precision), "openvino", precision)


def predictions(model: Any, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image scores and full-resolution maps."""
    scores, maps = [], []
    for start in range(0, len(images), 16):
        batch = images[start:start + 16]
        prediction = model.predict(batch)
        scores.append(prediction.image_scores)
        maps += [model.map_to_image(m, img.shape[:2]) for m, img in zip(prediction.maps, batch, strict=True)]
    return np.concatenate(scores), maps


def halves(name: str, data: Path) -> dict[str, list[ImageRecord]]:
    """The set's dev and test halves of its test images."""
    split = json.loads((common.SPLITS / f"{name}.json").read_text())
    by_path = {str(r.path.relative_to(data)): r for r in list_test(data)}
    return {half: [by_path[p] for p in split[half]] for half in ("dev", "test")}


def metrics(scores: np.ndarray, maps: list[np.ndarray], records: list[ImageRecord], edges: np.ndarray
            ) -> dict[str, float]:
    accumulator = PixelAccumulator(edges)
    for record, m in zip(records, maps, strict=True):
        accumulator.add(m, load_mask(record, m.shape))
    labels = np.array([r.label == "defect" for r in records])
    return {"image_auroc": round(auroc(scores, labels), 4), "pixel_auroc": round(accumulator.auroc(), 4)}


def run_set(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = common.dataset(name)
    good = list_train_good(data)
    train_records, rest = good[::4][:args.max_train], [r for i, r in enumerate(good) if i % 4]
    held = {r.path for r in rest[::max(1, len(rest) // args.held_out)][:args.held_out]}
    checkpoint = work / f"{name}.safetensors"
    if not checkpoint.exists():
        config = TrainConfig(epochs=args.epochs, batch_size=16, device="cpu")
        train(config, train_records, checkpoint, progress=False)
    base = AnomalyModel.load(checkpoint, device="cpu")
    onnx_path = export_graph(base, work / f"{name}.onnx")
    import openvino as ov

    fp32_xml = work / f"{name}-fp32.xml"
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(fp32_xml), compress_to_fp16=False)
    held_out = [load_rgb(p) for p in sorted(held)]
    records = halves(name, data)
    images = {h: [load_rgb(r.path) for r in rs] for h, rs in records.items()}
    fp32 = graph_model(base, fp32_xml, "fp32")
    reference = {h: predictions(fp32, images[h]) for h in records}
    edges = {h: quantile_edges(np.concatenate([m.ravel()[::7] for m in reference[h][1]]), 4096) for h in records}
    out: dict[str, Any] = {"train_images": len(train_records), "held_out_good": len(held_out),
                           "image_size": base.image_size, "taps": list(base.metadata.taps),
                           "fp32": {h: metrics(*reference[h], records[h], edges[h]) for h in records}}
    print(name, "fp32", out["fp32"], flush=True)
    calibration_all = [load_rgb(r.path) for r in good if r.path not in held][:300]
    calibration_train = [load_rgb(r.path) for r in train_records]
    for lever, (options, source) in LEVERS.items():
        start = time.perf_counter()
        calibration = calibration_all if source == ALL else calibration_train
        try:
            quantized = quantize_graph(base, ov.Core().read_model(str(onnx_path)), calibration, options)
        except Exception as exc:  # a lever NNCF refuses for this graph is reported, not fatal
            out[lever] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(name, lever, out[lever], flush=True)
            continue
        xml = work / f"{name}-int8-{os.getpid()}.xml"  # runs of other levers may share the work folder
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        int8 = graph_model(base, xml, "int8")
        row: dict[str, Any] = {"quantize_s": round(time.perf_counter() - start, 1),
                               "fidelity": fidelity(fp32, int8, held_out)}
        for h in records:
            row[h] = metrics(*predictions(int8, images[h]), records[h], edges[h])
            row[h]["image_drop"] = round(out["fp32"][h]["image_auroc"] - row[h]["image_auroc"], 4)
            row[h]["pixel_drop"] = round(out["fp32"][h]["pixel_auroc"] - row[h]["pixel_auroc"], 4)
        out[lever] = row
        print(name, lever, row, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every_set = ",".join(sorted(p.name for p in common.datasets_dir().glob("*") if p.is_dir()))
    parser.add_argument("--sets", default=every_set,
                        help="comma-separated set names (default: every set in LINEWATCH_DATASETS)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-train", type=int, default=96)
    parser.add_argument("--held-out", type=int, default=48, help="good training images for the fidelity measure")
    parser.add_argument("--levers", help="semicolon-separated subset of the lever names")
    parser.add_argument("--work", default="/tmp/int8-accuracy", help="checkpoints are cached here")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.levers:
        keep = args.levers.split(";")
        unknown = set(keep) - set(LEVERS)
        if unknown:
            parser.error(f"unknown levers: {sorted(unknown)}")
        for name in list(LEVERS):
            if name not in keep:
                del LEVERS[name]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": common.machine(),
                              "load_before": os.getloadavg(), "sets": {}}
    for name in args.sets.split(","):
        report["sets"][name] = run_set(name, args, work)
        Path(args.out).write_text(json.dumps(report, indent=1))
    report["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
