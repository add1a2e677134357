"""KubeVirt's own documents (kubevirt.io/v1, v1alpha3) read as kvtool's: the field names are the same, so a
VirtualMachine only changes its apiVersion, and a bare VirtualMachineInstance becomes a VirtualMachine that
runs it (runStrategy Always unless its kvtool.io/run-strategy annotation or the caller says otherwise).

Pure: a document in, a document and what was done to it out. Fields kvtool does not support stay in the
result, so validation refuses them by name afterwards instead of their vanishing here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvtool.api.types import API_VERSION

GROUP = "kubevirt.io"
VERSIONS = ("v1", "v1alpha3")
KINDS = ("VirtualMachine", "VirtualMachineInstance")
# KubeVirt's VirtualMachinePool lives in its own group; kvtool's has the same fields.
POOL_API_VERSIONS = ("pool.kubevirt.io/v1alpha1", "pool.kubevirt.io/v1beta1")
# So do its VirtualMachineSnapshot and VirtualMachineRestore (their source and target keep apiGroup kubevirt.io,
# which kvtool's schemas accept: the same VirtualMachine to kvtool).
SNAPSHOT_API_VERSIONS = ("snapshot.kubevirt.io/v1alpha1", "snapshot.kubevirt.io/v1beta1")
SNAPSHOT_KINDS = ("VirtualMachineSnapshot", "VirtualMachineRestore")
RUN_STRATEGY_ANNOTATION = "kvtool.io/run-strategy"
# What `kubectl get -o yaml` and KubeVirt's generators leave in a VM template's metadata: only labels and
# annotations mean anything there (KubeVirt ignores the rest too).
_TEMPLATE_METADATA = ("labels", "annotations")


@dataclass(frozen=True)
class Converted:
    """A KubeVirt document as kvtool's, and what it was."""

    manifest: dict[str, Any]
    source: str  # e.g. "kubevirt.io/v1 VirtualMachineInstance"


def is_kubevirt(doc: Any) -> bool:
    """A kubevirt.io VirtualMachine or VirtualMachineInstance, a pool.kubevirt.io VirtualMachinePool, or a
    snapshot.kubevirt.io VirtualMachineSnapshot or VirtualMachineRestore, that this module converts."""
    if not isinstance(doc, Mapping):
        return False
    api_version = doc.get("apiVersion")
    if api_version in POOL_API_VERSIONS:
        return doc.get("kind") == "VirtualMachinePool"
    if api_version in SNAPSHOT_API_VERSIONS:
        return doc.get("kind") in SNAPSHOT_KINDS
    return (isinstance(api_version, str) and api_version in {f"{GROUP}/{v}" for v in VERSIONS}
            and doc.get("kind") in KINDS)


def from_kubevirt(doc: Mapping[str, Any], run_strategy: str | None = None) -> Converted:
    """kvtool's VirtualMachine for a KubeVirt VirtualMachine or VirtualMachineInstance, and kvtool's pool, snapshot
    or restore for KubeVirt's (see is_kubevirt).

    run_strategy: for a bare VMI, overrides its annotation and the default Always."""
    source = f"{doc['apiVersion']} {doc['kind']}"
    if doc["kind"] in ("VirtualMachinePool", *SNAPSHOT_KINDS):
        same = copy.deepcopy(dict(doc))
        same["apiVersion"] = API_VERSION
        same.pop("status", None)
        return Converted(same, source)
    if doc["kind"] == "VirtualMachine":
        vm = copy.deepcopy(dict(doc))
        vm["apiVersion"] = API_VERSION
        vm.pop("status", None)
        template = (vm.get("spec") or {}).get("template")
        if isinstance(template, dict) and isinstance(template.get("metadata"), dict):
            _keep_template_metadata(template)
        return Converted(vm, source)
    return Converted(_vm_for_vmi(doc, run_strategy), source)


def _keep_template_metadata(template: dict[str, Any]) -> None:
    kept = {k: v for k, v in template["metadata"].items() if k in _TEMPLATE_METADATA and v}
    if kept:
        template["metadata"] = kept
    else:
        del template["metadata"]


def _vm_for_vmi(vmi: Mapping[str, Any], run_strategy: str | None) -> dict[str, Any]:
    metadata = copy.deepcopy(dict(vmi.get("metadata") or {})) if isinstance(vmi.get("metadata"), Mapping) \
        else vmi.get("metadata")
    strategy = run_strategy
    if strategy is None and isinstance(metadata, dict):
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            strategy = annotations.pop(RUN_STRATEGY_ANNOTATION, None)
            if not annotations:
                metadata.pop("annotations")
    template: dict[str, Any] = {}
    if isinstance(metadata, dict):
        carried = {k: copy.deepcopy(metadata[k]) for k in _TEMPLATE_METADATA if metadata.get(k)}
        if carried:
            template["metadata"] = carried
    template["spec"] = copy.deepcopy(vmi.get("spec"))
    return {"apiVersion": API_VERSION, "kind": "VirtualMachine", "metadata": metadata,
            "spec": {"runStrategy": strategy or "Always", "template": template}}
