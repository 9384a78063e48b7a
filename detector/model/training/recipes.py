"""Training recipes: named settings for kinds of parts, and ``auto``, which picks one from the good images.

No fixed geometry won on every shared set (benchmarks/results/model_accuracy.md): the fine map finds small
and thin defects on objects, the deep taps find the large low-contrast regions of textures. A plant cannot be
asked which suits its parts, so ``linewatch train`` trains the candidates and keeps the one that separates
synthetic defects drawn on its held-out good images best (``detector/model/training/recipe_choice.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line lists recipes without importing torch
    from linewatch.detector.model.training.train import TrainConfig

AUTO = "auto"


@dataclass(frozen=True)
class Recipe:
    """A name, what kind of part it suits, and the training settings it fixes."""

    name: str
    suits: str
    settings: dict[str, Any]

    def config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this recipe's settings (run settings such as epochs, seed and device stay ``base``'s)."""
        return replace(base, **self.settings)


RECIPES: dict[str, Recipe] = {
    "fine": Recipe("fine", "objects and small or thin defects: a 48x48 map (efficientnet_lite0 taps 2/4/10, 192 px)",
                   {"backbone": "efficientnet_lite0", "taps": (2, 4, 10), "image_size": 192, "map_taps": None,
                    "score_taps": None}),
    # The previous 8x8 default's deep taps judge the image; the fine taps of the same student show where (32x32):
    # an operator still sees the defect, which an 8x8 map did not show.
    "coarse": Recipe("coarse", "textures with large, low-contrast defects (stains, uneven surfaces): scores with "
                               "deep taps 10/14, shows the 32x32 map of taps 2/4/10 (128 px)",
                     {"backbone": "efficientnet_lite0", "taps": (2, 4, 10, 14), "image_size": 128,
                      "map_taps": (2, 4, 10), "score_taps": (10, 14)}),
    # fine's geometry on square tiles of long parts: a 1130x460 part is 3 tiles at 192 px instead of one squash,
    # so a thin defect keeps 2.4x more pixels across the long axis (detector/model/tiling.py). Up to 10 epochs:
    # each image gives several tiles, so 10 epochs are more student updates than fine's 20, and on bsdata's dev
    # half 10 epochs did better than 20 on all three figures (benchmarks/results/tiling_accuracy.md) and keep
    # `auto` on long parts near 3x the training time of one recipe.
    "tiled": Recipe("tiled", "long parts (aspect >= 1.5) with small or thin defects: fine's 48x48 map on each of "
                             "the part's overlapping square tiles (192 px each)",
                    {"backbone": "efficientnet_lite0", "taps": (2, 4, 10), "image_size": 192, "map_taps": None,
                     "score_taps": None, "resize_mode": "squash", "tiling": "long-axis", "epochs": 10}),
}
# What ``auto`` trains, in order of preference: a later one must win clearly (recipe_choice.py); why "coarse"
# first: docs/decisions/0002-default-recipe-and-auto-selection.md.
CANDIDATES = ("coarse", "fine")
# Joins the candidates (last: it must win clearly) only when the training images are long, so square parts
# train nothing extra (recipe_choice.candidates_for).
LONG_PARTS_CANDIDATE = "tiled"


def recipe_names() -> tuple[str, ...]:
    """What ``--recipe`` accepts."""
    return (AUTO, *RECIPES)


def describe() -> str:
    """One line per recipe, for ``linewatch recipes``."""
    width = max(len(n) for n in recipe_names())
    lines = [f"{name:<{width}}  {recipe.suits}" for name, recipe in RECIPES.items()]
    lines.append(f"{AUTO:<{width}}  the default: trains {', '.join(CANDIDATES)} and keeps the one that best separates "
                 "synthetic defects (thin scratches, low-contrast blotches, pasted patches, noise blends) drawn on "
                 f"the held-out good images, or real ones with --select-on DIR; {LONG_PARTS_CANDIDATE} too when the "
                 "good images are long (median aspect ratio >= 1.5)")
    return "\n".join(lines)
