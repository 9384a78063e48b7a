"""Early stopping's floor of student updates, as a what-if: train recipes with another ``MIN_PATIENCE_UPDATES``.

``linewatch train`` stops after ``patience`` epochs without a better validation loss, and only once those epochs
hold at least ``train.MIN_PATIENCE_UPDATES`` student updates (``train.patience_epochs``). This trains each
SET:RECIPE through the product's own command with the floor set to ``--min-updates`` (0: the earlier rule, three
epochs whatever their size), into ``RUNS/SET/RECIPE.safetensors`` with ``RUNS/times.txt`` lines as
``train_recipes.sh`` writes them, so ``recipe_table.py`` (``RECIPE_RUNS=RUNS``) compares the runs on the dev halves:

    cd benchmarks && PYTHONPATH=. OMP_NUM_THREADS=1 ../.venv/bin/python early_stop_whatif.py --min-updates 0 \\
        --seed 1 --runs ../runs/floor0-seed1 paper_brg02_rl:coarse paper_brg02_rl:fine
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import common
from linewatch.deploy.cli import main as linewatch
from linewatch.detector.model.training import train


def cpu_seconds() -> float:
    """User CPU seconds of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", metavar="SET:RECIPE")
    parser.add_argument("--min-updates", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, required=True)
    args = parser.parse_args()
    train.MIN_PATIENCE_UPDATES = args.min_updates  # read by patience_epochs at each run
    for job in args.jobs:
        set_name, recipe = job.split(":")
        out = args.runs / set_name / f"{recipe}.safetensors"
        if out.is_file():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        wall, cpu = time.perf_counter(), cpu_seconds()
        code = linewatch(["train", str(common.dataset(set_name)), "--out", str(out), "--recipe", recipe,
                          "--seed", str(args.seed), "--quiet"])
        if code:
            raise SystemExit(f"{job}: linewatch train exited {code}")
        with (args.runs / "times.txt").open("a") as times:
            times.write(f"{set_name} {recipe} wall={time.perf_counter() - wall:.2f} user={cpu_seconds() - cpu:.2f}\n")


if __name__ == "__main__":
    main()
