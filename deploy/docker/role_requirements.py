"""Print the requirements of a linewatch role, one a line: the core dependencies plus the given extras.

    python role_requirements.py pyproject.toml camera
    python role_requirements.py pyproject.toml detector --skip torch,torchvision

The Dockerfile installs a role's dependencies from pyproject.toml alone, in a layer of their own, before
any source is copied, so a code change does not download them again. Self-referencing extras
(``linewatch[lifecycle]``) are expanded here because linewatch itself is not installed yet.
Standard library only: it runs in the bare build image.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
_SELF = re.compile(r"^linewatch\[([a-z0-9_,-]+)\]$")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement line."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def role_requirements(project: dict[str, Any], extras: list[str]) -> list[str]:
    """Core dependencies and the extras' requirements, self-references expanded, first spelling kept."""
    optional = project["optional-dependencies"]
    pending, lines = list(extras), list(project["dependencies"])
    seen_extras: set[str] = set()
    while pending:
        extra = pending.pop(0)
        if extra in seen_extras:
            continue
        if extra not in optional:
            raise SystemExit(f"linewatch has no extra {extra!r} (known: {', '.join(sorted(optional))})")
        seen_extras.add(extra)
        for requirement in optional[extra]:
            nested = _SELF.match(requirement.replace(" ", ""))
            if nested:
                pending.extend(nested.group(1).split(","))
            else:
                lines.append(requirement)
    unique: dict[str, str] = {}
    for line in lines:
        unique.setdefault(requirement_name(line), line)
    return list(unique.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", help="comma-separated extras, e.g. alerts,lifecycle,plant")
    parser.add_argument("--skip", default="", help="comma-separated names installed elsewhere (torch's own index)")
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text())["project"]
    skip = {requirement_name(name) for name in args.skip.split(",") if name}
    for line in role_requirements(project, args.extras.split(",")):
        if requirement_name(line) not in skip:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
