"""Where kvtool keeps things on the local machine.

$KVTOOL_HOME (default ~/.kvtool) holds one embedded cluster's state; the
cache ($KVTOOL_CACHE, default ~/.cache/kvtool) holds builds shared by every
home, so a second cluster or a CI re-run does not rebuild Go.
"""

from __future__ import annotations

import hashlib
import os
import threading
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


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> Path:
    """Write a whole file so a concurrent reader sees the old one or the new one, never half of either.

    The temporary file is created with `mode` (and chmod'ed to it past the umask), so a private file is
    never readable by others, even for a moment. Its name is unique per process and thread.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
