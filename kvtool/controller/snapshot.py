"""VirtualMachineSnapshot and VirtualMachineRestore: what the controller does for one, as pure functions of the
object, its VM and VMI, the claims and the copy Job (KubeVirt's snapshot.kubevirt.io, on storage kvtool copies).

Storage, decided per claim (a volume backup's `method`):
- **Copy**: a claim bound to a hostPath or local PersistentVolume (the embedded cluster's `standard` class). A
  Job in the launcher image (`kvtool disk-copy`) copies its `disk.img` into a backup claim of the same class
  and size (`<snapshot>-<volume>`, owned by the snapshot unless deletionPolicy is Retain); the restore copies
  it back into the VM's own claim, so the VM's spec, and a plan of it, never change.
- **Empty**: a claim not bound yet holds nothing; its restore removes what the VM wrote since.
- any other storage would need CSI VolumeSnapshots, which kvtool does not drive: the snapshot fails saying
  so, naming the claim, its driver and whether a VolumeSnapshotClass exists for it.
A running VM is paused (kvtool.io/paused, marked as the snapshot's) while its disks are copied and unpaused
after: the backup is crash-consistent, as KubeVirt's online snapshot without a guest agent. A restore waits
for its VM to stop (targetReadinessPolicy), and the VM does not start while it runs (VM restoreInProgress).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvtool.api import snapshotnames as names
from kvtool.api import timeutil
from kvtool.api.types import (
    API_VERSION,
    RESTORE_LABEL,
    SNAPSHOT_LABEL,
    VIRTUAL_MACHINE_SNAPSHOT,
    claim_volumes,
    wants_paused,
)
from kvtool.controller import conditions

FINAL = ("Succeeded", "Failed")
DEFAULT_DEADLINE = 300.0  # KubeVirt's failureDeadline default, 5m
GRACE_PERIOD = dt.timedelta(minutes=5)  # targetReadinessPolicy WaitGracePeriod: KubeVirt's 5 minutes
PAUSED_BY = "kvtool.io/paused-by-snapshot"  # on a VMI this controller paused for a snapshot: which one
SRC, DST = "/var/run/kvtool/from", "/var/run/kvtool/to"
EMPTY = "empty"  # `kvtool disk-copy`'s source for "nothing": the target's disk is removed
JOB_DEADLINE = 3600
COPY, EMPTIED = "Copy", "Empty"


def backed_up(vm: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """The VM template's (volume, claim) pairs a snapshot backs up, and the names of the volumes it leaves out
    (containerDisk, cloud-init, emptyDisk, hostDisk...: they are images, made anew, or not the cluster's)."""
    spec = ((vm.get("spec") or {}).get("template") or {}).get("spec") or {}
    included = claim_volumes(spec)
    kept = {volume for volume, _ in included}
    return included, [v.get("name", "") for v in spec.get("volumes") or [] if v.get("name", "") not in kept]


@dataclass(frozen=True)
class Storage:
    """What the controller read about one claim's storage."""

    claim: dict[str, Any] | None  # None: not found
    volume: dict[str, Any] | None = None  # its PersistentVolume when bound
    snapshot_classes: tuple[str, ...] = ()  # VolumeSnapshotClasses of its CSI driver


def method(volume: str, name: str, storage: Storage) -> tuple[str | None, str]:
    """(COPY or EMPTIED, "") for a claim kvtool can back up, else (None, why not)."""
    claim = storage.claim
    if claim is None:
        return None, f"volume {volume!r}: PersistentVolumeClaim {name!r} was not found"
    if (claim.get("status") or {}).get("phase") != "Bound" or storage.volume is None:
        return EMPTIED, ""
    spec = storage.volume.get("spec") or {}
    if "hostPath" in spec or "local" in spec:
        return COPY, ""
    driver = (spec.get("csi") or {}).get("driver")
    if driver:
        have = (f"VolumeSnapshotClass {', '.join(storage.snapshot_classes)} exists for its driver {driver!r}, "
                "but kvtool does not drive CSI VolumeSnapshots yet") if storage.snapshot_classes else (
            f"no VolumeSnapshotClass exists for its CSI driver {driver!r}")
    else:
        have = "its PersistentVolume is neither hostPath, local nor CSI"
    return None, (f"volume {volume!r}: claim {name!r} cannot be snapshotted: {have}; kvtool snapshots claims on "
                  "hostPath and local volumes (the embedded cluster's `standard` class)")


@dataclass
class Decision:
    """What to do for one snapshot or restore; the operator carries it out in this order."""

    pause: bool | None = None  # True: pause the VMI for this snapshot; False: unpause it (if it paused it)
    create_claims: list[dict[str, Any]] = field(default_factory=list)
    create_job: dict[str, Any] | None = None
    delete_job: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": API_VERSION, "kind": obj["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": False}


def deadline(snapshot: Mapping[str, Any]) -> float:
    text = (snapshot.get("spec") or {}).get("failureDeadline")
    return timeutil.parse_duration(text) if text else DEFAULT_DEADLINE


def backup_claim(snapshot: Mapping[str, Any], volume: str, source: Mapping[str, Any]) -> dict[str, Any]:
    """A claim like `source` (class, access modes, size) to hold a copy of its disk."""
    spec = source.get("spec") or {}
    size = ((source.get("status") or {}).get("capacity") or {}).get("storage") or (
        (spec.get("resources") or {}).get("requests") or {}).get("storage")
    meta = snapshot["metadata"]
    out: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": names.backup_claim(meta["name"], volume), "namespace": meta["namespace"],
                     "labels": {SNAPSHOT_LABEL: meta["name"], "app.kubernetes.io/managed-by": "kvtool"}},
        "spec": {"accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                 "resources": {"requests": {"storage": size}}},
    }
    if spec.get("storageClassName") is not None:
        out["spec"]["storageClassName"] = spec["storageClassName"]
    if (snapshot.get("spec") or {}).get("deletionPolicy") != "Retain":
        out["metadata"]["ownerReferences"] = [_owner(snapshot)]
    return out


