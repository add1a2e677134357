"""The handler as a kopf operator: VMIs labelled with this node (filtered server-side) → workers."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf

from kvtool.api import timeutil
from kvtool.api.types import VIRTUAL_MACHINE_INSTANCE
from kvtool.handler import heartbeat
from kvtool.handler import migration as migration_mod
from kvtool.handler import status as status_mod
from kvtool.handler.worker import VMIWorker
from kvtool.kube import kopfbase
from kvtool.kube.resources import KubeError, Resources
from kvtool.kube.workqueue import WorkQueue

log = logging.getLogger("kvtool.handler")

FIELD_MANAGER = "kvtool-handler"
RETRY_AFTER, RETRY_MAX = 2.0, 60.0  # a stopped worker's restart: 2 s, doubling per failure in a row
RESYNC = 300.0  # every cached VMI is processed again this often, so even a lost event heals
VMI_R = ("kvtool.io", "v1alpha1", "virtualmachineinstances")
VMIM_R = ("kvtool.io", "v1alpha1", "virtualmachineinstancemigrations")
TARGET_NODE_LABEL = "kvtool.io/migrationTargetNodeName"  # the controller's mark on a migration, once scheduled


class WorkerEnded(Exception):
    """A VMI's worker stopped by itself while the VMI still runs here: retried by the queue with backoff."""


