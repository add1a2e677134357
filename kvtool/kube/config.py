"""Which kubeconfig a kvtool command uses.

Order, as the README documents: --kubeconfig > $KUBECONFIG > the embedded
cluster's kubeconfig if that cluster is up > ~/.kube/config. The answer
carries where it came from, so `cluster status` and --verbose can say why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvtool import clusterstate, paths
from kvtool.errors import ConfigError

NO_KUBECONFIG = ("no kubeconfig found: run `kvtool cluster up` to start the embedded cluster, "
                 "or pass --kubeconfig PATH")


@dataclass(frozen=True)
class ResolvedKubeconfig:
    path: str  # may be a $KUBECONFIG list (a:b), as kubectl allows
    source: str
    context: str | None = None

    def describe(self) -> str:
        ctx = f", context {self.context}" if self.context else ""
        return f"{self.path} (from {self.source}{ctx})"


def embedded_cluster_up(home: Path | None = None) -> bool:
    return clusterstate.cluster_running(home or paths.kvtool_home())


def resolve(flag: str | None = None, context: str | None = None) -> ResolvedKubeconfig:
    if flag:
        path = Path(flag).expanduser()
        if not path.is_file():
            raise ConfigError(f"kubeconfig {flag} (from --kubeconfig) does not exist")
        return ResolvedKubeconfig(str(path), "--kubeconfig", context)
    env = os.environ.get("KUBECONFIG")
    if env:
        existing = [p for p in env.split(os.pathsep) if p and Path(p).expanduser().is_file()]
        if not existing:
            raise ConfigError(f"$KUBECONFIG is set to {env!r} but no such file exists",
                              hint="unset KUBECONFIG to use the embedded cluster, or point it at a kubeconfig")
        return ResolvedKubeconfig(os.pathsep.join(existing), "$KUBECONFIG", context)
    home = paths.kvtool_home()
    if embedded_cluster_up(home):
        return ResolvedKubeconfig(str(home / "kubeconfig"), f"the embedded cluster in {home}", context)
    default = Path.home() / ".kube" / "config"
    if default.is_file():
        return ResolvedKubeconfig(str(default), "~/.kube/config", context)
    raise ConfigError(NO_KUBECONFIG)
