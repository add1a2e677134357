"""Find a VM's launcher and read its serial console log: shared by `kvtool console` and the notebooks.

The VMI names its launcher pod and node (status.activePods); in the embedded
cluster each node's launcher sockets live under a per-home run dir
(kvtool.paths.run_dir). The launcher says where its console log is.
"""

from __future__ import annotations

from pathlib import Path

from kvtool import paths
from kvtool.api.types import VIRTUAL_MACHINE_INSTANCE
from kvtool.errors import KvtoolError
from kvtool.kube.resources import Resources
from kvtool.launchercom.client import LauncherClient, LauncherError


def node_sockets_dir(node: str, home: Path | None = None) -> Path:
    """/var/run/kvtool/sockets of an embedded-cluster node."""
    return paths.node_sockets_dir(node, home)


# The launcher pod's emptyDir `private` (kvtool.controller.template.PRIVATE) as the container sees it,
# and where an embedded node's kubelet keeps it on this machine.
PRIVATE = "/var/lib/kvtool/private"


def node_path(node: str, pod_uid: str, path: Path, home: Path | None = None) -> Path:
    """A path in the launcher container's `private` volume, as this machine sees it on an embedded node."""
    if not path.is_relative_to(PRIVATE):
        return path
    kubelet = (home or paths.kvtool_home()) / "nodes" / node / "kubelet"
    volume = kubelet / "pods" / pod_uid / "volumes" / "kubernetes.io~empty-dir" / "private"
    return volume / path.relative_to(PRIVATE)


def _active_pod(res: Resources, namespace: str, name: str) -> tuple[str, str]:
    """(pod uid, node) of the VM's launcher, or a KvtoolError saying why there is none."""
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, namespace, name)
    status = (vmi or {}).get("status") or {}
    if vmi is None or status.get("phase") not in ("Running", "Scheduled"):
        raise KvtoolError(f"virtualmachine {namespace}/{name} is not running",
                          hint=f"`kvtool start {name}`, then try again")
    pods = status.get("activePods") or {}
    if not pods:
        raise KvtoolError(f"virtualmachine {namespace}/{name} has no launcher pod yet")
    # During a live migration the target pod is active too: the VMI's node says which one runs the guest.
    pod_uid, node = next(((u, n) for u, n in pods.items() if n == status.get("nodeName")), next(iter(pods.items())))
    return pod_uid, node


def launcher_socket(res: Resources, namespace: str, name: str, home: Path | None = None) -> Path:
    """The unix socket of the VM's launcher, or a KvtoolError saying why there is none."""
    pod_uid, node = _active_pod(res, namespace, name)
    sock = node_sockets_dir(node, home) / f"{pod_uid}.sock"
    if not sock.exists():
        raise KvtoolError(f"the launcher of {name} is not reachable from this machine ({sock})",
                          hint="console access works directly in the embedded cluster; on other clusters run it "
                               "where the node's /var/run/kvtool/sockets is visible")
    return sock


def console_log(res: Resources, namespace: str, name: str, home: Path | None = None) -> Path:
    """Where the launcher appends the guest's ttyS0."""
    pod_uid, node = _active_pod(res, namespace, name)
    try:
        with LauncherClient(launcher_socket(res, namespace, name, home)) as client:
            log = node_path(node, pod_uid, Path(client.status().get("consoleLog") or ""), home)
    except LauncherError as exc:
        raise KvtoolError(f"cannot ask the launcher of {namespace}/{name} for its console log: {exc}") from exc
    if not log.is_file():
        raise KvtoolError(f"no console log for {namespace}/{name} yet")
    return log


def tail(res: Resources, namespace: str, name: str, lines: int = 0, home: Path | None = None) -> bytes:
    """The console log's last `lines` lines (all of it for 0), as the guest wrote them."""
    data = console_log(res, namespace, name, home).read_bytes().splitlines(keepends=True)
    return b"".join(data[-lines:] if lines else data)
