"""The handler as a kopf operator: VMIs labelled with this node (filtered server-side) → workers."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf

from kvtool.api.types import VIRTUAL_MACHINE_INSTANCE
from kvtool.handler import heartbeat
from kvtool.handler import status as status_mod
from kvtool.handler.worker import VMIWorker
from kvtool.kube import kopfbase
from kvtool.kube.resources import KubeError, Resources

log = logging.getLogger("kvtool.handler")

FIELD_MANAGER = "kvtool-handler"
RETRY_AFTER, RETRY_MAX = 2.0, 60.0  # a stopped worker's restart: 2 s, doubling per failure in a row
NODE_LABEL = "kvtool.io/nodeName"
VMI_R = ("kvtool.io", "v1alpha1", "virtualmachineinstances")


def precise_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class Handler:
    def __init__(self, res: Resources, node: str, sockets_dir: Path, namespace: str = "kvtool-system") -> None:
        self.res = res
        self.node = node
        self.sockets_dir = sockets_dir
        self.namespace = namespace  # where its heartbeat Lease lives
        self.heartbeat: asyncio.Task[None] | None = None
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.workers: dict[tuple[str, str], VMIWorker] = {}
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.restarts: dict[tuple[str, str], int] = {}  # worker restarts in a row, per VMI (reset by a report)
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def on_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        vmi = copy.deepcopy(dict(body))
        status = vmi.get("status") or {}
        mine = (meta.get("labels") or {}).get(NODE_LABEL) == self.node and status.get("nodeName") == self.node
        if event_type == "DELETED" or not mine:
            self.cache.pop(key, None)
            self.restarts.pop(key, None)
            self.locks.pop(key, None)
            if (timer := self.timers.pop(key, None)) is not None:
                timer.cancel()
            worker = self.workers.pop(key, None)
            if worker:
                worker.stop()
            return
        self.cache[key] = vmi
        pods = [uid for uid, node in (status.get("activePods") or {}).items() if node == self.node]
        worker = self.workers.get(key)
        finished = worker is not None and (worker.task is None or worker.task.done())
        if worker and (worker.pod_uid not in pods or status.get("phase") in ("Succeeded", "Failed") or finished):
            # A new pod, the end of the VMI, or a worker that gave up: start over (sync is idempotent).
            worker.stop()
            self.workers.pop(key, None)
            worker = None
        if worker is None and pods and status.get("phase") not in ("Succeeded", "Failed") \
                and not meta.get("deletionTimestamp"):
            worker = VMIWorker(key, pods[0], self.sockets_dir, lambda k=key: self.cache.get(k),
                               lambda domain, version, k=key: self.report(k, domain, version))
            self.workers[key] = worker
            worker.start()
            assert worker.task is not None
            worker.task.add_done_callback(lambda _t, k=key, w=worker: self._worker_done(k, w))
        elif worker is not None:
            worker.poke()

    def _worker_done(self, key: tuple[str, str], worker: VMIWorker) -> None:
        """A worker that stopped while its VMI still runs here is started again after a pause: nothing
        else would, if no further event comes for that VMI."""
        if self.workers.get(key) is not worker or worker.task is None or worker.task.cancelled():
            return

        failures = self.restarts.get(key, 0)
        delay = min(RETRY_MAX, RETRY_AFTER * 2 ** failures)
        self.restarts[key] = failures + 1

        def again() -> None:
            self.timers.pop(key, None)
            vmi = self.cache.get(key)
            if vmi is not None and self.workers.get(key) is worker:
                log.info("vmi=%s/%s event=worker-restart attempt=%d after=%.0fs", *key, failures + 1, delay)
                self.on_event("MODIFIED", vmi)

        if (old := self.timers.pop(key, None)) is not None:
            old.cancel()
        self.timers[key] = asyncio.get_running_loop().call_later(delay, again)

    async def report(self, key: tuple[str, str], domain: dict[str, Any], version: str | None) -> None:
        async with self.locks.setdefault(key, asyncio.Lock()):
            for _attempt in range(3):
                vmi = self.cache.get(key)
                if vmi is None or (vmi.get("status") or {}).get("nodeName") != self.node:
                    return  # only the handler of the VMI's node touches it
                patch = status_mod.status_patch(vmi, domain, version, precise_now())
                if not patch:
                    return
                body = {"metadata": {"resourceVersion": vmi["metadata"]["resourceVersion"]}, "status": patch}
                try:
                    updated = await asyncio.to_thread(self.res.merge_patch, VIRTUAL_MACHINE_INSTANCE, key[0], key[1],
                                                      body, subresource="status", field_manager=FIELD_MANAGER)
                    self.cache[key] = updated
                    self.restarts.pop(key, None)  # a worker that reports is healthy: its backoff starts over
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
            # Three writers in a row were faster. Not dropped: the worker ends, and its restart (_worker_done)
            # syncs the launcher again and reports afresh.
            log.warning("vmi=%s/%s event=status-write-retry reason=conflicts attempts=3 phase=%s", key[0], key[1],
                        domain.get("phase"))
            raise RuntimeError(f"status of {key[0]}/{key[1]} lost three write conflicts in a row")


def build_registry(handler: Handler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopfbase.configure(settings, "kvtool-handler")
        settings.watching.label_selectors[VMI_R[0], VMI_R[2]] = f"{NODE_LABEL}={handler.node}"
        # Before following any VMI: no domain that a live VMI does not claim survives a return of this node.
        destroyed = await asyncio.to_thread(heartbeat.sweep_leftovers, handler.res, handler.node,
                                            handler.sockets_dir, NODE_LABEL)
        log.info("node=%s event=started leftovers_destroyed=%d", handler.node, len(destroyed))
        handler.heartbeat = asyncio.get_running_loop().create_task(
            heartbeat.beat(handler.res, handler.node, handler.namespace), name="heartbeat")

    @kopf.on.cleanup(registry=registry)
    async def stop_heartbeat(**_: Any) -> None:
        if handler.heartbeat is not None:
            handler.heartbeat.cancel()

    @kopf.on.event(*VMI_R, registry=registry)
    async def on_vmi(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:  # async: workers live in this loop
        handler.on_event(event.get("type"), body)

    kopf.on.login(registry=registry)(kopfbase.login)
    return registry
