#!/usr/bin/env bash
# Builds the benchmark-only venv in which benchmarks/model_speed.py runs ours and anomalib's STFPM
# side by side (anomalib is never a project dependency). Usage: bash benchmarks/anomalib_env.sh [VENV]
# torch is pinned to the project's version so both models use the same kernels (oneDNN, OpenMP).
set -euo pipefail
venv=${1:-/tmp/bench-anomalib}
root=$(cd "$(dirname "$0")/.." && pwd)
python3 -m venv "$venv"
"$venv/bin/pip" install anomalib torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install --no-deps -e "$root"
"$venv/bin/python" -c "import anomalib.models.image.stfpm.torch_model, detector.stfpm.torch_model; print('ok')"
