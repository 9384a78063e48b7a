"""Recipes, synthetic defects and ``--recipe auto``: what is drawn, the selection rule, and the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linewatch.deploy.cli import main
from linewatch.detector.model.training.precisions import native_precisions
from linewatch.detector.model.training.recipe_choice import (
    MARGIN,
    SELECTION_FIGURES,
    choose,
    required_margin,
    synthetic_selection,
)
from linewatch.detector.model.training.recipes import CANDIDATES, RECIPES, recipe_names
from linewatch.detector.model.training.synthetic_defects import KINDS, make_defects
from linewatch.ingest.synthetic import render_sample


def _goods(n: int, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [np.clip(rng.normal(128, 20, (size, size + 40, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.mark.unit
def test_synthetic_defects_are_seeded_cycle_the_kinds_and_change_only_masked_pixels() -> None:
    goods = _goods(4)
    first, again = make_defects(goods, per_image=2, seed=5), make_defects(goods, per_image=2, seed=5)
    assert [d.kind for d in first] == [KINDS[i % len(KINDS)] for i in range(8)]
    for d, e, good in zip(first, again, [g for g in goods for _ in range(2)], strict=True):
        assert np.array_equal(d.image, e.image) and np.array_equal(d.mask, e.mask)
        changed = np.abs(d.image.astype(int) - good.astype(int)).max(axis=2) > 2
        assert d.mask.any() and d.mask.shape == good.shape[:2]
        assert not (changed & ~_dilated(d.mask)).any(), f"{d.kind} changed pixels outside its mask"
    assert not np.array_equal(make_defects(goods, seed=6)[0].image, first[0].image)
    with pytest.raises(ValueError, match="unknown defect kinds"):
        make_defects(goods, kinds=["dent"])


def _dilated(mask: np.ndarray) -> np.ndarray:
    """The mask grown by 2 pixels (anti-aliased edges and soft blotch borders fade out just outside it)."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) | mask


@pytest.mark.unit
def test_scratches_stay_thin_at_the_images_own_resolution() -> None:
    """A thin defect must be thin before any model resizes the image: 1-3 pixels wide, however large the image."""
    goods = _goods(6, size=400)
    for d in make_defects(goods, seed=2, kinds=["scratch"]):
        # the farthest a defect pixel lies from a clean one is half the line's width: at most 3 px drawn, plus
        # anti-aliasing, plus the overlap where two segments of the bending line meet
        half_width = cv2.distanceTransform(d.mask.astype(np.uint8), cv2.DIST_L2, 5).max()
        assert half_width <= 4.0 and d.mask.sum() > 40, (half_width, d.mask.sum())


@pytest.mark.unit
def test_selection_draws_enough_defects_on_few_held_out_images() -> None:
    selection = synthetic_selection(_goods(6))
    assert selection.labels.sum() >= 60 and (~selection.labels).sum() == 6
    assert set(selection.kinds) == {"good", *KINDS}


@pytest.mark.unit
def test_the_rule_prefers_the_earlier_candidate_unless_a_later_one_wins_by_more_than_the_margin() -> None:
    labels = np.r_[np.zeros(200, bool), np.ones(400, bool)]
    rng = np.random.default_rng(3)
    a = rng.normal(size=600) + 2.0 * labels
    b = a + rng.normal(scale=0.05, size=600)  # ranks nearly alike: the standard error is tiny, MARGIN rules

    def figures(first: float, second: float) -> dict[str, dict[str, Any]]:
        return {"fine": {"score": first, "image_scores": a}, "coarse": {"score": second, "image_scores": b}}

    assert choose(figures(0.80, 0.80 + MARGIN / 2), labels) == "fine"
    clear = figures(0.80, 0.80 + 2 * MARGIN)
    assert choose(clear, labels) == "coarse" and clear["coarse"]["margin"] == MARGIN
    assert choose(figures(0.9, 0.7), labels) == "fine"


