"""What each embedded-cluster process is: its command line, port and readiness probe.

Flags follow envtest's and k3s's local defaults (see
../shared/notes/controlplane.md). Every control-plane component binds 127.0.0.1 only, except
the apiserver: it listens on the machine's address on the cluster bridge, where the nodes'
kubelets reach it (kvtool.local.nodenet). Node components run inside their node's namespaces.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvtool.local import nodeconf, nodenet
from kvtool.local import pki as pki_mod
from kvtool.local.layout import Layout
from kvtool.local.nodeconf import NodePlan

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
APISERVER_GOGC = "400"


@dataclass
class ComponentSpec:
    name: str
    argv: list[str]
    port: int | None = None
    ready: Callable[[], bool] = field(default=lambda: True)
    env: dict[str, str] = field(default_factory=dict)
    # Seconds a component may take to become ready before `up` gives up on it.
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    # A node component's cgroup root (kvtool.local.nodehost): the process starts in <cgroup>/system.
    cgroup: str | None = None


def _get(url: str, context: ssl.SSLContext | None = None, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def admin_context(p: pki_mod.PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(p.ca_cert))
    ctx.load_cert_chain(str(p.cert(pki_mod.ADMIN.file_stem)), str(p.key(pki_mod.ADMIN.file_stem)))
    return ctx


def apiserver_ready(server: str, p: pki_mod.PKI) -> bool:
    """server: https://HOST:PORT, as in the kubeconfig."""
    status, body = _get(f"{server}/readyz", admin_context(p))
    return status == 200 and body.strip() == b"ok"


def etcd(layout: Layout, binary: Path, port: int, peer_port: int) -> ComponentSpec:
    client = f"http://127.0.0.1:{port}"
    peer = f"http://127.0.0.1:{peer_port}"

    def ready() -> bool:
        status, body = _get(f"{client}/health")
        try:
            return status == 200 and json.loads(body).get("health") == "true"
        except ValueError:
            return False

    return ComponentSpec(
        name="etcd",
        port=port,
        argv=[str(binary), "etcd", "--name=kvtool", f"--data-dir={layout.etcd_data}",
              f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
              f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
              f"--initial-cluster=kvtool={peer}", "--listen-metrics-urls=",
              "--quota-backend-bytes=4294967296",
              "--log-level=warn"],
        ready=ready,
        ready_timeout=30,
    )


def apiserver(layout: Layout, binary: Path, host: str, port: int, etcd_port: int, p: pki_mod.PKI) -> ComponentSpec:
    return ComponentSpec(
        name="apiserver",
        port=port,
        argv=[str(binary), "apiserver",
              f"--etcd-servers=http://127.0.0.1:{etcd_port}",
              f"--secure-port={port}", f"--bind-address={host}", f"--advertise-address={host}",
              f"--tls-cert-file={p.cert('apiserver')}", f"--tls-private-key-file={p.key('apiserver')}",
              f"--client-ca-file={p.ca_cert}",
              f"--kubelet-client-certificate={p.cert(pki_mod.APISERVER_KUBELET_CLIENT.file_stem)}",
              f"--kubelet-client-key={p.key(pki_mod.APISERVER_KUBELET_CLIENT.file_stem)}",
              f"--service-cluster-ip-range={SERVICE_CIDR}",
              f"--service-account-issuer={SA_ISSUER}",
              f"--service-account-key-file={p.sa_pub}",
              f"--service-account-signing-key-file={p.sa_key}",
              "--authorization-mode=Node,RBAC",
              "--enable-admission-plugins=NodeRestriction",
              # Webhooks behind Services (kvtool's eviction webhook) are called at their endpoints' pod IPs,
              # which the machine routes to the nodes (nodenet.ensure_node): no kube-proxy runs beside the apiserver.
              "--enable-aggregator-routing=true",
              "--allow-privileged=true",
              "--profiling=false",
              "--watch-cache=true",
              # Pods reach the apiserver through the `kubernetes` Service (kube-proxy on each node).
              "--endpoint-reconciler-type=lease",
              # Nodes are named, not resolvable: dial kubelets at their InternalIP.
              "--kubelet-preferred-address-types=InternalIP",
              "--v=1"],
        ready=lambda: apiserver_ready(f"https://{host}:{port}", p),
        # Go's collector took a fifth of the apiserver's CPU while the controller wrote 1000 VMs' status (its
        # pprof), on a machine whose two cores the whole cluster shares. A larger heap between collections is
        # memory this one-machine cluster has: fewer collections, more CPU for requests.
        env={"GOGC": APISERVER_GOGC},
        ready_timeout=90,
    )


def _component_flags(kubeconfig: Path, port: int, p: pki_mod.PKI) -> list[str]:
    # Client certificates on their secure ports are checked against our CA directly: looking the CA up in
    # the cluster finds no request-header CA (there is no front proxy) and logs an error every minute.
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--authentication-skip-lookup=true",
            f"--client-ca-file={p.ca_cert}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--profiling=false", "--v=1"]


