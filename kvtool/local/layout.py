"""Paths inside one $KVTOOL_HOME, named once so no module spells them twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvtool import paths
from kvtool.clusterstate import lock_path


@dataclass(frozen=True)
class Layout:
    home: Path

    @property
    def pki(self) -> Path:
        return self.home / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.home / "etcd"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def kubeconfigs(self) -> Path:
        return self.home / "kubeconfigs"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig users and kubectl use."""
        return self.home / "kubeconfig"

    @property
    def nodes(self) -> Path:
        return self.home / "nodes"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def lock(self) -> Path:
        return lock_path(self.home)

    @property
    def control_socket(self) -> Path:
        return self.home / "supervisor.sock"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def component_kubeconfig(self, component: str) -> Path:
        return self.kubeconfigs / f"{component}.kubeconfig"

    def node_dir(self, node: str) -> Path:
        return self.nodes / node

    @property
    def cluster_id(self) -> str:
        """8 hex digits unique to this home: names machine-wide things (/run dir, network namespaces)."""
        return paths.cluster_id(self.home)

    @property
    def cgroup_root(self) -> str:
        """Every process of every node of this home's cluster lives below it (kvtool.local.nodehost)."""
        return f"/kvt-{self.cluster_id}"

    @property
    def run_dir(self) -> Path:
        return paths.run_dir(self.home)

    def node_run_dir(self, node: str) -> Path:
        """What /var/run/kvtool is on this node (sockets of the launchers and their libvirtds)."""
        return self.run_dir / node

    def node_sockets(self, node: str) -> Path:
        return paths.node_sockets_dir(node, self.home)
