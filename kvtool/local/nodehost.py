"""What makes an embedded node a host of its own besides its network: its cgroups and its mounts.

- **cgroups**: every process of node N lives under `/kvt-<id>/<node>` in each cgroup v1
  hierarchy: its daemons (containerd and its shims, kubelet, kube-proxy) in `system/`, its
  pods where the kubelet puts them (`kubepods/`, the kubelet's cgroupRoot is the node's
  root). So "every process of this node" is a cgroup walk — how a node is powered off, and
  how `cluster down` knows nothing is left.
- **a mount namespace** kept in `<run dir>/mnt/<node>`, in which the node's paths that a real
  host has at fixed places are the node's own: `/run/kvtool` (launcher and libvirt sockets,
  the handler's hostPath), `/run/containerd` (shim sockets), `/var/lib/cni`, and the
  hostPaths pods share with the machine (`/var/lib/kvtool/images` read-only,
  `/var/lib/kvtool/cache`). Mounts made in it (the kubelet's volumes, containerd's network
  namespaces) stay in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kvtool.errors import ClusterError

CGROUP_FS = Path("/sys/fs/cgroup")
SYSTEM = "system"  # the node daemons' cgroup below the node's root
NSENTER, UNSHARE, MOUNT, UMOUNT = "/usr/bin/nsenter", "/usr/bin/unshare", "/usr/bin/mount", "/usr/bin/umount"


def hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (cpu, memory, ..., name=systemd)."""
    out = []
    for entry in sorted(CGROUP_FS.iterdir()) if CGROUP_FS.is_dir() else []:
        if entry.name != "unified" and (entry / "cgroup.procs").exists() and not entry.is_symlink():
            out.append(entry)
    return out


def _make_cgroup(hierarchy: Path, relative: str) -> None:
    path = hierarchy
    for part in relative.strip("/").split("/"):
        parent, path = path, path / part
        if path.is_dir():
            continue
        path.mkdir()
        if hierarchy.name == "cpuset":  # a cpuset without cpus/mems refuses tasks
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((parent / knob).read_text())


def ensure_cgroups(root: str) -> None:
    """Create <root> and <root>/system in every hierarchy (the kubelet insists on all of them)."""
    for h in hierarchies():
        _make_cgroup(h, f"{root}/{SYSTEM}")


def join_cgroup(root: str) -> None:
    """Move the calling process into <root>/system everywhere (a component's preexec hook)."""
    pid = str(os.getpid())
    for h in hierarchies():
        with contextlib.suppress(OSError):
            (h / root.strip("/") / SYSTEM / "cgroup.procs").write_text(pid)


def cgroup_pids(root: str) -> set[int]:
    """Every process in <root>'s subtree (read from the pids or memory hierarchy)."""
    pids: set[int] = set()
    for h in hierarchies():
        base = h / root.strip("/")
        if not base.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(base):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split())
    return pids


def kill_cgroup(root: str, timeout: float = 10.0) -> int:
    """SIGKILL everything under <root> at once (frozen first, so nothing forks away); count killed."""
    freezer = CGROUP_FS / "freezer" / root.strip("/")
    frozen = freezer.is_dir()
    if frozen:
        with contextlib.suppress(OSError):
            (freezer / "freezer.state").write_text("FROZEN")
    victims = cgroup_pids(root)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if frozen:
        with contextlib.suppress(OSError):
            (freezer / "freezer.state").write_text("THAWED")
    deadline = time.monotonic() + timeout
    while cgroup_pids(root) and time.monotonic() < deadline:
        for pid in cgroup_pids(root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return len(victims)


def remove_cgroups(root: str) -> None:
    """rmdir <root>'s subtree, deepest first, in every hierarchy (empty cgroups only)."""
    for h in hierarchies():
        base = h / root.strip("/")
        if not base.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


# ---- the node's mount namespace -----------------------------------------------------------------

@dataclass(frozen=True)
class Bind:
    source: Path  # on the machine
    target: str  # what the node's processes see
    read_only: bool = False


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{what} failed: {(proc.stderr or proc.stdout).strip() or proc.returncode}")


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _private_dir(directory: Path) -> None:
    """A bind mount of directory onto itself with private propagation (where ns files may be pinned)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(directory):
        _run([MOUNT, "--bind", str(directory), str(directory)], f"mount --bind {directory}")
    _run([MOUNT, "--make-private", str(directory)], f"mount --make-private {directory}")


def ensure_mount_namespace(ns_file: Path, binds: list[Bind]) -> None:
    """Create the node's mount namespace, pinned at ns_file, with its bind mounts.

    A namespace left by an earlier run (no process of the node is alive when this runs) is
    dropped first, so binds never stack up and a changed bind list takes effect.
    """
    _private_dir(ns_file.parent)
    remove_mount_namespace(ns_file)
    ns_file.touch()
    _run([UNSHARE, f"--mount={ns_file}", "--propagation", "slave", "true"], "creating the node's mount namespace")
    for bind in binds:
        bind.source.mkdir(parents=True, exist_ok=True)
        Path(bind.target).mkdir(parents=True, exist_ok=True)  # the mount point, empty on the machine
        enter = [NSENTER, f"--mount={ns_file}", "--"]
        _run([*enter, MOUNT, "--bind", str(bind.source), bind.target], f"bind {bind.source} -> {bind.target}")
        if bind.read_only:
            _run([*enter, MOUNT, "-o", "remount,bind,ro", bind.target], f"read-only {bind.target}")


def remove_mount_namespace(ns_file: Path) -> None:
    if ns_file.exists() and _is_mountpoint(ns_file):
        with contextlib.suppress(ClusterError):
            _run([UMOUNT, str(ns_file)], f"umount {ns_file}")
    with contextlib.suppress(OSError):
        ns_file.unlink()


def remove_private_dir(directory: Path) -> None:
    if directory.exists() and _is_mountpoint(directory):
        with contextlib.suppress(ClusterError):
            _run([UMOUNT, "--lazy", str(directory)], f"umount {directory}")
    with contextlib.suppress(OSError):
        directory.rmdir()


def enter(ns_file: Path, netns: str) -> list[str]:
    """The argv prefix that runs a command inside the node (its network and mount namespaces)."""
    return [NSENTER, f"--net=/run/netns/{netns}", f"--mount={ns_file}", "--"]
