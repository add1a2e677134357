"""Print the launcher image's Python requirements, one per line, from pyproject.toml.

ONE definition, run by launcher_image/Dockerfile (`python3 launcher_image/requirements.py pyproject.toml`) and
loaded by kvtool.images.container: kvtool's dependencies plus its `runtime` extra, as pinned, less what the
image's commands never import.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

# Distributions that `kvtool launcher | handler | controller` never import; tests/test_container_images.py checks it
# on kvtool's import graph. pandas (with numpy, ~160 MB) is only for notebooks and `kvtool status` tables.
NOT_IN_IMAGE = ("pandas",)


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    wanted = [*project["dependencies"], *project.get("optional-dependencies", {}).get("runtime", [])]
    return [r for r in wanted if _name(r) not in NOT_IN_IMAGE]


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalized ("PyYAML==6.0.3" -> "pyyaml")."""
    for i, char in enumerate(requirement):
        if not (char.isalnum() or char in "-_."):
            requirement = requirement[:i]
            break
    return requirement.strip().lower().replace("_", "-").replace(".", "-")


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
