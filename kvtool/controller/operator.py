"""The controller as a kopf operator: watches feed pure decisions (vm.py, vmi.py), results go to the API.

kopf does the watching; its indexes are the informer caches. Watch events only add keys
("vm"|"vmi", namespace, name) to a rate-limited work queue (kvtool.kube.workqueue, client-go's
design): one key is synced at a time, a sync that fails is retried with backoff and logged, a
delayed re-add drives crash-loop backoff, and a periodic resync re-adds every key, so no work is
ever dropped. Writes that lose a race (409) need no retry: the watch event of the winning write
adds the key again.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from kvtool.api import snapshotnames, timeutil
from kvtool.api.types import (
    CONFIG_MAP,
    LAUNCHER_LABEL_KEY,
    LAUNCHER_LABEL_VALUE,
    LEASE,
    PAUSE_ANNOTATION,
    POD,
    PVC,
    RESTORE_LABEL,
    SECRET,
    SNAPSHOT_LABEL,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    VIRTUAL_MACHINE_INSTANCE_MIGRATION,
    VIRTUAL_MACHINE_POOL,
    VIRTUAL_MACHINE_RESTORE,
    VIRTUAL_MACHINE_SNAPSHOT,
    VMI_UID_LABEL,
    Kind,
    claim_volumes,
)
from kvtool.controller import conditions, eviction, failover, fence, metrics, template
from kvtool.controller import migration as migration_logic
from kvtool.controller import pool as pool_logic
from kvtool.controller import snapshot as snapshot_logic
from kvtool.controller import vm as vm_logic
from kvtool.controller import vmi as vmi_logic
from kvtool.kube import events, kopfbase, migrationtls
from kvtool.kube.resources import KubeError, Resources
from kvtool.kube.workqueue import WorkQueue

log = logging.getLogger("kvtool.controller")

FIELD_MANAGER = "kvtool-controller"
NODE = Kind("v1", "Node", "nodes")
PV = Kind("v1", "PersistentVolume", "persistentvolumes")
JOB = Kind("batch/v1", "Job", "jobs")
# How often node heartbeats are checked (the grace itself is the cluster's failover setting).
NODE_CHECK_PERIOD = 2.0
CONFIG_TTL = 5.0
RESYNC = 300.0  # seconds between re-adds of every key (client-go controllers: 30 s to 10 min)
QUEUE_WORKERS = 16  # keys synced at once (one key never twice at once); each waits mostly on API calls
API_THREADS = 32  # threads for those calls: one connection each in the client's pool (kube.clients.POOL_SIZE)
FENCE_RETRY_MAX = 60.0
EVACUATION_RETRY = 10.0  # seconds between a failed evacuation's migration and the next attempt
VM_R = ("kvtool.io", "v1alpha1", "virtualmachines")
VMI_R = ("kvtool.io", "v1alpha1", "virtualmachineinstances")
VMIM_R = ("kvtool.io", "v1alpha1", "virtualmachineinstancemigrations")
POOL_R = ("kvtool.io", "v1alpha1", "virtualmachinepools")
SNAPSHOT_R = ("kvtool.io", "v1alpha1", "virtualmachinesnapshots")
RESTORE_R = ("kvtool.io", "v1alpha1", "virtualmachinerestores")
VOLUME_SNAPSHOT_CLASS = Kind("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass", "volumesnapshotclasses")
POOL_FIELD_MANAGER = "kvtool-pool"  # owns the spec of the VMs a pool makes (a changed template rewrites it)
LAUNCHER = {LAUNCHER_LABEL_KEY: LAUNCHER_LABEL_VALUE}


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


SHARED_STRING = 24  # characters: strings up to this long are shared between the objects the indexes hold


def compact(value: Any) -> Any:
    """A plain copy (dicts, lists, scalars) that shares its keys and short strings with every other object the
    slim indexes hold (nodes, leases, migrations, pools, snapshots; VMs, VMIs and pods are Held as text). Each
    object's JSON is parsed on its own, so without this every object holds its own "metadata", "True", ..."""
    if isinstance(value, Mapping):
        return {sys.intern(str(key)): compact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [compact(item) for item in value]
    if isinstance(value, str) and len(value) <= SHARED_STRING:
        return sys.intern(value)
    return value


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """An object without what no decision reads: managedFields are a third or more of a pod's or VMI's size, and
    a Node's image list is larger than the rest of it."""
    out = dict(body)
    out["metadata"] = {key: item for key, item in (body.get("metadata") or {}).items() if key != "managedFields"}
    if out.get("kind") == "Node":
        out["status"] = {key: item for key, item in (body.get("status") or {}).items() if key != "images"}
    return out


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What an index of the few (nodes, leases, migrations, pools, snapshots) keeps: a compact trimmed copy."""
    return compact(trimmed(body))


class Held:
    """A VM, VMI or launcher pod as the controller's indexes hold it: its JSON text, and the few fields read
    without decoding it. Each reader decodes a copy of its own (as deep-copying a held dict gave, and faster).
    Parsed, the three objects of one VM took ~33 KiB of the controller's memory; as text, a few KiB."""

    __slots__ = ("node", "text", "uid", "version")

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.text = json.dumps(body, separators=(",", ":"))
        self.uid: str | None = (body.get("metadata") or {}).get("uid")
        self.version = _version(body)
        self.node: str | None = (body.get("status") or {}).get("nodeName")  # a VMI's, which node checks read

    def body(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.text)
        return decoded


def copy_of(value: Any) -> dict[str, Any]:
    """A private copy of what an index holds (Held text or a slim dict)."""
    return value.body() if isinstance(value, Held) else plain(value)


POD_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences",
                "creationTimestamp", "deletionTimestamp")


def launcher_pod_view(body: Mapping[str, Any]) -> Held:
    """What the controller's decisions read of a launcher pod (vmi.py, migration.py, failover): who it is, its
    node and its status. The rest of its spec (containers, env, volumes, probes) is what the controller wrote
    itself, and most of the pod's size."""
    meta = body.get("metadata") or {}
    node = (body.get("spec") or {}).get("nodeName")
    return Held({"metadata": {key: meta[key] for key in POD_METADATA if key in meta},
                 "spec": {"nodeName": node} if node else {},
                 "status": body.get("status") or {}})


