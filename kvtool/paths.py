"""Where kvtool keeps things on the local machine.

$KVTOOL_HOME (default ~/.kvtool) holds one embedded cluster's state; the
cache ($KVTOOL_CACHE, default ~/.cache/kvtool) holds builds shared by every
home, so a second cluster or a CI re-run does not rebuild Go.
"""

from __future__ import annotations

import hashlib
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


def run_dir(home: Path | None = None) -> Path:
    """A short per-home runtime dir for the embedded cluster's sockets.

    The launcher's longest socket is <sockets>/<pod uid>.libvirt/libvirt-admin-sock and unix socket
    paths must stay under 108 bytes, so the sockets dir may be at most 43 bytes: hence /run/kvt-<hash>.
    """
    return Path("/run") / f"kvt-{cluster_id(home)}"


def cluster_id(home: Path | None = None) -> str:
    """8 hex digits unique to a home: names machine-wide things (/run dir, network namespaces, bridges)."""
    return hashlib.sha256(str(home or kvtool_home()).encode()).hexdigest()[:8]


def node_sockets_dir(node: str, home: Path | None = None) -> Path:
    """What /var/run/kvtool/sockets is on an embedded-cluster node."""
    return run_dir(home) / node / "sockets"
