"""``linewatch evaluate --model MODEL DATA_DIR --report OUT_DIR``: metrics.json and report.html."""

from __future__ import annotations

import argparse
from typing import Any

from linewatch.detector.model.vocabulary import Backend


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from linewatch.detector.evaluation.evaluate import evaluate
    from linewatch.detector.model.backends import load_model
    from linewatch.ingest.regions import load_roi_file

    if args.threads:
        torch.set_num_threads(args.threads)
    roi = load_roi_file(args.roi) if args.roi else None  # before the model: a bad file fails fast
    model = load_model(args.model, args.backend, args.device, threads=args.threads)
    metrics = evaluate(model, args.data_dir, args.report, batch_size=args.batch_size, roi=roi)

    def show(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(f"image AUROC {show(metrics['image_auroc'])}  pixel AUROC {show(metrics['pixel_auroc'])}  "
          f"AUPRO {show(metrics['aupro'])}  image F1 {show(metrics['image_f1'])} "
          f"(F1-optimal {show(metrics['image_f1_optimal'])})")
    for kind, row in metrics["per_type"].items():
        print(f"  {kind:<12} n={row['count']:<4} image AUROC {show(row['image_auroc'])}  "
              f"pixel AUROC {show(row['pixel_auroc'])}  AUPRO {show(row['aupro'])}")
    print(f"wrote {args.report}/metrics.json and {args.report}/report.html")
    return 0


def register_evaluate(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a model on an MVTec-layout test split (metrics.json + HTML report)",
        description="Run MODEL on DATA_DIR/test and write metrics.json (image/pixel AUROC, AUPRO, F1, per type) "
                    "and a self-contained report.html to the --report folder.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="MVTec-layout folder (test/<type>/, ground_truth/)")
    parser.add_argument("--model", required=True, help="checkpoint written by `linewatch train`")
    parser.add_argument("--report", required=True, metavar="OUT_DIR", help="folder for metrics.json and report.html")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=_positive, default=16, help="images per inference batch (16)")
    parser.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--backend", choices=Backend.values(), default=Backend.TORCH.value,
                        help="model runtime (auto: the fastest measured here); an export folder implies openvino")
    parser.add_argument("--roi", metavar="FILE", help="regions of interest / ignore masks (YAML or JSON, a camera's "
                        "`roi` shape: units, include, exclude) applied to every test image, to measure their effect")
    parser.set_defaults(func=_evaluate)
