"""Accuracy of STFPM on an MVTec-layout data set (default: magnetic_tile): train, then evaluate.

Prints and appends one JSON line per run to ``--log`` with image AUROC, pooled pixel AUROC (maps resized
to each image's own size, as MVTec does) and per-defect-type AUROCs (each type against the good images).

    nice -n 10 .venv/bin/python benchmarks/model_accuracy.py --epochs 100 --log runs/acc.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from detector.data import list_test, list_train_good, load_mask, load_rgb
from detector.inference import AnomalyModel
from detector.metrics import PixelAccumulator, auroc, quantile_edges
from detector.train import TrainConfig, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"


def evaluate(model: AnomalyModel, data: Path) -> dict[str, object]:
    """Image/pixel AUROC overall and per defect type."""
    records = list_test(data)
    scores = np.zeros(len(records), np.float32)
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i in range(0, len(records), 16):
        chunk = records[i:i + 16]
        images = [load_rgb(r.path) for r in chunk]
        pred = model.predict(images)
        scores[i:i + len(chunk)] = pred.image_scores
        for r, img, m in zip(chunk, images, pred.maps, strict=True):
            full = model.map_to_image(m, img.shape[:2])
            maps.append(full)
            masks.append(load_mask(r, img.shape[:2]))
    edges = quantile_edges(np.concatenate([m[::4, ::4].ravel() for m in maps]), 20000)
    labels = np.array([r.label == "defect" for r in records])
    types = sorted({r.defect_type for r in records if r.label == "defect"})
    result: dict[str, object] = {"image_auroc": auroc(scores, labels)}
    pooled = PixelAccumulator(edges)
    per_type: dict[str, dict[str, float]] = {}
    good_acc = PixelAccumulator(edges)
    for r, m, k in zip(records, maps, masks, strict=True):
        pooled.add(m, k)
        if r.label == "good":
            good_acc.add(m, k)
    for kind in types:
        pick = np.array([r.defect_type in ("good", kind) for r in records])
        acc = good_acc.copy()
        for r, m, k in zip(records, maps, masks, strict=True):
            if r.defect_type == kind:
                acc.add(m, k)
        per_type[kind] = {"image_auroc": auroc(scores[pick], labels[pick]), "pixel_auroc": acc.auroc(),
                          "n": int(sum(r.defect_type == kind for r in records))}
    result["pixel_auroc"] = pooled.auroc()
    result["aupro"] = pooled.aupro()
    result["per_type"] = per_type
    return result


def main() -> None:
    """Parse settings, train, evaluate, log."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--taps", default=None, help="comma-separated tap indices")
    parser.add_argument("--resize-mode", default=TrainConfig.resize_mode)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=TrainConfig.bf16)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=TrainConfig.channels_last)
    parser.add_argument("--tag", default="", help="free-form run name stored in the log line")
    parser.add_argument("--limit-train", type=int, default=0, help="use only the first N train images (cheap runs)")
    parser.add_argument("--teacher-weights", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy-model.safetensors"))
    parser.add_argument("--log", type=Path, default=Path("runs/model_accuracy.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(backbone=args.backbone, epochs=args.epochs, image_size=args.image_size, lr=args.lr,
                         batch_size=args.batch_size, resize_mode=args.resize_mode, bf16=args.bf16,
                         channels_last=args.channels_last,
                         taps=tuple(int(t) for t in args.taps.split(",")) if args.taps else None,
                         teacher_weights=args.teacher_weights)
    records = list_train_good(args.data)
    if args.limit_train:
        records = records[:: max(1, len(records) // args.limit_train)][: args.limit_train]
    started = time.time()
    result = train(config, records, args.out, progress=True)
    model = AnomalyModel.load(args.out, "auto")
    metrics = evaluate(model, args.data)
    line = {"tag": args.tag, "date": time.strftime("%Y-%m-%d %H:%M"), "config": config.to_dict(),
            "n_train_images": len(records),
            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "train_seconds": round(result.seconds, 1), "train_images_per_second": round(result.images_per_second, 2),
            "total_seconds": round(time.time() - started, 1), **metrics,
            "history": [{k: round(v, 5) for k, v in h.items()} for h in result.history]}
    print(json.dumps(line, indent=1))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as handle:
        handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
