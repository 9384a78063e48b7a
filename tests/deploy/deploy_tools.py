"""The deploy checks of deploy/README.md ("What CI checks"), run verbatim with the real tools.

The README's ``sh`` block is the single source of the commands: the tests run exactly that block
(kubectl kustomize, kubernetes-validate, the CRD schema check, docker-compose config, hadolint,
promtool, amtool) and then inspect what it rendered into ``$OUT``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from deploy_helpers import DEPLOY, ROOT

README = DEPLOY / "README.md"
VENV_BIN = Path(sys.executable).parent
# From the Debian packages prometheus and prometheus-alertmanager (deploy/system-deps.sh); every other
# tool comes from the test extra, so its absence is a failure, not a skip.
DEBIAN_TOOLS = ("promtool", "amtool")


class ChecksFailedError(AssertionError):
    """A command of the README's check block failed; the message holds its output."""


def checks_block(readme: Path = README) -> str:
    """The ``sh`` code block under "## What CI checks"."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## What CI checks"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    if match is None:
        raise ChecksFailedError(f"{readme}: no ```sh block under '## What CI checks'")
    return match.group(1)


def tool_env(out: Path) -> dict[str, str]:
    """The environment the block runs in: the venv's tools first on PATH, ``OUT`` set."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OUT": str(out)}


def missing_debian_tools() -> list[str]:
    path = tool_env(Path("."))["PATH"]
    return [tool for tool in DEBIAN_TOOLS if shutil.which(tool, path=path) is None]


def run_checks(out: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the README block with bash (-e: the first failing command fails it)."""
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", checks_block()], cwd=cwd, env=tool_env(out),
                          capture_output=True, text=True, timeout=300)


def run_tool(args: list[str], cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """One tool from the venv or PATH, output captured."""
    return subprocess.run(args, cwd=cwd, env=tool_env(Path(".")), capture_output=True, text=True, timeout=120,
                          **kwargs)


def load_rendered(path: Path) -> list[dict[str, Any]]:
    """The objects of a rendered kustomization."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (and ``name``) among ``docs``."""
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def load_compose_model(out: Path) -> dict[str, Any]:
    """The compose model as docker-compose resolved it (``config --format json`` in the block)."""
    return json.loads((out / "compose.json").read_text(encoding="utf-8"))
