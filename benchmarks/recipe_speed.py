"""Parts/s of each recipe on one set's frames, side by side: what ``linewatch bench`` reports, interleaved.

Every checkpoint of ``runs/recipes/<set>/`` (``recipe_table.py``) is loaded on each backend asked for and
measured by ``detector.evaluation.bench.measure`` (the whole path from uint8 frames of the set's size to
calibrated scores and maps, in a worker thread with ``--threads``), repeat r of every (recipe, backend) before
repeat r+1 of any, so background load hits all alike; medians over repeats. A tiled recipe runs each long
frame as several tiles, so its parts/s is what a camera of such parts gets.

    cd benchmarks && PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE ../.venv/bin/python recipe_speed.py --set bsdata \
        --frame 460x1130 --backends openvino,openvino:bf16,torch --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics

from recipe_table import RUNS

import common
from linewatch.detector.evaluation.bench import measure
from linewatch.detector.model.backends.loader import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="bsdata")
    parser.add_argument("--frame", default="460x1130", help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--backends", default="openvino,torch",
                        help="backends, each optionally BACKEND:PRECISION (openvino:bf16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    height, width = (int(v) for v in args.frame.split("x"))
    models = {(path.stem, runtime): load_model(path, runtime.split(":")[0], "cpu", threads=args.threads,
                                               precision=[*runtime.split(":"), "fp32"][1])
              for path in sorted((RUNS / args.set).glob("*.safetensors")) for runtime in args.backends.split(",")}
    fps: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    for _ in range(args.repeats):
        for key, model in models.items():
            fps[key].append(measure(model, args.batch, args.seconds, threads=args.threads, frame_side=height,
                                    frame_width=width).frames_per_s)
    rows = [{"recipe": recipe, "backend": backend, "parts_per_s_median": statistics.median(values),
             "repeats": values} for (recipe, backend), values in fps.items()]
    print(json.dumps({"machine": common.machine(), "set": args.set, "frame": args.frame, "batch": args.batch,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
