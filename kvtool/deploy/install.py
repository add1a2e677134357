"""`kvtool install` / `uninstall`: put kvtool's manifests on a cluster (server-side apply) or take them off."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from kvtool.api.types import CONFIG_MAP, SECRET, SERVICE, VIRTUAL_MACHINE, Kind
from kvtool.deploy import manifests
from kvtool.errors import KvtoolError
from kvtool.kube import crds
from kvtool.kube.resources import KubeError, Resources

FIELD_MANAGER = "kvtool-install"
# A node's handler watches its VMIs by status.nodeName, a selectable field of the VMI CRD (CustomResourceFieldSelectors:
# beta and on by default in 1.31, GA in 1.32); older API servers drop the field and refuse the handler's watch.
MIN_KUBERNETES = (1, 31)

KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "Namespace"): Kind("v1", "Namespace", "namespaces", namespaced=False),
    ("v1", "ServiceAccount"): Kind("v1", "ServiceAccount", "serviceaccounts"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): crds.CRD_KIND,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): Kind("rbac.authorization.k8s.io/v1", "ClusterRole",
                                                          "clusterroles", namespaced=False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): Kind("rbac.authorization.k8s.io/v1",
                                                                 "ClusterRoleBinding", "clusterrolebindings",
                                                                 namespaced=False),
    ("rbac.authorization.k8s.io/v1", "Role"): Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): Kind("rbac.authorization.k8s.io/v1", "RoleBinding",
                                                          "rolebindings"),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): Kind(
        "admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies",
        namespaced=False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): Kind(
        "admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings", namespaced=False),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): Kind(
        "admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations",
        namespaced=False),
    ("v1", "Service"): SERVICE,
    ("v1", "ConfigMap"): CONFIG_MAP,
    ("v1", "Secret"): SECRET,
    ("apps/v1", "Deployment"): Kind("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "DaemonSet"): Kind("apps/v1", "DaemonSet", "daemonsets"),
    ("policy/v1", "PodDisruptionBudget"): Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
}


def kind_of(doc: dict[str, Any]) -> Kind:
    try:
        return KINDS[(doc["apiVersion"], doc["kind"])]
    except KeyError as exc:
        raise KvtoolError(f"kvtool does not know how to install {doc.get('kind')} ({doc.get('apiVersion')})") from exc


def unsupported(version: Mapping[str, Any]) -> str | None:
    """Why kvtool cannot run on a cluster of this /version, or None. A version it cannot read is let through."""
    major, minor = (re.match(r"\d+", str(version.get(k) or "")) for k in ("major", "minor"))
    if major is None or minor is None or (int(major[0]), int(minor[0])) >= MIN_KUBERNETES:
        return None
    return (f"kvtool needs Kubernetes {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]} or later, and this cluster runs "
            f"{version.get('gitVersion') or f'{major[0]}.{minor[0]}'}: its node handlers watch their VMIs by "
            "status.nodeName, a selectable field of the VirtualMachineInstance CRD, which older API servers lack")


def apply_all(res: Resources, docs: list[dict[str, Any]], dry_run: bool = False,
              say: Callable[[str], None] = lambda _m: None) -> None:
    """Server-side apply each manifest in order; CRDs are awaited before anything that needs them. Nothing is
    applied on a cluster too old for them."""
    if reason := unsupported(res.request("GET", "/version", what="read the cluster's version")):
        raise KvtoolError(reason, hint="upgrade the cluster, or use kvtool's embedded one (kvtool cluster up)")
    for doc in docs:
        kind = kind_of(doc)
        res.apply(kind, doc, force=True, dry_run=dry_run, field_manager=FIELD_MANAGER, parse=False)
        say(f"{kind.label}/{doc['metadata']['name']} {'validated' if dry_run else 'applied'}")
        if kind == crds.CRD_KIND and not dry_run:
            crds.wait_established(res, doc["metadata"]["name"])


def install(res: Resources, image: str, say: Callable[[str], None] = lambda _m: None) -> None:
    apply_all(res, manifests.all_manifests(image), say=say)


def uninstall(res: Resources, force: bool = False, timeout: float = 180,
              say: Callable[[str], None] = lambda _m: None) -> None:
    try:
        vms, _ = res.list(VIRTUAL_MACHINE)
    except KubeError as exc:
        if exc.status != 404:
            raise
        vms = []
    if vms and not force:
        names = ", ".join(f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in vms[:10])
        raise KvtoolError(f"{len(vms)} VirtualMachine(s) still exist ({names}{', ...' if len(vms) > 10 else ''}); "
                          "uninstalling would remove them", hint="delete them first, or pass --force")
    for vm in vms:
        res.delete(VIRTUAL_MACHINE, vm["metadata"]["namespace"], vm["metadata"]["name"], propagation="Foreground")
        say(f"virtualmachine/{vm['metadata']['namespace']}/{vm['metadata']['name']} deleted")
    deadline = time.monotonic() + timeout
    while vms and res.list(VIRTUAL_MACHINE)[0]:
        if time.monotonic() > deadline:
            raise KvtoolError(f"VMs were not gone within {timeout:.0f}s; run `kvtool uninstall --force` again")
        time.sleep(0.5)
    for doc in reversed(manifests.all_manifests()):
        kind = kind_of(doc)
        meta = doc["metadata"]
        if res.delete(kind, meta.get("namespace"), meta["name"]):
            say(f"{kind.label}/{meta['name']} deleted")
