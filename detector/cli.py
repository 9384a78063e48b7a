"""Subcommands of ``linewatch`` that belong to the detector package (train, predict, export).

Each ``register_*`` adds one subcommand; handlers import torch lazily. Expected failures (bad data, bad
checkpoint, missing weights, absent device) are :class:`~linewatch.errors.LinewatchError` subclasses, which
``linewatch`` turns into one line on stderr and their exit status (linewatch/errors.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from linewatch.detector.model.vocabulary import Backbone, Backend, RecipeName
from linewatch.errors import ConfigurationError


def register(subparsers: Any) -> None:
    """Add this package's subcommands to the ``linewatch`` parser."""
    from linewatch.detector.evaluation.cli import register_evaluate
    from linewatch.detector.model.backends.cli import register_bench
    from linewatch.detector.registry import cli as registry_cli
    from linewatch.detector.service.cli import register_detect

    register_train(subparsers)
    register_recipes(subparsers)
    register_calibrate(subparsers)
    register_predict(subparsers)
    register_export(subparsers)
    register_evaluate(subparsers)
    register_detect(subparsers)
    register_bench(subparsers)
    registry_cli.register(subparsers)


def register_train(subparsers: Any) -> None:
    """``linewatch train DATA_DIR --out MODEL``."""
    p = subparsers.add_parser("train", help="train and calibrate an STFPM model on good images")
    p.add_argument("data_dir", type=Path, nargs="?", help="MVTec-layout folder or a folder of good images")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--recipe", choices=RecipeName.values(), default=None,
                   help="auto (the default) trains the candidate recipes and keeps the one that best finds synthetic "
                        "defects drawn on held-out good images; or name one (`linewatch recipes` lists them). "
                        "--backbone, --taps, --image-size or --tap-weights without --recipe train that geometry alone")
    p.add_argument("--select-on", type=Path, default=None, metavar="DIR",
                   help="--recipe auto: choose on the real labelled defects of this MVTec-layout folder instead")
    p.add_argument("--backbone", default=None, choices=Backbone.values())
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="constant, or warm-up for one epoch then cosine decay (default: the model default's)")
    p.add_argument("--patience", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation loss; 0 runs every epoch "
                        "(default: the model default's)")
    p.add_argument("--refresh-bn-stats", action="store_true", default=None,
                   help="recompute the student's batch-norm statistics before each validation (off by default)")
    p.add_argument("--taps", type=_taps, default=None, metavar="T1,T2,...",
                   help="tapped blocks (lite) or layers (resnet) of the backbone (default: its stride-4/8/16 ones, a "
                        "fine map); e.g. --taps 10,14 --image-size 128 is the previous 8x8 default, which finds "
                        "more of the large low-contrast defects of textures (benchmarks/results/model_accuracy.md)")
    p.add_argument("--tap-weights", type=_weights, default=None, metavar="W1,W2,...",
                   help="exponents of the tapped layers' maps in the fused product, one per tap (default: the "
                        "model default's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-weights", type=Path, default=None, help="local ImageNet state dict of the backbone")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--synthetic", action="store_true", help="train a tiny model on synthetic parts (no data needed)")
    p.add_argument("--resume", action="store_true", help="continue from the last finished epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _taps(text: str) -> tuple[int, ...]:
    """``"10,14"`` -> (10, 14), for argparse."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block numbers, got {text!r}") from None


def _weights(text: str) -> tuple[float, ...]:
    """``"1,1,2"`` -> (1.0, 1.0, 2.0), for argparse."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from linewatch.common.images import list_train_good
    from linewatch.detector.model.training.precisions import add_native_calibrations
    from linewatch.detector.model.training.recipe_choice import train_auto
    from linewatch.detector.model.training.recipes import AUTO, RECIPES
    from linewatch.detector.model.training.train import TrainConfig, train, train_synthetic_model

    if args.synthetic:
        path = train_synthetic_model(args.out, **{k: v for k, v in (("epochs", args.epochs),
                                                                    ("image_size", args.image_size),
                                                                    ("seed", args.seed)) if v is not None})
        print(f"wrote {path}")
        return 0
    if args.data_dir is None:
        raise ConfigurationError("DATA_DIR is required unless --synthetic is given")
    recipe = _recipe(args)  # the flags first: a bad combination fails before the data is read
    records = list_train_good(args.data_dir)
    config = TrainConfig(seed=args.seed, teacher_weights=args.teacher_weights, device=args.device)
    if recipe in RECIPES:
        config = RECIPES[recipe].config(config)
    overrides = {"backbone": args.backbone, "epochs": args.epochs, "image_size": args.image_size,
                 "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": args.lr_schedule,
                 "refresh_bn_stats": args.refresh_bn_stats, "patience": args.patience, "taps": args.taps,
                 "tap_weights": args.tap_weights}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if recipe == AUTO:
        result, recipe = train_auto(config, records, args.out, progress=not args.quiet, select_on=args.select_on)
        _print_selection(result.path)
    else:
        result = train(config, records, args.out, progress=not args.quiet, resume=args.resume,
                       notes={"recipe": recipe})
    # on a CPU with native bf16, thresholds at bf16 too, so `--backend auto` may run it (precisions.py)
    added = add_native_calibrations(result.path, records, config)
    print(f"wrote {result.path} (recipe {recipe}): best epoch {result.best_epoch}, "
          f"val loss {result.best_val_loss:.5f}, image threshold {result.calibration.image_threshold:.5f}, "
          f"{result.images_per_second:.1f} images/s" + (f"; also calibrated at {', '.join(added)}" if added else ""))
    return 0


GEOMETRY_FLAGS = ("backbone", "taps", "image_size", "tap_weights")


def _recipe(args: argparse.Namespace) -> str:
    """The recipe to train: ``--recipe``; without it, ``custom`` when geometry flags are given, else ``auto``."""
    auto = RecipeName.AUTO.value
    given = [f"--{name.replace('_', '-')}" for name in GEOMETRY_FLAGS if getattr(args, name) is not None]
    if args.recipe == auto and given:
        raise ConfigurationError(f"--recipe auto chooses the geometry itself; drop {', '.join(given)} or name a recipe")
    if args.select_on is not None and (args.recipe or (auto if not given else "custom")) != auto:
        raise ConfigurationError("--select-on chooses among recipes: it goes with --recipe auto")
    if args.resume and (args.recipe or (auto if not given else "custom")) == auto:
        raise ConfigurationError("--resume continues one recipe's run: name the recipe (--recipe fine|coarse)")
    return str(args.recipe or ("custom" if given else auto))


def _print_selection(path: Path) -> None:
    """What ``auto`` measured and chose, one line per candidate."""
    from linewatch.detector.model.checkpoint import load_checkpoint

    selection = load_checkpoint(path)[1]["training"]["selection"]
    print(f"recipe selection on {selection['images']} images ({selection['defects']} defects, {selection['on']}): "
          f"{selection['rule']}")
    for name, figures in selection["candidates"].items():
        mark = "  <- chosen" if name == selection["chosen"] else ""
        print(f"  {name}: score {figures['score']:.4f} (image AUROC {figures['image_auroc']:.4f}, by kind "
              f"{figures['image_auroc_by_kind']}, median over kinds {figures['image_auroc_kinds_median']:.4f}; "
              f"pixel AUROC {figures['pixel_auroc']:.4f}; AUPRO {figures['aupro']:.4f}; trained in "
              f"{figures['train_seconds']:.0f}s){mark}")


def register_recipes(subparsers: Any) -> None:
    """``linewatch recipes``: the training recipes and what each suits."""
    p = subparsers.add_parser("recipes", help="list the training recipes (linewatch train --recipe NAME)")
    p.set_defaults(func=_recipes)


def _recipes(args: argparse.Namespace) -> int:
    from linewatch.detector.model.training.recipes import describe

    print(describe())
    return 0


def register_calibrate(subparsers: Any) -> None:
    """``linewatch calibrate --model MODEL GOOD_DIR --out MODEL2`` (or ``--print-threshold``)."""
    p = subparsers.add_parser("calibrate", help="recalibrate a model's thresholds from a folder of good frames")
    p.add_argument("good_dir", type=Path, help="folder of good images (or an MVTec folder: its train/good)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, help="checkpoint to write with the new calibration")
    p.add_argument("--target-false-alarm-rate", type=float, default=None,
                   help="image false-alarm rate the threshold allows (default: the model's own, 0.01)")
    p.add_argument("--print-threshold", metavar="CAMERA", default=None,
                   help="print the threshold as LINEWATCH_CAMERA_THRESHOLDS JSON for this camera instead")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: score the frames with OpenVINO bf16 and store the thresholds as the model's bf16 ones "
                        "(a CPU with native bf16; `--backend auto` then may run the model at bf16)")
    p.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    import json

    from linewatch.detector.model.training.recalibrate import recalibrate, write_recalibrated

    if (args.out is None) == (args.print_threshold is None):
        raise ConfigurationError("give exactly one of --out MODEL2 and --print-threshold CAMERA")
    calibration = recalibrate(args.model, args.good_dir, args.target_false_alarm_rate, args.device, args.precision)
    low, high = calibration.threshold_interval or (float("nan"), float("nan"))
    summary = (f"{args.precision} image threshold {calibration.image_threshold:.5f} (90% interval "
               f"{low:.5f}..{high:.5f}) from {int(calibration.score_stats['n'])} good images")
    if args.print_threshold is not None:
        print(summary, file=sys.stderr)
        print(json.dumps({args.print_threshold: calibration.image_threshold}))
        return 0
    print(f"wrote {write_recalibrated(args.model, calibration, args.out, args.good_dir, args.precision)}: {summary}")
    return 0


def register_predict(subparsers: Any) -> None:
    """``linewatch predict --model MODEL IMAGE_OR_DIR... --out DIR``."""
    p = subparsers.add_parser("predict", help="score images: heatmap overlays and one JSON line per image")
    p.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for overlays and predictions.jsonl")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", choices=Backend.values(), default=Backend.TORCH.value,
                   help="model runtime (auto: the fastest measured here); an export folder implies openvino")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from linewatch.detector.evaluation.predict import predict_files
    from linewatch.detector.model.backends import load_model

    model = load_model(args.model, args.backend, args.device)
    lines = predict_files(model, args.inputs, args.out, stream=sys.stdout)
    return 1 if any("error" in line for line in lines) else 0


def register_export(subparsers: Any) -> None:
    """``linewatch export --model MODEL --format onnx|torchscript --out FILE``."""
    p = subparsers.add_parser("export", help="export a model (pre-processing and map fusion included)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--format", dest="fmt", choices=["onnx", "torchscript", "openvino"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help="file (onnx, torchscript) or folder (openvino)")
    p.add_argument("--int8", action="store_true",
                   help="openvino: INT8 post-training quantization (NNCF) of the teacher; prints and stores its "
                   "fidelity to fp32 on held-out good images (check your own defects with evaluate)")
    p.add_argument("--calibration-data", type=Path, default=None, metavar="DIR",
                   help="the model's good training images (MVTec folder or plain), for --int8")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from linewatch.detector.model.export import export_model, export_openvino

    if args.int8 and args.calibration_data is None:
        raise ConfigurationError("--int8 needs --calibration-data DIR: the model's good training images")
    if args.fmt == "openvino":
        print(f"wrote {export_openvino(args.model, args.out, int8=args.int8, calibration_data=args.calibration_data)}")
        return 0
    if args.int8:
        raise ConfigurationError("--int8 is for --format openvino")
    print(f"wrote {export_model(args.model, args.out, args.fmt)}")
    return 0