class Handler:
    """The node's VMIs: watch events only add keys to a rate-limited work queue (kvtool.kube.workqueue); one
    key at a time, `process` starts, restarts or stops that VMI's worker from the cached VMI."""

    def __init__(self, res: Resources, node: str, sockets_dir: Path, namespace: str = "kvtool-system",
                 address: str = "") -> None:
        self.res = res
        self.node = node
        self.sockets_dir = sockets_dir
        self.namespace = namespace  # where its heartbeat Lease lives
        self.migration = migration_mod.Support(res, node, address, sockets_dir, namespace)
        self.targets: dict[str, migration_mod.TargetWorker] = {}  # migration uid -> this node's target side
        self.heartbeat: asyncio.Task[None] | None = None
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.workers: dict[tuple[str, str], VMIWorker] = {}
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        # A worker that keeps ending is restarted after 2 s, 4 s, ... 60 s; its first status report resets that.
        self.queue: WorkQueue[tuple[str, str]] = WorkQueue(
            "handler", self.process, workers=2, base_delay=RETRY_AFTER, max_delay=RETRY_MAX, resync=RESYNC,
            keys=lambda: list(self.cache), forget_on_success=False)

    def on_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        status = body.get("status") or {}
        mine = status.get("nodeName") == self.node
        if event_type == "DELETED" or not mine:
            self.cache.pop(key, None)
        else:
            self.cache[key] = copy.deepcopy(dict(body))
        self.queue.add(key)

    async def process(self, key: tuple[str, str]) -> None:
        """Bring the VMI's worker in line with the cached VMI. Idempotent: a sync of a running domain is a
        no-op, so a resync or a repeated key costs nothing."""
        vmi = self.cache.get(key)
        worker = self.workers.get(key)
        if vmi is None:
            self.locks.pop(key, None)
            self.queue.forget(key)
            if worker is not None:
                self.workers.pop(key).stop()
            return
        status = vmi.get("status") or {}
        ended = status.get("phase") in ("Succeeded", "Failed") or bool(vmi["metadata"].get("deletionTimestamp"))
        pods = [uid for uid, node in (status.get("activePods") or {}).items() if node == self.node]
        if worker is not None:
            same_pod = worker.pod_uid in pods and not ended
            if worker.task is not None and worker.task.done():
                self.workers.pop(key)
                if same_pod:
                    raise WorkerEnded(f"worker ended: {worker.outcome or 'no reason given'}")
                worker = None
            elif not same_pod:
                self.workers.pop(key).stop()  # a new pod, or the end of the VMI
                worker = None
        if worker is None and pods and not ended:
            worker = VMIWorker(key, pods[0], self.sockets_dir, functools.partial(self.cache.get, key),
                               functools.partial(self.report, key), migration_mod.SourceSide(self.migration, key))
            self.workers[key] = worker
            worker.start()
            assert worker.task is not None

            def requeue(task: asyncio.Task[None]) -> None:
                if not task.cancelled():  # ended by itself: process() decides whether to restart it
                    self.queue.add(key)

            worker.task.add_done_callback(requeue)
        elif worker is not None:
            worker.poke()

    async def on_migration(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A migration whose target pod is on this node: run its target side while it is under way."""
        meta = body["metadata"]
        uid = meta["uid"]
        phase = (body.get("status") or {}).get("phase")
        active = event_type != "DELETED" and not meta.get("deletionTimestamp") and phase in (
            "Scheduled", "PreparingTarget", "TargetReady", "Running")
        if active and uid not in self.targets:
            vmi_name = (body.get("spec") or {}).get("vmiName", "")
            target = migration_mod.TargetWorker(self.migration, (meta["namespace"], vmi_name), uid,
                                                self.patch_migration_state)
            self.targets[uid] = target
            target.start()
            log.info("vmi=%s/%s event=migration-target migration=%s", meta["namespace"], vmi_name, uid)
        elif not active and uid in self.targets:
            await self.targets.pop(uid).stop()

    async def patch_migration_state(self, key: tuple[str, str], fields: dict[str, Any]) -> None:
        """The target side's part of status.migrationState (a merge patch: the source's keys stay)."""
        body = {"status": {"migrationState": fields}}
        await asyncio.to_thread(self.res.merge_patch, VIRTUAL_MACHINE_INSTANCE, key[0], key[1], body,
                                subresource="status", field_manager=FIELD_MANAGER)

    async def stop(self) -> None:
        await self.queue.stop()
        for worker in self.workers.values():
            worker.stop()
        for target in self.targets.values():
            await target.stop()
        if self.heartbeat is not None:
            self.heartbeat.cancel()

    async def report(self, key: tuple[str, str], domain: dict[str, Any], version: str | None) -> None:
        async with self.locks.setdefault(key, asyncio.Lock()):
            for _attempt in range(3):
                vmi = self.cache.get(key)
                if vmi is None or (vmi.get("status") or {}).get("nodeName") != self.node:
                    return  # only the handler of the VMI's node touches it
                patch = status_mod.status_patch(vmi, domain, version, timeutil.stamp_precise())
                if not patch:
                    return
                body = {"metadata": {"resourceVersion": vmi["metadata"]["resourceVersion"]}, "status": patch}
                try:
                    updated = await asyncio.to_thread(self.res.merge_patch, VIRTUAL_MACHINE_INSTANCE, key[0], key[1],
                                                      body, subresource="status", field_manager=FIELD_MANAGER)
                    self.cache[key] = updated
                    self.queue.forget(key)  # a worker that reports is healthy: its restart backoff starts over
                    log.info("vmi=%s/%s event=status phase=%s", key[0], key[1], updated.get("status", {}).get("phase"))
                    return
                except KubeError as exc:
                    if exc.status == 404:
                        return
                    if exc.status != 409:
                        raise
                    fresh = await asyncio.to_thread(self.res.get, VIRTUAL_MACHINE_INSTANCE, key[0], key[1])
                    if fresh is None:
                        return
                    self.cache[key] = fresh
            # Three writers in a row were faster. Not dropped: the worker ends, and the queue restarts it with
            # backoff; the new worker syncs the launcher again and reports afresh.
            log.warning("vmi=%s/%s event=status-write-retry reason=conflicts attempts=3 phase=%s", key[0], key[1],
                        domain.get("phase"))
            raise RuntimeError(f"status of {key[0]}/{key[1]} lost three write conflicts in a row")


def build_registry(handler: Handler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopfbase.configure(settings, "kvtool-handler")
        settings.watching.field_selectors[VMI_R[0], VMI_R[2]] = heartbeat.on_node(handler.node)
        settings.watching.label_selectors[VMIM_R[0], VMIM_R[2]] = f"{TARGET_NODE_LABEL}={handler.node}"
        # Before following any VMI: no domain that a live VMI does not claim survives a return of this node.
        destroyed = await asyncio.to_thread(heartbeat.sweep_leftovers, handler.res, handler.node,
                                            handler.sockets_dir)
        log.info("node=%s event=started leftovers_destroyed=%d", handler.node, len(destroyed))
        handler.heartbeat = asyncio.get_running_loop().create_task(
            heartbeat.beat(handler.res, handler.node, handler.namespace), name="heartbeat")
        handler.queue.start()

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await handler.stop()

    @kopf.on.event(*VMI_R, registry=registry)
    async def on_vmi(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:  # async: workers live in this loop
        handler.on_event(event.get("type"), body)

    @kopf.on.event(*VMIM_R, registry=registry)
    async def on_vmim(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
        await handler.on_migration(event.get("type"), body)

    kopf.on.login(registry=registry)(kopfbase.login)
    return registry
