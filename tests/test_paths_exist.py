"""Every repository path named in comments, docstrings, help text and docs exists.

Reads the files git knows (tracked, or new and not ignored): Python comments and prose string literals
(docstrings, help text: strings with a space), markdown, shell scripts and TOML. A path is a token that starts
at a top-level folder (``detector/model/export.py``, ``tests/``), a link relative to its file (``../x/y.md``
in docs/decisions/), or ``../shared/...`` (the data beside the checkout; skipped when that folder is absent).
``linewatch/...`` counts only with a file suffix (otherwise it is an MQTT topic or a cache folder). URLs are
left out, and so is the History part of benchmark results files (it records the tree as it was).
"""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOP = ("common", "ingest", "detector", "health", "plant", "alerts", "deploy", "benchmarks", "tests", "docs",
       "linewatch")
FILE_SUFFIX = re.compile(r"\.[A-Za-z0-9]+$")
PATH = re.compile(r"(?<![\w./-])((?:\.\./)+)?((?:" + "|".join(TOP) + r"|shared)/[\w./-]*)")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
SUFFIXES = (".py", ".md", ".sh", ".toml")
# Generated outputs: named in the tree, written only by a run.
ALLOWED = {
    "benchmarks/results/reliability.json": "written by full-size runs of tests/reliability, not committed",
    "deploy/k8s/secrets/registry.env": "the operator writes it from registry.env.example; git ignores secrets",
    "deploy/linewatch-alerts": "kubectl's deploy/<name> (a Deployment), not a path",
}


def _files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.splitlines() if name.endswith(SUFFIXES) and (ROOT / name).is_file()]


def _python_text(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and prose string literal (one with a space: not a path or key in code)."""
    found = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and re.search(r"\s", token.string)):
                found += [(token.start[0] + i, line) for i, line in enumerate(token.string.splitlines())]
    except (tokenize.TokenError, SyntaxError):
        return list(enumerate(source.splitlines(), 1))
    return found


def _texts(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(errors="replace")
    if path.suffix == ".py":
        return _python_text(source)
    lines = source.splitlines()
    if path.parent == ROOT / "benchmarks" / "results" and "## History" in lines:
        lines = lines[:lines.index("## History")]
    return list(enumerate(lines, 1))


def _target(path: Path, up: str | None, token: str) -> Path | None:
    """Where ``token`` points, or None when it need not exist here."""
    if token.startswith("shared/"):
        if up != "../":
            return None  # some other folder named shared, not the data beside the checkout
        return SHARED.parent / token if SHARED.is_dir() else None
    if up:
        return (path.parent / up / token).resolve()
    return ROOT / token


def stale_paths() -> list[str]:
    """``file:line: path`` for every named path that does not exist."""
    stale = []
    for path in _files():
        for line, text in _texts(path):
            for match in PATH.finditer(URL.sub(" ", text)):
                up, token = match.group(1), match.group(2).rstrip(".-")
                if token in ALLOWED or (token.startswith("linewatch/") and not FILE_SUFFIX.search(token)):
                    continue
                target = _target(path, up, token)
                if target is not None and not target.exists():
                    stale.append(f"{path.relative_to(ROOT)}:{line}: {(up or '') + token}")
    return stale


def test_every_named_path_exists() -> None:
    stale = stale_paths()
    assert not stale, "paths named in the tree that do not exist:\n" + "\n".join(stale)


if __name__ == "__main__":
    print("\n".join(stale_paths()))
