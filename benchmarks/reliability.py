"""Reliability suite runner: runs tests/reliability at full size and renders the figures as markdown.

Usage::

    nice -n 10 .venv/bin/python benchmarks/reliability.py            # full size (LINEWATCH_FULL=1), ~30+ min
    .venv/bin/python benchmarks/reliability.py --render-only          # only render the markdown from the JSON
    nice -n 10 .venv/bin/python benchmarks/reliability.py --keep -- -k soak   # rerun some cases, keep the rest

Each test appends its figures to ``benchmarks/results/reliability.json`` (full size only); this script
clears that file first, runs pytest, and renders every case's figures to ``runs/reliability.md`` (``--out``).
``benchmarks/results/reliability.md`` is kept by hand: copy the new figures into its "Current figures" table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = common.ROOT
JSON_PATH = common.RESULTS / "reliability.json"
MD_PATH = common.RUNS / "reliability.md"
MUST_BE_ZERO = ("lost", "webhook_lost", "alertmanager_lost", "lost_after_send", "crashes", "duplicates_after_dedup",
                "webhook_duplicates_after_dedup", "webhook_unexpected", "unexpected")


def run_suite(extra: list[str], keep: bool) -> int:
    """Run the reliability tests at full size; returns pytest's exit code."""
    if not keep:
        JSON_PATH.unlink(missing_ok=True)
    env = {**os.environ, "LINEWATCH_FULL": "1"}
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-s", "-q", *extra]
    print("running:", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def render(command: str, exit_code: int | None, elapsed_s: float | None) -> str:
    """Markdown of every case's figures in the JSON file."""
    entries = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else []
    latest = {entry["case"]: entry for entry in entries}  # a rerun of a case replaces its earlier figures
    entries = list(latest.values())
    lines = ["# Reliability and security figures", "",
             f"- Command: `{command}`", f"- Machine: {platform.node()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}; the machine is shared (see load per case).",
             f"- Exit code: {exit_code}; wall time: {elapsed_s / 60:.1f} min" if elapsed_s else "- (rendered only)",
             ""]
    for entry in entries:
        figures = entry["figures"]
        zeros = {k: figures[k] for k in MUST_BE_ZERO if k in figures}
        lines += [f"## {entry['case']} ({entry['size']} size, {entry['at']}, {entry['machine']})", "",
                  "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if isinstance(v, dict | list) else v} |" for k, v in sorted(figures.items())]
        verdict = "all zero" if all(not v for v in zeros.values()) else f"NOT zero: {zeros}"
        lines += ["", f"Must-be-zero figures ({', '.join(zeros) or 'none'}): {verdict}.", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--keep", action="store_true", help="append to the JSON of an earlier run (reruns)")
    parser.add_argument("--out", type=Path, default=MD_PATH, help="where the markdown goes")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k crash")
    args = parser.parse_args()
    command = "nice -n 10 .venv/bin/python benchmarks/reliability.py " + " ".join(args.pytest_args)
    code, elapsed = None, None
    if not args.render_only:
        started = time.monotonic()
        code = run_suite(args.pytest_args, args.keep)
        elapsed = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(command.strip(), code, elapsed))
    print(f"wrote {args.out}")
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
