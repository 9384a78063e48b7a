"""What-if: the network pads with the image's own edge pixels instead of zeros. Does the border effect go?

Teacher and student of the lite backbones pad every convolution the way TensorFlow does ("SAME", with zeros:
detector/model/stfpm/efficientnet_lite.py). At the map's edge the features then mix in a flat mid-grey frame
that no part has, and tiling_accuracy.md measured the good images that score highest lighting up there (fine:
0.20-0.22 of their top cells within 2 cells of the edge, where a border-blind model gives 0.16; tiled's worst
tile 0.26-0.54). Padding with the edge pixels (``replicate``) or their mirror (``reflect``) removes that frame
at its cause; it changes the ImageNet teacher's features only near the edge, and the student learns them.

Trains one recipe on one set with the product's own training (same seed, same held-out images) under the
padding asked for, then evaluates the dev half (``--halves dev,test`` after a choice) with the product's
evaluation and tiling_accuracy.py's border figures:

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/padding_whatif.py --set bsdata --recipe fine --pad replicate
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from tiling_accuracy import half_folder, row

import common
from linewatch.common.images import list_train_good
from linewatch.detector.model.stfpm.efficientnet_lite import SameConv2d
from linewatch.detector.model.training.recipes import RECIPES
from linewatch.detector.model.training.train import TrainConfig, train

PADS = ("zeros", "replicate", "reflect")


def pad_with(mode: str) -> None:
    """Make every SameConv2d of this process pad with ``mode`` (TensorFlow's SAME amounts, another fill)."""
    if mode == "zeros":
        return

    def forward(self: SameConv2d, x: torch.Tensor) -> torch.Tensor:
        pads = self.same_padding(x)
        if any(pads):
            x = F.pad(x, pads, mode=mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    SameConv2d.forward = forward  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="bsdata")
    parser.add_argument("--recipe", choices=tuple(RECIPES), required=True)
    parser.add_argument("--pad", choices=PADS, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--halves", default="dev")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=common.RUNS / "padding")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pad_with(args.pad)
    name = f"{args.recipe}-{args.pad}-seed{args.seed}"
    out = args.runs / args.set / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        started_cpu = time.process_time()
        config = RECIPES[args.recipe].config(TrainConfig(seed=args.seed))
        train(config, list_train_good(common.dataset(args.set)), out, progress=False,
              notes={"recipe": args.recipe, "padding": args.pad})
        print(f"trained {out} in {time.process_time() - started_cpu:.0f} s of CPU", flush=True)
    for half in args.halves.split(","):
        folder = half_folder(args.set, half, args.runs / "halves")
        figures = {**row(name, out, folder, args.runs / "eval" / args.set / half), "half": half,
                   "set": args.set, "pad": args.pad, "machine": common.machine_line()}
        (out.with_suffix(f".{half}.json")).write_text(json.dumps(figures, indent=1) + "\n")
        print(json.dumps({k: figures[k] for k in ("set", "model", "half", "image_auroc", "pixel_auroc", "aupro",
                                                  "recall_at_1pct", "border")}), flush=True)


if __name__ == "__main__":
    main()
