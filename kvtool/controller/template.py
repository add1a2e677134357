"""Render the launcher pod for a VMI (KubeVirt's services/template.go, in small).

Pure: VMI in, pod manifest out. Everything the scheduler decides on (node
selector, affinity, tolerations, resource requests) is copied from the VMI,
so the real scheduler places VMs. The pod's env and volumes are the
contract of docs/runtime.md.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvtool import __version__
from kvtool.api import quantity
from kvtool.api.types import (
    API_VERSION,
    LAUNCHER_LABEL_KEY,
    LAUNCHER_LABEL_VALUE,
    MIGRATION_JOB_LABEL,
    VM_LABEL,
    VMI_LABEL,
    VMI_UID_LABEL,
)
from kvtool.domain.configure.compute import tcg_tb_cache_mib
from kvtool.domain.configure.devices import wants_vsock

DEFAULT_LAUNCHER_IMAGE = f"kvtool.io/launcher:{__version__}"
DEFAULT_GRACE = 30
MiB = 2**20
# What a launcher pod needs beyond the guest's RAM, term by term as KubeVirt's GetMemoryOverhead
# (virt-controller renderresources.go): its processes' RSS, page tables, per-vCPU and I/O thread
# state. kvtool has no virtlogd and no graphics device; it adds the TCG translation cache QEMU
# fills when there is no KVM; it is always counted, since the controller cannot know whether the node's
# KVM works (tiny-linux measured ~60 MiB of QEMU RSS beyond its guest).
OVERHEAD_LAUNCHER = 100 * MiB  # the launcher (KubeVirt's VirtLauncherOverhead)
OVERHEAD_MONITOR = 25 * MiB  # nsinit, the private libvirtd's PID 1 (VirtLauncherMonitorOverhead)
OVERHEAD_LIBVIRTD = 40 * MiB  # the private libvirtd (VirtqemudOverhead)
OVERHEAD_QEMU = 30 * MiB  # QEMU minus its guest's RAM and page tables (QemuOverhead)
OVERHEAD_PER_VCPU = 8 * MiB
OVERHEAD_IOTHREAD = 8 * MiB
OVERHEAD_TCG = 48 * MiB  # TCG's own state besides its translation cache, which grows with the guest
PAGETABLE_DIVISOR = 512  # page tables: guest memory / 512
# KubeVirt's default cpuAllocationRatio of 10: each vCPU requests 100m.
MILLICORES_PER_VCPU = 100
SOCKETS, PRIVATE, IMAGES, CACHE, VOLUMES = ("/var/run/kvtool/sockets", "/var/lib/kvtool/private",
                                            "/var/lib/kvtool/images", "/var/lib/kvtool/cache",
                                            "/var/run/kvtool/volumes")
# accessCredentials' Secrets, one directory per Secret (the launcher gives their keys to cloud-init).
ACCESS_CREDENTIALS = "/var/run/kvtool/access-credentials"
# VMI spec fields the launcher pod takes as they are (KubeVirt's template.go copies the same).
POD_FIELDS = ("nodeSelector", "affinity", "tolerations", "topologySpreadConstraints", "priorityClassName",
              "schedulerName", "dnsPolicy", "dnsConfig", "hostname", "subdomain")
# Probe fields copied onto the compute container: tcpSocket/httpGet reach the guest through the pod's IP
# (masquerade forwards them), so the kubelet probes the guest itself.
PROBE_FIELDS = ("tcpSocket", "httpGet", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
                "successThreshold", "failureThreshold")
# The CNI's interface in the pod; the launcher puts the guest behind it (masquerade or bridge binding).
POD_INTERFACE = "eth0"
# What the launcher needs in its own network namespace to do that: bridges, a tap, nftables, DHCP.
# NET_ADMIN/NET_RAW: the pod network binding (bridge, tap, nftables, DHCP); SYS_ADMIN: the mount
# namespace of the launcher's private libvirtd. Never privileged.
CAPABILITIES = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]


@dataclass(frozen=True)
class LauncherConfig:
    image: str = DEFAULT_LAUNCHER_IMAGE
    service_account: str | None = None
    kvm_device: bool = False  # mount the node's /dev/kvm and /dev/net/tun; the launcher falls back to TCG


def guest_memory(spec: dict[str, Any]) -> int:
    domain = spec.get("domain", {})
    value = domain.get("memory", {}).get("guest") or domain.get("resources", {}).get("requests", {}).get("memory")
    return quantity.to_bytes(value) if value is not None else 0


def vcpus(spec: dict[str, Any]) -> int:
    cpu = spec.get("domain", {}).get("cpu", {})
    return int(cpu.get("cores", 1)) * int(cpu.get("sockets", 1)) * int(cpu.get("threads", 1))


def memory_overhead(spec: dict[str, Any]) -> int:
    """Bytes the pod needs beyond the guest's RAM (see the OVERHEAD_* terms)."""
    fixed = OVERHEAD_LAUNCHER + OVERHEAD_MONITOR + OVERHEAD_LIBVIRTD + OVERHEAD_QEMU + OVERHEAD_IOTHREAD
    tcg = OVERHEAD_TCG + tcg_tb_cache_mib(guest_memory(spec)) * MiB  # the cache the launcher gives QEMU
    return fixed + tcg + guest_memory(spec) // PAGETABLE_DIVISOR + vcpus(spec) * OVERHEAD_PER_VCPU


