"""Every recipe on every shared set, and the recipe ``auto`` keeps: the one table of model_accuracy.md.

Checkpoints: ``runs/recipes/<set>/<recipe>.safetensors``, each trained by the product's own command
(``linewatch train DATA --out ... --recipe NAME``, every good training image, the default seed; so every
candidate of a set holds out the same good images, as inside ``--recipe auto``), with its wall and CPU
seconds in ``runs/recipes/times.txt`` (``/usr/bin/time`` lines ``SET RECIPE wall=S user=S``).

Per checkpoint (cached beside it as ``<recipe>.<half>.json``): the product's evaluation (``detector.evaluate``)
on each half of the set's test images (``benchmarks/splits``), with the border-effect figures of
``tiling_accuracy.py``. Per set: every candidate's selection figures on the held-out good images plus the
seeded synthetic defects drawn on them (``recipe_choice.selection_figures``), then

* ``--phase dev``: which candidate each selection score would keep, against the candidate the real dev
  defects rank first (the mean of dev image AUROC, pixel AUROC and AUPRO); agreement per score;
* ``--phase test``: the test halves of each candidate and of ``auto`` (the product's rule as it is in
  ``recipe_choice.py``; its train time is every candidate's plus the selection), means over sets.

    PYTHONPATH=. .venv/bin/python benchmarks/recipe_table.py --phase dev
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tiling_accuracy import half_folder, row

import common
from linewatch.common.images import list_train_good, load_rgb
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.training import recipe_choice
from linewatch.detector.model.training.recipe_choice import choose, selection_figures, synthetic_selection
from linewatch.detector.model.training.train import TrainConfig, held_out_indices

# RECIPE_RUNS: another run's folder (a second seed: benchmarks/train_recipes.sh with RECIPE_SEED)
RUNS = Path(os.environ.get("RECIPE_RUNS") or common.RUNS / "recipes")
SETS = ("bsdata", "magnetic_tile", "mvtec3d_tire", "paper_brg02_rl", "paper_brg03_tl")
FIGURES = ("image_auroc", "pixel_auroc", "aupro")
TABLE = ("image_auroc", "pixel_auroc", "aupro", "recall_at_1pct", "recall_at_0.1pct")
# selection scores compared on the dev halves: the mean of these selection figures ("kinds_median": the median
# over defect kinds of the per-kind image AUROC; the product's rule is recipe_choice.SELECTION_FIGURES)
# "kinds_median+aupro": AUPRO weighs each defect region alike, where the pooled pixel AUROC is mostly the large
# synthetic regions (blotches, noise blends), which a tiled recipe sees least and bsdata's real pits are not
SCORES = {"image+pixel": ("image_auroc", "pixel_auroc"), "image+pixel+aupro": ("image_auroc", "pixel_auroc", "aupro"),
          "kinds_median+pixel": ("kinds_median", "pixel_auroc"), "kinds_median": ("kinds_median",),
          "kinds_median+aupro": ("kinds_median", "aupro")}
PRODUCT_SCORE = ("kinds_median", "pixel_auroc")  # recipe_choice.SELECTION_FIGURES, in this script's names
# Reference rows of the test table where their checkpoints exist (never candidates): the previous 8x8 default,
# which the done-when's means are compared with (benchmarks/train_recipes.sh SET:previous8x8)
REFERENCES = ("previous8x8",)


def checkpoint(set_name: str, recipe: str) -> Path:
    return RUNS / set_name / f"{recipe}.safetensors"


def evaluated(set_name: str, recipe: str, half: str) -> dict[str, Any]:
    """The product's figures of one checkpoint on one half (cached)."""
    cache = checkpoint(set_name, recipe).with_suffix(f".{half}.json")
    if not cache.is_file():
        folder = half_folder(set_name, half, RUNS / "halves")
        cache.write_text(json.dumps(row(recipe, checkpoint(set_name, recipe), folder, RUNS / "eval" / set_name / half),
                                    indent=1) + "\n")
    return dict(json.loads(cache.read_text()))


def train_times() -> dict[tuple[str, str], dict[str, float]]:
    """(set, recipe) -> wall and user seconds of its ``linewatch train``."""
    times: dict[tuple[str, str], dict[str, float]] = {}
    path = RUNS / "times.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = re.match(r"(\S+) (\S+) wall=([\d.]+) user=([\d.]+)", line)
        if match:
            times[(match[1], match[2])] = {"wall": float(match[3]), "user": float(match[4])}
    return times


