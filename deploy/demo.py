"""``linewatch demo``: the whole line on one machine, then a summary.

Local broker and Redis -> (cached or freshly trained) model -> ``linewatch detect`` and
``linewatch alerts`` as subprocesses -> cameras replaying the test split at a set rate for a
bounded time -> wait for the line to drain -> summary printed and written to ``--out``.
Everything started here is stopped on exit, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linewatch.common.signals import interrupt_on_signals

if TYPE_CHECKING:
    from linewatch.deploy.demo_run import DemoOptions

log = logging.getLogger(__name__)



def checkout_root() -> Path | None:
    """The source checkout this code runs from (``make demo``), None when installed from a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def shared_data() -> Path | None:
    """magnetic_tile in ../shared beside a checkout (the data sets of the benchmarks), None elsewhere."""
    root = checkout_root()
    return None if root is None else root.parent / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"


def bundled_data() -> Path | None:
    """A few MB of real BSData images shipped as package data (CC BY-SA 4.0, demo_data/LICENSE.md), so a
    wheel install or a fresh clone without ../shared still replays real parts with real defect masks.
    None when the package is not on the file system (a zip import): the demo then makes synthetic parts."""
    sample = resources.files("linewatch.deploy") / "demo_data" / "bsdata_sample"
    return sample if isinstance(sample, Path) else None


def default_data() -> Path | None:
    """../shared's magnetic_tile when present, else the bundled sample."""
    shared = shared_data()
    return shared if shared is not None and (shared / "test").is_dir() else bundled_data()


def _user_folder(variable: str, fallback: str) -> Path:
    """An XDG base directory (a relative value is ignored, as the specification says)."""
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home() / fallback


def default_cache_dir() -> Path:
    """Trained demo models: kept across runs and checkouts, and safe to delete (a cache)."""
    return _user_folder("XDG_CACHE_HOME", ".cache") / "linewatch" / "models"


def default_out_dir() -> Path:
    """Summary, logs, registry and state of the last run. Not the current folder: an installed user may run
    the demo from anywhere, and it should not drop files there unasked (``make demo`` passes ``--out demo-out``)."""
    return _user_folder("XDG_STATE_HOME", ".local/state") / "linewatch" / "demo"


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    from linewatch.deploy.demo_model import DEMO_EPOCHS, DEMO_TRAIN_IMAGES

    p = subparsers.add_parser("demo", help="run the whole line locally for a bounded time and print a summary",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="MVTec-layout data set (train/good, test/<type>); default: ../shared's magnetic_tile "
                        "beside the checkout, else the bundled BSData sample; synthetic parts when it is absent")
    p.add_argument("--synthetic", action="store_true", help="use synthetic parts even when --data exists")
    p.add_argument("--duration", type=float, default=90.0, help="seconds the cameras run (default 90)")
    p.add_argument("--cameras", type=int, default=4, help="number of cameras (default 4)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second per camera (default 2)")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                   help=f"most training epochs, with early stopping (default {DEMO_EPOCHS})")
    p.add_argument("--image-size", type=int, help="model input size (default: the recipe's)")
    p.add_argument("--recipe", choices=["fine", "coarse"], default=None,
                   help="training recipe (`linewatch recipes`; default: coarse for ../shared's magnetic tiles, whose "
                        "large low-contrast defects it finds, fine otherwise)")
    p.add_argument("--train-images", type=int, default=DEMO_TRAIN_IMAGES,
                   help=f"good training images, evenly spread over the set (default {DEMO_TRAIN_IMAGES}; 0: all)")
    p.add_argument("--retrain", action="store_true", help="train even when a cached model matches")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where trained models are kept (default: $XDG_CACHE_HOME or ~/.cache, then linewatch/models)")
    p.add_argument("--out", type=Path, default=None,
                   help="summary.json, summary.html, logs and the run's state (default: $XDG_STATE_HOME or "
                        "~/.local/state, then linewatch/demo)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (training and detector)")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="the detector's model runtime (auto: the fastest measured here)")
    p.add_argument("--port", type=int, default=0, help="port of the alerts web page (default: a free one)")
    p.add_argument("--drain-timeout", type=float, default=90.0, help="seconds to wait for the line to catch up")
    p.set_defaults(func=run_demo)


def demo_options(args: argparse.Namespace) -> DemoOptions:
    """The run's options from the command line; the data set is None (synthetic parts) when absent."""
    from linewatch.deploy.demo_run import DemoOptions

    asked = args.data or default_data()
    data = None if args.synthetic or asked is None or not (asked / "test").is_dir() else asked
    if data is None and not args.synthetic:
        print(f"no data set at {asked or 'the bundled sample'}: using the synthetic part generator", flush=True)
    out, cache_dir = args.out or default_out_dir(), args.cache_dir or default_cache_dir()
    print(f"data: {data or 'synthetic parts'}; outputs: {out}; model cache: {cache_dir}", flush=True)
    return DemoOptions(data=data, out=out, cache_dir=cache_dir, cameras=args.cameras, fps=args.fps,
                       duration=args.duration, drain_timeout=args.drain_timeout, epochs=args.epochs,
                       image_size=args.image_size, train_images=args.train_images, retrain=args.retrain,
                       device=args.device, backend=args.backend, port=args.port, recipe=_recipe(args, data))


def _recipe(args: argparse.Namespace, data: Path | None) -> str:
    """The demo pins a recipe instead of training every candidate (which would double its training time): the
    one the dev half of ../shared's magnetic_tile prefers for it (image AUROC 0.889 against 0.712;
    docs/decisions/0002-default-recipe-and-auto-selection.md), fine for anything else."""
    if args.recipe:
        return str(args.recipe)
    shared_set = shared_data()
    shared = data is not None and shared_set is not None and data.resolve() == shared_set.resolve()
    return "coarse" if shared else "fine"


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``linewatch demo``; returns 0 when every frame sent got a result or a dead letter."""
    from linewatch.deploy.demo_processes import Processes
    from linewatch.deploy.demo_run import DemoRun
    from linewatch.deploy.local import LocalServiceError, start_local_stack

    options = demo_options(args)
    log_dir = options.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = Processes(log_dir)
    stack = None
    run = None
    # SIGTERM ends the demo like Ctrl-C (KeyboardInterrupt, exit 130), and the cleanup below is not cut short.
    with interrupt_on_signals():
        try:
            stack = start_local_stack(log_dir / "stack")
            print(f"broker {stack.bootstrap_servers}, Redis {stack.redis_url}", flush=True)
            run = DemoRun(options, stack, processes)
            return run.run()
        except (LocalServiceError, RuntimeError, ValueError, OSError) as exc:
            print(f"linewatch demo: {exc}", file=sys.stderr)
            return 1
        finally:
            processes.stop()
            if run is not None:
                run.forget_state()  # after the services stopped writing
            if stack is not None:
                stack.stop()