def resources(spec: dict[str, Any]) -> dict[str, Any]:
    """Requests/limits for the compute container: the guest plus the launcher's overhead.

    The memory limit is the request unless the VMI asks for more, so the guest's memory is the
    pod's, enforced by the container's memory cgroup that QEMU runs in.
    """
    res = spec.get("domain", {}).get("resources", {})
    requests = dict(res.get("requests", {}))
    limits = dict(res.get("limits", {}))
    mem = guest_memory(spec) + memory_overhead(spec)
    # overcommitGuestOverhead (KubeVirt's): the scheduler counts only the guest; the overhead goes in the limit.
    overcommit = bool(res.get("overcommitGuestOverhead"))
    scheduled = guest_memory(spec) if overcommit else mem
    requests["memory"] = str(max(scheduled, quantity.to_bytes(requests.get("memory", 0))))
    requests.setdefault("cpu", f"{vcpus(spec) * MILLICORES_PER_VCPU}m")
    limits["memory"] = str(max(quantity.to_bytes(limits.get("memory", 0)), int(requests["memory"]),
                               mem if overcommit else 0))
    return {"requests": {k: str(v) for k, v in requests.items()},
            "limits": {k: str(v) for k, v in limits.items()}}


def _volume_mounts(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pod volumes and mounts for VMI volumes that need the kubelet's help."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for vol in spec.get("volumes", []):
        name = vol["name"]
        pod_vol = None
        if "persistentVolumeClaim" in vol:
            pvc = vol["persistentVolumeClaim"]
            pod_vol = {"persistentVolumeClaim": {"claimName": pvc["claimName"],
                                                 "readOnly": bool(pvc.get("readOnly", False))}}
        elif "hostDisk" in vol:
            parent = vol["hostDisk"]["path"].rsplit("/", 1)[0] or "/"
            pod_vol = {"hostPath": {"path": parent, "type": "DirectoryOrCreate"}}
        elif "cloudInitNoCloud" in vol:
            ci = vol["cloudInitNoCloud"]
            ref = (ci.get("secretRef") or {}).get("name")
            net_ref = (ci.get("networkDataSecretRef") or {}).get("name")
            if ref or net_ref:
                sources = [{"secret": {"name": n}} for n in dict.fromkeys(x for x in (ref, net_ref) if x)]
                pod_vol = sources[0] if len(sources) == 1 else {"projected": {"sources": sources}}
                if "secret" in pod_vol:
                    pod_vol = {"secret": {"secretName": pod_vol["secret"]["name"]}}
        if pod_vol is not None:
            volumes.append({"name": f"vol-{name}", **pod_vol})
            mounts.append({"name": f"vol-{name}", "mountPath": f"{VOLUMES}/{name}"})
    return volumes, mounts


def _access_credentials(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pod volumes and mounts for the Secrets of accessCredentials (SSH public keys)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for secret in dict.fromkeys(ssh_key_secrets(spec)):
        volumes.append({"name": f"ac-{secret}"[:63], "secret": {"secretName": secret}})
        mounts.append({"name": f"ac-{secret}"[:63], "mountPath": f"{ACCESS_CREDENTIALS}/{secret}", "readOnly": True})
    return volumes, mounts


def ssh_key_secrets(spec: dict[str, Any]) -> list[str]:
    """The Secrets holding the VMI's SSH public keys, in spec order."""
    return [cred["sshPublicKey"]["source"]["secret"]["secretName"]
            for cred in spec.get("accessCredentials") or [] if "sshPublicKey" in cred]


def _probes(spec: dict[str, Any]) -> dict[str, Any]:
    """readinessProbe/livenessProbe as the compute container's: the kubelet probes the guest through the pod IP."""
    return {key: {k: v for k, v in spec[key].items() if k in PROBE_FIELDS}
            for key in ("readinessProbe", "livenessProbe") if spec.get(key)}


def _masquerades(spec: dict[str, Any]) -> bool:
    """Does an interface use the (default) masquerade binding on the pod network?"""
    interfaces = spec.get("domain", {}).get("devices", {}).get("interfaces", [])
    return any("bridge" not in iface for iface in interfaces)


def claim_size(pvc: Mapping[str, Any] | None) -> int | None:
    """A claim's size in bytes: its bound capacity, else its request (a claim waiting for its first consumer
    has no capacity yet); None when it says neither in a form Kubernetes accepts."""
    pvc = pvc or {}
    for value in (((pvc.get("status") or {}).get("capacity") or {}).get("storage"),
                  (((pvc.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")):
        if isinstance(value, (str, int)) and quantity.is_quantity(value) and (size := quantity.to_bytes(value)) > 0:
            return size
    return None


def launcher_pod(vmi: dict[str, Any], config: LauncherConfig,
                 claim_sizes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The VMI's launcher pod. claim_sizes (volume -> bytes): what its persistentVolumeClaim volumes claim,
    so the launcher makes a new disk.img that size, as KubeVirt does from volumeStatus' claim info."""
    meta, spec = vmi["metadata"], vmi["spec"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    grace = int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
    labels = dict(meta.get("labels") or {})
    labels.update({LAUNCHER_LABEL_KEY: LAUNCHER_LABEL_VALUE, VMI_LABEL: name, VMI_UID_LABEL: uid,
                   VM_LABEL: name})
    vol_volumes, vol_mounts = _volume_mounts(spec)
    ac_volumes, ac_mounts = _access_credentials(spec)

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "KVTOOL_POD_UID", **field("metadata.uid")},
        {"name": "KVTOOL_POD_NAME", **field("metadata.name")},
        {"name": "KVTOOL_POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "KVTOOL_NODE_NAME", **field("spec.nodeName")},
        {"name": "KVTOOL_GRACE_PERIOD", "value": str(grace)},
        {"name": "KVTOOL_SOCKETS_DIR", "value": SOCKETS},
        {"name": "KVTOOL_STATE_DIR", "value": PRIVATE},
        {"name": "KVTOOL_IMAGES", "value": IMAGES},
        {"name": "KVTOOL_CACHE_DIR", "value": CACHE},
        {"name": "KVTOOL_VOLUMES_DIR", "value": VOLUMES},
        {"name": "KVTOOL_ACCESS_CREDENTIALS_DIR", "value": ACCESS_CREDENTIALS},
        {"name": "KVTOOL_POD_INTERFACE", "value": POD_INTERFACE},
    ]
    if claim_sizes:
        env.append({"name": "KVTOOL_CLAIM_SIZES", "value": json.dumps(dict(sorted(claim_sizes.items())))})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The launcher's own grace plus a margin for destroying the domain and cleaning up.
        "terminationGracePeriodSeconds": grace + 15,
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "compute",
            "image": config.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["kvtool", "launcher"],
            "args": ["--namespace", namespace, "--name", name, "--uid", uid],
            "env": env,
            "resources": resources(spec),
            # Root in its own namespaces, never privileged: the private libvirtd needs a mount namespace
            # (SYS_ADMIN), the pod network binding NET_ADMIN/NET_RAW (CAPABILITIES).
            "securityContext": {"runAsUser": 0, "privileged": False,
                                "capabilities": {"add": list(CAPABILITIES)}},
            "volumeMounts": [
                {"name": "sockets", "mountPath": SOCKETS},
                {"name": "private", "mountPath": PRIVATE},
                {"name": "images", "mountPath": IMAGES, "readOnly": True},
                {"name": "cache", "mountPath": CACHE},
                *vol_mounts,
                *ac_mounts,
            ],
            **_probes(spec),
        }],
        "volumes": [
            {"name": "sockets", "hostPath": {"path": SOCKETS, "type": "DirectoryOrCreate"}},
            {"name": "private", "emptyDir": {}},
            {"name": "images", "hostPath": {"path": IMAGES, "type": "DirectoryOrCreate"}},
            {"name": "cache", "hostPath": {"path": CACHE, "type": "DirectoryOrCreate"}},
            *vol_volumes,
            *ac_volumes,
        ],
    }
    if _masquerades(spec):
        # The masquerade binding routes between the pod's eth0 and the guest: IP forwarding in the pod's
        # network namespace, which only the kubelet may switch on (an "unsafe" sysctl: a real cluster's
        # kubelets need --allowed-unsafe-sysctls=net.ipv4.ip_forward; embedded nodes have it).
        pod_spec["securityContext"] = {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]}
    for key in POD_FIELDS:
        if spec.get(key):
            pod_spec[key] = spec[key]
    service_account = spec.get("serviceAccountName") or config.service_account
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    devices = [("kvm", "/dev/kvm"), ("tun", "/dev/net/tun")] if config.kvm_device else []
    if wants_vsock(spec):
        # QEMU's vhost-vsock backend; a node without it leaves the pod Pending with the kubelet's reason.
        devices.append(("vhost-vsock", "/dev/vhost-vsock"))
    for dev_name, dev in devices:
        # The node's /dev/kvm (TCG is the fallback), /dev/net/tun for the guest's tap, /dev/vhost-vsock.
        pod_spec["volumes"].append({"name": dev_name, "hostPath": {"path": dev, "type": "CharDevice"}})
        pod_spec["containers"][0]["volumeMounts"].append({"name": dev_name, "mountPath": dev})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"virt-launcher-{name}-"[:58],
            "namespace": namespace,
            "labels": labels,
            "annotations": {"kvtool.io/domain": f"{namespace}_{name}"},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "VirtualMachineInstance", "name": name,
                                 "uid": uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": pod_spec,
    }


def pod_requests_summary(pod: dict[str, Any]) -> str:
    req = pod["spec"]["containers"][0]["resources"]["requests"]
    mem = math.ceil(quantity.to_bytes(req["memory"]) / 2**20)
    return f"cpu {req['cpu']}, memory {mem}Mi"


def migration_target_pod(vmi: dict[str, Any], config: LauncherConfig, name: str, migration_uid: str,
                         source_node: str, added_node_selector: dict[str, str] | None,
                         post_copy: bool = False) -> dict[str, Any]:
    """The launcher pod a live migration moves the guest into: the VMI's own pod, on any node but the source
    (KubeVirt: anti-affinity to the source) and one that has the migration's addedNodeSelector labels.
    post_copy: the target QEMU needs userfaultfd(2), which a kernel with vm.unprivileged_userfaultfd=0 (the
    default) grants only with CAP_SYS_PTRACE; only this pod gets it, only when post-copy is allowed."""
    pod = launcher_pod(vmi, config)
    if post_copy:
        pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"].append("SYS_PTRACE")
    pod["metadata"].pop("generateName", None)
    pod["metadata"]["name"] = name
    pod["metadata"]["labels"][MIGRATION_JOB_LABEL] = migration_uid
    spec = pod["spec"]
    if added_node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **added_node_selector}
    not_source = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [source_node]}
    affinity = copy.deepcopy(spec.get("affinity") or {})
    required = affinity.setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": []})
    for term in terms:  # terms are ORed: every one must exclude the source
        term.setdefault("matchExpressions", []).append(not_source)
    spec["affinity"] = affinity
    return pod
