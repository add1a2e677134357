"""KubeVirt's own VirtualMachine and VirtualMachineInstance CRDs, from KubeVirt's Go module.

For trying kvtool's KubeVirt target on a cluster without KubeVirt (the embedded one): plan/apply need only the
CRDs. The schemas are never written here: `go mod download` fetches kubevirt.io/kubevirt through the Go module
proxy, and its virt-operator package holds the generated OpenAPI validation of every CRD
(validations_generated.go, one YAML string per kind). The CRD around each schema (names, versions, printer
columns) is what virt-operator's crds.go builds. The result is cached by version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from kvtool import paths
from kvtool.local.build import BuildError, go_executable

MODULE = "kubevirt.io/kubevirt"
VERSION = "v1.6.0"
VALIDATIONS = "pkg/virt-operator/resource/generate/components/validations_generated.go"
# KubeVirt serves v1 (stored) and v1alpha3 with the same schema (virtv1.ApiSupportedVersions).
VERSIONS = (("v1", True), ("v1alpha3", False))
AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
KINDS: dict[str, dict[str, Any]] = {
    "virtualmachine": {
        "kind": "VirtualMachine", "plural": "virtualmachines", "shortNames": ["vm", "vms"], "status": True,
        "columns": [AGE, {"name": "Status", "description": "Human Readable Status", "type": "string",
                          "jsonPath": ".status.printableStatus"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type=='Ready')].status"}]},
    "virtualmachineinstance": {
        "kind": "VirtualMachineInstance", "plural": "virtualmachineinstances", "shortNames": ["vmi", "vmis"],
        "status": False,
        "columns": [AGE, {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "IP", "type": "string", "jsonPath": ".status.interfaces[0].ipAddress"},
                    {"name": "NodeName", "type": "string", "jsonPath": ".status.nodeName"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type=='Ready')].status"}]},
}


def module_zip(version: str = VERSION) -> Path:
    """The module's zip in Go's module cache, downloaded through the Go module proxy when missing."""
    with tempfile.TemporaryDirectory() as empty:  # outside any go.mod: `go mod download` takes module@version
        result = subprocess.run([go_executable(), "mod", "download", "-json", f"{MODULE}@{version}"], cwd=empty,
                                capture_output=True, text=True, timeout=600,
                                env={**os.environ, "GOFLAGS": "-mod=mod"})
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        info = {}
    if result.returncode != 0 or info.get("Error") or not info.get("Zip"):
        raise BuildError(f"cannot download {MODULE}@{version}: {info.get('Error') or result.stderr.strip()[-500:]}",
                         hint="the Go module proxy must be reachable (GOPROXY)")
    return Path(info["Zip"])


def schemas(zip_path: Path, version: str = VERSION) -> dict[str, dict[str, Any]]:
    """kind (lower case) -> {"openAPIV3Schema": ...} from the module's validations_generated.go."""
    with zipfile.ZipFile(zip_path) as archive:
        source = archive.read(f"{MODULE}@{version}/{VALIDATIONS}").decode()
    entries = re.findall(r"^\t\"([a-z]+)\": `(.*?)`,$", source, re.S | re.M)  # "name": `yaml`,
    found = {name: yaml.safe_load(text) for name, text in entries}
    missing = sorted(set(KINDS) - set(found))
    if missing:
        raise BuildError(f"{VALIDATIONS} in {MODULE}@{version} has no schema for {', '.join(missing)}")
    return found


def crds(version: str = VERSION) -> list[dict[str, Any]]:
    """KubeVirt's VirtualMachine and VirtualMachineInstance CRDs, cached as YAML per KubeVirt version."""
    cache = cache_path(version)
    if cache.is_file():
        return list(yaml.safe_load_all(cache.read_text()))
    found = schemas(module_zip(version), version)
    docs = [_crd(name, found[name]) for name in KINDS]
    paths.write_atomic(cache, yaml.safe_dump_all(docs, sort_keys=False))
    return docs


def _crd(name: str, validation: dict[str, Any]) -> dict[str, Any]:
    spec = KINDS[name]
    versions = []
    for served_version, storage in VERSIONS:
        entry: dict[str, Any] = {"name": served_version, "served": True, "storage": storage,
                                 "schema": validation, "additionalPrinterColumns": spec["columns"]}
        if not storage:
            entry["deprecated"] = True
            entry["deprecationWarning"] = f"kubevirt.io/{served_version} is now deprecated and will be removed soon"
        if spec["status"]:
            entry["subresources"] = {"status": {}}
        versions.append(entry)
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{spec['plural']}.kubevirt.io",
                         "labels": {"app.kubernetes.io/component": "kubevirt"}},
            "spec": {"group": "kubevirt.io", "scope": "Namespaced", "versions": versions,
                     "names": {"kind": spec["kind"], "plural": spec["plural"], "singular": name,
                               "shortNames": spec["shortNames"], "categories": ["all"]}}}


def cache_path(version: str = VERSION) -> Path:
    return paths.cache_dir() / "kubevirt" / f"crds-{version}.yaml"
