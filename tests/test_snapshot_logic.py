"""The snapshot controller's decisions (kvtool.controller.snapshot), the copy Job's command (kvtool disk-copy) and
a VM held while its disks are written: pure functions, no cluster."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from kvtool.api import snapshotnames
from kvtool.api.types import PAUSE_ANNOTATION
from kvtool.cli import disk_copy
from kvtool.controller import snapshot as s
from kvtool.controller import vm as vm_logic

NOW = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC)
IMAGE = "kvtool.io/launcher:test"


def vm(*volumes: dict[str, Any], uid: str = "vm-uid") -> dict[str, Any]:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "lab", "namespace": "default", "uid": uid},
            "spec": {"runStrategy": "Always", "template": {"spec": {"volumes": list(volumes)}}}}


HOME = {"name": "home", "persistentVolumeClaim": {"claimName": "lab-home"}}
ROOT = {"name": "root", "containerDisk": {"image": "debian-12"}}


def snap(name: str = "snap", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineSnapshot",
            "metadata": {"name": name, "namespace": "default", "uid": "snap-uid",
                         "creationTimestamp": "2026-12-02T02:59:00Z"},
            "spec": {"source": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": "lab"}},
            "status": status}


def claim(bound: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": "lab-home"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard", "volumeName": "pv-1",
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound" if bound else "Pending", "capacity": {"storage": "1Gi"}}}


HOSTPATH = {"metadata": {"name": "pv-1"}, "spec": {"hostPath": {"path": "/tmp/hostpath_pv/x"}}}
CSI = {"metadata": {"name": "pv-1"}, "spec": {"csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "h"}}}


def vmi(phase: str = "Running", paused: bool = False, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "lab", "uid": "vmi-uid", "annotations": annotations or {}},
            "status": {"phase": phase, "nodeName": "node-1",
                       "conditions": [{"type": "Paused", "status": "True" if paused else "False"}]}}


def decide(snapshot: dict[str, Any], the_vm: dict[str, Any] | None, the_vmi: dict[str, Any] | None = None,
           pv: dict[str, Any] | None = HOSTPATH, classes: tuple[str, ...] = (), backups: dict[str, Any] | None = None,
           job: dict[str, Any] | None = None, messages: list[str] | None = None, bound: bool = True) -> s.Decision:
    storage = {"lab-home": s.Storage(claim(bound), pv if bound else None, classes)}
    return s.decide_snapshot(snapshot, the_vm, the_vmi, storage, backups or {}, job, messages or [], IMAGE, NOW)


def done_job(ok: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": "snap-snapshot"},
            "status": {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True",
                                       "reason": "" if ok else "BackoffLimitExceeded"}]}}


def test_an_offline_snapshot_copies_the_claim_into_a_backup_claim_owned_by_the_snapshot() -> None:
    d = decide(snap(), vm(ROOT, HOME))
    assert d.pause is None and d.status["phase"] == "InProgress"
    assert d.status["snapshotVolumes"] == {"includedVolumes": ["home"], "excludedVolumes": ["root"]}
    assert d.status["volumeBackups"] == [{"volumeName": "home", "persistentVolumeClaim": {"name": "lab-home"},
                                          "method": "Copy", "backupClaimName": "snap-home", "size": "1Gi"}]
    [backup] = d.create_claims
    assert backup["metadata"]["name"] == "snap-home" and backup["metadata"]["ownerReferences"][0]["uid"] == "snap-uid"
    assert backup["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                              "resources": {"requests": {"storage": "1Gi"}}}
    job = d.create_job
    assert job is not None and job["metadata"]["name"] == "snap-snapshot"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["kvtool", "disk-copy"]
    assert pod["containers"][0]["args"] == [f"{s.SRC}/0", f"{s.DST}/0"]
    assert [v["persistentVolumeClaim"] for v in pod["volumes"]] == [{"claimName": "lab-home", "readOnly": True},
                                                                    {"claimName": "snap-home"}]
    assert "nodeSelector" not in pod and pod["automountServiceAccountToken"] is False
    # Its deadline is what is left of failureDeadline (5m, 1 minute gone).
    assert job["spec"]["activeDeadlineSeconds"] == 241
    # Retain: the backup claim outlives the snapshot.
    retained = snap()
    retained["spec"]["deletionPolicy"] = "Retain"
    assert "ownerReferences" not in decide(retained, vm(HOME)).create_claims[0]["metadata"]


def test_the_job_s_outcome_ends_the_snapshot() -> None:
    ok = decide(snap(phase="InProgress"), vm(HOME), backups={"snap-home": {}}, job=done_job())
    assert ok.status["phase"] == "Succeeded" and ok.status["readyToUse"] is True and ok.delete_job
    assert ok.create_claims == [] and ok.create_job is None
    failed = decide(snap(phase="InProgress"), vm(HOME), backups={"snap-home": {}}, job=done_job(False),
                    messages=["cp: error writing '/var/run/kvtool/to/0/.disk.img.kvtool-copy': No space left\n"])
    assert failed.status["phase"] == "Failed" and failed.delete_job
    assert "No space left" in failed.status["error"]["message"]
    # A finished snapshot does nothing more.
    assert decide(snap(phase="Succeeded"), vm(HOME)).status == {}


def test_a_running_vm_is_paused_for_the_copy_and_unpaused_after() -> None:
    d = decide(snap(), vm(HOME), vmi())
    assert d.pause is True and d.create_job is None and d.requeue_after
    waiting = decide(snap(), vm(HOME), vmi(annotations={PAUSE_ANNOTATION: "true", s.PAUSED_BY: "snap-uid"}))
    assert waiting.pause is None and waiting.create_job is None
    paused = vmi(paused=True, annotations={PAUSE_ANNOTATION: "true", s.PAUSED_BY: "snap-uid"})
    copying = decide(snap(), vm(HOME), paused)
    assert copying.create_job is not None
    assert copying.create_job["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-1"}
    assert copying.status["indications"] == ["Online", "NoGuestAgent", "Paused"]
    done = decide(snap(phase="InProgress"), vm(HOME), paused, backups={"snap-home": {}}, job=done_job())
    assert done.pause is False and done.status["phase"] == "Succeeded"
    # A VM the user paused stays paused: the snapshot never unpauses what it did not pause.
    theirs = vmi(paused=True, annotations={PAUSE_ANNOTATION: "true"})
    assert decide(snap(phase="InProgress"), vm(HOME), theirs, backups={"snap-home": {}}, job=done_job()).pause is None
    # A VM still starting is waited for (its disk may open any moment).
    assert decide(snap(), vm(HOME), vmi("Scheduling")).status["conditions"][0]["reason"] == "WaitingForVMI"


def test_a_claim_not_bound_is_an_empty_backup_and_needs_no_copy() -> None:
    d = decide(snap(), vm(HOME), bound=False)
    assert d.status["phase"] == "Succeeded" and d.create_job is None and d.create_claims == []
    assert d.status["volumeBackups"][0]["method"] == "Empty"
    assert decide(snap(), vm(ROOT)).status["phase"] == "Succeeded"  # no claims at all: nothing to copy


@pytest.mark.parametrize(("pv", "classes", "why"), [
    (CSI, (), "no VolumeSnapshotClass exists for its CSI driver 'rbd.csi.ceph.com'"),
    (CSI, ("ceph",), "VolumeSnapshotClass ceph exists for its driver 'rbd.csi.ceph.com', but kvtool does not drive"),
    ({"spec": {"nfs": {"server": "x", "path": "/"}}}, (), "neither hostPath, local nor CSI"),
])
def test_storage_kvtool_cannot_copy_is_refused_with_the_reason(pv: dict[str, Any], classes: tuple[str, ...],
                                                              why: str) -> None:
    d = decide(snap(), vm(HOME), pv=pv, classes=classes)
    assert d.status["phase"] == "Failed" and d.create_job is None
    assert why in d.status["error"]["message"] and "volume 'home': claim 'lab-home'" in d.status["error"]["message"]


def test_a_missing_vm_or_a_passed_deadline_fails_the_snapshot() -> None:
    assert "VirtualMachine 'lab' was not found" in decide(snap(), None).status["error"]["message"]
    late = snap()
    late["spec"]["failureDeadline"] = "30s"
    d = decide(late, vm(HOME), vmi(paused=True, annotations={PAUSE_ANNOTATION: "true", s.PAUSED_BY: "snap-uid"}))
    assert d.status["phase"] == "Failed" and "failureDeadline (30s)" in d.status["error"]["message"]
    assert d.pause is False and d.delete_job


READY = snap(phase="Succeeded", readyToUse=True, sourceUID="vm-uid",
             volumeBackups=[{"volumeName": "home", "persistentVolumeClaim": {"name": "lab-home"}, "method": "Copy",
                             "backupClaimName": "snap-home"}])


def restore(policy: str | None = None, created: str = "2026-12-02T02:59:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {"target": {"kind": "VirtualMachine", "name": "lab"}, "virtualMachineSnapshotName": "snap"}
    if policy:
        spec["targetReadinessPolicy"] = policy
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineRestore",
            "metadata": {"name": "r", "namespace": "default", "uid": "r-uid", "creationTimestamp": created},
            "spec": spec, "status": {}}


def decide_restore(r: dict[str, Any], the_vmi: dict[str, Any] | None = None, snapshot: dict[str, Any] | None = READY,
                   the_vm: dict[str, Any] | None = None, job: dict[str, Any] | None = None,
                   claims: dict[str, Any] | None = None) -> s.Decision:
    claims = {"lab-home": {}, "snap-home": {}} if claims is None else claims
    return s.decide_restore(r, snapshot, the_vm or vm(HOME), the_vmi, claims, job, [], IMAGE, NOW)


def test_a_restore_copies_the_backup_back_once_the_vm_is_stopped() -> None:
    d = decide_restore(restore())
    assert d.create_job is not None and d.create_job["metadata"]["name"] == "r-restore"
    assert d.create_job["spec"]["template"]["spec"]["containers"][0]["args"] == [f"{s.SRC}/0", f"{s.DST}/0"]
    assert d.status["restores"] == [{"volumeName": "home", "persistentVolumeClaim": "lab-home",
                                     "volumeSnapshotName": "snap-home"}]
    done = decide_restore(restore(), job=done_job())
    assert done.status["complete"] is True and done.delete_job and s.restore_done({"status": done.status})
    # An Empty backup removes the disk the VM wrote since.
    empty = dict(READY, status={**READY["status"], "volumeBackups": [
        {"volumeName": "home", "persistentVolumeClaim": {"name": "lab-home"}, "method": "Empty"}]})
    job = decide_restore(restore(), snapshot=empty).create_job
    assert job is not None and job["spec"]["template"]["spec"]["containers"][0]["args"] == [s.EMPTY, f"{s.DST}/0"]


def test_a_running_target_is_waited_for_or_refused_by_its_policy() -> None:
    waiting = decide_restore(restore(), vmi())
    assert waiting.create_job is None and waiting.status["conditions"][0]["reason"] == "WaitingForTarget"
    assert not s.restore_done({"status": waiting.status})
    late = decide_restore(restore(created="2026-12-02T02:50:00Z"), vmi())  # past WaitGracePeriod's 5 minutes
    assert s.restore_done({"status": late.status}) and "still running (WaitGracePeriod)" in str(late.status)
    assert "still running (FailImmediate)" in str(decide_restore(restore("FailImmediate"), vmi()).status)
    assert decide_restore(restore("WaitEventually", created="2026-12-01T00:00:00Z"), vmi()).create_job is None


@pytest.mark.parametrize(("change", "message"), [
    ({"snapshot": None}, "VirtualMachineSnapshot 'snap' was not found"),
    ({"the_vm": vm(HOME, uid="other")}, "was deleted and made again"),
    ({"claims": {"snap-home": {}}}, "the VM's claim 'lab-home' was not found"),
    ({"claims": {"lab-home": {}}}, "backup claim 'snap-home' is gone"),
])
def test_a_restore_that_cannot_be_done_fails_with_the_reason(change: dict[str, Any], message: str) -> None:
    d = decide_restore(restore(), **change)
    assert s.restore_done({"status": d.status}) and d.create_job is None
    assert message in next(c["message"] for c in d.status["conditions"] if c["type"] == "Failure")


def test_a_vm_does_not_start_while_its_disks_are_written() -> None:
    the_vm = vm(HOME)
    held = vm_logic.decide(the_vm, None, NOW, restoring="r")
    assert not held.create_vmi and held.held
    assert held.status["printableStatus"] == "Provisioning" and held.status["restoreInProgress"] == "r"
    assert vm_logic.decide(the_vm, None, NOW, hold=True).create_vmi is False
    free = vm_logic.decide(the_vm, None, NOW)
    assert free.create_vmi and free.status["restoreInProgress"] is None


def test_names_stay_dns_labels() -> None:
    long_vm = "a" * 60
    assert len(snapshotnames.baseline(long_vm)) <= 52
    assert snapshotnames.baseline(long_vm) != snapshotnames.baseline("a" * 59 + "b")
    assert snapshotnames.baseline("lab-ada") == "lab-ada-baseline"
    assert len(snapshotnames.copy_job("snapshot", "x" * 52)) <= 63


def test_disk_copy_keeps_holes_replaces_the_disk_and_empties(tmp_path: Path) -> None:
    src, dst = tmp_path / "from", tmp_path / "to"
    src.mkdir()
    dst.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"homework")
    (dst / "disk.img").write_bytes(b"old")
    said = disk_copy.copy_disk(src, dst)
    assert "copied 64 MiB disk" in said
    copied = dst / "disk.img"
    assert copied.stat().st_size == 64 << 20 and copied.stat().st_blocks * 512 < 4 << 20  # holes kept
    with open(copied, "rb") as f:
        f.seek(1 << 20)
        assert f.read(8) == b"homework"
    assert sorted(p.name for p in dst.iterdir()) == ["disk.img"]  # no temporary file left
    assert "disk removed" in disk_copy.copy_disk(None, dst) and not copied.exists()
    (dst / "disk.img").write_bytes(b"x")
    empty_src = tmp_path / "empty"
    empty_src.mkdir()
    disk_copy.copy_disk(empty_src, dst)  # a backup taken before the VM wrote a disk
    assert not (dst / "disk.img").exists()
