"""KubeVirt compatibility, offline: KubeVirt's documents read as kvtool's, every refused KubeVirt field named in
its refusal, the CRDs refusing the same fields server-side, and the compatibility table generated from the
schemas. The cluster half (apply, boot, EFI, probes) is tests/test_kubevirt_runtime.py."""

from __future__ import annotations

import copy
import itertools
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvtool.api import compat, crd, kubevirt, schema
from kvtool.plan import desired
from tests.guest_helpers import KVTOOL_CLI
from tests.vmfactory import vm

MANIFESTS = Path(__file__).parent / "kubevirt"
DOC = Path(__file__).parent.parent / "docs" / "kubevirt-compat.md"
REFUSED = "kvtool does not support this KubeVirt field: "


def refused_fields(node: Mapping[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple, str]]:
    """(field path into a VirtualMachine, reason) of every field the schemas refuse; list items at index 0."""
    if schema.UNSUPPORTED in node:
        yield path, node[schema.UNSUPPORTED]
        return
    for name, sub in (node.get("properties") or {}).items():
        yield from refused_fields(sub, (*path, name))
    if isinstance(node.get("items"), Mapping):
        yield from refused_fields(node["items"], (*path, 0))


REFUSED_FIELDS = sorted(refused_fields(schema.inlined("virtualmachine.json")), key=lambda f: schema.format_path(f[0]))


def put(doc: dict[str, Any], path: tuple, value: Any) -> None:
    """Set doc at path, making the dicts and one-item lists on the way."""
    node: Any = doc
    for step, following in itertools.pairwise(path):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            while len(node) <= step:
                node.append(empty)
            node = node[step]
        else:
            node = node.setdefault(step, empty)
    node[path[-1]] = value


def test_there_are_refused_fields_in_every_part_of_the_api() -> None:
    paths = {schema.format_path(p) for p, _ in REFUSED_FIELDS}
    for expected in ("spec.instancetype", "spec.template.spec.domain.devices.gpus",
                     "spec.template.spec.domain.devices.disks[0].lun", "spec.template.spec.networks[0].multus",
                     "spec.template.spec.domain.cpu.dedicatedCpuPlacement", "spec.template.spec.volumes[0].dataVolume",
                     "spec.template.spec.domain.devices.interfaces[0].sriov"):
        assert expected in paths
    assert len(paths) >= 45


@pytest.mark.parametrize(("path", "reason"), REFUSED_FIELDS, ids=[schema.format_path(p) for p, _ in REFUSED_FIELDS])
def test_each_refused_field_is_named_with_the_reason(path: tuple, reason: str) -> None:
    doc = vm("kv")
    put(doc, path, {})
    issues = [str(i) for i in schema.validate(doc, "virtualmachine.json")]
    expected = f"{schema.format_path(path)}: {REFUSED}{reason}"
    assert expected in issues, issues
    assert not any("unknown field" in i for i in issues), "a KubeVirt field is never a generic unknown field"


def test_the_crds_refuse_the_same_fields_with_the_same_sentence() -> None:
    rules: set[tuple[str, str]] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                rules.add((rule["rule"], rule["message"]))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(crd.crd("virtualmachine.json"))
    for path, reason in REFUSED_FIELDS:
        assert (f"!has(self.{path[-1]})", REFUSED + reason) in rules, schema.format_path(path)


def test_kubevirt_documents_of_our_own_covering_every_field_validate() -> None:
    state = desired.load([MANIFESTS], stack="kv")
    by_name = {o.name: o.manifest for o in state.objects}
    assert set(by_name) == {"kv-every-field", "kv-efi", "kv-secureboot"}
    assert all(m["apiVersion"] == "kvtool.io/v1alpha1" and m["kind"] == "VirtualMachine" for m in by_name.values())
    assert by_name["kv-efi"]["spec"]["runStrategy"] == "Always", "a bare VMI runs as a VM with runStrategy Always"
    assert by_name["kv-efi"]["spec"]["template"]["metadata"] == {"labels": {"special": "kv-efi"}}
    assert by_name["kv-secureboot"]["spec"]["runStrategy"] == "Halted", "its kvtool.io/run-strategy annotation"
    assert "annotations" not in by_name["kv-secureboot"]["metadata"]
    assert "creationTimestamp" not in by_name["kv-every-field"]["spec"]["template"]["metadata"]
    note = state.conversion_note()
    assert note and note.startswith("Read 3 KubeVirt document(s)") and "kubevirt.io/v1alpha3" in note


def test_conversion_leaves_fields_for_validation_to_refuse() -> None:
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "g"},
           "spec": copy.deepcopy(vm("g")["spec"]["template"]["spec"])}
    vmi["spec"]["domain"]["devices"]["gpus"] = [{"name": "gpu", "deviceName": "nvidia.com/TU104GL"}]
    assert kubevirt.is_kubevirt(vmi) and not kubevirt.is_kubevirt({**vmi, "kind": "VirtualMachinePool"})
    with pytest.raises(desired.InvalidInput) as info:
        desired.load(objects=[vmi])
    assert f"spec.template.spec.domain.devices.gpus: {REFUSED}GPUs are host devices" in str(info.value)
    # KubeVirt's pool is read as kvtool's (same fields), and then checked as any pool is.
    pool = {"apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool", "metadata": {"name": "p"}}
    with pytest.raises(desired.InvalidInput, match="missing required field 'spec'"):
        desired.load(objects=[pool])
    replicaset = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet", "metadata": {"name": "r"}}
    with pytest.raises(desired.InvalidInput, match=r"kvtool reads KubeVirt's VirtualMachine and "
                                                  r"VirtualMachineInstance \(v1, v1alpha3\), not "
                                                  r"VirtualMachineInstanceReplicaSet"):
        desired.load(objects=[replicaset])


