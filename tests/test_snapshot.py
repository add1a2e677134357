"""Snapshots and reset of a lab with a persistent disk (issue 15, part 5), on a debian-12 guest: `kvtool apply
--baseline` has the controller snapshot the VM's claim before its first boot; data written in the guest is
kept by an online `kvtool snapshot` (the VM paused for the copy, running after), gone after `kvtool lab reset`
(the VM boots again from its baseline), and back after `kvtool restore --from` that snapshot."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import get, wait_for

STACK = "snaplab"
VM = "snap-vm"
CLAIM = "snap-home"
MARKER = "homework-marker"
BOOT_TIMEOUT = 600


def documents(image: str, key: str) -> list[dict[str, object]]:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "256Mi"}}}}
    vm = {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": VM},
          "spec": {"runStrategy": "Always", "template": {"spec": {
              "domain": {"cpu": {"cores": 1}, "memory": {"guest": "1Gi"},
                         "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}},
                                               {"name": "home", "disk": {"bus": "virtio"}},
                                               {"name": "cloudinit", "disk": {"bus": "virtio"}}],
                                     "interfaces": [{"name": "default", "masquerade": {}}]}},
              "networks": [{"name": "default", "pod": {}}],
              "volumes": [{"name": "root", "containerDisk": {"image": image}},
                          {"name": "home", "persistentVolumeClaim": {"claimName": CLAIM}},
                          {"name": "cloudinit", "cloudInitNoCloud": {
                              "userData": f"#cloud-config\nssh_authorized_keys:\n- {key}\n"}}]}}}}
    return [claim, vm]


def test_a_lab_with_a_claim_resets_to_its_baseline_and_restores_a_snapshot(cluster: Cluster, debian_image: str,
                                                                          tmp_path: Path) -> None:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    manifest = tmp_path / "lab.yaml"
    manifest.write_text(yaml.safe_dump_all(documents(debian_image, key.with_suffix(".pub").read_text().strip())))
    known_hosts = tmp_path / "known_hosts"

    def guest(command: str) -> subprocess.CompletedProcess[str]:
        return kvtool("ssh", f"debian@{VM}", "-i", str(key), "--known-hosts", str(known_hosts), "-o",
                      "BatchMode=yes", "-o", "ConnectTimeout=20", "--", command, timeout=120)

    def answers(command: str, what: str) -> str:
        # The home disk is the second virtio disk; an unformatted claim: read and written as a device.
        done = wait_for(lambda: (r := guest(command)).returncode == 0 and r, timeout=BOOT_TIMEOUT, what=what,
                        describe=lambda: guest(command).stderr + "\n" + kvtool("console", VM, "--tail").stdout[-2000:])
        return done.stdout

    read = f"sudo head -c {len(MARKER)} /dev/vdb | tr -d '\\0'"
    planned = kvtool("plan", "-f", str(manifest), "--stack", STACK, "--baseline", check=True)
    assert "kvtool.io/baseline" in planned.stdout, planned.stdout
    kvtool("apply", "-f", str(manifest), "--stack", STACK, "--baseline", "--auto-approve", check=True)
    try:
        # The baseline is taken before the first boot: offline, with nothing written yet.
        baseline = wait_for(lambda: (s := get(cluster, "vmsnapshot", f"{VM}-baseline"))
                            and (s.get("status") or {}).get("phase") in ("Succeeded", "Failed") and s,
                            timeout=180, what="the baseline snapshot")
        status = baseline["status"]
        assert status["phase"] == "Succeeded" and status["readyToUse"] is True, status
        assert status.get("indications") == [], "taken before the VM first ran"
        assert [(b["volumeName"], b["persistentVolumeClaim"]["name"]) for b in status["volumeBackups"]] == [
            ("home", CLAIM)]
        assert status["snapshotVolumes"] == {"includedVolumes": ["home"], "excludedVolumes": ["root", "cloudinit"]}
        first_run = get(cluster, "vmi", VM)
        assert first_run is not None

        assert answers(read, "ssh into the VM") == ""
        assert guest(f"printf {MARKER} | sudo dd of=/dev/vdb conv=fsync status=none").returncode == 0
        assert answers(read, "the marker on the home disk") == MARKER

        # An online snapshot: the VM is paused while its disk is copied, and runs the same VMI after.
        taken = kvtool("snapshot", VM, "--name", "snap-vm-marked", check=True, timeout=600)
        assert "Snapshot snap-vm-marked is ready: home backed up" in taken.stdout, taken.stdout
        marked = get(cluster, "vmsnapshot", "snap-vm-marked") or {}
        assert marked["status"]["indications"] == ["Online", "NoGuestAgent", "Paused"]
        assert marked["status"]["volumeBackups"][0]["method"] == "Copy"
        wait_for(lambda: (get(cluster, "vm", VM) or {}).get("status", {}).get("printableStatus") == "Running",
                 timeout=60, what="the VM unpaused after the snapshot")
        assert (get(cluster, "vmi", VM) or {})["metadata"]["uid"] == first_run["metadata"]["uid"]

        # The lab reset: the VM stops, its claim goes back to the baseline, and it boots again.
        reset_at = time.monotonic()
        reset = kvtool("lab", "reset", "--stack", STACK, "--auto-approve", "--known-hosts", str(known_hosts),
                       check=True)
        assert f"{VM}: restoring its disks from its baseline" in reset.stdout, reset.stdout
        wait_for(lambda: (v := get(cluster, "vmi", VM)) and v["metadata"]["uid"] != first_run["metadata"]["uid"]
                 and (v.get("status") or {}).get("phase") == "Running", timeout=300, what="the VM running again")
        known_hosts.unlink(missing_ok=True)
        assert answers(read, "ssh after the reset") == "", "the marker must be gone after the reset"
        print(f"\nlab reset of 1 VM with a claim: reset to ssh answering {time.monotonic() - reset_at:.1f} s")

        # kvtool restore: the marked snapshot back into the running VM (stopped for it, started after).
        restored = kvtool("restore", VM, "--from", "snap-vm-marked", check=True, timeout=600)
        assert "complete: home written back from snap-vm-marked" in restored.stdout, restored.stdout
        known_hosts.unlink(missing_ok=True)
        assert answers(read, "ssh after the restore") == MARKER
        restores = cluster.kubectl("get", "vmrestores", "-o", "jsonpath={.items[*].status.complete}").stdout
        assert restores.split() == ["true", "true"]
        assert (get(cluster, "vm", VM) or {}).get("status", {}).get("restoreInProgress") is None

        # A restore of a running VM that will not wait fails with the reason, and the VM keeps running.
        refused = {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineRestore",
                   "metadata": {"name": "no-wait"},
                   "spec": {"target": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": VM},
                            "virtualMachineSnapshotName": "snap-vm-marked", "targetReadinessPolicy": "FailImmediate"}}
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(refused))
        failure = wait_for(lambda: next((c for c in ((get(cluster, "vmrestore", "no-wait") or {}).get("status") or {})
                                        .get("conditions") or [] if c["type"] == "Failure" and c["status"] == "True"),
                                        None), timeout=60, what="the refused restore's Failure condition")
        assert "is still running (FailImmediate)" in failure["message"], failure
        assert (get(cluster, "vm", VM) or {})["status"]["printableStatus"] == "Running"
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
        cluster.kubectl("delete", "vmsnapshot,vmrestore", "--all", "--wait=true")
    # The baseline went with its VM, and every backup claim with its snapshot.
    wait_for(lambda: cluster.kubectl("get", "pvc", "-l", "kvtool.io/snapshot", "-o", "name").stdout.split() == [],
             timeout=120, what="backup claims removed")
