"""Build the linewatch wheel from a copy of the checkout and install it into fresh virtual environments.

The wheel is built from a copy so that setuptools' build/ and egg-info folders never land in the
working tree (and a stale build/ can never leak old files into the wheel).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy_helpers import ROOT

# Folders of the checkout that are not part of the package source.
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache",
              ".pytest_cache", ".cache", ".linewatch", "demo-out", "models", "runs", "reports", "tests", "benchmarks")

# Runs the `linewatch` command, then writes the top-level modules it imported to $LW_MODULES_OUT: the
# check that a role's command never imports another role's heavy libraries.
MODULES_WRAPPER = """
import atexit, json, os, sys

def _dump():
    with open(os.environ["LW_MODULES_OUT"], "w") as out:
        json.dump(sorted({name.split(".")[0] for name in sys.modules}), out)

atexit.register(_dump)
from linewatch.deploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def build_wheel(folder: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout; returns the wheel's path."""
    source = folder / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(wheels)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("linewatch-*.whl")
    return wheel


def base_python() -> str:
    """The interpreter the project venv was made from (a venv made from a venv's python nests oddly)."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


def create_venv(folder: Path) -> Path:
    """A fresh virtual environment with pip; returns its python."""
    subprocess.run([base_python(), "-m", "venv", str(folder)], check=True, capture_output=True, timeout=120)
    return folder / "bin" / "python"


def pip_install(python: Path, *requirements: str, timeout: float = 600) -> float:
    """Install into ``python``'s venv from the index, with pip's default cache; returns the seconds taken."""
    started = time.monotonic()
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                             *requirements], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return time.monotonic() - started


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    return Path(out)


def folder_mib(folder: Path) -> float:
    """Size of the files under ``folder`` in MiB (like ``du``, without counting hard links twice)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total / 2**20


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without LINEWATCH_ settings or the project venv on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_") and k not in ("VIRTUAL_ENV",
                                                                                                 "PYTHONPATH")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**env, **extra}


def imported_modules(path: Path) -> set[str]:
    return set(json.loads(path.read_text()))


__all__ = ["MODULES_WRAPPER", "base_python", "build_wheel", "clean_env", "create_venv", "folder_mib",
           "imported_modules", "pip_install", "site_packages"]
