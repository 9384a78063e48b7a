"""Accuracy sweep over every shared data set: settings chosen on dev halves, figures reported on test halves.

Each data set's test images are split once, seeded, into a dev half and a test half (about half of
every defect type and of the good images each); the split is written down as file lists in
``benchmarks/splits/<set>.json`` (never by moving files). A configuration is trained once per set on
``train/good`` only; its per-layer distance maps are then scored on both halves with every variant
(which taps make the map, per-layer normalisation, Gaussian smoothing, which taps and rule make the image
score), without retraining. ``--phase table`` picks the configuration with the best mean over sets on the
DEV halves and writes the TEST-half table to ``runs/accuracy/model_accuracy.md`` (``--dev-only``:
the dev table alone, to choose before any test figure is seen; ``--out``: another file). The configurations
are in ``benchmarks/sweeps/model_accuracy.toml``; the data sets in ``LINEWATCH_DATASETS`` (benchmarks/common.py).

    nice -n 10 .venv/bin/python benchmarks/model_accuracy.py --phase all       # train what is missing, evaluate, table
    .venv/bin/python benchmarks/model_accuracy.py --phase train --configs today,s4_256
    .venv/bin/python benchmarks/model_accuracy.py --phase table --configs today,s4s32_192 --dev-only --out runs/dev.md
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

import common
from linewatch.common.images import ImageRecord, list_test, list_train_good, load_mask, load_rgb
from linewatch.detector.evaluation.metrics import auroc
from linewatch.detector.evaluation.pixel_metrics import PixelAccumulator, quantile_edges
from linewatch.detector.model.stfpm.anomaly_map import fuse_layer_maps, gaussian_blur
from linewatch.detector.model.stfpm.loss import layer_distance
from linewatch.detector.model.training.train import TrainConfig, train

RUNS = common.RUNS / "accuracy"
TABLE = RUNS / "model_accuracy.md"  # the curated benchmarks/results/model_accuracy.md is kept by hand
SPLIT_SEED = 20261129
FALSE_ALARM_RATES = (0.01, 0.001)


SCORE_RULES = ("map", "taps", "geomean", "zsum")
SCORE_PREFIX = {"taps": "score", "geomean": "geo", "zsum": "zsum"}


@dataclass(frozen=True)
class Variant:
    """Post-processing of a trained model's per-layer distance maps (no retraining).

    The map is the product of the layer maps of ``map_taps`` (the model's fusion), or with
    ``normsum`` the sum of those layer maps each standardised by its own mean and spread on the
    training's held-out good images. The image score is the mean of the ``top_k`` largest map cells
    (``score="map"``), the maximum of the product over ``score_taps`` (``"taps"``: deep taps score,
    fine taps localise), the geometric mean of both maxima (``"geomean"``: a ranking that does not
    depend on either map's scale), or the sum of both scores each standardised by its mean and spread
    on the held-out good images (``"zsum"``). Empty tap tuples mean every tap of the model.
    """

    sigma: float = 0.0  # Gaussian smoothing of the map, in model-input pixels
    top_k: int = 1  # image score = mean of the k largest map cells (1 = the max)
    map_taps: tuple[int, ...] = ()
    normsum: bool = False
    score: str = "map"
    score_taps: tuple[int, ...] = ()
    # Gaussian smoothing (model-input pixels) of the map the image score is read from, the shown map staying
    # sharp: a region's mean excess, not one noisy cell, decides (what an 8x8 map did by its coarseness)
    score_sigma: float = 0.0
    # exponents of the layer maps in the product (one per map tap; empty: all 1, the model's rule). Only their
    # ratios matter to AUROC and AUPRO (a power of the whole map ranks the same); a larger deep-tap exponent
    # leans the map toward the tap that sees large regions while the fine taps still place it
    tap_weights: tuple[float, ...] = ()
    # a SUM of two maps, the fine product (``map_taps``) and the product over ``coarse_taps``, each
    # standardised by its mean and spread over the held-out good images' pixels, the coarse one weighted by
    # ``coarse_weight``. A product is high only where every tap agrees; a sum is high where either map is, so a
    # large low-contrast region that only the deep taps see is not multiplied away by the fine taps
    coarse_taps: tuple[int, ...] = ()
    coarse_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.score not in SCORE_RULES:
            raise ValueError(f"score must be one of {SCORE_RULES}, got {self.score!r}")
        if self.score != "map" and not self.score_taps:
            raise ValueError(f"score rule {self.score!r} needs score_taps")

    @property
    def name(self) -> str:
        name = f"sigma{self.sigma:g}-top{self.top_k}"
        if self.map_taps or self.normsum:
            name += f"-{'normsum' if self.normsum else 'map'}{_taps_name(self.map_taps)}"
        if self.score != "map":
            name += f"-{SCORE_PREFIX[self.score]}{_taps_name(self.score_taps)}"
        if self.score_sigma:
            name += f"-scoresigma{self.score_sigma:g}"
        if self.tap_weights:
            name += "-w" + ".".join(f"{w:g}" for w in self.tap_weights)
        if self.coarse_taps:
            name += f"-plus{_taps_name(self.coarse_taps)}x{self.coarse_weight:g}"
        return name


def _taps_name(taps: tuple[int, ...]) -> str:
    return ".".join(str(t) for t in taps) if taps else "all"


@dataclass(frozen=True)
class SweepConfig:
    """One training configuration of the sweep (a TrainConfig plus its post-processing variants)."""

    name: str
    train: TrainConfig
    variants: tuple[Variant, ...] = field(default=(Variant(),))


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
    """TOML lists as the tuples the dataclasses hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def load_configs(sweep: dict[str, Any]) -> dict[str, SweepConfig]:
    """The sweep's configurations (benchmarks/sweeps/model_accuracy.toml), in file order."""
    sets = sweep.get("variant_sets", {})
    configs = {}
    for name, entry in sweep["configs"].items():
        variants = entry.get("variants", [{}])
        if isinstance(variants, str):
            variants = sets[variants]
        configs[name] = SweepConfig(name, TrainConfig(**_tuples(entry.get("train", {}))),
                                    tuple(Variant(**_tuples(v)) for v in variants))
    return configs


CONFIGS: dict[str, SweepConfig] = load_configs(common.load_sweep("model_accuracy"))


def data_sets() -> dict[str, Path]:
    """Every shared set in MVTec layout (``<set>/<set>/test``)."""
    shared = common.datasets_dir()
    if not shared.is_dir():
        raise SystemExit(f"no shared data sets at {shared} (set LINEWATCH_DATASETS)")
    return {d.name: d / d.name for d in sorted(shared.iterdir()) if (d / d.name / "test").is_dir()}


def split(name: str, root: Path) -> dict[str, list[str]]:
    """The set's fixed dev/test halves (paths relative to ``root``), written once to benchmarks/splits."""
    path = common.SPLITS / f"{name}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    halves: dict[str, list[str]] = {"dev": [], "test": []}
    by_type: dict[str, list[str]] = {}
    for record in list_test(root):
        by_type.setdefault(record.defect_type, []).append(str(record.path.relative_to(root)))
    rng = random.Random(SPLIT_SEED)
    for kind in sorted(by_type):
        files = sorted(by_type[kind])
        rng.shuffle(files)
        cut = (len(files) + 1) // 2
        halves["dev"] += sorted(files[:cut])
        halves["test"] += sorted(files[cut:])
    common.SPLITS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(halves, indent=1) + "\n")
    return halves


def checkpoint_path(runs: Path, set_name: str, config: str) -> Path:
    return runs / set_name / f"{config}.safetensors"


def train_records(root: Path, max_train: int) -> list[ImageRecord]:
    """The set's good training images, or a seeded subsample of ``max_train`` of them (0: all)."""
    records = list_train_good(root)
    if max_train and len(records) > max_train:
        picked = random.Random(SPLIT_SEED).sample(range(len(records)), max_train)
        records = [records[i] for i in sorted(picked)]
    return records


def train_one(runs: Path, set_name: str, root: Path, config: SweepConfig, max_train: int) -> None:
    """Train ``config`` on the set's train/good (skipped when its checkpoint exists)."""
    out = checkpoint_path(runs, set_name, config.name)
    if out.is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = train_records(root, max_train)
    result = train(config.train, records, out, progress=False)
    info = {"train_seconds": round(time.perf_counter() - started, 1), "n_train": len(records),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "best_val_loss": result.best_val_loss}
    out.with_suffix(".train.json").write_text(json.dumps(info) + "\n")
    print(f"trained {set_name}/{config.name}: {info}", flush=True)


def _layer_maps(model: Any, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Per tapped layer, the teacher-student distance maps (N, h, w) at that layer's resolution."""
    net = model.model
    per_batch: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(images), 16):
            x = torch.cat([net.preprocess(torch.from_numpy(np.ascontiguousarray(img))[None])
                           for img in images[start:start + 16]])
            teacher, student = net.features(x)
            per_batch.append([layer_distance(t, s) for t, s in zip(teacher, student, strict=True)])
    return [torch.cat([b[i] for b in per_batch]) for i in range(len(per_batch[0]))]


def _pick(layers: list[torch.Tensor], model_taps: tuple[int, ...], taps: tuple[int, ...]) -> list[torch.Tensor]:
    missing = [t for t in taps if t not in model_taps]
    if missing:
        raise ValueError(f"taps {missing} are not among the model's taps {model_taps}")
    return [layers[model_taps.index(t)] for t in taps] if taps else layers


def _to_grid(layer: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, 1, *size), bilinear as the model's fusion."""
    m = layer[:, None]
    return m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def _fuse(layers: list[torch.Tensor], output_size: int, stats: list[tuple[float, float]] | None = None,
          weights: tuple[float, ...] = ()) -> torch.Tensor:
    """(N, S, S) maps: product of the layers at the finest grid (the model's rule), or with ``stats`` the sum
    of the layers standardised by their (mean, std) on good images; then one upsampling to the input size."""
    if stats is None:  # the model's own fusion
        return fuse_layer_maps(layers, output_size, weights=weights)
    grid = max((int(m.shape[-2]), int(m.shape[-1])) for m in layers)
    fused = torch.stack([(_to_grid(m, grid) - mean) / std
                         for m, (mean, std) in zip(layers, stats, strict=True)]).sum(dim=0)
    return F.interpolate(fused, size=(output_size, output_size), mode="bilinear", align_corners=False)[:, 0]


def _good_stats(layers: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Per layer, the mean and standard deviation of its distances on good images."""
    return [(float(m.mean()), float(m.std()) or 1.0) for m in layers]


def validation_images(root: Path, config: SweepConfig, max_train: int) -> list[np.ndarray]:
    """The training run's held-out good images (train.py's seeded split of the same records)."""
    records = train_records(root, max_train)
    order = np.random.default_rng(config.train.seed).permutation(len(records))
    n_val = min(len(records) - 1, max(1, round(len(records) * config.train.val_fraction)))
    return [load_rgb(records[i].path) for i in order[:n_val]]


def _map_and_scores(variant: Variant, layers: list[torch.Tensor], model: Any, good_layers: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The variant's maps (N, S, S), the top-k score of its map, and the max of its score taps' product."""
    taps = tuple(model.model.taps)
    stats = _good_stats(_pick(good_layers, taps, variant.map_taps)) if variant.normsum else None
    fused = _fuse(_pick(layers, taps, variant.map_taps), model.image_size, stats, variant.tap_weights)
    if variant.coarse_taps:
        fused = _plus_coarse(variant, fused, layers, good_layers, taps, model.image_size)
    if variant.sigma > 0:
        fused = gaussian_blur(fused[:, None], variant.sigma)[:, 0]
    scored = gaussian_blur(fused[:, None], variant.score_sigma)[:, 0] if variant.score_sigma else fused
    fine = _image_scores(list(scored.numpy()), variant.top_k)
    deep = (_fuse(_pick(layers, taps, variant.score_taps), model.image_size).flatten(1).amax(dim=1).numpy()
            if variant.score_taps else fine)
    return fused, fine, deep


def _plus_coarse(variant: Variant, fine: torch.Tensor, layers: list[torch.Tensor], good_layers: list[torch.Tensor],
                 taps: tuple[int, ...], size: int) -> torch.Tensor:
    """``fine`` + weight * coarse product, each standardised on the held-out good images' pixels."""
    good_fine = _fuse(_pick(good_layers, taps, variant.map_taps), size, None, variant.tap_weights)
    coarse = _fuse(_pick(layers, taps, variant.coarse_taps), size)
    good_coarse = _fuse(_pick(good_layers, taps, variant.coarse_taps), size)

    def standardised(m: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
        return (m - good.mean()) / (float(good.std()) or 1.0)

    return standardised(fine, good_fine) + variant.coarse_weight * standardised(coarse, good_coarse)


def _variant_maps(variant: Variant, layers: list[torch.Tensor], model: Any,
                  good_layers: list[torch.Tensor]) -> tuple[list[np.ndarray], np.ndarray]:
    """The variant's model-size maps and image scores."""
    fused, fine, deep = _map_and_scores(variant, layers, model, good_layers)
    if variant.score == "map":
        scores = fine
    elif variant.score == "taps":
        scores = deep
    elif variant.score == "geomean":
        scores = np.sqrt(np.maximum(fine, 0) * np.maximum(deep, 0))
    else:  # zsum: each score standardised by its mean and spread on the held-out good images
        _, good_fine, good_deep = _map_and_scores(variant, good_layers, model, good_layers)
        scores = sum((s - g.mean()) / (g.std() or 1.0) for s, g in ((fine, good_fine), (deep, good_deep)))
    return list(fused.numpy()), np.asarray(scores)


def _image_scores(maps: list[np.ndarray], top_k: int) -> np.ndarray:
    flat = torch.from_numpy(np.stack(maps)).flatten(1)
    return flat.topk(top_k, dim=1).values.mean(dim=1).numpy()


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Share of defective images above the good images' (1 - fpr) quantile (the plant's operating point)."""
    good = np.sort(scores[~labels])
    threshold = np.quantile(good, 1.0 - fpr, method="higher")
    return float(np.mean(scores[labels] > threshold))


def _pixel_metrics(records: list[ImageRecord], maps: list[np.ndarray], model: Any) -> dict[str, Any]:
    """Pixel AUROC and AUPRO over the half and per defect type (with the half's good images)."""
    full = []
    masks = []
    for record, m in zip(records, maps, strict=True):
        shape = load_rgb(record.path).shape[:2]
        full.append(model.map_to_image(m, shape))
        masks.append(load_mask(record, shape))
    edges = quantile_edges(np.concatenate([f[::4, ::4].ravel() for f in full]), 20000)
    pooled, good_acc = PixelAccumulator(edges), PixelAccumulator(edges)
    for record, f, k in zip(records, full, masks, strict=True):
        pooled.add(f, k)
        if record.label == "good":
            good_acc.add(f, k)
    per_type: dict[str, dict[str, float]] = {}
    for kind in sorted({r.defect_type for r in records if r.label == "defect"}):
        acc = good_acc.copy()
        for record, f, k in zip(records, full, masks, strict=True):
            if record.defect_type == kind:
                acc.add(f, k)
        per_type[kind] = {"pixel_auroc": acc.auroc(), "aupro": acc.aupro()}
    return {"pixel_auroc": pooled.auroc(), "aupro": pooled.aupro(), "per_type": per_type}


def _image_metrics(records: list[ImageRecord], scores: np.ndarray) -> dict[str, Any]:
    """Image AUROC and recall at the false-alarm rates, over the half and per defect type."""
    labels = np.array([r.label == "defect" for r in records])
    out: dict[str, Any] = {"image_auroc": auroc(scores, labels), "n": len(records)}
    for fpr in FALSE_ALARM_RATES:
        out[f"recall_at_{fpr:g}"] = recall_at_fpr(scores, labels, fpr)
    per_type: dict[str, dict[str, float]] = {}
    for kind in sorted({r.defect_type for r in records if r.label == "defect"}):
        pick = np.array([r.defect_type in ("good", kind) for r in records])
        per_type[kind] = {"image_auroc": auroc(scores[pick], labels[pick]),
                          **{f"recall_at_{fpr:g}": recall_at_fpr(scores[pick], labels[pick], fpr)
                             for fpr in FALSE_ALARM_RATES},
                          "n": int(labels[pick].sum())}
    out["per_type"] = per_type
    return out


def _metrics(records: list[ImageRecord], maps: list[np.ndarray], scores: np.ndarray, model: Any,
             pixel: dict[str, Any]) -> dict[str, Any]:
    image = _image_metrics(records, scores)
    per_type = {k: {**v, **pixel["per_type"][k]} for k, v in image["per_type"].items()}
    return {**image, "pixel_auroc": pixel["pixel_auroc"], "aupro": pixel["aupro"], "per_type": per_type}


def _map_key(variant: Variant) -> tuple[Any, ...]:
    return (variant.map_taps, variant.normsum, variant.sigma, variant.tap_weights, variant.coarse_taps,
            variant.coarse_weight)


def _cached_pixel(row: dict[str, Any]) -> dict[str, Any]:
    """The pixel part of a cached row (shared by every variant with the same map)."""
    return {"pixel_auroc": row["pixel_auroc"], "aupro": row["aupro"],
            "per_type": {k: {"pixel_auroc": v["pixel_auroc"], "aupro": v["aupro"]} for k, v in row["per_type"].items()}}


def evaluate_one(runs: Path, set_name: str, root: Path, config: SweepConfig, max_train: int
                 ) -> list[dict[str, Any]]:
    """Metrics of every variant of a trained config on both halves, cached next to the checkpoint; variants
    added to a config later are computed alone (reusing the pixel metrics of cached variants with the same map)."""
    from linewatch.detector.model.inference import AnomalyModel

    path = checkpoint_path(runs, set_name, config.name)
    cache = path.with_suffix(".eval.json")
    wanted = {v.name: v for v in config.variants}
    cached: list[dict[str, Any]] = []
    if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
        cached = [r for r in json.loads(cache.read_text()) if r["variant"] in wanted]
    todo = [v for v in config.variants if v.name not in {r["variant"] for r in cached}]
    if not todo:
        return cached
    halves = split(set_name, root)
    by_path = {str(r.path.relative_to(root)): r for r in list_test(root)}
    rows = list(cached)
    train_info = json.loads(path.with_suffix(".train.json").read_text())
    model = AnomalyModel.load(path, "cpu")
    good_layers = _layer_maps(model, validation_images(root, config, max_train))
    for half, files in halves.items():
        records = [by_path[f] for f in files]
        layers = _layer_maps(model, [load_rgb(r.path) for r in records])
        # variants sharing a map share its pixel metrics (the costly part)
        pixel_cache = {_map_key(wanted[r["variant"]]): _cached_pixel(r) for r in cached if r["half"] == half}
        for variant in todo:
            maps, scores = _variant_maps(variant, layers, model, good_layers)
            if _map_key(variant) not in pixel_cache:
                pixel_cache[_map_key(variant)] = _pixel_metrics(records, maps, model)
            cells = list(max((int(m.shape[-2]), int(m.shape[-1]))
                             for m in _pick(layers, tuple(model.model.taps), variant.map_taps)))
            rows.append({"set": set_name, "config": config.name, "variant": variant.name, "half": half,
                         "map_cells": cells, **train_info,
                         **_metrics(records, maps, scores, model, pixel_cache[_map_key(variant)])})
            if half == "dev":  # test-half figures stay unseen until the choice is made (--phase table)
                print(f"{set_name}/{config.name}/{variant.name}/dev: image {rows[-1]['image_auroc']:.3f} "
                      f"pixel {rows[-1]['pixel_auroc']:.3f} aupro {rows[-1]['aupro']:.3f}", flush=True)
    cache.write_text(json.dumps(rows) + "\n")
    return rows


METRICS = ("image_auroc", "pixel_auroc", "aupro", "recall_at_0.01", "recall_at_0.001")


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


MIN_MAP_CELLS = 32  # the default map must be at least 32x32 cells (an operator must see where the defect is)


def _dev_scores(rows: list[dict[str, Any]], sets: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (config, variant) with dev figures on every set: per set, the mean of image/pixel AUROC and AUPRO."""
    by_key: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        if r["half"] == "dev":
            by_key.setdefault((r["config"], r["variant"]), {})[r["set"]] = float(np.mean([r[m] for m in METRICS[:3]]))
    return {k: v for k, v in by_key.items() if set(v) == set(sets)}


def choose(rows: list[dict[str, Any]], sets: list[str]) -> tuple[str, str]:
    """Best (config, variant) by the dev-half mean over sets among those with maps of at least 32x32 cells,
    preferring those no worse than today's on any set.

    "No worse on any set" (dev halves, mean of the three metrics) guards what carries over to sets we do
    not have; when no candidate meets it, the best mean is taken and the table says so.
    """
    scores = _dev_scores(rows, sets)
    today = scores.get(("today", Variant().name), {})
    fine = {(r["config"], r["variant"]) for r in rows if min(r["map_cells"]) >= MIN_MAP_CELLS}
    eligible = {k: v for k, v in scores.items() if k in fine}
    safe = {k: v for k, v in eligible.items() if today and all(v[s] >= today[s] for s in sets)}
    pool = safe or eligible
    return max(pool, key=lambda k: float(np.mean(list(pool[k].values()))))


SHORT_METRICS = {"image_auroc": "img", "pixel_auroc": "pix", "aupro": "pro"}


def _below_today(by_set: dict[str, dict[str, Any]], today: dict[str, dict[str, Any]], sets: list[str]) -> str:
    """The dev figures (set metric difference) where a variant is below the previous default; "none" if none."""
    if not today:
        return "-"
    below = [f"{s} {short} {by_set[s][m] - today[s][m]:+.3f}" for s in sets if s in by_set and s in today
             for m, short in SHORT_METRICS.items() if by_set[s][m] < today[s][m]]
    return ", ".join(below) or "none"


def table(rows: list[dict[str, Any]], sets: list[str], command: str, dev_only: bool = False) -> str:
    """The results file: machine, command, date; dev-half ranking; test-half figures of today and the choice
    (left out with ``dev_only``, so that the choice is made before any test figure is seen)."""
    best = choose(rows, sets)
    lines = [f"# Model accuracy sweep\n\n{common.machine_line(common.machine(command))}\n",
             "Settings were chosen on the dev halves only (file lists in benchmarks/splits/); the figures in the "
             "test-half tables were not looked at for the choice.\n",
             "## Dev halves: every configuration (mean over sets of image AUROC, pixel AUROC, AUPRO)\n",
             "| config | variant | map cells | " + " | ".join(f"{s} img/pix/pro" for s in sets)
             + " | mean | below previous default |",
             "|---|---|---|" + "---|" * (len(sets) + 2)]
    dev: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["half"] == "dev":
            dev.setdefault((r["config"], r["variant"]), {})[r["set"]] = r
    today_rows = dev.get(("today", Variant().name), {})
    for (config, variant), by_set in sorted(dev.items()):
        cells = "x".join(str(c) for c in next(iter(by_set.values()))["map_cells"])
        parts = [f"{by_set[s]['image_auroc']:.3f}/{by_set[s]['pixel_auroc']:.3f}/{by_set[s]['aupro']:.3f}"
                 if s in by_set else "-" for s in sets]
        mean = (f"{np.mean([[by_set[s][m] for m in METRICS[:3]] for s in sets]):.3f}"
                if all(s in by_set for s in sets) else "-")
        lines.append(f"| {config} | {variant} | {cells} | " + " | ".join(parts)
                     + f" | {mean} | {_below_today(by_set, today_rows, sets)} |")
    today = _dev_scores(rows, sets).get(("today", Variant().name), {})
    chosen = _dev_scores(rows, sets).get(best, {})
    safe = bool(today) and all(chosen.get(s, 0.0) >= today[s] for s in sets)
    lines.append(f"\nChosen on dev: **{best[0]} / {best[1]}** (best dev mean"
                 + (", and no set below the previous default on dev)." if safe else
                    "; NOTE: no candidate was at least as good as the previous default on every set's dev half).")
                 + "\n")
    for label, key in () if dev_only else (("previous default (today)", ("today", Variant().name)),
                                           ("chosen default", best)):
        lines += [f"## Test halves: {label}: {key[0]} / {key[1]}\n",
                  "| set | type | n defective | image AUROC | pixel AUROC | AUPRO | recall@1% FA | recall@0.1% FA "
                  "| train s |", "|---|---|---|---|---|---|---|---|---|"]
        test = [r for r in rows if r["half"] == "test" and (r["config"], r["variant"]) == key]
        for r in sorted(test, key=lambda r: r["set"]):
            lines.append(f"| {r['set']} | all | {r['n']} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS)
                         + f" | {r['train_seconds']:.0f} |")
            for kind, t in r["per_type"].items():
                lines.append(f"| {r['set']} | {kind} | {t['n']} | " + " | ".join(f"{t[m]:.3f}" for m in METRICS)
                             + " | |")
        if test:
            lines.append("| **mean** | | | " + " | ".join(f"{_mean(test, m):.3f}" for m in METRICS) + " | |")
            lines.append("| **worst** | | | " + " | ".join(f"{min(r[m] for r in test):.3f}" for m in METRICS)
                         + " | |\n")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse, then train / evaluate / tabulate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("train", "eval", "table", "all"), default="all")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated names from benchmarks/sweeps/model_accuracy.toml")
    parser.add_argument("--sets", default="", help="comma-separated set names (default: every shared set)")
    # one thread: OpenMP teams under load spend their time in barriers (docs/decisions/0004-omp-wait-policy-passive.md)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="override every config's epochs (smoke runs)")
    parser.add_argument("--max-train", type=int, default=120,
                        help="seeded subsample of at most N good training images per set, the same for every "
                             "configuration (the sweep's budget on 2 cores); 0: all")
    parser.add_argument("--dev-only", action="store_true",
                        help="table without the test halves: make the choice before seeing any test figure")
    parser.add_argument("--out", type=Path, default=TABLE, help="where --phase table writes its table")
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="checkpoints and evaluation caches (one folder per --max-train protocol)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = data_sets()
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    configs = [CONFIGS[c] for c in args.configs.split(",")]
    if args.epochs:
        configs = [replace(c, train=replace(c.train, epochs=args.epochs)) for c in configs]
    for name, root in sets.items():
        split(name, root)
    if args.phase in ("train", "all"):
        for config in configs:  # config-major: every set gets the cheap configs first
            for name, root in sets.items():
                train_one(args.runs, name, root, config, args.max_train)
    rows: list[dict[str, Any]] = []
    if args.phase in ("eval", "table", "all"):
        for config in configs:
            for name, root in sets.items():
                if checkpoint_path(args.runs, name, config.name).is_file():
                    rows += evaluate_one(args.runs, name, root, config, args.max_train)
    if args.phase in ("table", "all"):
        text = table(rows, list(sets), f"python benchmarks/model_accuracy.py --phase {args.phase} "
                                       f"--configs {args.configs} --max-train {args.max_train}"
                                       + (" --dev-only" if args.dev_only else ""), args.dev_only)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
