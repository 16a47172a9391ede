"""Print the pinned requirements of pyproject.toml (base, plus the extras named).

Images install their third-party dependencies in a layer of their own, keyed on
pyproject.toml alone, so a source change does not reinstall torch. Standard library
only: it runs in the build stage before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies followed by those of each extra in ``extras``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted.extend(project["optional-dependencies"][extra])
    return wanted


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
