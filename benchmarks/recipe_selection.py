"""Does a ranking of recipes on synthetic defects agree with the ranking that real defects give?

For every shared set and every trained candidate of the accuracy sweep (``benchmarks/model_accuracy.py``,
its ``--runs`` folder), the candidate is scored on what a plant has at training time: the training run's
held-out good images, and synthetic defects drawn on them
(``linewatch.detector.model.training.synthetic_defects``, seeded).
Its selection figures (image AUROC of the synthetic defects against the clean held-out images, pixel AUROC
on the synthetic masks, and their mean, the selection score) are set beside the candidate's real DEV-half
figures from the sweep's cache (mean of image AUROC, pixel AUROC and AUPRO). Per set, the candidate that the
synthetic score picks is compared with the one the real dev defects pick; test halves are not read.

    .venv/bin/python benchmarks/recipe_selection.py --runs runs/accuracy-full --configs today,default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from model_accuracy import CONFIGS, METRICS, RUNS, checkpoint_path, data_sets, validation_images

import common
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.training.recipe_choice import (
    CANDIDATES,
    SEED,
    choose,
    selection_figures,
    synthetic_selection,
)

RECIPE_OF = {"default": "fine", "coarse2map": "coarse"}  # the sweep's configs that train exactly these recipes
REFERENCE = {"today": "previous default (8x8)"}  # shown in the table, not a candidate


def real_dev_score(runs: Path, set_name: str, config: str) -> float | None:
    """The mean of the config's own-rule dev figures (image AUROC, pixel AUROC, AUPRO) from the sweep's cache."""
    cache = checkpoint_path(runs, set_name, config).with_suffix(".eval.json")
    if not cache.is_file():
        return None
    own_rule = CONFIGS[config].variants[0].name
    rows = [r for r in json.loads(cache.read_text()) if r["half"] == "dev" and r["variant"] == own_rule]
    return float(np.mean([rows[0][m] for m in METRICS[:3]])) if rows else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--configs", default="default,coarse2map,today")
    parser.add_argument("--sets", default="")
    parser.add_argument("--max-train", type=int, default=0, help="the protocol the checkpoints were trained with")
    parser.add_argument("--per-image", type=int, default=None,
                        help="synthetic defects per held-out good image (default: the product's rule)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the synthetic defects")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON of every figure (default: RUNS/recipe_selection.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = {k: v for k, v in data_sets().items() if not args.sets or k in args.sets.split(",")}
    rows = []
    for set_name, root in sets.items():
        for config in args.configs.split(","):
            path = checkpoint_path(args.runs, set_name, config)
            if not path.is_file():
                continue
            started = time.perf_counter()
            goods = validation_images(root, CONFIGS[config], args.max_train)
            selection = synthetic_selection(goods, args.per_image, args.seed)
            figures = selection_figures(AnomalyModel.load(path, "cpu"), selection)
            rows.append({"set": set_name, "config": config, "synthetic": figures, "labels": selection.labels,
                         "real_dev": real_dev_score(args.runs, set_name, config),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(f"{set_name}/{config}: synthetic {figures}; real dev {rows[-1]['real_dev']}", flush=True)
    print(agreement(rows))
    print(test_table(rows, args.runs))
    for row in rows:  # JSON: the figures, not every image's score
        row["synthetic"].pop("image_scores", None)
        row.pop("labels")
    out = args.out or args.runs / "recipe_selection.json"
    out.write_text(json.dumps({"machine": common.machine(), "date": time.strftime("%F"),
                               "command": "benchmarks/recipe_selection.py " + " ".join(
                                   f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
                               "rows": rows}, indent=1) + "\n")


def agreement(rows: list[dict[str, Any]]) -> str:
    """Per set: the product's rule applied to the synthetic figures, the real-dev pick, and whether they agree."""
    lines, agree, total = [], 0, 0
    for set_name in sorted({r["set"] for r in rows}):
        mine = {RECIPE_OF[r["config"]]: r for r in rows if r["set"] == set_name and r["real_dev"] is not None
                and r["config"] in RECIPE_OF}
        if set(mine) != set(CANDIDATES):
            continue
        figures = {name: mine[name]["synthetic"] for name in CANDIDATES}
        by_synthetic = choose(figures, mine[CANDIDATES[0]]["labels"])
        by_real = max(mine, key=lambda name: mine[name]["real_dev"])
        total, agree = total + 1, agree + (by_synthetic == by_real)
        margins = {n: f["margin"] for n, f in figures.items() if "margin" in f}
        lines.append(f"{set_name}: the rule picks {by_synthetic} (scores "
                     f"{ {n: f['score'] for n, f in figures.items()} }, margins {margins}); real dev defects pick "
                     f"{by_real} ({ {n: round(r['real_dev'], 4) for n, r in mine.items()} })")
    return "\n".join([*lines, f"agreement: {agree} of {total} sets"])


TABLE_METRICS = ("image_auroc", "pixel_auroc", "aupro", "recall_at_0.01", "recall_at_0.001")


def _test_row(runs: Path, set_name: str, config: str) -> dict[str, Any]:
    """The config's own-rule TEST-half figures and its training time, from the sweep's cache."""
    path = checkpoint_path(runs, set_name, config)
    own_rule = CONFIGS[config].variants[0].name
    rows = [r for r in json.loads(path.with_suffix(".eval.json").read_text())
            if r["half"] == "test" and r["variant"] == own_rule]
    return {**{m: rows[0][m] for m in TABLE_METRICS}, "train_s": rows[0]["train_seconds"]}


def test_table(rows: list[dict[str, Any]], runs: Path) -> str:
    """Test halves: each fixed candidate and ``auto`` (the candidate the rule chose on synthetic defects, trained
    identically; its time is every candidate's training plus the selection), and the means over sets."""
    lines = ["| set | recipe | image AUROC | pixel AUROC | AUPRO | recall at 1% | recall at 0.1% | train s |",
             "|---|---|---|---|---|---|---|---|"]
    per_recipe: dict[str, list[dict[str, Any]]] = {}
    for set_name in sorted({r["set"] for r in rows}):
        mine = {RECIPE_OF[r["config"]]: r for r in rows if r["set"] == set_name and r["config"] in RECIPE_OF}
        if set(mine) != set(CANDIDATES):
            continue
        figures = {name: dict(mine[name]["synthetic"]) for name in CANDIDATES}
        chosen = choose(figures, mine[CANDIDATES[0]]["labels"])
        fixed = {name: _test_row(runs, set_name, mine[name]["config"]) for name in CANDIDATES}
        auto = {**fixed[chosen], "train_s": sum(f["train_s"] for f in fixed.values())
                + sum(mine[n]["seconds"] for n in CANDIDATES)}
        reference = [(label, _test_row(runs, set_name, config)) for config, label in REFERENCE.items()
                     if checkpoint_path(runs, set_name, config).with_suffix(".eval.json").is_file()]
        for name, row in [*fixed.items(), (f"auto ({chosen})", auto), *reference]:
            per_recipe.setdefault(name.split(" (")[0], []).append(row)
            lines.append(f"| {set_name} | {name} | " + " | ".join(f"{row[m]:.3f}" for m in TABLE_METRICS)
                         + f" | {row['train_s']:.0f} |")
    for name, recipe_rows in per_recipe.items():
        lines.append(f"| **mean** | **{name}** | " + " | ".join(
            f"**{np.mean([r[m] for r in recipe_rows]):.3f}**" for m in TABLE_METRICS)
            + f" | {np.sum([r['train_s'] for r in recipe_rows]):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
