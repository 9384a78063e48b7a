"""``--recipe auto``: train each candidate recipe, score it on defects it never saw, keep the best.

What a plant has at training time is good images. Each candidate is trained on the same images with the
same seed, so every candidate holds out the same good images (``train.held_out_indices``); synthetic
defects are drawn on those (``synthetic_defects.py``, seeded), or a folder of real labelled defects is used
(``--select-on DIR``, MVTec layout). The rule, written here and in the README:

    selection score = mean of the median over defect kinds of the image AUROC (each kind's defective
    images against the clean held-out images) and the pixel AUROC (on the defect masks); the highest score
    wins; a later candidate must beat an earlier one by more than max(``MARGIN``, ``Z`` x the paired
    standard error of their image AUROC difference / 2) (candidates are listed in order of preference,
    ``recipes.CANDIDATES``).

The standard error makes the rule say "not enough evidence" where few good images are held out: a 32-image
paper-web set holds out 6, and both candidates then score near chance on the synthetic defects; the
preferred recipe stays. Why these constants: docs/decisions/0002-default-recipe-and-auto-selection.md.

Every candidate's figures, the rule and the choice go into the checkpoint's training metadata
(``training["recipe"]``, ``training["selection"]``), so ``evaluate`` reports them and an operator can see why.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.common.images import ImageRecord, list_test, load_mask, load_rgb
from linewatch.detector.evaluation.metrics import auroc, paired_auroc_difference_se
from linewatch.detector.evaluation.pixel_metrics import PixelAccumulator, quantile_edges
from linewatch.detector.model.checkpoint import load_checkpoint, rewritable_metadata, save_checkpoint
from linewatch.detector.model.tiling import MIN_ASPECT
from linewatch.detector.model.training.recipes import CANDIDATES, LONG_PARTS_CANDIDATE, RECIPES
from linewatch.detector.model.training.synthetic_defects import make_defects
from linewatch.detector.model.training.train import TrainConfig, TrainResult, held_out_indices, train
from linewatch.errors import InvalidDataError

MARGIN = 0.01
# The selection score is their mean. Each kind of defect counts alike (the median over kinds, not the AUROC of
# all defects pooled): a recipe that cannot see one kind (the fine map and low-contrast blotches) is not
# outvoted by that kind alone. Chosen on the shared sets' dev halves (benchmarks/results/model_accuracy.md).
SELECTION_FIGURES = ("image_auroc_kinds_median", "pixel_auroc")
Z = 2.0
SEED = 20261207  # the synthetic defects' seed (fixed: the same images give the same choice)
PER_IMAGE = 2  # synthetic defects per held-out good image, more where few are held out:
MIN_DEFECTS = 60  # 6 held-out images of a 32-image set would give 12 defects, too few to rank candidates
RULE = ("selection score = mean(median over defect kinds of image AUROC, pixel AUROC) on the selection images; "
        f"highest wins; a later candidate must beat an earlier one by more than max({MARGIN}, {Z:g} x the paired "
        "standard error of their image AUROC difference / 2)")


@dataclass(frozen=True)
class SelectionImages:
    """What the candidates are judged on: images, their defect masks (all False for good ones), labels."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    kinds: list[str]  # "good", or the defect kind / type
    source: str  # "synthetic" or the folder of real defects

    @property
    def labels(self) -> np.ndarray:
        return np.array([k != "good" for k in self.kinds])


