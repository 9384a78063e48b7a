#!/bin/bash
# Trains the checkpoints of benchmarks/recipe_table.py with the product's own command, one torch thread each,
# and logs wall and CPU seconds to runs/recipes/times.txt. Usage, from the checkout:
#   benchmarks/train_recipes.sh bsdata:fine bsdata:coarse magnetic_tile:coarse ...   (SET:RECIPE, skips done ones)
# RECIPE_SEED=N trains with seed N, into RECIPE_RUNS (default runs/recipes; recipe_table.py reads the same variable).
# SET:previous8x8 trains the previous 8x8 default (taps 10/14 at 128 px, no recipe): the done-when's reference row.
# TRAIN_ARGS: more `linewatch train` flags for every job (a what-if, e.g. TRAIN_ARGS="--patience 0").
set -euo pipefail
cd "$(dirname "$0")/.."
datasets=${LINEWATCH_DATASETS:-../shared/datasets}
runs=${RECIPE_RUNS:-runs/recipes}
seed=${RECIPE_SEED:-0}
for job in "$@"; do
  set_name=${job%%:*}; recipe=${job##*:}
  out=$runs/$set_name/$recipe.safetensors
  mkdir -p "$runs/$set_name"
  [ -f "$out" ] && continue
  if [ "$recipe" = previous8x8 ]; then geometry=(--taps 10,14 --image-size 128); else geometry=(--recipe "$recipe"); fi
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /usr/bin/time -f "$set_name $recipe wall=%e user=%U" -a -o "$runs/times.txt" \
    nice -n 10 .venv/bin/linewatch train "$datasets/$set_name/$set_name" --out "$out" "${geometry[@]}" --seed "$seed" ${TRAIN_ARGS:-} --quiet \
    > "$runs/$set_name/$recipe.log" 2>&1
done
