"""Live migration's pure parts: migratability, the migration's phase decisions, the target pod, evictions,
the launcher's disk plan and flags, the handler's status mapping, the protocol's migration status."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvtool import inventory
from kvtool.controller import eviction, template
from kvtool.controller import migration as m
from kvtool.controller import vmi as vmi_logic
from kvtool.handler import migration as handler_migration
from kvtool.handler import status as handler_status
from kvtool.launcher import migration as launcher_migration
from kvtool.launchercom import protocol
from tests.waiting import wait_for

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
CFG = m.Config()


def vmi(phase: str = "Running", node: str = "n1", pods: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "namespace": "ns", "uid": "vmi-uid", "resourceVersion": "1"},
            "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}},
                     "networks": [{"name": "default", "pod": {}}],
                     "volumes": [{"name": "c", "containerDisk": {"image": "x"}}]},
            "status": {"phase": phase, "nodeName": node, "activePods": pods or {"src-uid": node},
                       "conditions": [{"type": "LiveMigratable", "status": "True"}], **status}}


def migration(phase: str = "", uid: str = "mig-uid", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "mig", "namespace": "ns", "uid": uid, "creationTimestamp": "2026-12-01T11:59:50Z",
                         "finalizers": [m.FINALIZER], **meta},
            "spec": {"vmiName": "v"}, "status": {"phase": phase} if phase else {}}


def pod(name: str, uid: str, node: str | None, phase: str = "Running", target: bool = False,
        **meta: Any) -> dict[str, Any]:
    labels = {"kvtool.io/vmi-uid": "vmi-uid", **({m.JOB_LABEL: "mig-uid"} if target else {})}
    return {"metadata": {"name": name, "uid": uid, "labels": labels, **meta},
            "spec": {"nodeName": node} if node else {}, "status": {"phase": phase}}


SOURCE = pod("src", "src-uid", "n1")


def state(**fields: Any) -> dict[str, Any]:
    return {"migrationUid": "mig-uid", "sourceNode": "n1", "targetPod": "tgt", "completed": False, "failed": False,
            **fields}


# ---- migratable


def test_masquerade_and_local_disks_migrate() -> None:
    assert m.migratable(vmi()["spec"], {})["status"] == "True"
    assert m.migration_method(vmi()["spec"]) == "BlockMigration"


def test_bridge_binding_and_unshared_disks_do_not() -> None:
    spec = vmi()["spec"]
    spec["domain"]["devices"]["interfaces"] = [{"name": "default", "bridge": {}}]
    cond = m.migratable(spec, {})
    assert (cond["status"], cond["reason"]) == ("False", "InterfaceNotLiveMigratable")
    assert "'default'" in cond["message"] and "masquerade" in cond["message"]
    spec = vmi()["spec"]
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}]
    rwo = m.migratable(spec, {"pvc": {"spec": {"accessModes": ["ReadWriteOnce"]}}})
    assert rwo["reason"] == "DisksNotLiveMigratable" and "ReadWriteOnce" in rwo["message"] and \
        "ReadWriteMany" in rwo["message"]
    assert m.migratable(spec, {"pvc": {"spec": {"accessModes": ["ReadWriteMany"]}}})["status"] == "True"
    assert "was not found" in m.migratable(spec, {"pvc": None})["message"]
    # A hostPath claim is copied to the target node's directory; a local volume cannot leave its node.
    rwo = {"pvc": {"spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv1"}}}
    assert m.migratable(spec, rwo, {"pv1": {"spec": {"hostPath": {"path": "/srv/pv1"}}}})["status"] == "True"
    assert m.migration_method(spec, rwo, {"pv1": {"spec": {"hostPath": {"path": "/srv/pv1"}}}}) == "BlockMigration"
    assert m.migration_method(spec, rwo, {}) == "LiveMigration"
    local = m.migratable(spec, rwo, {"pv1": {"spec": {"local": {"path": "/srv/pv1"}}}})
    assert local["status"] == "False" and "pinned to its node" in local["message"]
    spec["volumes"] = [{"name": "h", "hostDisk": {"path": "/d/x.img", "type": "Disk"}}]
    assert m.migratable(spec, {})["status"] == "False"
    spec["volumes"][0]["hostDisk"]["shared"] = True
    assert m.migratable(spec, {})["status"] == "True"


def test_config_defaults_and_errors() -> None:
    assert m.Config.from_data(None) == m.Config()
    cfg = m.Config.from_data({"bandwidthPerMigrationMiB": "64", "allowPostCopy": "true"})
    assert cfg.bandwidth_mib == 64 and cfg.allow_post_copy and cfg.migration_configuration()["allowPostCopy"]
    assert "parallelMigrationsPerCluster must be at least 1" in m.Config.from_data(
        {"parallelMigrationsPerCluster": "0"}).error
    assert "evictionStrategy must be one of" in m.Config.from_data({"evictionStrategy": "Sometimes"}).error
    assert "true or false" in m.Config.from_data({"allowAutoConverge": "yes"}).error


# ---- one migration's phases


def test_start_waits_for_the_verdict_then_makes_the_target() -> None:
    unknown = vmi()
    unknown["status"]["conditions"] = []
    d = m.decide(migration(), unknown, [SOURCE], CFG, (0, 0), NOW)
    assert d.phase == "Pending" and not d.create_target_pod and d.requeue_after
    old = vmi(migrationState=state(migrationUid="older", completed=True, targetNodeAddress="10.0.0.1"))
    d = m.decide(migration(), old, [SOURCE], CFG, (0, 0), NOW)
    assert d.phase == "Scheduling" and d.create_target_pod
    fresh = d.vmi_status["migrationState"]
    assert fresh["migrationUid"] == "mig-uid" and fresh["sourcePod"] == "src" and fresh["sourceNode"] == "n1"
    assert "targetNodeAddress" in fresh and fresh["targetNodeAddress"] is None, "the old migration's keys clear"
    assert fresh["migrationConfiguration"]["completionTimeoutPerGiB"] == 150


def test_start_refusals_and_limits() -> None:
    d = m.decide(migration(), vmi(phase="Scheduled"), [SOURCE], CFG, (0, 0), NOW)
    assert d.phase == "Failed" and "not running" in d.message
    no = vmi()
    no["status"]["conditions"] = [{"type": "LiveMigratable", "status": "False", "message": "uses bridge"}]
    assert "uses bridge" in m.decide(migration(), no, [SOURCE], CFG, (0, 0), NOW).message
    busy = vmi(migrationState=state(migrationUid="other"))
    assert "still in progress" in m.decide(migration(), busy, [SOURCE], CFG, (0, 0), NOW).message
    d = m.decide(migration(), vmi(), [SOURCE], CFG, (5, 0), NOW)
    assert d.phase == "Pending" and "5 migrations under way" in d.message and not d.create_target_pod
    assert m.decide(migration(), vmi(), [SOURCE], CFG, (1, 2), NOW).requeue_after
    assert "does not exist" in m.decide(migration(), None, [], CFG, (0, 0), NOW).message
    d = m.decide(migration(finalizers=[]), vmi(), [SOURCE], CFG, (0, 0), NOW)
    assert d.add_finalizer


def test_phases_follow_the_target_pod_and_the_handlers() -> None:
    running = vmi(migrationState=state())
    unbound = pod("tgt", "tgt-uid", None, phase="Pending", target=True)
    assert m.decide(migration("Scheduling"), running, [SOURCE, unbound], CFG, (0, 0), NOW).phase is None
    bound = pod("tgt", "tgt-uid", "n2", phase="Pending", target=True)
    d = m.decide(migration("Scheduling"), running, [SOURCE, bound], CFG, (0, 0), NOW)
    assert d.phase == "Scheduled" and d.labels == {m.TARGET_NODE_LABEL: "n2"}
    assert d.vmi_status == {"migrationState": {"targetNode": "n2"}, "activePods": {"tgt-uid": "n2"}}
    target = pod("tgt", "tgt-uid", "n2", target=True)
    assert m.decide(migration("Scheduled"), running, [SOURCE, target], CFG, (0, 0), NOW).phase == "PreparingTarget"
    assert m.decide(migration("PreparingTarget"), running, [SOURCE, target], CFG, (0, 0), NOW).phase is None
    ready = vmi(migrationState=state(targetNodeAddress="10.244.1.3", targetDirectMigrationNodePorts={"4000": 0}))
    assert m.decide(migration("PreparingTarget"), ready, [SOURCE, target], CFG, (0, 0), NOW).phase == "TargetReady"
    sending = vmi(migrationState=state(startTimestamp="2026-12-01T12:00:00Z"))
    assert m.decide(migration("TargetReady"), sending, [SOURCE, target], CFG, (0, 0), NOW).phase == "Running"


def test_completed_moves_the_vmi_to_the_target() -> None:
    done = vmi(pods={"src-uid": "n1", "tgt-uid": "n2"}, evacuationNodeName="n1",
               migrationState=state(targetNode="n2", startTimestamp="t", completed=True))
    target = pod("tgt", "tgt-uid", "n2", target=True)
    d = m.decide(migration("Running"), done, [SOURCE, target], CFG, (0, 0), NOW)
    assert d.phase == "Succeeded"
    assert d.vmi_status == {"nodeName": "n2", "activePods": {"src-uid": None, "tgt-uid": "n2"},
                            "evacuationNodeName": None}


def test_failures_end_the_migration_and_its_target() -> None:
    target = pod("tgt", "tgt-uid", "n2", target=True)
    failed = vmi(pods={"src-uid": "n1", "tgt-uid": "n2"}, migrationState=state(failed=True, failureReason="boom"))
    d = m.decide(migration("Running"), failed, [SOURCE, target], CFG, (0, 0), NOW)
    assert (d.phase, d.message, d.delete_pods) == ("Failed", "boom", ["tgt"])
    assert d.vmi_status == {"activePods": {"tgt-uid": None}}
    d = m.decide(migration("Running"), failed, [SOURCE], CFG, (0, 0), NOW)
    assert d.vmi_status == {"activePods": {"tgt-uid": None}}, "a target pod already gone leaves no entry behind"
    dead = pod("tgt", "tgt-uid", "n2", phase="Failed", target=True)
    d = m.decide(migration("PreparingTarget"), vmi(migrationState=state()), [SOURCE, dead], CFG, (0, 0), NOW)
    assert d.phase == "Failed" and "ended (Failed)" in d.message and "before the migration started" in d.message
    assert d.vmi_status["migrationState"]["failed"] is True
    d = m.decide(migration("Running"), vmi(migrationState=state(startTimestamp="t")), [SOURCE, dead], CFG, (0, 0), NOW)
    assert d.phase is None and d.vmi_status == {"migrationState": {
        "abortRequested": True, "failureReason": "the target pod tgt ended (Failed)"}}
    ended = vmi(phase="Failed", migrationState=state(startTimestamp="t"))
    assert "ended (Failed" in m.decide(migration("Running"), ended, [SOURCE, target], CFG, (0, 0), NOW).message
    stuck = pod("tgt", "tgt-uid", None, phase="Pending", target=True)
    stuck["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "message": "0/2 nodes are available"}]
    late = NOW + dt.timedelta(seconds=m.UNSCHEDULABLE_TIMEOUT + 20)
    d = m.decide(migration("Scheduling"), vmi(migrationState=state()), [SOURCE, stuck], CFG, (0, 0), late)
    assert d.phase == "Failed" and "0/2 nodes are available" in d.message


def test_deleting_a_migration_cancels_it() -> None:
    target = pod("tgt", "tgt-uid", "n2", target=True)
    gone = {"deletionTimestamp": "2026-12-01T12:00:00Z"}
    d = m.decide(migration("TargetReady", **gone), vmi(migrationState=state()), [SOURCE, target], CFG, (0, 0), NOW)
    assert d.vmi_status["migrationState"]["failed"] and "cancelled" in d.vmi_status["migrationState"][
        "failureReason"]
    assert d.delete_pods == ["tgt"] and d.remove_finalizer and d.phase == "Failed"
    sending = vmi(migrationState=state(startTimestamp="t"))
    d = m.decide(migration("Running", **gone), sending, [SOURCE, target], CFG, (0, 0), NOW)
    assert d.vmi_status == {"migrationState": {"abortRequested": True,
                                               "failureReason": "cancelled: the migration was deleted"}}
    assert not d.remove_finalizer and not d.delete_pods, "held until the source has stopped"
    aborted = vmi(migrationState=state(startTimestamp="t", abortRequested=True, failed=True))
    d = m.decide(migration("Running", **gone), aborted, [SOURCE, target], CFG, (0, 0), NOW)
    assert d.remove_finalizer and d.delete_pods == ["tgt"]


# ---- the VMI's own pods during and after a migration


def test_the_vmi_follows_the_pod_on_its_node() -> None:
    target = pod("tgt", "tgt-uid", "n2", target=True)
    assert vmi_logic.current_pods(vmi(), [SOURCE, target]) == [SOURCE]
    moved = vmi(node="n2", pods={"tgt-uid": "n2"})
    assert vmi_logic.current_pods(moved, [SOURCE, target]) == [target]
    # Back and forth: node 1 holds the first source pod (completed) and the pod the guest came back to.
    back = pod("back", "back-uid", "n1", target=True)
    done_first = pod("src", "src-uid", "n1", phase="Succeeded")
    assert vmi_logic.current_pods(vmi(pods={"back-uid": "n1"}), [done_first, target, back]) == [back]
    assert vmi_logic.decide(vmi(pods={"back-uid": "n1"}), [done_first, target, back], True).status is None
    left = pod("src", "src-uid", "n1", phase="Succeeded")
    leaving = vmi(migrationState=state(startTimestamp="t", targetNode="n2", completed=True))
    assert vmi_logic.decide(leaving, [left, target], True).status is None, "the source's end is not the VMI's"
    assert vmi_logic.decide(vmi(), [left], True).status["phase"] == "Succeeded"


def test_target_pod_avoids_the_source_and_honours_the_selector() -> None:
    config = template.LauncherConfig("img:1")
    inst = vmi()
    inst["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                              {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}
    inst["spec"]["nodeSelector"] = {"disk": "ssd"}
    made = template.migration_target_pod(inst, config, "tgt", "mig-uid", "n1", {"kubernetes.io/hostname": "n2"})
    assert made["metadata"]["name"] == "tgt" and made["metadata"]["labels"][m.JOB_LABEL] == "mig-uid"
    assert made["spec"]["nodeSelector"] == {"disk": "ssd", "kubernetes.io/hostname": "n2"}
    terms = made["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert all({"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n1"]} in t["matchExpressions"]
               for t in terms) and len(terms) == 2
    assert "nodeSelector" not in template.launcher_pod(vmi(), config)["spec"], "the VMI's own pod is untouched"
    caps = made["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    assert "SYS_PTRACE" not in caps
    post = template.migration_target_pod(inst, config, "tgt", "mig-uid", "n1", None, post_copy=True)
    assert "SYS_PTRACE" in post["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]


# ---- evictions


def launcher(node: str = "n1", phase: str = "Running", target: bool = False) -> dict[str, Any]:
    p = pod("virt-launcher-v-1", "src-uid", node, phase=phase, target=target)
    p["metadata"]["labels"]["kvtool.io"] = "virt-launcher"
    return p


def test_eviction_verdicts() -> None:
    live = vmi()
    live["spec"]["evictionStrategy"] = "LiveMigrate"
    v = eviction.verdict(launcher(), live, CFG)
    assert not v.allowed and v.evacuate == "n1" and "live-migrating off node n1" in v.message
    assert eviction.verdict(launcher(), vmi(), CFG).allowed, "strategy None: evicted as before"
    assert not eviction.verdict(launcher(), vmi(), m.Config(eviction_strategy="LiveMigrate")).allowed, \
        "the cluster's default applies"
    assert eviction.verdict(launcher(phase="Succeeded"), live, CFG).allowed
    assert eviction.verdict(launcher(node="n0"), live, CFG).allowed, "the guest left that pod"
    assert eviction.verdict({"metadata": {"name": "web", "labels": {}}}, None, CFG).allowed
    stuck = vmi(conditions=[{"type": "LiveMigratable", "status": "False", "message": "uses bridge"}])
    stuck["spec"]["evictionStrategy"] = "LiveMigrate"
    v = eviction.verdict(launcher(), stuck, CFG)
    assert not v.allowed and not v.evacuate and "uses bridge" in v.message
    stuck["spec"]["evictionStrategy"] = "LiveMigrateIfPossible"
    assert eviction.verdict(launcher(), stuck, CFG).allowed
    moving = vmi(migrationState=state(targetPod="virt-launcher-v-1"))
    moving["spec"]["evictionStrategy"] = "LiveMigrate"
    assert not eviction.verdict(launcher(node="n2", target=True), moving, CFG).allowed
    assert eviction.evacuation_pending(vmi(evacuationNodeName="n1"))
    assert not eviction.evacuation_pending(vmi(evacuationNodeName="n1", migrationState=state()))
    assert not eviction.evacuation_pending(vmi(evacuationNodeName="n0"))


# ---- launcher


DOMAIN = """<domain><devices>
<disk type='file' device='disk'><source file='PRIVATE/disks/root.qcow2'/><target dev='vda'/></disk>
<disk type='file' device='disk'><source file='VOLUMES/data/disk.img'/><target dev='vdb'/></disk>
<disk type='file' device='cdrom'><source file='PRIVATE/cloudinit.iso'/><target dev='sda'/>
<readonly/></disk>
<disk type='file' device='disk'><source file='PRIVATE/seed.iso'/><target dev='vdc'/><readonly/></disk>
<disk type='file' device='disk'><source file='VOLUMES/home/disk.img'/><target dev='vdd'/></disk>
</devices></domain>"""


def test_the_launcher_copies_local_disks_and_shares_claims(tmp_path: Any) -> None:
    private, volumes = tmp_path / "private", tmp_path / "volumes"
    for d in (private / "disks", volumes / "data", volumes / "home"):
        d.mkdir(parents=True)
    xml = DOMAIN.replace("PRIVATE", str(private)).replace("VOLUMES", str(volumes))
    # The target marks the storage it opens: a claim it shares shows the mark here, another node's does not.
    made = launcher_migration.mark_storage(xml, private, "m1")
    assert sorted(made) == [volumes / "data" / ".kvtool-migration-m1", volumes / "home" / ".kvtool-migration-m1"]
    made[1].unlink()  # "home" is a hostPath claim on the other node: its mark is there, not here
    plan = launcher_migration.plan_disks(xml, private, lambda _path: 1 << 30, "m1")
    assert plan == launcher_migration.DiskPlan(("vda", "vdd"), ("vdb",), 2 << 30)
    assert launcher_migration.plan_disks(xml, private, lambda _path: 1, "m2").shared == (), "another migration's mark"
    options = launcher_migration.Options.parse({"allowAutoConverge": True})
    value = launcher_migration.flags(plan, options)
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER, libvirt.VIR_MIGRATE_NON_SHARED_INC,
                 libvirt.VIR_MIGRATE_UNSAFE, libvirt.VIR_MIGRATE_AUTO_CONVERGE):
        assert value & flag
    assert not value & libvirt.VIR_MIGRATE_POSTCOPY
    assert launcher_migration.completion_timeout(128 << 20, launcher_migration.DiskPlan((), (), 0),
                                                 launcher_migration.Options()) == 150
    assert launcher_migration.completion_timeout(512 << 20, plan, launcher_migration.Options()) == 450, "2.5 GiB"
    for bad, text in (({"progressTimeout": 0}, "progressTimeout must be an integer >= 1"),
                      ({"allowPostCopy": "yes"}, "allowPostCopy must be true or false")):
        with pytest.raises(protocol.LauncherError, match=text):
            launcher_migration.Options.parse(bad)


def test_the_switchover_allowance_starts_short_and_grows_to_qemus_default() -> None:
    allowance = [launcher_migration.downtime_for(i) for i in range(9)]
    assert allowance[:3] == [100, 100, 100], "the bulk copy and the first re-copy: a short pause, if it fits"
    assert allowance[3:7] == [150, 200, 250, 300], "then in even steps"
    assert allowance[7:] == [300, 300], "never past QEMU's default: a busy guest converges as without tuning"


# ---- handler and protocol


def test_the_source_launchers_progress_becomes_migration_state() -> None:
    status = vmi(migrationState=state())["status"]
    local = protocol.migration_status(uid="mig-uid", role="source", state="Running", started_at="2026-12-01T12:00:00Z")
    assert handler_status.migration_patch(status, {"migration": local}) == {"startTimestamp": "2026-12-01T12:00:00Z",
                                                                          "mode": "PreCopy"}
    done = {**local, "state": "Completed", "endedAt": "2026-12-01T12:00:02Z"}
    assert handler_status.migration_patch(status, {"migration": done})["completed"] is True
    failed = {**local, "state": "Failed", "message": "broken pipe", "abortStatus": "Succeeded"}
    patch = handler_status.migration_patch(status, {"migration": failed})
    assert patch["failed"] and patch["failureReason"] == "broken pipe" and patch["abortStatus"] == "Succeeded"
    assert handler_status.migration_patch(status, {"migration": {**local, "uid": "older"}}) is None
    migrated = protocol.domain_status(phase="Migrated", domain_state="Shutoff", migration=done)
    patch = handler_status.status_patch(vmi(migrationState=state()), migrated, None, "now")
    assert set(patch) == {"migrationState"}, "the source's end is not reported as the VMI's"
    assert handler_migration.launcher_options({"completionTimeoutPerGiB": 10, "allowPostCopy": True,
                                               "parallelMigrationsPerCluster": 5}) == {
        "completionTimeoutPerGiB": 10, "allowPostCopy": True}


def test_protocol_checks_the_migration_status() -> None:
    ok = protocol.domain_status(migration=protocol.migration_status(uid="u", role="target", state="Ready"))
    assert protocol.check_status(ok)["migration"]["role"] == "target"
    with pytest.raises(protocol.LauncherError, match="migration must be null or an object"):
        protocol.check_status({**ok, "migration": {"uid": "u", "role": "sideways", "state": "Ready"}})
    assert "migrate" in protocol.COMMANDS and "migrate-abort" in protocol.COMMANDS


def test_the_status_table_says_where_a_vm_goes() -> None:
    migrating, note = inventory.migration_note({"migrationState": state(targetNode="n2", startTimestamp="t")})
    assert migrating and note == "Migrating: n1 -> n2 (copying)"
    _, note = inventory.migration_note({"migrationState": state(failed=True, failureReason="no space")})
    assert note == "MigrationFailed: no space (the VM stays on n1)"
    _, note = inventory.migration_note({"migrationState": state(failed=True, abortStatus="Succeeded",
                                                                failureReason="cancelled")})
    assert note.startswith("MigrationCancelled: cancelled")
    assert inventory.migration_note({"migrationState": state(completed=True)}) == (False, "")
    row = inventory.vm_row({"metadata": {"name": "v"}, "spec": {"runStrategy": "Always"},
                            "status": {"printableStatus": "Running"}},
                           {"status": {"migrationState": state(targetNode="n2")}})
    assert row["status"] == "Migrating" and "n1 -> n2" in row["message"]


# ---- the TLS proxy, on real sockets


def test_the_proxy_carries_bytes_between_handlers_only_with_the_clusters_certificate(tmp_path: Any) -> None:
    import asyncio
    import ssl

    from kvtool.handler.migration_proxy import SourceProxy, TargetProxy
    from kvtool.kube import migrationtls

    pems = migrationtls.make_material()
    server_ctx, client_ctx = migrationtls.contexts(pems)
    stranger = migrationtls.contexts(migrationtls.make_material())[1]  # another CA's certificate

    async def scenario() -> None:
        # The target launcher's side: a unix socket that echoes in upper case.
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.read(100)).upper())
            await writer.drain()
            writer.close()

        qemu = await asyncio.start_unix_server(echo, str(tmp_path / "migration-target.sock"))
        target = TargetProxy("m1", "127.0.0.1", {"migration": tmp_path / "migration-target.sock"}, server_ctx)
        ports = await target.start()
        assert list(ports.values()) == [49152]
        source = SourceProxy("m1", tmp_path / "src", "127.0.0.1", ports, client_ctx, migrationtls.PEER_NAME)
        await source.start()
        assert oct((tmp_path / "src" / "migration.sock").stat().st_mode & 0o777) == "0o600"
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "src" / "migration.sock"))
        writer.write(b"guest memory")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 10) == b"GUEST MEMORY"
        writer.close()
        # A handler without the cluster's certificate gets nowhere.
        port = int(next(iter(ports)))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _r, _w0 = await asyncio.open_connection("127.0.0.1", port, ssl=stranger,
                                                  server_hostname=migrationtls.PEER_NAME)
            await _r.read(1)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            plain = ssl.create_default_context()
            plain.check_hostname, plain.verify_mode = False, ssl.CERT_NONE
            r2, _w = await asyncio.open_connection("127.0.0.1", port, ssl=plain)
            _w.write(b"x")
            await _w.drain()
            if not await r2.read(1):
                raise ConnectionError("closed: no client certificate")
        await source.close()
        await target.close()
        qemu.close()
        assert not (tmp_path / "src" / "migration.sock").exists()

    asyncio.run(scenario())


def test_the_proxy_moves_megabytes_both_ways_at_once_intact(tmp_path: Any) -> None:
    """Both directions of one TLS connection at full speed (post-copy's page requests run against the copy)."""
    import asyncio
    import hashlib
    import os

    from kvtool.handler.migration_proxy import SourceProxy, TargetProxy
    from kvtool.kube import migrationtls

    server_ctx, client_ctx = migrationtls.contexts(migrationtls.make_material())
    payload = os.urandom(8 << 20)

    async def scenario() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
            writer.close()

        qemu = await asyncio.start_unix_server(echo, str(tmp_path / "t.sock"))
        target = TargetProxy("m2", "127.0.0.1", {"migration": tmp_path / "t.sock"}, server_ctx)
        source = SourceProxy("m2", tmp_path / "src", "127.0.0.1", await target.start(), client_ctx,
                             migrationtls.PEER_NAME)
        await source.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "src" / "migration.sock"))

        async def send() -> None:
            for offset in range(0, len(payload), 1 << 20):
                writer.write(payload[offset:offset + (1 << 20)])
                await writer.drain()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
        await sender
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(1), 10) == b""  # the proxy ended the channel with its writer
        writer.close()
        await source.close()
        await target.close()
        qemu.close()

    asyncio.run(scenario())


