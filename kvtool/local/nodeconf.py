"""The configuration files of one embedded node: containerd, the CNI network, kubelet, kube-proxy.

Pure: a NodePlan in, file contents out. Each embedded node is a real host in miniature —
its own network namespace and IP, its own containerd, kubelet and kube-proxy — so every
path, port and address here is the node's own (see ../shared/notes/real-nodes.md for why
each odd setting is there: cgroup v1 with the cgroupfs driver on both sides, clamped
oom_score_adj, a per-node pod log dir).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CGROUP_DRIVER = "cgroupfs"  # PID 1 is not systemd here; kubelet and runc must agree
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 10250


@dataclass(frozen=True)
class NodePlan:
    """Everything that makes one node distinct from its siblings."""

    name: str
    ip: str  # the node's InternalIP on the cluster bridge
    gateway: str  # the host's address on the cluster bridge (where the apiserver listens)
    pod_cidr: str  # this node's pod subnet (host-local IPAM hands out addresses from it)
    cluster_cidr: str  # all nodes' pod subnets together
    service_cidr: str
    netns: str  # the node's network namespace name (under /run/netns)
    cgroup_root: str  # e.g. /kvt-<id>/<node>: pods go below it, the node's daemons beside them
    state_dir: Path  # persistent: kubelet root dir, containerd root, pod logs, CNI state
    run_dir: Path  # volatile and short (unix socket paths): containerd's state and socket

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.state_dir / "containerd.toml"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.state_dir / "kubelet.yaml"

    @property
    def kube_proxy_config(self) -> Path:
        return self.state_dir / "kube-proxy.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.state_dir / "pod-logs"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state_dir / "cni" / "net.d"

    @property
    def cni_state_dir(self) -> Path:
        return self.state_dir / "cni" / "state"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def containerd_config(node: NodePlan, sandbox_image: str, runc: str) -> str:
    """containerd 2.x (config version 3): CRI on the node's own socket and dirs, runc with cgroupfs."""
    cri_runtime = 'plugins."io.containerd.cri.v1.runtime"'
    return "\n".join([
        "version = 3",
        f"root = {_toml_string(str(node.state_dir / 'containerd'))}",
        f"state = {_toml_string(str(node.run_dir / 'containerd' / 'state'))}",
        "",
        "[grpc]",
        f"  address = {_toml_string(str(node.containerd_socket))}",
        "",
        "[ttrpc]",
        f"  address = {_toml_string(str(node.containerd_socket) + '.ttrpc')}",
        "",
        f"[{cri_runtime}]",
        "  enable_selinux = false",
        # Negative oom_score_adj is refused in this sandbox (no CAP_SYS_RESOURCE): clamp, don't fail.
        "  restrict_oom_score_adj = true",
        f"[{cri_runtime}.containerd]",
        '  default_runtime_name = "runc"',
        f"[{cri_runtime}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri_runtime}.containerd.runtimes.runc.options]",
        f"  BinaryName = {_toml_string(runc)}",
        "  SystemdCgroup = false",
        f"[{cri_runtime}.cni]",
        f"  bin_dirs = [{_toml_string(CNI_BIN_DIR)}]",
        f"  conf_dir = {_toml_string(str(node.cni_conf_dir))}",
        "  max_conf_num = 1",
        "",
        '[plugins."io.containerd.cri.v1.images"]',
        '  snapshotter = "overlayfs"',
        '[plugins."io.containerd.cri.v1.images".pinned_images]',
        f"  sandbox = {_toml_string(sandbox_image)}",
        "",
        '[plugins."io.containerd.grpc.v1.cri"]',
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "",
        # NRI listens on one host-wide socket (/var/run/nri/nri.sock): two nodes' containerds starting at
        # once race for it and one dies ("bind: address already in use"). Nothing here uses NRI.
        '[plugins."io.containerd.nri.v1.nri"]',
        "  disable = true",
        "",
    ])


def cni_conflist(node: NodePlan) -> str:
    """The standard plugins: a bridge with host-local IPAM from the node's pod CIDR, loopback, portmap.

    No ipMasq: pod-to-pod traffic between nodes keeps its source address (routes between the node
    namespaces carry it); only traffic leaving the cluster network is masqueraded, by the node.
    """
    network = ipaddress.IPv4Network(node.pod_cidr)
    conf = {
        "cniVersion": "1.0.0",
        "name": "kvtool",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(node.cni_state_dir / "ipam"),
                      "ranges": [[{"subnet": str(network), "gateway": str(network.network_address + 1)}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def kubelet_config(node: NodePlan, client_ca: Path) -> str:
    """KubeletConfiguration: real authn/authz (x509 + webhook), cgroupfs on cgroup v1; pods' DNS is the cluster
    DNS the machine serves at the gateway (kvtool.local.components.coredns)."""
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",  # the node's own loopback (its network namespace)
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": CGROUP_DRIVER,
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,  # cgroup v1 is what these machines have; 1.34 still supports it
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "imageServiceEndpoint": f"unix://{node.containerd_socket}",
        "podLogsDir": str(node.pod_logs),
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [node.gateway],
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "10s",
        "nodeStatusReportFrequency": "1m",
        "syncFrequency": "30s",
        "fileCheckFrequency": "20s",
        "runtimeRequestTimeout": "2m",
        # Several nodes share one disk: don't let one node's view of a busy disk evict everything.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "registerNode": True,
        # The launcher's masquerade binding forwards between the pod's eth0 and the guest.
        "allowedUnsafeSysctls": ["net.ipv4.ip_forward"],
        "maxPods": 64,
    }
    return yaml.safe_dump(conf, sort_keys=True)


def kube_proxy_config(node: NodePlan, kubeconfig: Path) -> str:
    """KubeProxyConfiguration: nftables mode inside the node's namespace; no machine-wide sysctls."""
    conf = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "bindAddress": node.ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": node.cluster_cidr,
        "mode": "nftables",
        # nf_conntrack_max is machine-wide: leave it alone (0 = do not touch).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "nodePortAddresses": [f"{node.ip}/32"],
    }
    return yaml.safe_dump(conf, sort_keys=True)
