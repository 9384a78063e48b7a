"""How many training epochs fit in the demo's training budget on this machine.

Trains the default model (``TrainConfig()`` defaults, CPU) for a few epochs on the data set the
demo uses and splits the wall time into fixed cost (loading, teacher features, calibration,
checkpoint) and time per epoch, then prints the epochs that fit in ``--budget-s``.

    nice -n 10 .venv/bin/python benchmarks/demo_training_budget.py --epochs 2 --budget-s 240
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import common
from linewatch.common.images import list_train_good
from linewatch.detector.model.training.train import TrainConfig, train

DATA = common.dataset("magnetic_tile")


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="default: magnetic_tile in LINEWATCH_DATASETS")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=0, help="0: every training image")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = list_train_good(args.data)
    if args.max_images:
        records = records[: args.max_images]
    config = replace(TrainConfig(), epochs=args.epochs, device="cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, records, Path(tmp) / "model.safetensors", progress=False)
    total = time.perf_counter() - started
    per_epoch = result.seconds / args.epochs
    fixed = total - result.seconds
    fits = int(max(0.0, args.budget_s - fixed) // per_epoch)
    print(json.dumps({
        "machine": common.machine(), "images": len(records), "config": config.to_dict(), "threads": args.threads,
        "load_avg_1m": os.getloadavg()[0], "total_s": round(total, 1), "fixed_s": round(fixed, 1),
        "per_epoch_s": round(per_epoch, 1), "epochs_in_budget": fits, "budget_s": args.budget_s,
        "val_loss": [round(h["val_loss"], 4) for h in result.history],
    }))


if __name__ == "__main__":
    main()
