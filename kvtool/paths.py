"""Where kvtool keeps things on the local machine.

$KVTOOL_HOME (default ~/.kvtool) holds one embedded cluster's state; the
cache ($KVTOOL_CACHE, default ~/.cache/kvtool) holds builds shared by every
home, so a second cluster or a CI re-run does not rebuild Go.
"""

from __future__ import annotations

import os
from pathlib import Path


def kvtool_home() -> Path:
    return Path(os.environ.get("KVTOOL_HOME") or Path.home() / ".kvtool").expanduser().absolute()


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvtool"
    return Path(os.environ.get("KVTOOL_CACHE") or default).expanduser().absolute()


def source_root() -> Path:
    """The checkout kvtool runs from (controlplane/, schemas/ live beside the package)."""
    return Path(__file__).resolve().parent.parent
