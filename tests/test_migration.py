"""Live migration on the embedded cluster's two real nodes (issue 13): real guests move between kubelets'
launcher pods through the handlers' TLS proxy, and the guest never notices beyond a pause.

A guest prints a counter every 100 ms; `CounterWatch` tails both launchers' console logs on this machine
and stamps each line as it appears, so the test sees the counter continue (no reboot: the uptime goes on)
and measures the longest gap. A shared (ReadWriteMany) claim's disk and the guest's HTTP service through a
Service work before and after. Cancelling, a target killed mid-way, a VM that cannot move, and a drain of a
node with two LiveMigrate VMs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kvtool import paths
from kvtool.api.types import VMI_LABEL
from kvtool.images import store
from tests import network_helpers as nh
from tests.conftest import Cluster, kvtool
from tests.migration_helpers import (
    COUNTER_USER_DATA,
    CounterWatch,
    active_pods,
    disk_counter_user_data,
    dumps,
    guest_diagnostics,
)
from tests.runtime_helpers import condition, describe_vm, get, wait_for, wait_running
from tests.vmfactory import vm

NODES = ("kvtool-node-1", "kvtool-node-2")
MIGRATION_CONFIG = ("kvtool-system", "kvtool-migration")


def _name(prefix: str = "mig") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def _apply(tmp_path: Path, *docs: dict) -> None:
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    kvtool("apply", "-f", str(path), "--stack", "migration", "--auto-approve", check=True)


def _head(path: Path) -> bytes:
    """A disk image's first block (the image is sparse and as large as its filesystem's free space)."""
    with path.open("rb") as f:
        return f.read(4096)


def _migration(cluster: Cluster, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "vmim", name, "-o", "json").stdout)


def _in_phase(cluster: Cluster, name: str, *phases: str) -> dict | None:
    """The migration object once its phase is one of `phases` (a new one has no status until the controller's
    first write)."""
    migration = _migration(cluster, name)
    return migration if migration.get("status", {}).get("phase") in phases else None


def _vmi_migrations(cluster: Cluster, vmi: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "vmim", "-o", "json").stdout)["items"]
    return [m for m in items if m["spec"]["vmiName"] == vmi]


def _migrate(*args: str) -> str:
    """`kvtool migrate ...`: the migration's name from its output."""
    out = kvtool("migrate", *args, check=True).stdout
    return out.split("migration ", 1)[1].split()[0]


def _counting_vm(cluster: Cluster, tmp_path: Path, name: str, watch: CounterWatch) -> dict:
    """A VM whose guest counts, running, its first tick seen: the VMI."""
    _apply(tmp_path, vm(name, run_strategy="Always", user_data=COUNTER_USER_DATA))
    running = wait_running(cluster, name, timeout=180)
    _follow_pods(cluster, watch, name)
    watch.wait_ticks(timeout=120)
    return running


@pytest.fixture
def watch(cluster: Cluster) -> Iterator[CounterWatch]:
    w = CounterWatch(cluster.home).start()
    yield w
    w.stop()


def _follow_pods(cluster: Cluster, w: CounterWatch, name: str) -> dict:
    """Feed the VMI's pods (the target's as soon as it is active) to the watch; the VMI."""
    vmi = get(cluster, "vmi", name) or {}
    w.add_pods(active_pods(vmi))
    return vmi


@pytest.fixture
def slow_migrations(cluster: Cluster) -> Iterator[None]:
    """Migrations capped at 1 MiB/s for the test (a 128Mi guest then takes minutes: time to cancel or kill)."""
    ns, cm = MIGRATION_CONFIG
    cluster.kubectl("-n", ns, "patch", "configmap", cm, "--type", "merge", "-p",
                    json.dumps({"data": {"bandwidthPerMigrationMiB": "1"}}))
    try:
        yield
    finally:
        cluster.kubectl("-n", ns, "patch", "configmap", cm, "--type", "merge", "-p",
                        json.dumps({"data": {"bandwidthPerMigrationMiB": "0"}}))


