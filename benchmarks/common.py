"""What every benchmark script shares: where the data sets are, sweep files, and the machine header.

Data sets: ``LINEWATCH_DATASETS`` when set, else ``../shared/datasets`` beside the checkout. Sweep grids:
``benchmarks/sweeps/<name>.toml``. Raw outputs: ``runs/`` (ignored by git).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
SWEEPS = BENCHMARKS / "sweeps"
SPLITS = BENCHMARKS / "splits"
RUNS = ROOT / "runs"


def datasets_dir() -> Path:
    """The shared data sets: ``LINEWATCH_DATASETS``, else ``../shared/datasets`` beside the checkout."""
    configured = os.environ.get("LINEWATCH_DATASETS")
    return Path(configured).expanduser() if configured else ROOT.parent / "shared" / "datasets"


def dataset(name: str) -> Path:
    """One set's MVTec-layout root (``<datasets>/<name>/<name>``)."""
    return datasets_dir() / name / name


def load_sweep(name: str) -> dict[str, Any]:
    """The sweep grid ``benchmarks/sweeps/<name>.toml``."""
    with (SWEEPS / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first CUDA device's name, or None (torch is imported only if already loaded or installed)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def machine(command: str | None = None) -> dict[str, Any]:
    """Machine, software, date and command line of this run (``command``: instead of this process's)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": command or shlex.join(["python", *sys.argv]),
        "load_1m": round(os.getloadavg()[0], 2),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One markdown line for a results file: machine, software, date, command."""
    m = info or machine()
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"Machine: {m['cpu']}, {m['cores']} cores{gpu}; Python {m['python']}, torch {m.get('torch')}. "
            f"Date: {m['date']}. Command: `{m['command']}`.")


def print_header() -> dict[str, Any]:
    """Print the machine header (one ``#`` line) and return it."""
    info = machine()
    print("#", machine_line(info), flush=True)
    return info
