"""Code says what is true now: no issue, round or session numbers in Python files (the history is in git, the
reasons for defaults in docs/decisions/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HISTORY = re.compile(r"(?<!-)\b(?:issues? #?\d+|rounds? \d+|sessions? \d+|before issue)\b", re.IGNORECASE)

pytestmark = pytest.mark.unit


def _python_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.splitlines() if (ROOT / name).is_file()]


def test_no_issue_round_or_session_numbers_in_code() -> None:
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
             for path in _python_files() if path.name != Path(__file__).name
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if HISTORY.search(line)]
    assert not found, "history in code (say what holds now; reasons go to docs/decisions/):\n" + "\n".join(found)


@pytest.mark.parametrize("line", ["# fixed in issue 12", "(session 7)", "round 3 of the sweep", "before issue 4"])
def test_the_check_sees_history(line: str) -> None:
    assert HISTORY.search(line)


@pytest.mark.parametrize("line", ["three interleaved rounds", "--rounds 3", "one broker session", "the issue is"])
def test_the_check_lets_plain_words_pass(line: str) -> None:
    assert not HISTORY.search(line)