def copy_job(owner: Mapping[str, Any], kind: str, pairs: list[tuple[str | None, str]], image: str,
             node: str | None, seconds: int) -> dict[str, Any]:
    """A Job in the launcher image that copies each pair's disk (`from` claim -> `to` claim; from None: the
    `to` claim's disk is removed). `node`: where the disk is (a running VM's node)."""
    meta = owner["metadata"]
    label = SNAPSHOT_LABEL if kind == "snapshot" else RESTORE_LABEL
    volumes, mounts, args = [], [], []
    for i, (src, dst) in enumerate(pairs):
        if src is None:
            args.append(EMPTY)
        else:
            volumes.append({"name": f"from-{i}", "persistentVolumeClaim": {"claimName": src, "readOnly": True}})
            mounts.append({"name": f"from-{i}", "mountPath": f"{SRC}/{i}", "readOnly": True})
            args.append(f"{SRC}/{i}")
        volumes.append({"name": f"to-{i}", "persistentVolumeClaim": {"claimName": dst}})
        mounts.append({"name": f"to-{i}", "mountPath": f"{DST}/{i}"})
        args.append(f"{DST}/{i}")
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "copy", "image": image, "command": ["kvtool", "disk-copy"], "args": args,
            # The disk files are the launcher's (root in the pod); never privileged.
            "securityContext": {"runAsUser": 0, "privileged": False, "allowPrivilegeEscalation": False},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }
    if node:
        pod["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": names.copy_job(kind, meta["name"]), "namespace": meta["namespace"],
                     "labels": {label: meta["name"], "app.kubernetes.io/managed-by": "kvtool"},
                     "ownerReferences": [_owner(owner)]},
        "spec": {"backoffLimit": 1, "activeDeadlineSeconds": max(1, seconds), "ttlSecondsAfterFinished": 600,
                 "template": {"metadata": {"labels": {label: meta["name"]}}, "spec": pod}},
    }


