"""Images onto the embedded nodes without a registry: OCI archives imported into each containerd.

The archives are built locally (kvtool.images.container) and named by content hash, so an
image a node already holds under that reference is the same image and is not imported again
(a restarted cluster keeps its nodes' containerd stores). Pods never pull.
"""

from __future__ import annotations

import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvtool.errors import ClusterError

log = logging.getLogger("kvtool.nodeimages")
NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace
IMPORT_TIMEOUT = 600


def _ctr(ctr: Path, socket: Path, *args: str, timeout: float = 60) -> str:
    argv = [str(ctr), "--address", str(socket), "--namespace", NAMESPACE, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"`ctr {' '.join(args[:2])}` on {socket} failed: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def present(ctr: Path, socket: Path) -> set[str]:
    return set(_ctr(ctr, socket, "images", "list", "--quiet").split())


def import_node(ctr: Path, socket: Path, archives: list[Path], refs: list[str]) -> list[str]:
    """Import the archives whose reference the node lacks; the references imported.

    Earlier builds of the same images (same repository, other tag) are removed from the node:
    nothing runs them once the cluster restarts with the new ones, and they would pile up.
    """
    have = present(ctr, socket)
    repos = {ref.rsplit(":", 1)[0] for ref in refs}
    stale = [ref for ref in have if ref.rsplit(":", 1)[0] in repos and ref not in refs]
    if stale:
        _ctr(ctr, socket, "images", "remove", *stale)
        log.info("event=removed-stale images=%s node_socket=%s", ",".join(stale), socket)
    done = []
    for archive, ref in zip(archives, refs, strict=True):
        if ref in have:
            continue
        _ctr(ctr, socket, "images", "import", "--local", str(archive), timeout=IMPORT_TIMEOUT)
        if ref not in present(ctr, socket):
            raise ClusterError(f"importing {archive} into {socket} did not yield {ref}")
        log.info("event=imported image=%s node_socket=%s", ref, socket)
        done.append(ref)
    return done


def import_all(sockets: list[Path], ctr: Path, archives: list[Path], refs: list[str]) -> None:
    """Every node at once (each import is I/O bound in its own containerd)."""
    with ThreadPoolExecutor(max_workers=max(1, len(sockets))) as pool:
        for future in [pool.submit(import_node, ctr, s, archives, refs) for s in sockets]:
            future.result()