@pytest.mark.unit
def test_with_few_held_out_images_a_later_candidate_needs_more_than_the_margin() -> None:
    """6 good images and 60 defects, both candidates near chance: a 0.05 lead is not evidence."""
    labels = np.r_[np.zeros(6, bool), np.ones(60, bool)]
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=66) + 0.2 * labels, rng.normal(size=66) + 0.2 * labels
    few = {"fine": {"score": 0.56, "image_scores": a}, "coarse": {"score": 0.61, "image_scores": b}}
    assert required_margin(a, b, labels) > 0.05 and choose(few, labels) == "fine"


@pytest.mark.unit
def test_recipes_lists_every_recipe_and_auto_refuses_a_geometry(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(line.split()[0] in recipe_names() for line in listed.splitlines())
    assert {line.split()[0] for line in listed.splitlines()} == set(recipe_names()) == {"auto", *RECIPES}
    assert set(CANDIDATES) <= set(RECIPES)
    folder = _folder(tmp_path, 3)
    out = str(tmp_path / "m.safetensors")
    assert main(["train", str(folder), "--out", out, "--recipe", "auto", "--taps", "2,4"]) == 2
    assert "--recipe auto chooses the geometry itself; drop --taps" in capsys.readouterr().err
    assert main(["train", str(folder), "--out", out, "--recipe", "fine", "--select-on", str(folder)]) == 2
    assert "--select-on chooses among recipes" in capsys.readouterr().err


def _folder(root: Path, n: int, size: int = 64) -> Path:
    folder = root / "good"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = render_sample(i, size=size, defect_probability=0.0).image
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


def _tiny_mvtec(root: Path, size: int = 64) -> Path:
    """12 good training parts; 4 good and 4 defective (scratch, blob) test parts with their masks."""
    _folder(root / "train", 12, size)
    for i in range(8):
        kind = None if i < 4 else ("scratch", "blob")[i % 2]
        sample = render_sample(500 + i, size=size, defect_probability=0.0, defect_type=kind)
        folder = root / "test" / (kind or "good")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        if kind:
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i}_mask.png"), sample.mask)
    return root


@pytest.mark.slow  # trains both candidates for one epoch through the CLI, then evaluates
def test_train_without_flags_chooses_a_recipe_and_evaluate_reports_why(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = _tiny_mvtec(tmp_path / "part")
    out = tmp_path / "m.safetensors"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "recipe selection on" in printed and "<- chosen" in printed
    assert main(["evaluate", "--model", str(out), str(data), "--report", str(tmp_path / "report"),
                 "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    selection = metrics["selection"]
    assert metrics["recipe"] == selection["chosen"] and set(selection["candidates"]) == set(CANDIDATES)
    assert selection["on"] == "synthetic" and selection["defects"] >= 60
    for figures in selection["candidates"].values():
        assert 0.0 <= figures["image_auroc"] <= 1.0 and set(figures["image_auroc_by_kind"]) == set(KINDS)
        assert 0.0 <= figures["aupro"] <= 1.0  # localisation of the synthetic defects, shown beside the score
        assert figures["score"] == pytest.approx(np.mean([figures[k] for k in SELECTION_FIGURES]), abs=1e-3)
    assert "chosen automatically" in (tmp_path / "report" / "report.html").read_text()
    # real labelled defects instead of synthetic ones
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--device", "cpu", "--quiet",
                 "--select-on", str(data)]) == 0
    assert "recipe selection on" in capsys.readouterr().out
    from linewatch.detector.model.inference import AnomalyModel

    metadata = AnomalyModel.load(out, "cpu").metadata
    assert metadata.training["selection"]["on"] == str(data) and metadata.training["recipe"] in CANDIDATES
    # on a CPU with native bf16 the chosen model is calibrated there too, on the same held-out good images
    assert set(metadata.precision_calibrations) == set(native_precisions())
    for calibration in metadata.precision_calibrations.values():
        assert calibration.score_stats["n"] == metadata.calibration.score_stats["n"]