def synthetic_selection(goods: Sequence[np.ndarray], per_image: int | None = None, seed: int = SEED
                        ) -> SelectionImages:
    """The clean held-out good images and ``per_image`` synthetic defects on each (default: ``PER_IMAGE``, or
    enough for ``MIN_DEFECTS`` in all)."""
    per_image = per_image or max(PER_IMAGE, -(-MIN_DEFECTS // max(len(goods), 1)))
    defects = make_defects(goods, per_image=per_image, seed=seed)
    return SelectionImages([*goods, *(d.image for d in defects)],
                           [*(np.zeros(g.shape[:2], bool) for g in goods), *(d.mask for d in defects)],
                           ["good"] * len(goods) + [d.kind for d in defects], "synthetic")


def real_selection(folder: Path) -> SelectionImages:
    """Every test image of an MVTec-layout folder with its mask (``--select-on``)."""
    records = list_test(folder)
    if not any(r.label == "defect" for r in records) or all(r.label == "defect" for r in records):
        raise InvalidDataError(f"--select-on {folder}: needs good and defective test images (MVTec layout)")
    images = [load_rgb(r.path) for r in records]
    return SelectionImages(images, [load_mask(r, img.shape[:2]) for r, img in zip(records, images, strict=True)],
                           ["good" if r.label == "good" else r.defect_type for r in records], str(folder))


def selection_figures(model: Any, selection: SelectionImages) -> dict[str, Any]:
    """Image AUROC (all defects pooled, and the median over kinds), pixel AUROC, AUPRO and the selection score
    (the mean of ``SELECTION_FIGURES``) of one model; image AUROC per kind; the per-image scores
    (``image_scores``, for the rule's standard error; not stored in checkpoints)."""
    scores, maps = [], []
    for start in range(0, len(selection.images), 16):
        batch = selection.images[start:start + 16]
        prediction = model.predict(batch)
        scores.append(prediction.image_scores)
        maps += [model.map_to_image(m, img.shape[:2]) for m, img in zip(prediction.maps, batch, strict=True)]
    image_scores, labels = np.concatenate(scores), selection.labels
    pixels = PixelAccumulator(quantile_edges(np.concatenate([m[::4, ::4].ravel() for m in maps]), 4096))
    for m, mask in zip(maps, selection.masks, strict=True):
        pixels.add(m, mask)
    kinds = np.array(selection.kinds)
    by_kind = {k: round(auroc(image_scores[(kinds == "good") | (kinds == k)], labels[(kinds == "good") | (kinds == k)]),
                        4) for k in sorted(set(selection.kinds) - {"good"})}
    figures = {"image_auroc": auroc(image_scores, labels), "pixel_auroc": pixels.auroc(), "aupro": pixels.aupro(),
               "image_auroc_kinds_median": float(np.median(list(by_kind.values())))}
    return {**{k: round(v, 4) for k, v in figures.items()},
            "score": round(float(np.mean([figures[k] for k in SELECTION_FIGURES])), 4),
            "image_auroc_by_kind": by_kind, "image_scores": image_scores}


def choose(figures: dict[str, dict[str, Any]], labels: np.ndarray) -> str:
    """The rule (see the module docstring) over candidates in order of preference; sets each later candidate's
    ``margin`` (what it had to beat the one before it by)."""
    best = next(iter(figures))
    for name, figure in list(figures.items())[1:]:
        figure["margin"] = round(required_margin(figures[best]["image_scores"], figure["image_scores"], labels), 4)
        if figure["score"] > figures[best]["score"] + figure["margin"]:
            best = name
    return best


def required_margin(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> float:
    """How much more selection score a candidate needs to displace the one before it on these images."""
    se = paired_auroc_difference_se(scores_a, scores_b, labels)
    return max(MARGIN, Z * se / 2) if np.isfinite(se) else MARGIN


def train_auto(base: TrainConfig, records: Sequence[ImageRecord], out: Path, *, progress: bool = True,
               select_on: Path | None = None, candidates: Sequence[str] | None = None) -> tuple[TrainResult, str]:
    """Train every candidate (default: :func:`candidates_for` the images) on ``records``, choose one, write it
    to ``out``; returns its result and name."""
    from linewatch.detector.model.inference import AnomalyModel

    candidates = candidates or candidates_for(records)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="linewatch-recipes-", dir=out.parent) as work:
        trained: dict[str, TrainResult] = {}
        for name in candidates:
            if progress:
                print(f"recipe {name}: {RECIPES[name].suits}", flush=True)
            trained[name] = train(RECIPES[name].config(base), records, Path(work) / f"{name}.safetensors",
                                  progress=progress)
        selection = real_selection(select_on) if select_on else synthetic_selection(_held_out(base, records))
        figures = {}
        for name, result in trained.items():
            started = time.perf_counter()
            figures[name] = {**selection_figures(AnomalyModel.load(result.path, "cpu"), selection),
                             "train_seconds": round(result.seconds, 1),
                             "select_seconds": round(time.perf_counter() - started, 1)}
        chosen = choose(figures, selection.labels)
        for figure in figures.values():
            figure.pop("image_scores")
        _write_with_selection(trained[chosen].path, out, chosen, {
            "rule": RULE, "on": selection.source, "images": len(selection.images),
            "defects": int(selection.labels.sum()), "candidates": figures, "chosen": chosen})
        return TrainResult(**{**trained[chosen].__dict__, "path": out}), chosen


def candidates_for(records: Sequence[ImageRecord]) -> tuple[str, ...]:
    """``CANDIDATES``, and the tiled recipe after them when the good images are long."""
    return (*CANDIDATES, LONG_PARTS_CANDIDATE) if median_aspect(records) >= MIN_ASPECT else CANDIDATES


def median_aspect(records: Sequence[ImageRecord]) -> float:
    """Median long side / short side of the images (read from the file headers, not decoded)."""
    from PIL import Image

    ratios = []
    for record in records:
        with Image.open(record.path) as image:
            width, height = image.size
        ratios.append(max(width, height) / max(1, min(width, height)))
    return float(np.median(ratios)) if ratios else 1.0


def _held_out(base: TrainConfig, records: Sequence[ImageRecord]) -> list[np.ndarray]:
    """The good images every candidate held out (same seed, same images: same indices)."""
    return [load_rgb(records[int(i)].path) for i in held_out_indices(len(records), base)]


def _write_with_selection(source: Path, out: Path, recipe: str, selection: dict[str, Any]) -> None:
    """Copy the chosen checkpoint to ``out`` with the recipe and the selection in its training metadata."""
    tensors, metadata = load_checkpoint(source)
    body = rewritable_metadata(metadata)
    body["training"] = {**body.get("training", {}), "recipe": recipe, "selection": selection}
    save_checkpoint(out, tensors, body)