def selection(set_name: str, recipes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each candidate's selection figures on the held-out good images and their synthetic defects (cached,
    without the per-image scores, which are kept in a .npy beside)."""
    cache = RUNS / set_name / "selection.json"
    scores_file = RUNS / set_name / "selection_scores.npz"
    if cache.is_file() and set(json.loads(cache.read_text())) >= set(recipes):
        figures = json.loads(cache.read_text())
        stored = np.load(scores_file)
        for name in recipes:
            figures[name]["image_scores"] = stored[name]
        figures["labels"] = stored["labels"]
        return {name: figures[name] for name in (*recipes, "labels")}
    training = AnomalyModel.load(checkpoint(set_name, recipes[0]), "cpu").metadata.training["config"]
    base = TrainConfig(seed=training["seed"], val_fraction=training["val_fraction"])
    records = list_train_good(common.dataset(set_name))
    goods = [load_rgb(records[int(i)].path) for i in held_out_indices(len(records), base)]
    chosen_images = synthetic_selection(goods)
    figures = {}
    for name in recipes:
        started = time.perf_counter()
        model = AnomalyModel.load(checkpoint(set_name, name), "cpu")
        figures[name] = {**selection_figures(model, chosen_images), "select_seconds": time.perf_counter() - started}
    np.savez(scores_file, labels=chosen_images.labels, **{n: f["image_scores"] for n, f in figures.items()})
    cache.write_text(json.dumps({n: {k: v for k, v in f.items() if k != "image_scores"} for n, f in figures.items()},
                                indent=1) + "\n")
    return {**figures, "labels": chosen_images.labels}


def rule_pick(figures: dict[str, dict[str, Any]], recipes: tuple[str, ...], score: tuple[str, ...]) -> str:
    """The candidate the product's rule keeps when the selection score is the mean of ``score``."""
    scored = {n: {**figures[n], "kinds_median": float(np.median(list(figures[n]["image_auroc_by_kind"].values())))}
              for n in recipes}
    scored = {n: {**f, "score": float(np.mean([f[k] for k in score]))} for n, f in scored.items()}
    return choose(scored, figures["labels"])


def candidates(set_name: str) -> tuple[str, ...]:
    """What ``auto`` trains on this set (the product's rule), among the checkpoints present."""
    records = list_train_good(common.dataset(set_name))
    return tuple(n for n in recipe_choice.candidates_for(records) if checkpoint(set_name, n).is_file())


def dev_phase(sets: list[str]) -> list[str]:
    """Agreement of each selection score with the real dev defects."""
    lines = ["| set | candidates | real dev pick (mean of 3 dev figures) | " + " | ".join(SCORES) + " |",
             "|---|---|---|" + "---|" * len(SCORES)]
    agree, regret = dict.fromkeys(SCORES, 0), dict.fromkeys(SCORES, 0.0)
    for set_name in sets:
        recipes = candidates(set_name)
        dev = {n: evaluated(set_name, n, "dev") for n in recipes}
        real = {n: float(np.mean([dev[n][f] for f in FIGURES])) for n in recipes}
        best = max(real, key=real.__getitem__)
        figures = selection(set_name, recipes)
        picks = {s: rule_pick(figures, recipes, fields) for s, fields in SCORES.items()}
        for s, pick in picks.items():
            agree[s] += pick == best
            regret[s] += (real[best] - real[pick]) / len(sets)
        lines.append(f"| {set_name} | " + ", ".join(f"{n} {real[n]:.3f}" for n in recipes) + f" | {best} | "
                     + " | ".join(picks.values()) + " |")
        for n in recipes:
            f = figures[n]
            print(f"{set_name}/{n}: selection image {f['image_auroc']} pixel {f['pixel_auroc']} aupro {f.get('aupro')} "
                  f"by kind {f['image_auroc_by_kind']}; dev {[dev[n][k] for k in TABLE]}; border {dev[n]['border']}")
    lines.append("| agreement | | | " + " | ".join(f"{agree[s]} of {len(sets)}" for s in SCORES) + " |")
    lines.append("| mean regret (real dev mean of the best minus the pick's) | | | "
                 + " | ".join(f"{regret[s]:.3f}" for s in SCORES) + " |")
    return lines


def test_phase(sets: list[str]) -> list[str]:
    """Test halves: each candidate and ``auto`` (the rule as in the product), means over sets."""
    times = train_times()
    lines = ["| set | recipe | image AUROC | pixel AUROC | AUPRO | recall at 1% | recall at 0.1% | train s (CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    rows: dict[str, list[dict[str, Any]]] = {}
    for set_name in sets:
        set_rows = {**_candidates_and_auto(set_name, times), **{
            n: {**evaluated(set_name, n, "test"), "train_s": times.get((set_name, n), {}).get("user", np.nan)}
            for n in REFERENCES if checkpoint(set_name, n).is_file()}}
        for name, figure in set_rows.items():
            rows.setdefault(name.split(" (")[0], []).append(figure)
            lines.append(f"| {set_name} | {name} | " + " | ".join(f"{figure[m]:.3f}" for m in TABLE)
                         + f" | {figure['train_s']:.0f} |")
    for name, recipe_rows in rows.items():
        if len(recipe_rows) == len(sets):
            lines.append(f"| **mean** | **{name}** | " + " | ".join(
                f"**{np.mean([r[m] for r in recipe_rows]):.3f}**" for m in TABLE)
                + f" | {np.sum([r['train_s'] for r in recipe_rows]):.0f} |")
    return lines


def _candidates_and_auto(set_name: str, times: dict[tuple[str, str], dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Test figures of each candidate present and of ``auto`` (none when no candidate was trained)."""
    recipes = candidates(set_name)
    if not recipes:
        return {}
    figures = selection(set_name, recipes)
    chosen = rule_pick(figures, recipes, PRODUCT_SCORE)
    fixed = {n: {**evaluated(set_name, n, "test"), "train_s": times.get((set_name, n), {}).get("user", np.nan)}
             for n in recipes}
    auto = {**fixed[chosen], "train_s": sum(f["train_s"] for f in fixed.values())
            + sum(figures[n]["select_seconds"] for n in recipes)}
    return {**fixed, f"auto ({chosen})": auto}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("dev", "test"), required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = args.sets.split(",")
    lines = dev_phase(sets) if args.phase == "dev" else test_phase(sets)
    text = "\n".join([f"machine: {common.machine()}", *lines])
    (RUNS / f"table-{args.phase}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