def test_convert_writes_kvtool_yaml_that_validates(tmp_path: Path) -> None:
    out = tmp_path / "converted.yaml"
    result = subprocess.run([*KVTOOL_CLI, "convert", str(MANIFESTS / "vmi-efi.yaml"), "--run-strategy", "Halted",
                             "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Converted 1 KubeVirt document(s)" in result.stderr
    (doc,) = yaml.safe_load_all(out.read_text())
    assert (doc["apiVersion"], doc["kind"], doc["spec"]["runStrategy"]) == ("kvtool.io/v1alpha1", "VirtualMachine",
                                                                            "Halted")
    assert "userData: |\n" in out.read_text(), "user data stays readable"
    check = subprocess.run([*KVTOOL_CLI, "validate", str(out)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "Valid: 1 object(s)" in check.stdout, check.stdout + check.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(vm("x")))
    nothing = subprocess.run([*KVTOOL_CLI, "convert", str(plain), "-o", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 1 and "no KubeVirt VirtualMachine or VirtualMachineInstance" in nothing.stderr
    assert not (tmp_path / "none.yaml").exists() and nothing.stdout == "", "a refusal writes nothing"
    bad = tmp_path / "bad.yaml"
    gpu = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "g"},
           "spec": {**copy.deepcopy(vm("g")["spec"]["template"]["spec"])}}
    gpu["spec"]["domain"]["devices"]["gpus"] = [{"name": "gpu", "deviceName": "nvidia.com/GPU"}]
    bad.write_text(yaml.safe_dump(gpu))
    refused = subprocess.run([*KVTOOL_CLI, "convert", str(bad), "-o", str(tmp_path / "bad-out.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and f"devices.gpus: {REFUSED}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "bad-out.yaml").exists()


def test_the_compat_table_is_generated_from_the_schemas() -> None:
    assert DOC.read_text() == compat.markdown(), "regenerate it: kvtool crds --compat > docs/kubevirt-compat.md"
    table = DOC.read_text()
    assert "| `gpus` | refused | GPUs are host devices" in table
    assert "| `features` | supported |" in table and "| `rng` | mapped |" in table


def test_every_field_of_kubevirts_own_crd_is_known_to_kvtool() -> None:
    """KubeVirt's real VirtualMachine CRD (its virt-operator's generated schema, from its Go module): every field
    under spec is in kvtool's schemas, supported or refused by name, so no KubeVirt field gets a generic
    "unknown field". (kvtool also knows some newer ones: rebootPolicy, fileBacked, utilityVolumes...)"""
    from kvtool.local import kubevirt_crds

    crd = next(c for c in kubevirt_crds.crds() if c["spec"]["names"]["kind"] == "VirtualMachine")
    theirs = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    ours = schema.inlined("virtualmachine.json")["properties"]["spec"]
    missing: list[str] = []
    compared = 0

    def walk(kv: Mapping[str, Any], us: Mapping[str, Any], path: str) -> None:
        nonlocal compared
        if schema.UNSUPPORTED in us or us.get("x-kubernetes-preserve-unknown-fields"):
            return
        if "items" in kv and isinstance(us.get("items"), Mapping):
            walk(kv["items"], us["items"], f"{path}[]")
            return
        if "properties" not in us:  # a map or a Kubernetes type kvtool passes through (affinity, dnsConfig...)
            return
        for name, sub in (kv.get("properties") or {}).items():
            compared += 1
            if name not in us["properties"]:
                missing.append(f"{path}.{name}")
            else:
                walk(sub, us["properties"][name], f"{path}.{name}")

    walk(theirs, ours, "spec")
    assert compared > 300, f"compared only {compared} fields: the walk is broken"  # v1.6.0: 322
    assert not missing, f"KubeVirt fields kvtool's schemas do not name: {missing}"


def test_retarget_addresses_vms_to_kubevirts_api_and_labels_their_template() -> None:
    from kvtool.api.types import KUBEVIRT, KVTOOL, SECRET

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    state = desired.load(objects=[vm("a"), secret], stack="st")
    assert state.target is KVTOOL
    desired.retarget(state, KUBEVIRT)
    by_kind = {o.kind: o.manifest for o in state.objects}
    assert set(by_kind) == {KUBEVIRT.vm, SECRET}, "only VirtualMachines change API"
    manifest = by_kind[KUBEVIRT.vm]
    assert manifest["apiVersion"] == "kubevirt.io/v1"
    assert manifest["spec"]["template"]["metadata"]["labels"] == {"kvtool.io/stack": "st",
                                                                  "app.kubernetes.io/managed-by": "kvtool"}
    # KubeVirt's VMs in place of kvtool's; no pools (kvtool's own kind, run by kvtool's controller).
    assert KUBEVIRT.plannable == tuple(KUBEVIRT.vm if k is KVTOOL.vm else k for k in KVTOOL.plannable
                                       if k.kind != "VirtualMachinePool")