def _healthz(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        status, body = _get(f"https://127.0.0.1:{port}/healthz", insecure_context())
        return status == 200 and body.strip() == b"ok"
    return ready


def scheduler(layout: Layout, binary: Path, port: int, p: pki_mod.PKI) -> ComponentSpec:
    kc = layout.component_kubeconfig("scheduler")
    return ComponentSpec(name="scheduler", port=port, argv=[str(binary), "scheduler", *_component_flags(kc, port, p)],
                         ready=_healthz(port))


def controller_manager(layout: Layout, binary: Path, port: int, p: pki_mod.PKI) -> ComponentSpec:
    kc = layout.component_kubeconfig("controller-manager")
    return ComponentSpec(
        name="controller-manager",
        port=port,
        argv=[str(binary), "controller-manager", *_component_flags(kc, port, p),
              "--controllers=*",
              "--use-service-account-credentials=true",
              f"--service-account-private-key-file={p.sa_key}",
              f"--root-ca-file={p.ca_cert}",
              f"--cluster-signing-cert-file={p.ca_cert}", f"--cluster-signing-key-file={p.ca_key}",
              "--enable-hostpath-provisioner=true",
              # Node pod CIDRs are the embedded network's (kvtool.local.nodenet), set when a node registers.
              "--allocate-node-cidrs=false", f"--cluster-cidr={nodenet.CLUSTER_CIDR}",
              f"--service-cluster-ip-range={SERVICE_CIDR}",
              "--node-monitor-grace-period=20s"],
        ready=_healthz(port),
    )


def corefile(gateway: str, kubeconfig: Path, ready_port: int, upstream: list[str]) -> str:
    """kubeadm's kube-dns Corefile, bound to the machine's address on the cluster bridge (the nodes' route to
    it, as to the apiserver). Other names go to the machine's own resolvers, when it has any."""
    forward = f"    forward . {' '.join(upstream)}\n" if upstream else ""
    return (f".:53 {{\n"
            f"    bind {gateway}\n"
            f"    errors\n"
            f"    ready 127.0.0.1:{ready_port}\n"
            f"    kubernetes {nodeconf.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
            f"        kubeconfig {kubeconfig}\n"
            f"        pods insecure\n"
            f"        fallthrough in-addr.arpa ip6.arpa\n"
            f"        ttl 30\n"
            f"    }}\n"
            f"{forward}"
            f"    cache 30\n"
            f"    loadbalance\n"
            f"}}\n")


def host_nameservers(gateway: str, resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The machine's resolvers (CoreDNS runs in the machine's namespace, so a loopback stub such as
    systemd-resolved's serves it too), but the cluster DNS itself: forwarding to it would be a loop."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    servers = [parts[1] for parts in (line.split() for line in lines) if len(parts) >= 2 and parts[0] == "nameserver"]
    return [s for s in servers if s != gateway]


def coredns(layout: Layout, binary: Path, gateway: str, ready_port: int) -> ComponentSpec:
    """The cluster DNS every kubelet names (clusterDNS): Services and pods by name, as on any cluster."""
    conf = layout.home / "coredns" / "Corefile"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(corefile(gateway, layout.component_kubeconfig(pki_mod.COREDNS.file_stem), ready_port,
                             host_nameservers(gateway)))

    def ready() -> bool:
        return _get(f"http://127.0.0.1:{ready_port}/ready")[0] == 200

    return ComponentSpec(name="coredns", port=ready_port, argv=[str(binary), "-conf", str(conf)], ready=ready)


# ---- node components: each runs inside its node's network and mount namespaces ------------------

def _unix_connectable(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(str(path))
            except OSError:
                return False
        return True
    return ready


def containerd(node: NodePlan, enter: list[str], binary: Path) -> ComponentSpec:
    """The node's container runtime; its shims are found next to it (the multi-call binary's links)."""
    return ComponentSpec(
        name=f"containerd-{node.name}",
        argv=[*enter, str(binary), "--config", str(node.containerd_config), "--log-level", "warn"],
        env={"PATH": f"{binary.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        ready=_unix_connectable(node.containerd_socket),
        ready_timeout=60,
        stop_timeout=15,
        cgroup=node.cgroup_root,
    )


def kubelet(node: NodePlan, enter: list[str], binary: Path, kubeconfig: Path) -> ComponentSpec:
    return ComponentSpec(
        name=f"kubelet-{node.name}",
        argv=[*enter, str(binary), "kubelet", f"--config={node.kubelet_config}", f"--kubeconfig={kubeconfig}",
              f"--hostname-override={node.name}", f"--node-ip={node.ip}", f"--root-dir={node.kubelet_root}",
              "--v=1"],
        ready_timeout=90,
        stop_timeout=15,
        cgroup=node.cgroup_root,
    )


def kube_proxy(node: NodePlan, enter: list[str], binary: Path) -> ComponentSpec:
    return ComponentSpec(
        name=f"kube-proxy-{node.name}",
        argv=[*enter, str(binary), "kube-proxy", f"--config={node.kube_proxy_config}", "--v=1"],
        cgroup=node.cgroup_root,
    )
