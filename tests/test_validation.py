"""Client-side validation: schema errors and cross-field rules, reported with file, document and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvtool.api import crd, kubevirt, rules, schema
from kvtool.plan import desired
from tests.vmfactory import vm, with_


def _issues(tmp_path: Path, *docs: object, text: str | None = None) -> list[str]:
    f = tmp_path / "lab.yaml"
    f.write_text(text if text is not None else yaml.safe_dump_all(docs))
    with pytest.raises(desired.InvalidInput) as exc:
        desired.load([f])
    return [str(i) for i in exc.value.issues]


def test_valid_vm_loads_with_labels_and_namespace(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(yaml.safe_dump(vm("vm-1")))
    state = desired.load([f], stack="lab")
    (obj,) = state.objects
    assert obj.manifest["metadata"]["namespace"] == "default"
    assert obj.manifest["metadata"]["labels"] == {"kvtool.io/stack": "lab", "app.kubernetes.io/managed-by": "kvtool"}


def test_broken_yaml_names_file_document_and_line(tmp_path: Path) -> None:
    issues = _issues(tmp_path, text="apiVersion: kvtool.io/v1alpha1\n---\nkind: [unclosed\n")
    assert any("lab.yaml, document 2: broken YAML: line" in i for i in issues), issues


def test_duplicate_keys_name_file_document_and_line(tmp_path: Path) -> None:
    # Lines count in the file, as an editor shows them, not within the document.
    text = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  name: c\ndata: {x: '1', x: '2'}\n")
    issues = _issues(tmp_path, text=text)
    assert any(i.endswith("lab.yaml, document 2, line 9 at metadata: duplicate key 'name'") for i in issues), issues
    assert any("document 2, line 10 at data: duplicate key 'x'" in i for i in issues), issues
    assert not any("document 1" in i for i in issues)


def test_a_duplicate_key_hides_no_other_problem(tmp_path: Path) -> None:
    issues = _issues(tmp_path, text="apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  name: Bad_Name\n")
    assert any("line 5 at metadata: duplicate key 'name'" in i for i in issues), issues
    assert any("at metadata.name: 'Bad_Name' is not a valid name" in i for i in issues), issues


def test_duplicate_keys_in_json(tmp_path: Path) -> None:
    f = tmp_path / "vm.json"
    f.write_text('{"apiVersion": "v1", "kind": "ConfigMap",\n "metadata": {"name": "a"},\n "kind": "Secret"}')
    with pytest.raises(desired.InvalidInput, match=r"vm.json, document 1, line 3: duplicate key 'kind'"):
        desired.load([f])


def test_yaml_merge_keys_are_no_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "cm.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
                 "data:\n  base: &b {x: '1'}\n  more:\n    <<: *b\n    <<: *b\n")
    assert desired.read_documents(f)[1] == []


@pytest.mark.parametrize(("line", "expected"), [
    ("name: no", "metadata.name is the boolean false: quote it ('no')"),
    ("name: Yes", "metadata.name is the boolean true: quote it ('Yes')"),
    ("name: off", "metadata.name is the boolean false: quote it ('off')"),
    ("name: 0123", "metadata.name is the number 83: quote it ('0123')"),
    ("name: 1e3", "metadata.name is a number to YAML 1.2 readers such as kubectl: quote it ('1e3')"),
    ("name: a\n  namespace: 2024-01-02", "metadata.namespace is the date 2024-01-02: quote it ('2024-01-02')"),
    ("name: a\n  labels: {tier: on}", "at metadata.labels.tier: metadata.labels.tier is the boolean true"),
    ("name: a\n  annotations: {v: 1.5}", "metadata.annotations.v is the number 1.5: quote it ('1.5')"),
])
def test_yaml_11_surprises_in_names(tmp_path: Path, line: str, expected: str) -> None:
    issues = _issues(tmp_path, text=f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  {line}\n")
    assert any(expected in i for i in issues), issues
    assert any("lab.yaml, document 1, line " in i for i in issues)
    assert len(issues) == 1, "one message per problem, not another 'missing metadata.name'"


def test_quoted_names_and_names_of_python_objects(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 'no'\n  labels: {tier: \"on\", n: '7'}\n"
                 "data: {enabled: 'yes'}\n")
    (obj,) = desired.load([f]).objects
    assert obj.name == "no" and obj.manifest["metadata"]["labels"]["tier"] == "on"
    with pytest.raises(desired.InvalidInput, match=r"metadata.name must be a string, got False"):
        desired.load(objects=[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": False}}])


def test_unknown_kind_and_kubevirt_hint(tmp_path: Path) -> None:
    issues = _issues(tmp_path, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
                     {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt", "metadata": {"name": "kv"}},
                     with_(vm("x"), "apiVersion", "kubevirt.io/v1"))
    assert any("unknown kind 'Pod'" in i for i in issues)
    assert any("kvtool reads KubeVirt's VirtualMachine and VirtualMachineInstance" in i and "not KubeVirt" in i
               for i in issues)
    assert len(issues) == 2, "a kubevirt.io/v1 VirtualMachine is read as kvtool's"


def test_a_snapshot_in_desired_state_says_it_is_a_request(tmp_path: Path) -> None:
    [issue] = _issues(tmp_path, {"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
                                 "metadata": {"name": "s"},
                                 "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                                                     "name": "x"}}})
    assert "unknown kind 'VirtualMachineSnapshot' (apiVersion 'snapshot.kubevirt.io/v1beta1')" in issue
    assert "a one-off request, not desired state: `kvtool snapshot VM`" in issue
    # A kind that is no string (a fuzzer's find) is refused as any unknown kind, not a crash.
    [odd] = _issues(tmp_path, {"apiVersion": "v1", "kind": ["VirtualMachineSnapshot"], "metadata": {"name": "s"}})
    assert "unknown kind" in odd


def test_all_errors_at_once_with_field_paths(tmp_path: Path) -> None:
    bad = vm("vm-1")
    bad["spec"]["template"]["spec"]["domain"]["cpu"] = {"corse": 2, "threads": "two"}
    bad["spec"]["running"] = True
    second = with_(vm("Bad_Name"), "spec.runStrategy", "Sometimes")
    issues = _issues(tmp_path, bad, second)
    text = "\n".join(issues)
    assert "document 1 at spec.template.spec.domain.cpu: unknown field 'corse'; did you mean 'cores'?" in text
    assert "document 1 at spec.template.spec.domain.cpu.threads: expected integer, got string 'two'" in text
    assert "spec.running and spec.runStrategy are mutually exclusive" in text
    assert "document 2 at metadata.name: metadata.name must be a DNS-1123 label" in text
    assert "document 2 at spec.runStrategy: 'Sometimes' is not one of: Always, Halted" in text


def test_disk_without_volume_and_duplicates(tmp_path: Path) -> None:
    doc = vm("vm-1", user_data="#!/bin/sh\necho hi\n")
    doc["spec"]["template"]["spec"]["domain"]["devices"]["disks"].append({"name": "data", "disk": {}})
    dup = vm("vm-1")
    issues = _issues(tmp_path, doc, dup)
    assert any("devices.disks: every disk must name a volume in spec.volumes" in i for i in issues)
    assert any("is already defined in" in i and "document 1" in i for i in issues)


def test_memory_minimum_and_quantity(tmp_path: Path) -> None:
    issues = _issues(tmp_path, vm("a", memory="512Ki"), vm("b", memory="12Xi"))
    assert any("memory.guest must be at least 1Mi" in i for i in issues)
    assert any("'12Xi' is not a Kubernetes quantity" in i for i in issues)


def test_stack_label_mismatch(tmp_path: Path) -> None:
    issues = _issues(tmp_path, vm("a", labels={"kvtool.io/stack": "other"}))
    assert any("says stack 'other' but this plan is for stack 'default'" in i for i in issues)


def test_invalid_stack_name() -> None:
    with pytest.raises(desired.KvtoolError, match="stack name"):
        desired.load([], stack="Bad Stack")


def test_server_metadata_is_dropped(tmp_path: Path) -> None:
    doc = vm("a")
    doc["metadata"].update(uid="123", resourceVersion="9", creationTimestamp="2020-01-01T00:00:00Z")
    doc["status"] = {"printableStatus": "Running"}
    f = tmp_path / "a.yaml"
    f.write_text(yaml.safe_dump(doc))
    (obj,) = desired.load([f]).objects
    assert "uid" not in obj.manifest["metadata"] and "status" not in obj.manifest


def test_directories_are_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(vm("a")))
    (tmp_path / "sub" / "b.yml").write_text(yaml.safe_dump(vm("b")))
    (tmp_path / "notes.txt").write_text("not yaml")
    names = sorted(o.name for o in desired.load([tmp_path]).objects)
    assert names == ["a", "b"]


def test_every_cel_rule_has_a_python_twin() -> None:
    ids = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            ids.update(r["x-kvtool-id"] for r in node.get("x-kubernetes-validations", []))
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    for name in schema.SCHEMA_FILES:
        collect(schema.load(name))
    assert ids == set(rules.RULES)


def test_crd_schema_is_structural() -> None:
    for doc in crd.all_crds():
        text = yaml.safe_dump(doc)
        assert "$ref" not in text and "x-kvtool" not in text and "propertyNames" not in text
        version = doc["spec"]["versions"][0]
        scale = {"scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                           "labelSelectorPath": ".status.labelSelector"}}
        assert version["subresources"] == {"status": {}, **(scale if doc["spec"]["names"]["kind"] ==
                                                            "VirtualMachinePool" else {})}
        names = doc["spec"]["names"]
        assert names["shortNames"] in (["vm", "vms"], ["vmi", "vmis"], ["vmim", "vmims"], ["vmpool", "vmpools"],
                                       ["vmsnapshot", "vmsnapshots"], ["vmrestore", "vmrestores"])
        cols = {c["name"] for c in version["additionalPrinterColumns"]}
        expected = {"VirtualMachineInstanceMigration": {"Age", "Phase", "VMI"},
                    "VirtualMachineSnapshot": {"Age", "SourceKind", "SourceName", "Phase", "ReadyToUse", "CreationTime",
                                               "Error"},
                    "VirtualMachineRestore": {"Age", "TargetKind", "TargetName", "Complete", "RestoreTime", "Error"}}
        assert expected.get(names["kind"], {"Age", "Ready"}) <= cols


# KubeVirt's documents as its user guide writes them (snapshot.kubevirt.io/v1beta1).
KUBEVIRT_SNAPSHOT = {"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
                     "metadata": {"name": "snap-larry"},
                     "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "larry"}}}
KUBEVIRT_RESTORE = {"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
                    "metadata": {"name": "restore-larry"},
                    "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "larry"},
                             "virtualMachineSnapshotName": "snap-larry"}}


def snapshot_doc(**spec: object) -> dict:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineSnapshot",
            "metadata": {"name": "snap-1", "namespace": "default"},
            "spec": {"source": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": "vm-1"}, **spec}}


def restore_doc(**spec: object) -> dict:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineRestore",
            "metadata": {"name": "restore-1", "namespace": "default"},
            "spec": {"target": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": "vm-1"},
                     "virtualMachineSnapshotName": "snap-1", **spec}}


def _messages(doc: dict, schema_name: str) -> dict[str, str]:
    return {i.path: i.message for i in schema.validate(doc, schema_name)}


def test_snapshots_and_restores_validate_in_kvtools_and_kubevirts_forms() -> None:
    assert schema.validate(snapshot_doc(deletionPolicy="Retain", failureDeadline="1h30m"),
                           "virtualmachinesnapshot.json") == []
    assert schema.validate(restore_doc(targetReadinessPolicy="WaitEventually"), "virtualmachinerestore.json") == []
    v1alpha1 = {**KUBEVIRT_SNAPSHOT, "apiVersion": "snapshot.kubevirt.io/v1alpha1",
                "status": {"phase": "Succeeded", "readyToUse": True}}
    for doc, name in ((KUBEVIRT_SNAPSHOT, "virtualmachinesnapshot.json"),
                      (KUBEVIRT_RESTORE, "virtualmachinerestore.json"), (v1alpha1, "virtualmachinesnapshot.json")):
        assert kubevirt.is_kubevirt(doc)
        converted = kubevirt.from_kubevirt(doc)
        assert converted.source == f"{doc['apiVersion']} {doc['kind']}"
        assert converted.manifest["apiVersion"] == "kvtool.io/v1alpha1" and "status" not in converted.manifest
        assert schema.validate(converted.manifest, name) == [], doc
    assert not kubevirt.is_kubevirt({**KUBEVIRT_SNAPSHOT, "kind": "VirtualMachineSnapshotContent"})


def test_the_status_the_controller_writes_validates() -> None:
    condition = {"type": "Ready", "status": "True", "reason": "Succeeded", "lastTransitionTime": "2026-01-02T03:04:05Z"}
    snapshot = snapshot_doc()
    snapshot["status"] = {
        "sourceUID": "u-1", "creationTime": "2026-01-02T03:04:05Z", "phase": "Succeeded", "readyToUse": True,
        "conditions": [condition], "indications": ["Online", "NoGuestAgent", "Paused"], "paused": False,
        "snapshotVolumes": {"includedVolumes": ["root", "scratch"], "excludedVolumes": ["cloudinit"]},
        "volumeBackups": [{"volumeName": "root", "persistentVolumeClaim": {"name": "vm-1-root"},
                           "backupClaimName": "snap-1-root", "method": "Copy", "size": "1Gi"},
                          {"volumeName": "scratch", "persistentVolumeClaim": {"name": "vm-1-scratch"},
                           "method": "Empty"}],
        "error": {"time": "2026-01-02T03:04:05Z", "message": "no"}}
    assert schema.validate(snapshot, "virtualmachinesnapshot.json") == []
    restore = restore_doc()
    restore["status"] = {"complete": True, "restoreTime": "2026-01-02T03:04:05Z", "conditions": [condition],
                         "restores": [{"volumeName": "root", "persistentVolumeClaim": "vm-1-root",
                                       "volumeSnapshotName": "snap-1-root"}], "deletedDataVolumes": []}
    assert schema.validate(restore, "virtualmachinerestore.json") == []
    snapshot["status"]["phase"] = "Done"
    snapshot["status"]["volumeBackups"][0]["method"] = "Snapshot"
    issues = _messages(snapshot, "virtualmachinesnapshot.json")
    assert issues["status.phase"] == "'Done' is not one of: InProgress, Succeeded, Failed, Unknown"
    assert issues["status.volumeBackups[0].method"] == "'Snapshot' is not one of: Copy, Empty"


def test_a_bad_snapshot_is_refused_naming_the_field() -> None:
    missing = snapshot_doc()
    del missing["spec"]["source"]
    assert _messages(missing, "virtualmachinesnapshot.json") == {"spec": "missing required field 'source'"}
    pod = snapshot_doc()
    pod["spec"]["source"]["kind"] = "Pod"
    assert _messages(pod, "virtualmachinesnapshot.json") == {"spec.source.kind": "'Pod' is not one of: VirtualMachine"}
    issues = _messages(snapshot_doc(failureDeadline="5 minutes", deletionPolicy="Keep"), "virtualmachinesnapshot.json")
    assert issues["spec.failureDeadline"].startswith("'5 minutes' is not valid: How long the snapshot may take")
    assert "Go duration like 5m" in issues["spec.failureDeadline"]
    assert issues["spec.deletionPolicy"] == "'Keep' is not one of: Delete, Retain"
    long_name = snapshot_doc()
    long_name["metadata"]["name"] = "s" * 53
    assert "at most 52 characters" in _messages(long_name, "virtualmachinesnapshot.json")["metadata.name"]
    long_name["metadata"]["name"] = "s" * 52
    assert schema.validate(long_name, "virtualmachinesnapshot.json") == []


def test_a_bad_restore_is_refused_naming_the_field_and_why() -> None:
    issues = _messages(restore_doc(patches=['{"op": "replace", "path": "/metadata/name", "value": "new-vm"}'],
                                   volumeRestorePolicy="RandomizeNames", targetReadinessPolicy="StopTarget"),
                       "virtualmachinerestore.json")
    refused = schema.unsupported_message("restoring to a changed VM is not implemented: the restore writes the "
                                         "snapshot's disks back into the same VM")
    assert issues["spec.patches"] == refused
    assert "into the VM's own claims" in issues["spec.volumeRestorePolicy"]
    assert issues["spec.targetReadinessPolicy"] == \
        "'StopTarget' is not one of: FailImmediate, WaitGracePeriod, WaitEventually"
    missing = restore_doc()
    del missing["spec"]["virtualMachineSnapshotName"]
    missing["spec"]["target"]["kind"] = "VirtualMachineInstance"
    issues = _messages(missing, "virtualmachinerestore.json")
    assert issues == {"spec": "missing required field 'virtualMachineSnapshotName'",
                      "spec.target.kind": "'VirtualMachineInstance' is not one of: VirtualMachine"}
    # The API server refuses the same fields with the same words (the CRD's CEL rules), keeping KubeVirt's types.
    openapi = crd.crd("virtualmachinerestore.json")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = openapi["properties"]["spec"]
    rule = {"rule": "!has(self.patches)", "message": refused, "fieldPath": ".patches"}
    assert rule in spec["x-kubernetes-validations"]
    assert spec["properties"]["patches"] == {"type": "array", "items": {"type": "string"}}