def job_outcome(job: Mapping[str, Any] | None, pod_messages: list[str]) -> tuple[bool, str] | None:
    """(copied, why not) once the Job finished, None while it runs; pod_messages: its pods' termination
    messages (the copy's own error)."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return True, ""
        if cond.get("type") == "Failed":
            detail = "; ".join(m.strip() for m in pod_messages if m.strip()) or cond.get("message", "")
            return False, f"copy Job {job['metadata']['name']} failed ({cond.get('reason', '')}): {detail}"  # type: ignore[index]
    return None


def _paused_by(vmi: Mapping[str, Any] | None, snapshot: Mapping[str, Any]) -> bool:
    return ((vmi or {}).get("metadata", {}).get("annotations") or {}).get(PAUSED_BY) == snapshot["metadata"]["uid"]


def _running(vmi: Mapping[str, Any] | None) -> bool:
    return bool(vmi) and ((vmi or {}).get("status") or {}).get("phase") not in FINAL


def _failed(status: dict[str, Any], vmi: Mapping[str, Any] | None, snapshot: Mapping[str, Any], message: str,
            now: dt.datetime) -> Decision:
    d = Decision(delete_job=True, pause=False if _paused_by(vmi, snapshot) else None)
    d.status = {**status, "phase": "Failed", "readyToUse": False,
                "error": {"time": timeutil.stamp(now), "message": message},
                "conditions": [conditions.condition("Progressing", False, "Failed", message),
                               conditions.condition("Ready", False, "Failed", message)]}
    d.events.append(("Warning", "SnapshotFailed", message))
    return d


def decide_snapshot(snapshot: dict[str, Any], vm: dict[str, Any] | None, vmi: dict[str, Any] | None,
                    storage: Mapping[str, Storage], backups: Mapping[str, dict[str, Any] | None],
                    job: dict[str, Any] | None, pod_messages: list[str], image: str,
                    now: dt.datetime) -> Decision:
    """One step of a snapshot. storage: claim name -> what was read about it; backups: backup claim name ->
    the claim (None: not made yet); job: its copy Job."""
    status = dict(snapshot.get("status") or {})
    phase = status.get("phase")
    if phase in FINAL:
        # Done; a VMI it paused and could not unpause then (a failed write) is unpaused now.
        return Decision(pause=False if _paused_by(vmi, snapshot) else None, delete_job=job is not None)
    source = (snapshot.get("spec") or {}).get("source") or {}
    if vm is None:
        return _failed(status, vmi, snapshot, f"VirtualMachine {source.get('name')!r} was not found", now)
    created = timeutil.parse(snapshot["metadata"].get("creationTimestamp")) or now
    limit = deadline(snapshot)
    if (now - created).total_seconds() > limit:
        return _failed(status, vmi, snapshot,
                       f"the snapshot did not finish within its failureDeadline ({limit:.0f}s)", now)
    included, excluded = backed_up(vm)
    status.update(sourceUID=vm["metadata"]["uid"], phase="InProgress", readyToUse=False,
                  snapshotVolumes={"includedVolumes": [v for v, _ in included], "excludedVolumes": excluded})
    backups_status = []
    for volume, claim in included:
        how, why = method(volume, claim, storage.get(claim) or Storage(None))
        if how is None:
            return _failed(status, vmi, snapshot, why, now)
        entry: dict[str, Any] = {"volumeName": volume, "persistentVolumeClaim": {"name": claim}, "method": how}
        if how == COPY:
            entry["backupClaimName"] = names.backup_claim(snapshot["metadata"]["name"], volume)
            source_claim = storage[claim].claim or {}
            size = ((source_claim.get("status") or {}).get("capacity") or {}).get("storage")
            if size:
                entry["size"] = str(size)
        backups_status.append(entry)
    status["volumeBackups"] = backups_status
    copies = [b for b in backups_status if b["method"] == COPY]
    online = _running(vmi)
    status["indications"] = ["Online", "NoGuestAgent", "Paused"] if online and copies else (
        ["Online", "NoGuestAgent"] if online else [])
    d = Decision()
    if copies and online:
        assert vmi is not None
        if (vmi.get("status") or {}).get("phase") != "Running":
            return _progress(d, status, "WaitingForVMI",
                             "the VM is starting: its disks are copied once it runs and can be paused", 2.0)
        if not wants_paused(vmi):
            d.pause = True
            return _progress(d, status, "Pausing", "pausing the VM so its disks hold still while they are copied",
                             1.0)
        if not conditions.is_true(vmi, "Paused"):
            return _progress(d, status, "Pausing", "waiting for the VM to pause", 1.0)
    if not copies:
        return _succeeded(d, status, vmi, snapshot, now)
    for b in copies:
        if backups.get(b["backupClaimName"]) is None:
            d.create_claims.append(backup_claim(snapshot, b["volumeName"], storage[b["persistentVolumeClaim"]["name"]]
                                                .claim or {}))
    outcome = job_outcome(job, pod_messages)
    if outcome is None:
        if job is None:
            node = ((vmi or {}).get("status") or {}).get("nodeName") if online else None
            d.create_job = copy_job(snapshot, "snapshot",
                                    [(b["persistentVolumeClaim"]["name"], b["backupClaimName"]) for b in copies],
                                    image, node, int(limit - (now - created).total_seconds()) + 1)
        return _progress(d, status, "Copying", f"copying {len(copies)} disk(s) into backup claims", None)
    copied, why = outcome
    if not copied:
        return _failed(status, vmi, snapshot, why, now)
    d.delete_job = True
    return _succeeded(d, status, vmi, snapshot, now)


def _progress(d: Decision, status: dict[str, Any], reason: str, message: str, requeue: float | None) -> Decision:
    d.status = {**status, "conditions": [conditions.condition("Progressing", True, reason, message),
                                         conditions.condition("Ready", False, reason, message)]}
    d.requeue_after = requeue
    return d


def _succeeded(d: Decision, status: dict[str, Any], vmi: Mapping[str, Any] | None, snapshot: Mapping[str, Any],
               now: dt.datetime) -> Decision:
    if _paused_by(vmi, snapshot):
        d.pause = False
    kept = len(status.get("volumeBackups") or [])
    message = f"{kept} volume(s) backed up" if kept else "the VM has no claims to back up"
    d.status = {**status, "phase": "Succeeded", "readyToUse": True, "creationTime": timeutil.stamp(now),
                "conditions": [conditions.condition("Progressing", False, "Succeeded", message),
                               conditions.condition("Ready", True, "Succeeded", message)]}
    d.events.append(("Normal", "SnapshotSucceeded", message))
    return d


# -- restore --------------------------------------------------------------------------------------------------
def restore_done(restore: Mapping[str, Any]) -> bool:
    """Complete or failed: the VM may start again."""
    status = restore.get("status") or {}
    return bool(status.get("complete")) or conditions.is_true(restore, "Failure")


def _restore_failed(status: dict[str, Any], message: str) -> Decision:
    d = Decision(delete_job=True)
    d.status = {**status, "complete": False,
                "conditions": [conditions.condition("Progressing", False, "Failed", message),
                               conditions.condition("Ready", False, "Failed", message),
                               conditions.condition("Failure", True, "Failed", message)]}
    d.events.append(("Warning", "RestoreFailed", message))
    return d


def decide_restore(restore: dict[str, Any], snapshot: dict[str, Any] | None, vm: dict[str, Any] | None,
                   vmi: dict[str, Any] | None, claims: Mapping[str, dict[str, Any] | None],
                   job: dict[str, Any] | None, pod_messages: list[str], image: str, now: dt.datetime) -> Decision:
    """One step of a restore. claims: claim name -> claim (None: not found), for the VM's claims and the
    snapshot's backup claims."""
    status = dict(restore.get("status") or {})
    if restore_done(restore):
        return Decision(delete_job=job is not None)
    spec = restore.get("spec") or {}
    target = (spec.get("target") or {}).get("name", "")
    snap_name = spec.get("virtualMachineSnapshotName", "")
    if snapshot is None:
        return _restore_failed(status, f"VirtualMachineSnapshot {snap_name!r} was not found")
    snap_status = snapshot.get("status") or {}
    if snap_status.get("phase") == "Failed":
        return _restore_failed(status, f"VirtualMachineSnapshot {snap_name!r} failed: "
                                       f"{(snap_status.get('error') or {}).get('message', '')}")
    if not snap_status.get("readyToUse"):
        return _progress(Decision(), status, "WaitingForSnapshot", f"VirtualMachineSnapshot {snap_name!r} is not "
                                                                  "ready yet", 2.0)
    source = ((snapshot.get("spec") or {}).get("source") or {}).get("name")
    if source != target:
        return _restore_failed(status, f"VirtualMachineSnapshot {snap_name!r} is of VM {source!r}, not {target!r}: "
                                       "kvtool restores a snapshot into the VM it was taken of")
    if vm is None:
        return _restore_failed(status, f"VirtualMachine {target!r} was not found")
    if vm["metadata"]["uid"] != snap_status.get("sourceUID"):
        return _restore_failed(status, f"VirtualMachine {target!r} is not the one VirtualMachineSnapshot "
                                       f"{snap_name!r} was taken of (it was deleted and made again)")
    if _running(vmi) or (vmi and (vmi.get("metadata") or {}).get("deletionTimestamp")):
        policy = spec.get("targetReadinessPolicy") or "WaitGracePeriod"
        waited = now - (timeutil.parse(restore["metadata"].get("creationTimestamp")) or now)
        if policy == "FailImmediate" or (policy == "WaitGracePeriod" and waited > GRACE_PERIOD):
            return _restore_failed(status, f"VirtualMachine {target!r} is still running ({policy}); stop it "
                                           f"first, or use `kvtool restore {target} --from {snap_name}`, which does")
        return _progress(Decision(), status, "WaitingForTarget",
                         f"VirtualMachine {target!r} is running: the restore starts once it stops "
                         f"(`kvtool stop {target}`)", 2.0)
    pairs: list[tuple[str | None, str]] = []
    restores = []
    for backup in snap_status.get("volumeBackups") or []:
        claim = (backup.get("persistentVolumeClaim") or {}).get("name", "")
        if claims.get(claim) is None:
            return _restore_failed(status, f"volume {backup.get('volumeName')!r}: the VM's claim {claim!r} was "
                                           "not found")
        source_claim = backup.get("backupClaimName") if backup.get("method") == COPY else None
        if source_claim is not None and claims.get(source_claim) is None:
            return _restore_failed(status, f"volume {backup.get('volumeName')!r}: the snapshot's backup claim "
                                           f"{source_claim!r} is gone")
        pairs.append((source_claim, claim))
        restores.append({"volumeName": backup.get("volumeName", ""), "persistentVolumeClaim": claim,
                         "volumeSnapshotName": source_claim or ""})
    status["restores"] = restores
    d = Decision()
    outcome = job_outcome(job, pod_messages) if pairs else (True, "")
    if outcome is None:
        if job is None:
            d.create_job = copy_job(restore, "restore", pairs, image, None, JOB_DEADLINE)
        return _progress(d, status, "Copying", f"writing {len(pairs)} disk(s) back from the snapshot", None)
    copied, why = outcome
    if not copied:
        return _restore_failed(status, why)
    d.delete_job = bool(pairs)
    message = f"{len(pairs)} volume(s) restored from {snap_name}"
    d.status = {**status, "complete": True, "restoreTime": timeutil.stamp(now),
                "conditions": [conditions.condition("Progressing", False, "Succeeded", message),
                               conditions.condition("Ready", True, "Succeeded", message),
                               conditions.condition("Failure", False)]}
    d.events.append(("Normal", "RestoreSucceeded", message))
    return d


def baseline_snapshot(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline snapshot a lab VM asks for (names.BASELINE_ANNOTATION), owned by the VM: it goes with the lab."""
    meta = vm["metadata"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith("kvtool.io/")}
    return {
        "apiVersion": API_VERSION, "kind": VIRTUAL_MACHINE_SNAPSHOT.kind,
        "metadata": {"name": names.baseline(meta["name"]), "namespace": meta["namespace"],
                     "labels": {**labels, names.BASELINE_LABEL: meta["name"], "app.kubernetes.io/managed-by": "kvtool"},
                     "ownerReferences": [{"apiVersion": vm.get("apiVersion", API_VERSION), "kind": "VirtualMachine",
                                          "name": meta["name"], "uid": meta["uid"], "controller": False,
                                          "blockOwnerDeletion": False}]},
        "spec": {"source": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": meta["name"]}},
    }


def wants_baseline(vm: Mapping[str, Any]) -> bool:
    return ((vm.get("metadata") or {}).get("annotations") or {}).get(names.BASELINE_ANNOTATION) == "true"
