#!/usr/bin/env bash
# Builds the benchmark-only venv in which benchmarks/model_speed.py runs ours and anomalib's STFPM
# side by side (anomalib is never a project dependency). Usage: bash benchmarks/anomalib_env.sh [VENV]
# The project's own venv (.venv, or PROJECT_VENV) is put on this venv's path with a .pth file, so both
# models run the same torch, OpenVINO and ONNX Runtime builds (same oneDNN and OpenMP) and pip does not
# fetch a second multi-GB torch; only anomalib and what it needs beyond the project are installed here.
set -euo pipefail
venv=${1:-/tmp/bench-anomalib}
root=$(cd "$(dirname "$0")/.." && pwd)
project_venv=${PROJECT_VENV:-$root/.venv}
python3 -m venv "$venv"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$project_venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/linewatch-project.pth"
"$venv/bin/pip" install "anomalib==2.7.0" "torch==$("$project_venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
"$venv/bin/pip" install --no-deps -e "$root"
cd /  # the check must not import linewatch from the checkout's working directory
"$venv/bin/python" -c "import anomalib.models.image.stfpm.torch_model, linewatch.detector.model.stfpm.torch_model; print('ok')"