class Controller:
    """State shared by the handlers: the API client, the caches, the work queue."""

    def __init__(self, res: Resources, config: template.LauncherConfig, namespace: str = "kvtool-system") -> None:
        self.res = res
        self.config = config
        self.namespace = namespace  # kvtool's own: its failover ConfigMap, fence Secret and handler Leases
        self.failover_cache: tuple[float, failover.Config] | None = None
        self.migration_cache: tuple[float, migration_logic.Config] | None = None
        self.fence_retry: dict[str, tuple[float, float]] = {}  # node -> (next attempt, backoff)
        self.monitor: asyncio.Task[None] | None = None
        self.queue: WorkQueue[tuple[str, str, str]] = WorkQueue("controller", self.process, workers=QUEUE_WORKERS,
                                                                resync=RESYNC, keys=self.all_keys)
        self.indexes: Mapping[str, Any] = {}
        # Per pool: VMs it created or deleted that the cache may not show yet (client-go's "expectations"), so a
        # sync on a stale cache neither makes a VM twice nor removes one more than asked (Random scale-in).
        self.pool_writes: dict[tuple[str, str], pool_logic.Expectations] = {}
        # (index, namespace, name) -> the VM or VMI as this controller last wrote it (_latest).
        self.written: dict[tuple[str, str, str], Held] = {}
        # Per running snapshot (namespace, name): its uid and what was read of its claims' storage. Read once: a
        # claim's method cannot change under it (a bound claim keeps its volume; an unbound one is an Empty
        # backup, which finishes in its first pass), so the 1 s passes while the VM pauses do no storage GETs.
        self.snapshot_storage: dict[tuple[str, str], tuple[str, dict[str, snapshot_logic.Storage]]] = {}

    # -- cache reads ---------------------------------------------------------
    def _held(self, index: str, key: Any) -> Any:
        store = self.indexes.get(index, {}).get(key)
        return next(iter(store)) if store else None

    def _one(self, index: str, key: Any) -> dict[str, Any] | None:
        held = self._held(index, key)
        return None if held is None else copy_of(held)

    def _latest(self, index: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object from the cache, or the version this controller last wrote when the cache has not caught up
        with it yet (client-go's MutationCache): its writes carry the version they were decided on, so a sync
        on the older one would be refused (409) and wait for the next event."""
        cached: Held | None = self._held(index, (namespace, name))
        written = self.written.get((index, namespace, name))
        if written is not None and cached is not None and not _caught_up(cached, written):
            return written.body()
        if written is not None:
            del self.written[(index, namespace, name)]  # the cache has it (or it went): the cache is the truth
        return None if cached is None else cached.body()

    def indexed(self, index: str, body: Mapping[str, Any]) -> Held:
        """What `index` keeps of a new version of a VM or VMI; the copy this controller wrote goes once the cache
        has caught up with it, not at the object's next sync (the last status of 1000 idle VMs held twice)."""
        held = Held(trimmed(body))
        meta = body["metadata"]
        key = (index, meta.get("namespace", ""), meta["name"])
        written = self.written.get(key)
        if written is not None and _caught_up(held, written):
            del self.written[key]
        return held

    def _remember(self, index: str, written: Mapping[str, Any]) -> None:
        meta = written["metadata"]
        self.written[(index, meta["namespace"], meta["name"])] = Held(trimmed(written))

    def _vmi(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._latest("vmi_index", namespace, name)

    def _all(self, index: str, key: Any) -> list[dict[str, Any]]:
        return [copy_of(b) for b in self.indexes.get(index, {}).get(key, [])]

    # -- API writes (the `kubernetes` client is synchronous: run it in threads) ----
    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- VM ------------------------------------------------------------------
    async def sync_vm(self, namespace: str, name: str) -> float | None:
        """One VM from the caches; seconds after which it wants another sync (crash-loop backoff), or None."""
        vm = self._latest("vm_index", namespace, name)
        if vm is None:
            return None
        vmi = self._vmi(namespace, name)
        if vmi is not None and not _owned_by(vmi, vm):
            log.warning("vm=%s/%s event=foreign-vmi uid=%s", namespace, name, vmi["metadata"]["uid"])
            vmi = None
        restoring = next((b["metadata"]["name"] for b in self._all("restore_by_vm", (namespace, name))
                          if not snapshot_logic.restore_done(b)), None)
        snapshotting = next((b["metadata"]["name"] for b in self._all("snapshot_by_vm", (namespace, name))
                             if (b.get("status") or {}).get("phase") not in snapshot_logic.FINAL), None)
        hold = await self._baseline(vm, vmi)
        decision = vm_logic.decide(vm, vmi, restoring=restoring, snapshotting=snapshotting, hold=hold)
        if decision.delete_vm:
            try:
                await self._call(self.res.delete, VIRTUAL_MACHINE, namespace, name, uid=vm["metadata"]["uid"])
                log.info("vm=%s/%s event=vm-deleted reason=expired", namespace, name)
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
        if decision.create_vmi and (vm.get("status") or {}).get("vmiUID") and not await self._vm_still_there(vm):
            # Its VMI went because the VM went (the garbage collector follows a VM's deletion): the VM cache is
            # behind. A new VMI would be a decision a fresh read reverses, and a launcher pod made for nothing.
            log.info("vm=%s/%s event=vm-cache-behind", namespace, name)
            return None
        if decision.create_vmi:
            try:
                created = await self._call(self.res.create, VIRTUAL_MACHINE_INSTANCE, vm_logic.vmi_for(vm),
                                           FIELD_MANAGER)
                log.info("vm=%s/%s event=vmi-created uid=%s", namespace, name, created["metadata"]["uid"])
                self._remember("vmi_index", created)
                metrics.VMIS_CREATED.inc()
                # What the next sync will read off the new VMI, written now: one status write, not two.
                decision.status.update(created=True, printableStatus="Starting", vmiUID=created["metadata"]["uid"],
                                       conditions=vm_logic.with_new_vmi(decision.status["conditions"]))
            except KubeError as exc:
                if exc.status != 409:
                    # Say it where the user looks, then let the work queue retry with backoff.
                    failed = conditions.condition("Failure", True, "FailedCreate",
                                                  f"could not create the VirtualMachineInstance (retrying): "
                                                  f"{exc.message}")
                    await self._write_vm_status(vm, {**decision.status, "conditions": [
                        *[c for c in decision.status["conditions"] if c["type"] != "Failure"], failed]})
                    raise
        if decision.delete_vmi:
            try:
                await self._call(self.res.delete, VIRTUAL_MACHINE_INSTANCE, namespace, name,
                                 propagation="Foreground", uid=decision.delete_vmi)
                log.info("vm=%s/%s event=vmi-deleted uid=%s", namespace, name, decision.delete_vmi)
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
        if not await self._write_vm_status(vm, decision.status):
            return None  # decided on an older VM: the newer one's sync decides (and tells) again
        for etype, reason, message in decision.events:
            await events.post(self.res, vm, etype, reason, message, FIELD_MANAGER)
        metrics.SYNCS.labels(kind="vm", result="ok").inc()
        return decision.requeue_after

    async def _vm_still_there(self, vm: dict[str, Any]) -> bool:
        """Whether the API server (not the cache) still has this VM, not being deleted: one GET, before making a
        VMI again for a VM that had one."""
        meta = vm["metadata"]
        fresh = await self._call(self.res.get, VIRTUAL_MACHINE, meta["namespace"], meta["name"])
        return fresh is not None and fresh["metadata"]["uid"] == meta["uid"] and \
            not fresh["metadata"].get("deletionTimestamp")

    async def _baseline(self, vm: dict[str, Any], vmi: dict[str, Any] | None) -> bool:
        """A lab VM's baseline snapshot (kvtool.io/baseline): made when missing; True while the VM, never started
        since, must wait for it (its first boot must not change what a reset goes back to)."""
        if not snapshot_logic.wants_baseline(vm) or vm["metadata"].get("deletionTimestamp"):
            return False
        meta = vm["metadata"]
        name = snapshotnames.baseline(meta["name"])
        snap = self._one("snapshot_index", (meta["namespace"], name))
        if snap is None:
            try:
                await self._call(self.res.create, VIRTUAL_MACHINE_SNAPSHOT, snapshot_logic.baseline_snapshot(vm),
                                 FIELD_MANAGER)
                log.info("vm=%s/%s event=baseline-snapshot-created snapshot=%s", meta["namespace"], meta["name"],
                         name)
            except KubeError as exc:
                if exc.status != 409:
                    raise
            return vmi is None and not (vm.get("status") or {}).get("created")
        return vmi is None and (snap.get("status") or {}).get("phase") not in snapshot_logic.FINAL

    async def _write_vm_status(self, vm: dict[str, Any], status: dict[str, Any]) -> bool:
        """False when the VM changed since `vm` was read (or went): nothing was written."""
        current = vm.get("status") or {}
        status = dict(status)
        status["conditions"] = conditions.merge(current.get("conditions"), status["conditions"])
        if conditions.status_unchanged(current, status):
            return True
        meta = vm["metadata"]
        # The version decided on goes with the write: the status carries the user's stateChangeRequests (kvtool
        # start/stop/restart write them), and a status decided on a VM read before they came would take them
        # back. Refused (409), the sync waits for the newer VM's event, which brings the next one.
        body = {"apiVersion": vm["apiVersion"], "kind": vm["kind"],
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "resourceVersion": meta["resourceVersion"]},
                # None drops a field this manager owned (startFailure); [] must stay: it clears requests
                # another manager (kvtool start/stop) wrote.
                "status": {k: v for k, v in status.items() if v is not None}}
        try:
            written = await self._call(self.res.apply, VIRTUAL_MACHINE, body, subresource="status", force=True,
                                       field_manager=FIELD_MANAGER)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            log.debug("vm=%s/%s event=stale-write status=%d", meta["namespace"], meta["name"], exc.status)
            return False
        if written:
            self._remember("vm_index", written)
        return True

    # -- the work queue -------------------------------------------------------------
    async def process(self, key: tuple[str, str, str]) -> float | None:
        kind, namespace, name = key
        if kind == "vm":
            return await self.sync_vm(namespace, name)
        if kind == "vmim":
            return await self.sync_migration(namespace, name)
        if kind == "pool":
            return await self.sync_pool(namespace, name)
        if kind == "snapshot":
            return await self.sync_snapshot(namespace, name)
        if kind == "restore":
            return await self.sync_restore(namespace, name)
        await self.sync_vmi(namespace, name)
        return None

    def all_keys(self) -> list[tuple[str, str, str]]:
        keys = [("vm", ns, name) for ns, name in self.indexes.get("vm_index", {})]
        keys += [("vmim", ns, name) for ns, name in self.indexes.get("vmim_index", {})]
        keys += [("pool", ns, name) for ns, name in self.indexes.get("pool_index", {})]
        keys += [("snapshot", ns, name) for ns, name in self.indexes.get("snapshot_index", {})]
        keys += [("restore", ns, name) for ns, name in self.indexes.get("restore_index", {})]
        return keys + [("vmi", ns, name) for ns, name in self.indexes.get("vmi_index", {})]

    def enqueue_vm(self, namespace: str, name: str) -> None:
        """A VM and its VMI (same name) to sync: what any event about either of them calls for; and the VMI's
        migrations, which follow its status and pods."""
        self.queue.add(("vmi", namespace, name))
        self.queue.add(("vm", namespace, name))
        self.enqueue_migrations(namespace, name)

    def enqueue_migrations(self, namespace: str, vmi_name: str) -> None:
        for body in self.indexes.get("vmim_by_vmi", {}).get((namespace, vmi_name), []):
            self.queue.add(("vmim", namespace, body["metadata"]["name"]))

    # -- VirtualMachinePool (decisions in pool.py) ---------------------------------------
    async def sync_pool(self, namespace: str, name: str) -> float | None:
        pool = self._one("pool_index", (namespace, name))
        if pool is None or pool["metadata"].get("deletionTimestamp"):
            self.pool_writes.pop((namespace, name), None)
            return None  # its VMs go with it: the garbage collector follows their ownerReferences
        # Its own VMs, by name (no walk over the namespace's), as the VM index holds them.
        vms = [vm for vm_name in self.indexes.get("vm_by_pool", {}).get((namespace, name), [])
               if (vm := self._one("vm_index", (namespace, vm_name))) is not None]
        writes = self.pool_writes.setdefault((namespace, name), pool_logic.Expectations())
        d = pool_logic.decide(pool, writes.seen(pool, vms, time.monotonic()), timeutil.now(),
                              taken=_NamesIn(self.indexes.get("vm_index", {}), namespace))
        for vm in d.create:
            try:
                created = await self._call(self.res.create, VIRTUAL_MACHINE, vm, POOL_FIELD_MANAGER)
                writes.created(created, time.monotonic())
                log.info("pool=%s/%s event=vm-created vm=%s", namespace, name, vm["metadata"]["name"])
            except KubeError as exc:
                if exc.status == 409:
                    continue  # made meanwhile (our own earlier write, not yet in the cache): the next sync counts it
                await self._pool_failure(pool, d.status, "FailedCreate",
                                         f"could not create VM {vm['metadata']['name']} (retrying): {exc.message}")
                raise
        for vm_name, uid in d.delete:
            try:
                await self._call(self.res.delete, VIRTUAL_MACHINE, namespace, vm_name, uid=uid)
                writes.deleted(uid, time.monotonic())
                log.info("pool=%s/%s event=vm-deleted vm=%s", namespace, name, vm_name)
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise
        for vm in d.update:
            await self._call(self.res.apply, VIRTUAL_MACHINE, vm, force=True, field_manager=POOL_FIELD_MANAGER,
                             parse=False)
            log.info("pool=%s/%s event=vm-updated vm=%s reason=TemplateChanged", namespace, name,
                     vm["metadata"]["name"])
        await self._write_pool_status(pool, d.status)
        for etype, reason, message in d.events:
            await events.post(self.res, pool, etype, reason, message, FIELD_MANAGER)
        return d.requeue_after

    async def _pool_failure(self, pool: dict[str, Any], status: dict[str, Any], reason: str, message: str) -> None:
        failed = conditions.condition("ReplicaFailure", True, reason, message)
        await self._write_pool_status(pool, {**status, "conditions": conditions.put(status.get("conditions"), failed)})

    async def _write_pool_status(self, pool: dict[str, Any], status: dict[str, Any]) -> None:
        current = pool.get("status") or {}
        if conditions.status_unchanged(current, status):
            return
        meta = pool["metadata"]
        try:
            await self._call(self.res.merge_patch, VIRTUAL_MACHINE_POOL, meta["namespace"], meta["name"],
                             {"status": status}, subresource="status", field_manager=FIELD_MANAGER)
        except KubeError as exc:
            if exc.status != 404:
                raise

    # -- VirtualMachineSnapshot / VirtualMachineRestore (decisions in snapshot.py) ----------
    async def _storage(self, namespace: str, claim: str) -> snapshot_logic.Storage:
        pvc = await self._call(self.res.get, PVC, namespace, claim)
        name = ((pvc or {}).get("spec") or {}).get("volumeName")
        pv = await self._call(self.res.get, PV, None, name) if pvc and name else None
        driver = (((pv or {}).get("spec") or {}).get("csi") or {}).get("driver")
        classes: tuple[str, ...] = ()
        if driver:
            try:
                found, _ = await self._call(self.res.list, VOLUME_SNAPSHOT_CLASS)
                classes = tuple(c["metadata"]["name"] for c in found if c.get("driver") == driver)
            except KubeError as exc:
                if exc.status != 404:  # 404: the cluster has no VolumeSnapshot CRDs at all
                    raise
        return snapshot_logic.Storage(pvc, pv, classes)

    async def _copy_job(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The copy Job `name` and its pods' termination messages (the copy's own words when it failed)."""
        job = await self._call(self.res.get, JOB, namespace, name)
        if job is None:
            return None, []
        pods, _ = await self._call(self.res.list, POD, namespace, f"job-name={name}")
        messages = [((cs.get("state") or {}).get("terminated") or {}).get("message") or ""
                    for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or []]
        return job, messages

    async def _carry_out(self, kind: Kind, obj: dict[str, Any], vmi: dict[str, Any] | None,
                         d: snapshot_logic.Decision, job_name: str) -> None:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        what = "snapshot" if kind is VIRTUAL_MACHINE_SNAPSHOT else "restore"
        if d.pause is not None and vmi is not None:
            annotations = ({PAUSE_ANNOTATION: "true", snapshot_logic.PAUSED_BY: meta["uid"]} if d.pause else
                           {PAUSE_ANNOTATION: "false", snapshot_logic.PAUSED_BY: None})
            await self._patch(vmi, {"metadata": {"annotations": annotations}})
            log.info("%s=%s/%s event=%s vmi=%s", what, namespace, name, "vm-paused" if d.pause else "vm-unpaused",
                     vmi["metadata"]["name"])
        for claim in d.create_claims:
            try:
                await self._call(self.res.create, PVC, claim, FIELD_MANAGER)
                log.info("%s=%s/%s event=backup-claim-created claim=%s", what, namespace, name,
                         claim["metadata"]["name"])
            except KubeError as exc:
                if exc.status != 409:
                    raise
        if d.create_job is not None:
            try:
                await self._call(self.res.create, JOB, d.create_job, FIELD_MANAGER)
                log.info("%s=%s/%s event=copy-job-created job=%s", what, namespace, name, job_name)
            except KubeError as exc:
                if exc.status != 409:
                    raise
        if d.delete_job:
            await self._call(self.res.delete, JOB, namespace, job_name, propagation="Background")
        if d.status:
            status = dict(d.status)
            status["conditions"] = conditions.merge((obj.get("status") or {}).get("conditions"), status["conditions"])
            if not conditions.status_unchanged(obj.get("status"), status):
                try:
                    await self._call(self.res.merge_patch, kind, namespace, name, {"status": status},
                                     subresource="status", field_manager=FIELD_MANAGER)
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                if status.get("phase") in snapshot_logic.FINAL or "complete" in status:
                    log.info("%s=%s/%s event=%s", what, namespace, name,
                             status.get("phase") or ("complete" if status.get("complete") else "waiting"))
        for etype, reason, message in d.events:
            await events.post(self.res, obj, etype, reason, message, FIELD_MANAGER)

    async def sync_snapshot(self, namespace: str, name: str) -> float | None:
        snap = self._one("snapshot_index", (namespace, name))
        if snap is None or snap["metadata"].get("deletionTimestamp"):
            self.snapshot_storage.pop((namespace, name), None)
            return None  # its backup claims and Job go with it (ownerReferences), unless deletionPolicy Retain
        source = ((snap.get("spec") or {}).get("source") or {}).get("name", "")
        vm = self._one("vm_index", (namespace, source))
        vmi = self._vmi(namespace, source)
        uid = snap["metadata"].get("uid", "")
        read = self.snapshot_storage.get((namespace, name))
        storage = read[1] if read and read[0] == uid else {}
        backups: dict[str, dict[str, Any] | None] = {}
        if vm is not None and (snap.get("status") or {}).get("phase") not in snapshot_logic.FINAL:
            for volume, claim in snapshot_logic.backed_up(vm)[0]:
                if claim not in storage:
                    storage[claim] = await self._storage(namespace, claim)
                backup = snapshotnames.backup_claim(name, volume)
                backups[backup] = await self._call(self.res.get, PVC, namespace, backup)
        job_name = snapshotnames.copy_job("snapshot", name)
        job, messages = await self._copy_job(namespace, job_name)
        d = snapshot_logic.decide_snapshot(snap, vm, vmi, storage, backups, job, messages, self.config.image,
                                           timeutil.now())
        if (d.status or snap.get("status") or {}).get("phase") in snapshot_logic.FINAL:
            self.snapshot_storage.pop((namespace, name), None)
        else:
            self.snapshot_storage[(namespace, name)] = (uid, storage)
        await self._carry_out(VIRTUAL_MACHINE_SNAPSHOT, snap, vmi, d, job_name)
        return d.requeue_after

    async def sync_restore(self, namespace: str, name: str) -> float | None:
        restore = self._one("restore_index", (namespace, name))
        if restore is None or restore["metadata"].get("deletionTimestamp"):
            return None
        spec = restore.get("spec") or {}
        target = (spec.get("target") or {}).get("name", "")
        snap = await self._call(self.res.get, VIRTUAL_MACHINE_SNAPSHOT, namespace,
                                spec.get("virtualMachineSnapshotName", ""))
        vm = self._one("vm_index", (namespace, target))
        vmi = await self._call(self.res.get, VIRTUAL_MACHINE_INSTANCE, namespace, target)  # fresh: it must be gone
        claims: dict[str, dict[str, Any] | None] = {}
        if not snapshot_logic.restore_done(restore):
            for backup in ((snap or {}).get("status") or {}).get("volumeBackups") or []:
                for claim in ((backup.get("persistentVolumeClaim") or {}).get("name"), backup.get("backupClaimName")):
                    if claim and claim not in claims:
                        claims[claim] = await self._call(self.res.get, PVC, namespace, claim)
        job_name = snapshotnames.copy_job("restore", name)
        job, messages = await self._copy_job(namespace, job_name)
        d = snapshot_logic.decide_restore(restore, snap, vm, vmi, claims, job, messages, self.config.image,
                                          timeutil.now())
        await self._carry_out(VIRTUAL_MACHINE_RESTORE, restore, None, d, job_name)
        if d.status.get("complete") or snapshot_logic.restore_done({"status": d.status}):
            self.queue.add(("vm", namespace, target))
        return d.requeue_after

    # -- live migration (decisions in migration.py) -----------------------------------
    async def migration_config(self, fresh: bool = False) -> migration_logic.Config:
        """The cluster's migration setting; `fresh` (a migration about to start) reads it now, so a change
        applies to the next migration without waiting out the cache."""
        if not fresh and self.migration_cache and time.monotonic() - self.migration_cache[0] < CONFIG_TTL:
            return self.migration_cache[1]
        cm = await self._call(self.res.get, CONFIG_MAP, self.namespace, migration_logic.CONFIG_MAP)
        cfg = migration_logic.Config.from_data((cm or {}).get("data"))
        self.migration_cache = (time.monotonic(), cfg)
        return cfg

    def _busy(self, migration: dict[str, Any], node: str | None) -> tuple[int, int]:
        """Migrations under way (past Pending) other than this one: in the cluster, and leaving `node`."""
        cluster = outbound = 0
        uid = migration["metadata"]["uid"]
        for store in self.indexes.get("vmim_index", {}).values():
            for body in store:
                phase = (body.get("status") or {}).get("phase") or ""
                if body["metadata"]["uid"] == uid or phase in ("", "Pending", *migration_logic.FINAL):
                    continue
                cluster += 1
                source = ((body.get("status") or {}).get("migrationState") or {}).get("sourceNode")
                outbound += int(bool(node) and source == node)
        return cluster, outbound

    async def sync_migration(self, namespace: str, name: str) -> float | None:
        migration = self._one("vmim_index", (namespace, name))
        if migration is None:
            return None
        vmi_name = (migration.get("spec") or {}).get("vmiName", "")
        vmi = self._vmi(namespace, vmi_name)
        pods = self._all("pod_index", (namespace, vmi_name))
        cfg = await self.migration_config(fresh=(migration.get("status") or {}).get("phase") in (None, "", "Pending"))
        node = ((vmi or {}).get("status") or {}).get("nodeName")
        d = migration_logic.decide(migration, vmi, pods, cfg, self._busy(migration, node), timeutil.now())
        meta = migration["metadata"]
        if d.add_finalizer:
            meta["finalizers"] = [*(meta.get("finalizers") or []), migration_logic.FINALIZER]
            await self._patch_migration(migration, {"metadata": {"finalizers": meta["finalizers"]}})
        if d.create_target_pod and vmi is not None:
            state = (d.vmi_status or {}).get("migrationState") or {}
            pod = template.migration_target_pod(vmi, self.config, state["targetPod"], meta["uid"],
                                                state["sourceNode"], migration["spec"].get("addedNodeSelector"),
                                                post_copy=bool(state["migrationConfiguration"]["allowPostCopy"]))
            try:
                await self._call(self.res.create, POD, pod, FIELD_MANAGER)
                log.info("vmi=%s/%s event=migration-target-pod-created migration=%s pod=%s", namespace, vmi_name,
                         name, pod["metadata"]["name"])
            except KubeError as exc:
                if exc.status != 409:
                    raise
        if vmi is not None and d.vmi_status:
            written = await self._patch(vmi, {"status": d.vmi_status}, subresource="status")
            if written is None:
                return 0.5  # the VMI changed meanwhile: decide again from its new version
            vmi = written
        for pod_name in d.delete_pods:
            try:
                await self._call(self.res.delete, POD, namespace, pod_name, grace_period=0)
                log.info("vmi=%s/%s event=migration-target-pod-deleted migration=%s pod=%s", namespace, vmi_name,
                         name, pod_name)
            except KubeError as exc:
                if exc.status != 404:
                    raise
        await self._write_migration_status(migration, vmi, d)
        if d.labels:
            await self._patch_migration(migration, {"metadata": {"labels": d.labels}})
        if d.remove_finalizer:
            kept = [f for f in meta.get("finalizers") or [] if f != migration_logic.FINALIZER]
            await self._patch_migration(migration, {"metadata": {"finalizers": kept}})
        for etype, reason, message in d.events:
            target = vmi or migration
            await events.post(self.res, target, etype, reason, f"migration {name}: {message}", FIELD_MANAGER)
        if d.phase:
            log.info("vmi=%s/%s event=migration-phase migration=%s phase=%s message=%r", namespace, vmi_name, name,
                     d.phase, d.message)
        return d.requeue_after

    async def _write_migration_status(self, migration: dict[str, Any], vmi: dict[str, Any] | None,
                                      d: migration_logic.Decision) -> None:
        status = migration.get("status") or {}
        patch: dict[str, Any] = {}
        if d.phase and d.phase != status.get("phase"):
            patch["phase"] = d.phase
            stamps = list(status.get("phaseTransitionTimestamps") or [])[-15:]
            patch["phaseTransitionTimestamps"] = [*stamps, {"phase": d.phase,
                                                            "phaseTransitionTimestamp": timeutil.stamp_precise()}]
        if d.phase == "Failed" or d.message:
            cond = conditions.condition("Failed" if d.phase == "Failed" else "Pending", True,
                                        "MigrationFailed" if d.phase == "Failed" else "Waiting", d.message)
            merged = conditions.put(status.get("conditions"), cond)
            if not conditions.same(status.get("conditions"), merged):
                patch["conditions"] = merged
        state = ((vmi or {}).get("status") or {}).get("migrationState") or {}
        if state.get("migrationUid") == migration["metadata"]["uid"] and state != status.get("migrationState"):
            patch["migrationState"] = {**dict.fromkeys(status.get("migrationState") or {}), **state}
        if patch:
            await self._patch_migration(migration, {"status": patch}, subresource="status")

    async def _patch_migration(self, migration: dict[str, Any], patch: dict[str, Any],
                               subresource: str | None = None) -> None:
        meta = migration["metadata"]
        try:
            await self._call(self.res.merge_patch, VIRTUAL_MACHINE_INSTANCE_MIGRATION, meta["namespace"],
                             meta["name"], patch, subresource=subresource, field_manager=FIELD_MANAGER)
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def evacuate(self, vmi: dict[str, Any]) -> None:
        """The VMI was asked to leave its node (an eviction of its pod): start its migration, one per node it is
        asked to leave; a failed one is replaced after a pause (the drain keeps asking meanwhile)."""
        meta, status = vmi["metadata"], vmi.get("status") or {}
        digest = hashlib.sha256(f"{meta['uid']}/{status.get('evacuationNodeName')}".encode()).hexdigest()[:6]
        name = f"kvtool-evacuation-{meta['name'][:36]}-{digest}"
        existing = self._one("vmim_index", (meta["namespace"], name))
        if existing is not None:
            phase = (existing.get("status") or {}).get("phase")
            if phase != "Failed":
                return
            ended = timeutil.parse(((existing.get("status") or {}).get("migrationState") or {}).get("endTimestamp"))
            if ended and (timeutil.now() - ended).total_seconds() < EVACUATION_RETRY:
                self.queue.add_after(("vmi", meta["namespace"], meta["name"]), EVACUATION_RETRY)
                return
            await self._call(self.res.delete, VIRTUAL_MACHINE_INSTANCE_MIGRATION, meta["namespace"], name)
            return  # its deletion's event brings the next sync, which makes a new one
        body = {"apiVersion": VIRTUAL_MACHINE_INSTANCE_MIGRATION.api_version,
                "kind": VIRTUAL_MACHINE_INSTANCE_MIGRATION.kind,
                "metadata": {"name": name, "namespace": meta["namespace"],
                             "labels": {"kvtool.io/evacuation": "true"}},
                "spec": {"vmiName": meta["name"]}}
        try:
            await self._call(self.res.create, VIRTUAL_MACHINE_INSTANCE_MIGRATION, body, FIELD_MANAGER)
            log.info("vmi=%s/%s event=evacuation node=%s migration=%s", meta["namespace"], meta["name"],
                     status.get("evacuationNodeName"), name)
        except KubeError as exc:
            if exc.status != 409:
                raise

    async def live_migratable(self, vmi: dict[str, Any]) -> None:
        """Say once, on a running VMI, whether it can be live-migrated and if not why (LiveMigratable). Most VMIs
        have it from the write that placed them on their node (`_migratable_status`); this covers the others."""
        status = vmi.get("status") or {}
        if status.get("phase") != "Running" or conditions.get(vmi, migration_logic.LIVE_MIGRATABLE) is not None:
            return
        await self._patch(vmi, {"status": await self._migratable(vmi, status.get("conditions"))},
                          subresource="status")

    async def _migratable_status(self, vmi: dict[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        """LiveMigratable and migrationMethod to add to the status write that places the VMI on its node (one
        write, not a second one once it runs), or nothing: written already, or the VMI is not placed yet."""
        placed = status.get("nodeName") or status.get("phase") in ("Scheduled", "Running")
        if not placed or conditions.get(vmi, migration_logic.LIVE_MIGRATABLE) is not None:
            return {}
        return await self._migratable(vmi, status.get("conditions") or (vmi.get("status") or {}).get("conditions"))

    async def _migratable(self, vmi: dict[str, Any], current: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The status fields that say whether the VMI can be live-migrated: `current` conditions with
        LiveMigratable set, and migrationMethod."""
        spec = vmi.get("spec") or {}
        claims, volumes = await self._claim_storage(vmi)
        cond = migration_logic.migratable(spec, claims, volumes)
        return {"conditions": conditions.put(current, cond),
                "migrationMethod": migration_logic.migration_method(spec, claims, volumes)}

    async def _claim_storage(self, vmi: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The VMI's claims (claim name -> claim, None: not found) and the volumes bound to them (PV name ->
        PV): GETs, as there is no claim cache; what migration and failover decide whether a disk can move on."""
        ns = vmi["metadata"]["namespace"]
        claims = {claim: await self._call(self.res.get, PVC, ns, claim)
                  for _volume, claim in claim_volumes(vmi.get("spec") or {})}
        volumes = {}
        for pvc in claims.values():
            name = ((pvc or {}).get("spec") or {}).get("volumeName")
            if name and (pv := await self._call(self.res.get, PV, None, name)) is not None:
                volumes[name] = pv
        return claims, volumes

    # -- VMI -----------------------------------------------------------------
    async def sync_vmi(self, namespace: str, name: str) -> None:
        vmi = self._vmi(namespace, name)
        if vmi is None:
            return
        pods = self._all("pod_index", (namespace, name))
        node = (vmi.get("status") or {}).get("nodeName")
        node_ready = self._one_value("node_index", node) if node else None
        decision = vmi_logic.decide(vmi, pods, node_ready)
        if (decision.status or {}).get("reason") == vmi_logic.POD_VANISHED and await self._pods_exist(vmi):
            # The pod cache is behind the VMI (a pod just made, its event not here yet): failing the VMI on
            # that would be a decision a fresh read reverses. The pod's event brings the next sync.
            log.info("vmi=%s/%s event=pod-cache-behind", namespace, name)
            return
        if decision.create_pod:
            pod = template.launcher_pod(vmi, self.config, await self._claim_sizes(vmi))
            pod["metadata"]["name"] = vmi_logic.pod_name(vmi)
            pod["metadata"].pop("generateName", None)
            try:
                await self._call(self.res.create, POD, pod, FIELD_MANAGER)
                log.info("vmi=%s/%s event=pod-created pod=%s requests=%r", namespace, name, pod["metadata"]["name"],
                         template.pod_requests_summary(pod))
                metrics.PODS_CREATED.inc()
                if (conditions.get(vmi, "Failure") or {}).get("reason") == "FailedCreate":
                    current = (decision.status or {}).get("conditions") or (vmi.get("status") or {}).get("conditions")
                    decision.status = {**(decision.status or {}), "conditions": conditions.put(
                        current, conditions.condition("Failure", False))}
            except KubeError as exc:
                if exc.status == 409:
                    decision.status = None  # it exists: the pod's own event brings the next step
                elif exc.status == 422:
                    # Invalid: the pod built from this VMI, or a policy's verdict on it. The same pod would be
                    # refused again, so the VM stops with the reason (a spec change or `kvtool restart` retries).
                    decision.status = {"phase": "Failed", "reason": "PodRejected", "conditions": conditions.merge(
                        [], [conditions.condition("Failure", True, "PodRejected", exc.message)])}
                else:
                    # Forbidden (a quota, a webhook, RBAC: 403) or an API failure: those change without the VM
                    # changing. Say it where the user looks; the work queue retries with backoff.
                    failed = conditions.condition("Failure", True, "FailedCreate",
                                                  f"could not create the launcher pod (retrying): {exc.message}")
                    await self._patch(vmi, {"status": {"conditions": conditions.put(
                        (vmi.get("status") or {}).get("conditions"), failed)}}, subresource="status")
                    raise
        if decision.status:
            # The node's handler watches VMIs by status.nodeName: it sees this VMI from the write that names its
            # node on, and reads the status as written (no second write for it to meet: no 409 and GET per VMI).
            status = {**decision.status, **await self._migratable_status(vmi, decision.status)}
            vmi = await self._patch(vmi, {"status": status}, subresource="status") or vmi
        await self.live_migratable(vmi)
        if eviction.evacuation_pending(vmi):
            await self.evacuate(vmi)

    async def _pods_exist(self, vmi: dict[str, Any]) -> bool:
        """Whether the API server (not the cache) has a launcher pod of this VMI: one LIST, made only before
        failing a VMI for a vanished pod."""
        found, _ = await self._call(self.res.list, POD, vmi["metadata"]["namespace"],
                                    f"{VMI_UID_LABEL}={vmi['metadata']['uid']}")
        return bool(found)

    async def _claim_sizes(self, vmi: dict[str, Any]) -> dict[str, int]:
        """Volume -> bytes its claim asks for; one GET per claim, once per launcher pod (no claim cache)."""
        sizes = {}
        for volume, claim in claim_volumes(vmi.get("spec") or {}):
            pvc = await self._call(self.res.get, PVC, vmi["metadata"]["namespace"], claim)
            if (size := template.claim_size(pvc)) is not None:
                sizes[volume] = size
        return sizes

    def _one_value(self, index: str, key: Any) -> Any:
        store = self.indexes.get(index, {}).get(key)
        return next(iter(store)) if store else None

    async def _patch(self, vmi: dict[str, Any], patch: dict[str, Any],
                     subresource: str | None = None) -> dict[str, Any] | None:
        """The VMI as written, or None when it changed or went meanwhile (its event brings the next sync)."""
        meta = vmi["metadata"]
        patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": meta["resourceVersion"]}}
        try:
            written: dict[str, Any] = await self._call(
                self.res.merge_patch, VIRTUAL_MACHINE_INSTANCE, meta["namespace"], meta["name"], patch,
                subresource=subresource, field_manager=FIELD_MANAGER)
            self._remember("vmi_index", written)
            return written
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            log.debug("vmi=%s/%s event=stale-write status=%d", meta["namespace"], meta["name"], exc.status)
            return None

    # -- node loss: detect, fence, fail over (decisions in failover.py) ----------------
    async def failover_config(self) -> failover.Config:
        if self.failover_cache and time.monotonic() - self.failover_cache[0] < CONFIG_TTL:
            return self.failover_cache[1]
        cm = await self._call(self.res.get, CONFIG_MAP, self.namespace, failover.CONFIG_MAP)
        cfg = failover.Config.from_data((cm or {}).get("data"))
        self.failover_cache = (time.monotonic(), cfg)
        return cfg

    async def monitor_nodes(self) -> None:
        """Every node's heartbeats, checked each period once the watches filled the caches."""
        while True:
            await asyncio.sleep(NODE_CHECK_PERIOD)
            if "node_body_index" in self.indexes:
                try:
                    await self.check_nodes()
                except Exception as exc:  # the API was unreachable: the next pass tries again
                    log.warning("event=node-check-failed error=%r", str(exc))

    async def check_nodes(self) -> None:
        """One pass over every node; a node whose check fails is checked again next pass."""
        cfg = await self.failover_config()
        by_node: dict[str, list[dict[str, Any]]] = {}
        for store in self.indexes.get("vmi_index", {}).values():
            for held in store:
                if held.node:
                    by_node.setdefault(held.node, []).append(held.body())
        for name in list(self.indexes.get("node_body_index", {})):
            node = self._one("node_body_index", name)
            try:
                await self.check_node(name, node, by_node.get(name, []), cfg, timeutil.now())
            except Exception as exc:  # a resync: the next pass retries
                log.warning("node=%s event=check-failed error=%r", name, str(exc))

    async def check_node(self, name: str, node: dict[str, Any] | None, on_node: list[dict[str, Any]],
                         cfg: failover.Config, now: Any) -> None:
        """Judge one node by its heartbeats; fence it and fail its VMIs over when it is lost."""
        heartbeat = failover.last_heartbeat([self._one("lease_index", key) for key in self._lease_keys(name)])
        state = failover.fence_state(node)
        live = [v for v in on_node if (v.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not v["metadata"].get("deletionTimestamp")]
        if not failover.is_lost(heartbeat, cfg.grace, now):
            if state and failover.node_ready(node):
                await self._lift_fence(name, node or {}, on_node)
            for vmi in live:
                if conditions.is_true(vmi, failover.NODE_LOST):
                    await self._set_condition(vmi, conditions.condition(
                        failover.NODE_LOST, False, "HeartbeatResumed", f"node {name} is reporting again"))
            return
        if not live and not state:
            return  # nothing runs there: nothing to fence, nothing to tell
        vms = {id(v): self._one("vm_index", (v["metadata"]["namespace"], v["metadata"]["name"])) for v in live}
        if cfg.fences and state != "Fenced" and any(not failover.opted_out(vms[id(v)]) for v in live):
            if not state and not await self._lost_on_fresh_read(name, cfg):
                return  # the watch had not yet brought the heartbeat that says the node is back
            state = await self._fence(name, node or {}, cfg)
        message = ((node or {}).get("metadata", {}).get("annotations") or {}).get(
            failover.FENCE_MESSAGE_ANNOTATION, "")
        for vmi in live:
            vm = vms[id(vmi)]
            lost = failover.lost_condition(name, heartbeat, cfg, state, message, failover.opted_out(vm))
            if state == "Fenced":
                blocked = None if failover.opted_out(vm) else await self._node_local_disk(vmi, name)
                await self._patch(vmi, {"status": failover.fenced_status(vmi, lost, blocked)}, subresource="status")
                log.info("vmi=%s/%s event=failed-over reason=NodeFenced node=%s blocked=%s",
                         vmi["metadata"]["namespace"], vmi["metadata"]["name"], name, bool(blocked))
                metrics.SYNCS.labels(kind="failover", result="fenced").inc()
                for pod in vmi_logic.launcher_pods(vmi, self._all("pod_index", (vmi["metadata"]["namespace"],
                                                                               vmi["metadata"]["name"]))):
                    # The node is off: nothing will ever finish this pod, and it holds the VMI's deletion.
                    await self._call(self.res.delete, POD, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                     grace_period=0)
            elif await self._set_condition(vmi, lost):
                log.warning("vmi=%s/%s event=node-lost node=%s reason=%s", vmi["metadata"]["namespace"],
                            vmi["metadata"]["name"], name, lost["reason"])

    def _lease_keys(self, node: str) -> list[tuple[str, str]]:
        """(namespace, name) of a node's two heartbeats: the kubelet's Node Lease and its handler's."""
        return [(failover.NODE_LEASE_NAMESPACE, node), (self.namespace, failover.HANDLER_LEASE_PREFIX + node)]

    async def _lost_on_fresh_read(self, node: str, cfg: failover.Config) -> bool:
        """Whether the node is still lost by its heartbeats as the API has them now, not as the watch cache
        had them: the cache may lag, and powering off a node that has come back is not undone."""
        leases = [await self._call(self.res.get, LEASE, ns, name) for ns, name in self._lease_keys(node)]
        lost = failover.is_lost(failover.last_heartbeat(leases), cfg.grace, timeutil.now())
        if not lost:
            log.info("node=%s event=fence-skipped reason=HeartbeatOnFreshRead", node)
        return lost

    async def _node_local_disk(self, vmi: dict[str, Any], node: str) -> str | None:
        claims, volumes = await self._claim_storage(vmi)
        return failover.node_local_disk(vmi, claims, volumes, node)

    async def _annotate_node(self, name: str, annotations: dict[str, str | None],
                             taints: list[dict[str, Any]] | None = None) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
        if taints is not None:
            patch["spec"] = {"taints": taints}
        await self._call(self.res.merge_patch, NODE, None, name, patch, field_manager=FIELD_MANAGER)

    async def _fence(self, name: str, node: dict[str, Any], cfg: failover.Config) -> str:
        """One step of fencing a lost node: "Fenced" once the agent proved it off, "Fencing" while a fence
        Job runs, "FenceFailed" (retried with backoff) when the agent could not."""
        state = failover.fence_state(node)
        if cfg.fence_agent == "job" and state == "Fencing":
            return await self._follow_fence_job(name, node, cfg)
        next_try, _backoff = self.fence_retry.get(name, (0.0, NODE_CHECK_PERIOD))
        if time.monotonic() < next_try:
            return state or "Fencing"
        await self._annotate_node(name, {failover.FENCE_STATE_ANNOTATION: "Fencing",
                                         failover.FENCE_MESSAGE_ANNOTATION: f"agent {cfg.fence_agent} started"})
        log.warning("node=%s event=fencing agent=%s", name, cfg.fence_agent)
        if cfg.fence_agent == "job":
            job = fence.job_manifest(name, cfg.fence_job, self.namespace)
            try:
                await self._call(self.res.create, JOB, job, FIELD_MANAGER)
            except KubeError as exc:
                if exc.status != 409:
                    return await self._fence_failed(name, cfg, f"could not create the fence Job: {exc.message}")
            return "Fencing"
        try:
            secret = await self._call(self.res.get, SECRET, self.namespace, failover.EMBEDDED_SECRET)
            message = await asyncio.to_thread(fence.embedded, name, secret)
        except fence.FenceError as exc:
            return await self._fence_failed(name, cfg, str(exc))
        return await self._fenced(name, node, cfg, message)

    async def _follow_fence_job(self, name: str, node: dict[str, Any], cfg: failover.Config) -> str:
        job = await self._call(self.res.get, JOB, self.namespace, fence.job_name(name))
        if job is None:  # deleted meanwhile: start again
            await self._annotate_node(name, {failover.FENCE_STATE_ANNOTATION: "FenceFailed",
                                             failover.FENCE_MESSAGE_ANNOTATION: "the fence Job disappeared"})
            return "FenceFailed"
        outcome = fence.job_outcome(job)
        if outcome is None:
            return "Fencing"
        await self._call(self.res.delete, JOB, self.namespace, fence.job_name(name))
        fenced, message = outcome
        if not fenced:
            return await self._fence_failed(name, cfg, message)
        return await self._fenced(name, node, cfg, message)

    async def _fence_failed(self, name: str, cfg: failover.Config, error: str) -> str:
        _, backoff = self.fence_retry.get(name, (0.0, NODE_CHECK_PERIOD))
        self.fence_retry[name] = (time.monotonic() + backoff, min(backoff * 2, FENCE_RETRY_MAX))
        await self._annotate_node(name, {failover.FENCE_STATE_ANNOTATION: "FenceFailed",
                                         failover.FENCE_MESSAGE_ANNOTATION: error[:1000]})
        log.error("node=%s event=fence-failed agent=%s error=%r retry_in=%.0fs", name, cfg.fence_agent, error,
                  backoff)
        return "FenceFailed"

    async def _fenced(self, name: str, node: dict[str, Any], cfg: failover.Config, message: str) -> str:
        self.fence_retry.pop(name, None)
        taints = failover.without_out_of_service(node)
        # Kubernetes' own signal that the node is off: it force-deletes the node's other pods and detaches volumes.
        await self._annotate_node(name, {failover.FENCE_STATE_ANNOTATION: "Fenced",
                                         failover.FENCE_MESSAGE_ANNOTATION: message,
                                         failover.FENCED_AT_ANNOTATION: timeutil.stamp_precise()},
                                  taints=[*taints, failover.OUT_OF_SERVICE])
        log.warning("node=%s event=fenced agent=%s detail=%r", name, cfg.fence_agent, message)
        if node.get("metadata"):
            await events.post(self.res, {"apiVersion": "v1", "kind": "Node", **node}, "Warning", "NodeFenced",
                              f"fenced by agent {cfg.fence_agent}: {message}", FIELD_MANAGER)
        return "Fenced"

    async def _lift_fence(self, name: str, node: dict[str, Any], on_node: list[dict[str, Any]]) -> None:
        """The node is back (heartbeats and Ready): it takes pods again, and VMs held for its disks start."""
        taints = failover.without_out_of_service(node)
        await self._annotate_node(name, dict.fromkeys(failover.FENCE_ANNOTATIONS), taints=taints)
        self.fence_retry.pop(name, None)
        log.info("node=%s event=fence-lifted", name)
        for vmi in on_node:
            if conditions.is_true(vmi, failover.BLOCKED):
                await self._set_condition(vmi, conditions.condition(
                    failover.BLOCKED, False, "NodeReturned", f"node {name} is back: the VM starts again with its disk"))

    async def _set_condition(self, vmi: dict[str, Any], cond: dict[str, Any]) -> bool:
        """Write one condition of a VMI's status unless it already says exactly that; whether it wrote."""
        if (conds := failover.with_condition(vmi, cond)) is None:
            return False
        await self._patch(vmi, {"status": {"conditions": conds}}, subresource="status")
        return True


class _NamesIn:
    """The VM names of one namespace, as the VM cache (keyed by (namespace, name)) has them."""

    def __init__(self, index: Mapping[Any, Any], namespace: str) -> None:
        self.index, self.namespace = index, namespace

    def __contains__(self, name: object) -> bool:
        return (self.namespace, name) in self.index


def _version(obj: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number (etcd's revision; as client-go's MutationCache compares them).
    One that is not a number counts as the oldest: the cache's copy wins."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _caught_up(cached: Held, written: Held) -> bool:
    """Whether the cache's copy supersedes the one this controller wrote: as new or newer, or another object of
    the same name (the written one went). The cache wins a tie."""
    return cached.uid != written.uid or cached.version >= written.version


def _owned_by(vmi: dict[str, Any], vm: dict[str, Any]) -> bool:
    return any(r.get("uid") == vm["metadata"]["uid"] for r in vmi["metadata"].get("ownerReferences") or [])


def build_registry(ctl: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        kopfbase.configure(settings, "kvtool-controller")
        settings.watching.label_selectors["v1", "pods"] = f"{LAUNCHER_LABEL_KEY}={LAUNCHER_LABEL_VALUE}"

    # kopf calls handlers with keyword arguments only, and types `namespace` as `str | None` (None for
    # cluster-scoped kinds); the signatures below match its IndexingFn / WatchingFn protocols.
    @kopf.index(*VM_R, id="vm_index", registry=registry)
    def vm_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): ctl.indexed("vm_index", body)}

    @kopf.index(*VMI_R, id="vmi_index", registry=registry)
    def vmi_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): ctl.indexed("vmi_index", body)}

    @kopf.index("v1", "pods", labels=LAUNCHER, id="pod_index", registry=registry)
    def pod_index(*, namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels.get("kvtool.io/vmi", "")): launcher_pod_view(body)}

    @kopf.index("v1", "nodes", id="node_index", registry=registry)
    def node_index(*, name: str, status: Mapping[str, Any], **_: Any) -> dict[Any, Any]:
        ready = next((c.get("status") == "True" for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                     False)
        return {name: ready}

    @kopf.index("v1", "nodes", id="node_body_index", registry=registry)
    def node_body_index(*, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {name: slim(body)}

    @kopf.index("coordination.k8s.io", "v1", "leases", id="lease_index", registry=registry)
    def lease_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        # Heartbeats only: kubelets' Node Leases and the handlers' own.
        if namespace == failover.NODE_LEASE_NAMESPACE or name.startswith(failover.HANDLER_LEASE_PREFIX):
            return {(namespace, name): slim(body)}
        return {}

    @kopf.index(*VMIM_R, id="vmim_index", registry=registry)
    def vmim_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): slim(body)}

    @kopf.index(*VMIM_R, id="vmim_by_vmi", registry=registry)
    def vmim_by_vmi(*, namespace: str | None, spec: Mapping[str, Any], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, spec.get("vmiName", "")): {"metadata": {"name": body["metadata"]["name"]}}}

    @kopf.index(*VM_R, id="vm_by_pool", registry=registry)
    def vm_by_pool(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        owners = [r["name"] for r in body.get("metadata", {}).get("ownerReferences") or []
                  if r.get("kind") == VIRTUAL_MACHINE_POOL.kind]
        return {(namespace, owner): body["metadata"]["name"] for owner in owners}  # the VM itself: vm_index

    @kopf.index(*POOL_R, id="pool_index", registry=registry)
    def pool_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): slim(body)}

    @kopf.index(*SNAPSHOT_R, id="snapshot_index", registry=registry)
    def snapshot_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): slim(body)}

    @kopf.index(*SNAPSHOT_R, id="snapshot_by_vm", registry=registry)
    def snapshot_by_vm(*, namespace: str | None, spec: Mapping[str, Any], body: kopf.Body,
                       **_: Any) -> dict[Any, Any]:
        return {(namespace, (spec.get("source") or {}).get("name", "")): slim(body)}

    @kopf.index(*RESTORE_R, id="restore_index", registry=registry)
    def restore_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): slim(body)}

    @kopf.index(*RESTORE_R, id="restore_by_vm", registry=registry)
    def restore_by_vm(*, namespace: str | None, spec: Mapping[str, Any], body: kopf.Body,
                      **_: Any) -> dict[Any, Any]:
        return {(namespace, (spec.get("target") or {}).get("name", "")): slim(body)}

    indexes = ("vm_index", "vmi_index", "pod_index", "node_index", "node_body_index", "lease_index", "vmim_index",
               "vmim_by_vmi", "pool_index", "vm_by_pool", "snapshot_index", "snapshot_by_vm", "restore_index",
               "restore_by_vm")

    def remember(kwargs: Mapping[str, Any]) -> None:
        ctl.indexes = {k: kwargs[k] for k in indexes}

    @kopf.on.startup(registry=registry)
    async def start_workers(**_: Any) -> None:
        # Every API call runs in a thread (the client is synchronous); asyncio's default pool has cpu+4 threads,
        # which capped the controller at ~13 VMs/s at 1000 VMs while it waited on the apiserver, not the CPU.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="api"))
        # The handlers' migration TLS material: made once per cluster (by whichever controller gets here first).
        try:
            await asyncio.to_thread(migrationtls.ensure, ctl.res, ctl.namespace, FIELD_MANAGER)
        except KubeError as exc:
            log.error("event=migration-tls-failed error=%r (live migration cannot start until it exists)",
                      exc.message)
        ctl.queue.start()
        ctl.monitor = asyncio.get_running_loop().create_task(ctl.monitor_nodes(), name="node-monitor")

    @kopf.on.cleanup(registry=registry)
    async def stop_workers(**_: Any) -> None:
        if ctl.monitor is not None:
            ctl.monitor.cancel()
        await ctl.queue.stop()

    @kopf.on.event(*VM_R, registry=registry)
    async def on_vm(*, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is None:  # never: VirtualMachines are namespaced
            return
        ctl.queue.add(("vm", namespace, name))
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("kind") == VIRTUAL_MACHINE_POOL.kind:
                ctl.queue.add(("pool", namespace, ref["name"]))

    @kopf.on.event(*POOL_R, registry=registry)
    async def on_pool(*, namespace: str | None, name: str, **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is not None:
            ctl.queue.add(("pool", namespace, name))

    @kopf.on.event(*SNAPSHOT_R, registry=registry)
    async def on_snapshot(*, namespace: str | None, name: str, spec: Mapping[str, Any], **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is not None:
            ctl.queue.add(("snapshot", namespace, name))
            ctl.queue.add(("vm", namespace, (spec.get("source") or {}).get("name", "")))

    @kopf.on.event(*RESTORE_R, registry=registry)
    async def on_restore(*, namespace: str | None, name: str, spec: Mapping[str, Any], **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is not None:
            ctl.queue.add(("restore", namespace, name))
            ctl.queue.add(("vm", namespace, (spec.get("target") or {}).get("name", "")))

    @kopf.on.event("batch", "v1", "jobs", labels={SNAPSHOT_LABEL: kopf.PRESENT}, registry=registry)
    async def on_snapshot_job(*, namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is not None:
            ctl.queue.add(("snapshot", namespace, labels[SNAPSHOT_LABEL]))

    @kopf.on.event("batch", "v1", "jobs", labels={RESTORE_LABEL: kopf.PRESENT}, registry=registry)
    async def on_restore_job(*, namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is not None:
            ctl.queue.add(("restore", namespace, labels[RESTORE_LABEL]))

    @kopf.on.event(*VMI_R, registry=registry)
    async def on_vmi(*, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is None:  # never: VirtualMachineInstances are namespaced
            return
        ctl.queue.add(("vmi", namespace, name))
        ctl.enqueue_migrations(namespace, name)
        # A snapshot waits for its VMI to pause, a restore for it to go.
        for b in kwargs["snapshot_by_vm"].get((namespace, name), []):
            ctl.queue.add(("snapshot", namespace, b["metadata"]["name"]))
        for b in kwargs["restore_by_vm"].get((namespace, name), []):
            ctl.queue.add(("restore", namespace, b["metadata"]["name"]))
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("kind") == "VirtualMachine":
                ctl.queue.add(("vm", namespace, ref["name"]))

    @kopf.on.event(*VMIM_R, registry=registry)
    async def on_vmim(*, namespace: str | None, name: str, **kwargs: Any) -> None:
        remember(kwargs)
        if namespace is not None:
            ctl.queue.add(("vmim", namespace, name))

    @kopf.on.event("v1", "pods", labels=LAUNCHER, registry=registry)
    async def on_pod(*, namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        remember(kwargs)
        vmi_name = labels.get("kvtool.io/vmi")
        if vmi_name and namespace is not None:  # (pods are namespaced: never None)
            ctl.enqueue_vm(namespace, vmi_name)

    @kopf.on.event("v1", "nodes", registry=registry)
    async def on_node(*, name: str, **kwargs: Any) -> None:
        remember(kwargs)
        for (ns, vmi_name), store in list(kwargs["vmi_index"].items()):
            if any(held.node == name for held in store):
                ctl.enqueue_vm(ns, vmi_name)

    kopf.on.login(registry=registry)(kopfbase.login)
    return registry
