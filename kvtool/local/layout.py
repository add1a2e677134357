"""Paths inside one $KVTOOL_HOME, named once so no module spells them twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvtool.local.state import lock_path


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