def test_the_vmi_records_claim_disk_sizes_for_a_migrations_copy() -> None:
    from kvtool.launcher import volumes as launcher_volumes

    domain = protocol.domain_status(phase="Running", domain_state="Running", volume_sizes={"data": 1 << 30})
    patch = handler_status.status_patch(vmi(), domain, None, "now")
    assert patch["volumeStatus"] == [{"name": "data", "size": 1 << 30}]
    recorded = vmi(volumeStatus=[{"name": "data", "size": 1 << 30}])
    assert "volumeStatus" not in (handler_status.status_patch(recorded, domain, None, "now") or {})
    assert launcher_volumes.recorded_size(recorded, "data") == 1 << 30
    assert launcher_volumes.recorded_size(recorded, "other") is None
    with pytest.raises(protocol.LauncherError, match="volumeSizes"):
        protocol.check_status({**domain, "volumeSizes": {"data": "big"}})


class _RefusingDom:
    """A domain whose QEMU refuses the switch to post-copy `refusals` times (the copy has not begun yet)."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.switched, self.aborted = refusals, 0, 0

    def jobStats(self) -> dict[str, int]:
        return {"data_remaining": 1 << 20, "memory_iteration": 1}

    def migrateSetMaxDowntime(self, ms: int, flags: int) -> None:
        pass

    def migrateStartPostCopy(self) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise _LibvirtError("Requested operation is not valid: postcopy not yet possible")
        self.switched += 1

    def abortJob(self) -> None:
        self.aborted += 1


class _LibvirtError(libvirt.libvirtError):
    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.message = message

    def get_error_message(self) -> str:
        return self.message


def _outgoing(dom: _RefusingDom) -> tuple[launcher_migration.Outgoing, list[dict]]:
    reports: list[dict] = []
    options = launcher_migration.Options.parse({"allowPostCopy": True, "completionTimeoutPerGiB": 1})
    job = launcher_migration.Outgoing("m1", dom, Path("/nonexistent"), options,  # type: ignore[arg-type]
                                      launcher_migration.DiskPlan((), (), 0), 128 << 20, reports.append)
    job.deadline = 0.2
    return job, reports


def test_a_refused_switch_to_post_copy_is_tried_again_not_aborted() -> None:
    dom = _RefusingDom(refusals=2)
    job, reports = _outgoing(dom)
    monitor = threading.Thread(target=job._monitor)
    monitor.start()
    try:
        wait_for(lambda: dom.switched, timeout=10, what="the third try to switch to post-copy")
    finally:
        job.done.set()
        monitor.join(5)
    assert (dom.switched, dom.aborted, job.mode) == (1, 0, "PostCopy") and {"mode": "PostCopy"} in reports


def test_a_switch_to_post_copy_refused_for_too_long_aborts_with_qemus_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher_migration, "POST_COPY_RETRY", 0.5)
    dom = _RefusingDom(refusals=10_000)
    job, _ = _outgoing(dom)
    job._monitor()  # returns once it aborted
    assert dom.aborted == 1 and dom.switched == 0
    assert "the switch to post-copy failed for 0 s: Requested operation is not valid: postcopy not yet possible" \
        in job.abort_reason, job.abort_reason