def test_a_running_guest_moves_to_the_other_node_without_a_reboot(cluster: Cluster, tiny_image: str,
                                                                   tmp_path: Path, watch: CounterWatch) -> None:
    name = _name()
    claim, token = f"{name}-data", uuid.uuid4().hex[:12]
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "standard",
                    "resources": {"requests": {"storage": "64Mi"}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pvc))
    # The claim's disk is /dev/vdb (after the cloud-init disk), an emptyDisk /dev/vdc: each written once, then read
    # back with O_DIRECT (past the guest's page cache) every second, wherever the guest runs. The claim is shared
    # by both pods; the emptyDisk lives in the source pod and is copied to the target (block migration).
    # And a containerDisk (/dev/vdd): a qcow2 image in the nodes' image store, which the pod writes through an
    # overlay of its own; only the overlay is copied.
    image = f"{name}-disk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), "64M"], check=True)
    store.ImageStore(cluster.images).import_disk(image, tmp_path / "disk.qcow2", force=True)
    user_data = disk_counter_user_data({"/dev/vdb": f"PVC-BEFORE {token}", "/dev/vdc": f"SCRATCH-BEFORE {token}",
                                        "/dev/vdd": f"OVERLAY-BEFORE {token}"})
    doc = vm(name, run_strategy="Always", user_data=user_data)
    tspec = doc["spec"]["template"]["spec"]
    tspec["domain"]["devices"]["disks"] += [{"name": "data", "disk": {"bus": "virtio"}},
                                            {"name": "scratch", "disk": {"bus": "virtio"}},
                                            {"name": "image", "disk": {"bus": "virtio"}}]
    tspec["volumes"] += [{"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                         {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
                         {"name": "image", "containerDisk": {"image": image}}]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": {VMI_LABEL: name}, "ports": [{"port": 80, "targetPort": 80}]}}
    _apply(tmp_path, doc, service)
    try:
        before = wait_running(cluster, name, timeout=180)
        source = before["status"]["nodeName"]
        target = next(n for n in NODES if n != source)
        wait_for(lambda: condition(get(cluster, "vmi", name), "LiveMigratable").get("status") == "True", timeout=30,
                 what="LiveMigratable=True", describe=describe_vm(cluster, name))
        _follow_pods(cluster, watch, name)
        first = watch.wait_ticks(timeout=120)
        ip = json.loads(cluster.kubectl("get", "svc", name, "-o", "json").stdout)["spec"]["clusterIP"]
        client = nh.node_netns(cluster, NODES[0])
        assert f"kvtool guest {name}" in wait_for(lambda: nh.try_get(client, f"http://{ip}/"), timeout=90,
                                                  what="the guest's page through its Service")
        wait_for(lambda: any("DISK-READ" in line and token in line for line in kvtool(
            "console", name, "--tail").stdout.splitlines()), timeout=60, what="the claim's marker read back")

        started = time.monotonic()
        migration = _migrate(name, "--to-node", target)
        done = wait_for(lambda: (_follow_pods(cluster, watch, name)
                                 and _in_phase(cluster, migration, "Succeeded", "Failed")),
                        timeout=180, interval=0.1, what=f"migration {migration} to end",
                        describe=lambda: dumps(_migration(cluster, migration).get("status")))
        ended = time.monotonic()
        assert done["status"]["phase"] == "Succeeded", dumps(done["status"])
        phases = [p["phase"] for p in done["status"]["phaseTransitionTimestamps"]]
        order = ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running", "Succeeded"]
        assert phases == sorted(phases, key=order.index) and phases[-1] == "Succeeded", phases
        assert {"Scheduling", "TargetReady"} <= set(phases), phases
        after = get(cluster, "vmi", name)
        assert after["metadata"]["uid"] == before["metadata"]["uid"], "the same VMI, not a new one"
        assert after["status"]["nodeName"] == target
        on_target = cluster.kubectl("get", "vmi", "-n", "default", "--field-selector", f"status.nodeName={target}",
                                    "-o", "name").stdout.split()
        assert f"virtualmachineinstance.kvtool.io/{name}" in on_target, "the target's handler watches it"
        state = after["status"]["migrationState"]
        assert state["completed"] is True and state["sourceNode"] == source and state["targetNode"] == target, state
        assert after["status"]["migrationMethod"] == "BlockMigration", "the emptyDisk is copied"
        assert list(after["status"]["activePods"].values()) == [target], after["status"]["activePods"]

        # The guest kept counting on the target: no reboot (its uptime goes on), and the longest silence is reported.
        new_pod = next(iter(after["status"]["activePods"]))
        last_before = max((t for t in watch.ticks if t.pod != new_pod), key=lambda t: t.n)
        moved = watch.wait_ticks(pod=new_pod, after=last_before.n, timeout=30)
        watch.wait_ticks(pod=new_pod, after=moved.n + 20, timeout=30)
        report = watch.report(started - 5, time.monotonic())
        print(f"\nmigration {migration}: {ended - started:.2f} s end to end; counter {first.n}..{watch.last().n}; "
              f"longest gap {report['longest_gap_s'] * 1000:.0f} ms between ticks {report['gap_between']}; "
              f"skipped {report['skipped']}")
        assert moved.uptime > last_before.uptime, f"uptime went back: {last_before} -> {moved} (a reboot)"
        assert not report["uptime_resets"], report
        assert len(report["pods"]) == 2, f"ticks came from both launchers: {report}"
        assert report["longest_gap_s"] < 10, report

        # The claim's disk, the Service, and the console follow the guest.
        marker = wait_for(lambda: next((line for line in kvtool("console", name, "--tail").stdout.splitlines()
                                        if line.startswith("DISK-READ") and token in line
                                        and int(line.split()[1]) > moved.n), None), timeout=30,
                          what="the claim's marker read back on the target")
        assert all(f"{what}-BEFORE {token}" in marker for what in ("PVC", "SCRATCH", "OVERLAY")), marker
        assert f"kvtool guest {name}" in wait_for(lambda: nh.try_get(client, f"http://{ip}/"), timeout=60,
                                                  what="the guest's page through its Service after the move")
        def pods_by_node() -> dict[str, list[str]]:
            pods = json.loads(cluster.kubectl("get", "pods", "-l", f"{VMI_LABEL}={name}", "-o", "json").stdout)
            out: dict[str, list[str]] = {}
            for p in pods["items"]:
                out.setdefault(p["spec"]["nodeName"], []).append(p["status"]["phase"])
            return {node: sorted(phases) for node, phases in out.items()}

        # The source launcher ends by itself (exit 0) once the guest has left.
        wait_for(lambda: pods_by_node() == {source: ["Succeeded"], target: ["Running"]}, timeout=60,
                 what="the source pod to complete", describe=lambda: str(pods_by_node()))
        status = kvtool("status", check=True).stdout
        assert any(name in line and target in line and "Running" in line for line in status.splitlines()), status

        # And back: the pod the guest came to is a migration's target itself; the first source pod, completed, is
        # still on the node it returns to.
        back = _migrate(name, "--to-node", source, "--wait")
        home = get(cluster, "vmi", name)
        assert home["status"]["nodeName"] == source and home["metadata"]["uid"] == before["metadata"]["uid"]
        assert _migration(cluster, back)["status"]["phase"] == "Succeeded"
        _follow_pods(cluster, watch, name)
        returned = next(iter(home["status"]["activePods"]))
        watch.wait_ticks(pod=returned, after=watch.last().n, timeout=30)
        wait_for(lambda: pods_by_node() == {source: ["Running", "Succeeded"], target: ["Succeeded"]}, timeout=60,
                 what="the pods' phases after the return", describe=lambda: str(pods_by_node()))
        assert not watch.report(0, time.monotonic())["uptime_resets"], "no reboot after two moves"
        assert get(cluster, "vmi", name)["status"]["phase"] == "Running"
    finally:
        cluster.kubectl("delete", "vm", name, "--wait=true", timeout=120)
        cluster.kubectl("delete", "svc,pvc", name, claim, "--ignore-not-found", "--wait=false")
        store.ImageStore(cluster.images).remove(image)


def test_a_hostpath_claim_is_copied_to_the_target_nodes_directory(cluster: Cluster, tiny_image: str,
                                                                  tmp_path: Path, watch: CounterWatch) -> None:
    """A ReadWriteOnce claim on a hostPath volume is each node's own directory (here /run/kvtool, which every
    embedded node has of its own): the migration copies the disk there, as it copies an emptyDisk."""
    name = _name()
    claim, token = f"{name}-data", uuid.uuid4().hex[:12]
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{name}-pv"},
          "spec": {"capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Retain",
                   "hostPath": {"path": f"/run/kvtool/{name}-pv", "type": "DirectoryOrCreate"},
                   "claimRef": {"namespace": "default", "name": claim}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": f"{name}-pv",
                    "resources": {"requests": {"storage": "64Mi"}}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, pvc]))
    user_data = disk_counter_user_data({"/dev/vdb": f"HOSTPATH {token}"})
    doc = vm(name, run_strategy="Always", user_data=user_data)
    tspec = doc["spec"]["template"]["spec"]
    tspec["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "virtio"}})
    tspec["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    _apply(tmp_path, doc)
    run = paths.run_dir(cluster.home)
    try:
        before = wait_running(cluster, name, timeout=180)
        source = before["status"]["nodeName"]
        target = next(n for n in NODES if n != source)
        vmi = wait_for(lambda: (v := get(cluster, "vmi", name)) and condition(v, "LiveMigratable") and v,
                       timeout=30, what="LiveMigratable", describe=describe_vm(cluster, name))
        assert condition(vmi, "LiveMigratable")["status"] == "True", condition(vmi, "LiveMigratable")
        assert vmi["status"]["migrationMethod"] == "BlockMigration"
        _follow_pods(cluster, watch, name)
        wait_for(lambda: any(line.startswith("DISK-READ") and token in line for line in kvtool(
            "console", name, "--tail").stdout.splitlines()), timeout=120, what="the disk's marker read back")
        disk = Path(f"{name}-pv") / "disk.img"
        assert token.encode() in _head(run / source / disk)
        # The claim's 64Mi less 5.5% for a filesystem, in whole MiB (not the bind mount's whole free space)
        assert (run / source / disk).stat().st_size == 60 << 20, (run / source / disk).stat().st_size
        assert not (run / target / disk).exists(), "the other node's directory is its own"

        migration = _migrate(name, "--wait")
        after = get(cluster, "vmi", name)
        assert after["status"]["nodeName"] == target and after["metadata"]["uid"] == before["metadata"]["uid"]
        _follow_pods(cluster, watch, name)
        moved = watch.wait_ticks(pod=next(iter(after["status"]["activePods"])), timeout=30)
        line = wait_for(lambda: next((x for x in kvtool("console", name, "--tail").stdout.splitlines()
                                      if x.startswith("DISK-READ") and int(x.split()[1]) > moved.n), None),
                        timeout=30, what="the disk read on the target")
        assert f"HOSTPATH {token}" in line, f"{migration}: the copied disk on the target reads {line!r}"
        assert token.encode() in _head(run / target / disk), "the copy is in the target's directory"
        assert (run / target / disk).stat().st_size == 60 << 20, "the copy is the source's size"
        assert not list((run / target / disk.parent).glob(".kvtool-migration-*")), "the target's mark is cleaned up"
        assert not watch.report(0, time.monotonic())["uptime_resets"]
    finally:
        cluster.kubectl("delete", "vm", name, "--wait=true", timeout=120)
        cluster.kubectl("delete", "pvc", claim, "--ignore-not-found", "--wait=false")
        cluster.kubectl("delete", "pv", f"{name}-pv", "--ignore-not-found", "--wait=false")
        for node in NODES:
            shutil.rmtree(run / node / f"{name}-pv", ignore_errors=True)


def test_a_cancelled_or_broken_migration_leaves_the_guest_on_its_node(cluster: Cluster, tiny_image: str,
                                                                      tmp_path: Path, watch: CounterWatch,
                                                                      slow_migrations: None) -> None:
    name = _name()
    before = _counting_vm(cluster, tmp_path, name, watch)
    source = before["status"]["nodeName"]
    try:

        def running(migration: str) -> dict:
            return wait_for(lambda: _in_phase(cluster, migration, "Running"),
                            timeout=120, what=f"{migration} Running",
                            describe=lambda: dumps(_migration(cluster, migration).get("status")))

        # Cancelled: the migration object goes, the guest stays, migrationState says it was aborted.
        migration = _migrate(name)
        state = running(migration)["status"]["migrationState"]
        assert state["migrationConfiguration"]["bandwidthPerMigrationMiB"] == 1, state
        out = kvtool("migrate-cancel", name, check=True).stdout
        assert migration in out
        vmi = wait_for(lambda: (v := get(cluster, "vmi", name)) and v["status"]["migrationState"].get("failed") and v,
                       timeout=60, what="the cancelled migration to end", describe=describe_vm(cluster, name))
        state = vmi["status"]["migrationState"]
        assert state["abortStatus"] == "Succeeded" and "cancelled" in state["failureReason"], state
        assert vmi["status"]["nodeName"] == source and vmi["status"]["phase"] == "Running"
        wait_for(lambda: not _vmi_migrations(cluster, name), timeout=60, what="the deleted migration to go")
        wait_for(lambda: not json.loads(cluster.kubectl("get", "pods", "-l", "kvtool.io/migrationJobUID",
                                                        "-o", "json").stdout)["items"], timeout=60,
                 what="the target pod to go")
        status = kvtool("status", check=True).stdout
        assert any(name in line and "MigrationCancelled" in line for line in status.splitlines()), status

        # Broken: the target pod is killed mid-way; the source notices, the guest stays, the reason says why.
        # (Started through kubectl's plugin mechanism, as `kubectl virt migrate`.)
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   KUBECONFIG=str(cluster.kubeconfig))
        out = subprocess.run([str(cluster.kubectl_path), "virt", "migrate", name], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        migration = out.stdout.split("migration ", 1)[1].split()[0]
        running(migration)
        target_pod = get(cluster, "vmi", name)["status"]["migrationState"]["targetPod"]
        cluster.kubectl("delete", "pod", target_pod, "--grace-period=0", "--force")
        failed = wait_for(lambda: _in_phase(cluster, migration, "Failed"),
                          timeout=120, what=f"{migration} Failed",
                          describe=lambda: dumps(_migration(cluster, migration).get("status")))
        state = failed["status"]["migrationState"]
        assert state["failed"] is True and target_pod in state["failureReason"], state
        vmi = get(cluster, "vmi", name)
        assert vmi["status"]["nodeName"] == source and vmi["status"]["phase"] == "Running"
        assert list(vmi["status"]["activePods"].values()) == [source], vmi["status"]["activePods"]
        # Through both, one guest kept counting on the source.
        last = watch.last()
        again = watch.wait_ticks(after=last.n + 10, timeout=30)
        report = watch.report(0, time.monotonic())
        assert not report["uptime_resets"] and report["pods"] == [before_pod(before)], report
        assert again.uptime > last.uptime
    finally:
        cluster.kubectl("delete", "vm", name, "--wait=false")


def before_pod(vmi: dict) -> str:
    return next(iter(vmi["status"]["activePods"]))


def test_a_vm_that_cannot_move_says_why_and_migrate_refuses_it(cluster: Cluster, tiny_image: str,
                                                               tmp_path: Path) -> None:
    name = _name()
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = [{"name": "default", "bridge": {}}]
    _apply(tmp_path, doc)
    try:
        wait_running(cluster, name, timeout=180)
        cond = wait_for(lambda: (c := condition(get(cluster, "vmi", name), "LiveMigratable")) and c, timeout=30,
                        what="LiveMigratable on the VMI", describe=describe_vm(cluster, name))
        assert cond["status"] == "False" and cond["reason"] == "InterfaceNotLiveMigratable", cond
        assert "bridge" in cond["message"] and "masquerade" in cond["message"], cond
        result = kvtool("migrate", name)
        assert result.returncode == 1, result
        assert "cannot be live-migrated" in result.stderr and "bridge binding" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not _vmi_migrations(cluster, name), "nothing was created"
        missing = kvtool("migrate", f"{name}-nowhere")
        assert missing.returncode == 1 and f"{name}-nowhere is not running" in missing.stderr, missing.stderr
        cancel = kvtool("migrate-cancel", name)
        assert cancel.returncode == 1 and "has no migration in progress" in cancel.stderr, cancel.stderr
        # A migration object made anyway (kubectl) fails with the same reason.
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": f"{name}-by-hand"}, "spec": {"vmiName": name}}))
        failed = wait_for(lambda: _in_phase(cluster, f"{name}-by-hand", "Failed"), timeout=60,
                          what="the hand-made migration to fail")
        failure = condition(failed, "Failed")
        assert "bridge binding" in failure["message"], failure
        cluster.kubectl("delete", "vmim", f"{name}-by-hand", "--wait=true", timeout=60)
    finally:
        cluster.kubectl("delete", "vm", name, "--wait=false")


def test_draining_a_node_migrates_its_live_migrate_vms(cluster: Cluster, tiny_image: str, tmp_path: Path) -> None:
    names = [_name("drain"), _name("drain")]
    docs = []
    for name in names:
        doc = vm(name, run_strategy="Always", user_data=COUNTER_USER_DATA)
        tspec = doc["spec"]["template"]["spec"]
        tspec["evictionStrategy"] = "LiveMigrate"
        # Both start on node 1 if they can (preferred, not required: the migration's target must be allowed).
        tspec["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODES[0]]}]}}]}}
        docs.append(doc)
    _apply(tmp_path, *docs)
    try:
        before = {n: wait_running(cluster, n, timeout=180) for n in names}
        assert {v["status"]["nodeName"] for v in before.values()} == {NODES[0]}, {
            n: v["status"]["nodeName"] for n, v in before.items()}
        for name in names:
            wait_for(lambda name=name: condition(get(cluster, "vmi", name), "LiveMigratable").get("status") == "True",
                     timeout=30, what=f"{name} LiveMigratable")
        started = time.monotonic()
        # kubectl's own drain: cordon, then evictions, retried while the webhook answers 429.
        result = cluster.kubectl("drain", NODES[0], "--ignore-daemonsets", "--delete-emptydir-data",
                                 "--pod-selector", f"kvtool.io/vm in ({','.join(names)})", "--timeout=240s",
                                 timeout=300)
        print(f"\ndrain of {NODES[0]} with {len(names)} LiveMigrate VMs: {time.monotonic() - started:.1f} s")
        assert "drained" in result.stdout, result.stdout + result.stderr
        assert "live-migrating off node" in result.stderr, result.stderr
        for name in names:
            after = get(cluster, "vmi", name)
            assert after["metadata"]["uid"] == before[name]["metadata"]["uid"], "moved, not restarted"
            assert after["status"]["nodeName"] == NODES[1] and after["status"]["phase"] == "Running", dumps(
                after["status"])
            assert "evacuationNodeName" not in after["status"], after["status"]
            # The guest goes on counting there (the target's console log holds what it printed since the move).
            wait_for(lambda name=name: kvtool("console", name, "--tail").stdout.count("TICK") > 0, timeout=30,
                     what=f"{name} counting on {NODES[1]}",
                     describe=lambda name=name: "kvtool console --tail: " + kvtool("console", name, "--tail").stderr
                     + "\n" + guest_diagnostics(cluster.home, get(cluster, "vmi", name), f"default_{name}"))
        migrations = [m for n in names for m in _vmi_migrations(cluster, n)]
        assert sorted(m["status"]["phase"] for m in migrations) == ["Succeeded", "Succeeded"], dumps(migrations)
    finally:
        cluster.kubectl("uncordon", NODES[0])
        for name in names:
            cluster.kubectl("delete", "vm", name, "--wait=false")


@pytest.fixture
def bounded_migrations(cluster: Cluster) -> Iterator[None]:
    """1 MiB/s and 1 s per GiB: a 128Mi guest's copy cannot finish in its 1 s."""
    ns, cm = MIGRATION_CONFIG
    cluster.kubectl("-n", ns, "patch", "configmap", cm, "--type", "merge", "-p",
                    json.dumps({"data": {"bandwidthPerMigrationMiB": "1", "completionTimeoutPerGiB": "1"}}))
    try:
        yield
    finally:
        cluster.kubectl("-n", ns, "patch", "configmap", cm, "--type", "merge", "-p", json.dumps({"data": {
            "bandwidthPerMigrationMiB": "0", "completionTimeoutPerGiB": "150", "allowPostCopy": "false"}}))


def test_a_migration_past_its_completion_timeout_aborts_or_switches_to_post_copy(
        cluster: Cluster, tiny_image: str, tmp_path: Path, watch: CounterWatch, bounded_migrations: None) -> None:
    name = _name()
    before = _counting_vm(cluster, tmp_path, name, watch)
    source = before["status"]["nodeName"]
    try:
        # Pre-copy only: aborted when the time is up, the guest stays, the reason names the setting.
        migration = _migrate(name)
        failed = wait_for(lambda: _in_phase(cluster, migration, "Failed"),
                          timeout=120, what=f"{migration} Failed",
                          describe=lambda: dumps(_migration(cluster, migration).get("status")))
        reason = failed["status"]["migrationState"]["failureReason"]
        assert "not completed within 1 s" in reason and "completionTimeoutPerGiB" in reason, reason
        assert get(cluster, "vmi", name)["status"]["nodeName"] == source
        # With post-copy allowed, the same deadline switches the migration to post-copy, which finishes it.
        ns, cm = MIGRATION_CONFIG
        cluster.kubectl("-n", ns, "patch", "configmap", cm, "--type", "merge", "-p",
                        json.dumps({"data": {"allowPostCopy": "true"}}))
        migration = _migrate(name, "--wait")
        done = _migration(cluster, migration)
        assert done["status"]["phase"] == "Succeeded", dumps(done["status"])
        assert done["status"]["migrationState"]["mode"] == "PostCopy", dumps(done["status"]["migrationState"])
        after = get(cluster, "vmi", name)
        assert after["status"]["nodeName"] != source and after["metadata"]["uid"] == before["metadata"]["uid"]
        _follow_pods(cluster, watch, name)
        watch.wait_ticks(pod=next(iter(after["status"]["activePods"])), after=watch.last().n, timeout=30)
        assert not watch.report(0, time.monotonic())["uptime_resets"]
    finally:
        cluster.kubectl("delete", "vm", name, "--wait=false")
