"""The controller as a kopf operator: watches feed pure decisions (vm.py, vmi.py), results go to the API.

kopf does the watching, retries and per-object serialisation; its indexes are
the informer caches. A VM is synced whenever it, its VMI or its launcher pod
changes; a per-VM lock keeps those syncs from overlapping, and a delayed
requeue drives crash-loop backoff. Writes that lose a race (409) are dropped:
the next watch event brings fresh state and another sync.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kvtool.api.types import LAUNCHER_LABEL_KEY, LAUNCHER_LABEL_VALUE, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, Kind
from kvtool.controller import conditions, metrics, template
from kvtool.controller import vm as vm_logic
from kvtool.controller import vmi as vmi_logic
from kvtool.kube import kopfbase
from kvtool.kube.resources import KubeError, Resources

log = logging.getLogger("kvtool.controller")

FIELD_MANAGER = "kvtool-controller"
POD = Kind("v1", "Pod", "pods")
VM_R = ("kvtool.io", "v1alpha1", "virtualmachines")
VMI_R = ("kvtool.io", "v1alpha1", "virtualmachineinstances")
LAUNCHER = {LAUNCHER_LABEL_KEY: LAUNCHER_LABEL_VALUE}


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


class Controller:
    """State shared by the handlers: the API client, locks, pending requeues."""

    def __init__(self, res: Resources, config: template.LauncherConfig) -> None:
        self.res = res
        self.config = config
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.requeues: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.indexes: Mapping[str, Any] = {}

    # -- cache reads ---------------------------------------------------------
    def _one(self, index: str, key: Any) -> dict[str, Any] | None:
        store = self.indexes.get(index, {}).get(key)
        return plain(next(iter(store))) if store else None

    def _all(self, index: str, key: Any) -> list[dict[str, Any]]:
        return [plain(b) for b in self.indexes.get(index, {}).get(key, [])]

    # -- API writes (the `kubernetes` client is synchronous: run it in threads) ----
    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- VM ------------------------------------------------------------------
    async def sync_vm(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        async with self.locks.setdefault(key, asyncio.Lock()):
            vm = self._one("vm_index", key)
            if vm is None:
                return
            vmi = self._one("vmi_index", key)
            if vmi is not None and not _owned_by(vmi, vm):
                log.warning("vm=%s/%s event=foreign-vmi uid=%s", namespace, name, vmi["metadata"]["uid"])
                vmi = None
            decision = vm_logic.decide(vm, vmi)
            if decision.create_vmi:
                try:
                    created = await self._call(self.res.create, VIRTUAL_MACHINE_INSTANCE, vm_logic.vmi_for(vm),
                                               FIELD_MANAGER)
                    log.info("vm=%s/%s event=vmi-created uid=%s", namespace, name, created["metadata"]["uid"])
                    metrics.VMIS_CREATED.inc()
                    decision.status.update(created=True, printableStatus="Starting")
                except KubeError as exc:
                    if exc.status != 409:
                        raise
            if decision.delete_vmi:
                try:
                    await self._call(self.res.delete, VIRTUAL_MACHINE_INSTANCE, namespace, name,
                                     propagation="Foreground", uid=decision.delete_vmi)
                    log.info("vm=%s/%s event=vmi-deleted uid=%s", namespace, name, decision.delete_vmi)
                except KubeError as exc:
                    if exc.status not in (404, 409):
                        raise
            await self._write_vm_status(vm, decision.status)
            for etype, reason, message in decision.events:
                kopf.event(vm, type=etype, reason=reason, message=message)
            if decision.requeue_after is not None:
                self.requeue(namespace, name, decision.requeue_after)
            metrics.SYNCS.labels(kind="vm", result="ok").inc()

    async def _write_vm_status(self, vm: dict[str, Any], status: dict[str, Any]) -> None:
        current = vm.get("status") or {}
        status = dict(status)
        status["conditions"] = conditions.merge(current.get("conditions"), status["conditions"])
        unchanged = all(current.get(k) == v for k, v in status.items() if k != "conditions") and \
            conditions.same(current.get("conditions"), status["conditions"])
        if unchanged:
            return
        body = {"apiVersion": vm["apiVersion"], "kind": vm["kind"],
                "metadata": {"name": vm["metadata"]["name"], "namespace": vm["metadata"]["namespace"]},
                # None drops a field this manager owned (startFailure); [] must stay: it clears requests
                # another manager (kvtool start/stop) wrote.
                "status": {k: v for k, v in status.items() if v is not None}}
        try:
            await self._call(self.res.apply, VIRTUAL_MACHINE, body, subresource="status", force=True,
                             field_manager=FIELD_MANAGER, parse=False)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise

    def requeue(self, namespace: str, name: str, delay: float) -> None:
        key = (namespace, name)
        if (old := self.requeues.get(key)) is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.requeues[key] = loop.call_later(delay, lambda: loop.create_task(self.sync_vm(namespace, name)))

    # -- VMI -----------------------------------------------------------------
    async def sync_vmi(self, namespace: str, name: str) -> None:
        vmi = self._one("vmi_index", (namespace, name))
        if vmi is None:
            return
        pods = self._all("pod_index", (namespace, name))
        node = (vmi.get("status") or {}).get("nodeName")
        node_ready = self._one_value("node_index", node) if node else None
        decision = vmi_logic.decide(vmi, pods, node_ready)
        if decision.create_pod:
            pod = template.launcher_pod(vmi, self.config)
            pod["metadata"]["name"] = vmi_logic.pod_name(vmi)
            pod["metadata"].pop("generateName", None)
            try:
                await self._call(self.res.create, POD, pod, FIELD_MANAGER)
                log.info("vmi=%s/%s event=pod-created pod=%s requests=%r", namespace, name, pod["metadata"]["name"],
                         template.pod_requests_summary(pod))
                metrics.PODS_CREATED.inc()
            except KubeError as exc:
                if exc.status == 409:
                    decision.status = None  # it exists: the pod's own event brings the next step
                elif exc.status in (403, 422):
                    decision.status = {"phase": "Failed", "reason": "PodRejected", "conditions": conditions.merge(
                        [], [conditions.condition("Failure", True, "PodRejected", exc.message)])}
                else:
                    raise
        if decision.labels:
            await self._patch(vmi, {"metadata": {"labels": decision.labels}})
        if decision.status:
            await self._patch(vmi, {"status": decision.status}, subresource="status")

    def _one_value(self, index: str, key: Any) -> Any:
        store = self.indexes.get(index, {}).get(key)
        return next(iter(store)) if store else None

    async def _patch(self, vmi: dict[str, Any], patch: dict[str, Any], subresource: str | None = None) -> None:
        meta = vmi["metadata"]
        patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": meta["resourceVersion"]}}
        try:
            await self._call(self.res.merge_patch, VIRTUAL_MACHINE_INSTANCE, meta["namespace"], meta["name"], patch,
                             subresource=subresource, field_manager=FIELD_MANAGER)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            log.debug("vmi=%s/%s event=stale-write status=%d", meta["namespace"], meta["name"], exc.status)


def _owned_by(vmi: dict[str, Any], vm: dict[str, Any]) -> bool:
    return any(r.get("uid") == vm["metadata"]["uid"] for r in vmi["metadata"].get("ownerReferences") or [])


def build_registry(ctl: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopfbase.configure(settings, "kvtool-controller")
        settings.watching.label_selectors["v1", "pods"] = f"{LAUNCHER_LABEL_KEY}={LAUNCHER_LABEL_VALUE}"

    @kopf.index(*VM_R, id="vm_index", registry=registry)
    def vm_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): body}

    @kopf.index(*VMI_R, id="vmi_index", registry=registry)
    def vmi_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): body}

    @kopf.index("v1", "pods", labels=LAUNCHER, id="pod_index", registry=registry)
    def pod_index(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels.get("kvtool.io/vmi", "")): body}

    @kopf.index("v1", "nodes", id="node_index", registry=registry)
    def node_index(name: str, status: Mapping[str, Any], **_: Any) -> dict[Any, Any]:
        ready = next((c.get("status") == "True" for c in status.get("conditions") or [] if c.get("type") == "Ready"),
                     False)
        return {name: ready}

    def remember(kwargs: Mapping[str, Any]) -> None:
        ctl.indexes = {k: kwargs[k] for k in ("vm_index", "vmi_index", "pod_index", "node_index")}

    @kopf.on.event(*VM_R, registry=registry)
    async def on_vm(namespace: str, name: str, **kwargs: Any) -> None:
        remember(kwargs)
        await ctl.sync_vm(namespace, name)

    @kopf.on.event(*VMI_R, registry=registry)
    async def on_vmi(namespace: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
        remember(kwargs)
        await ctl.sync_vmi(namespace, name)
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("kind") == "VirtualMachine":
                await ctl.sync_vm(namespace, ref["name"])

    @kopf.on.event("v1", "pods", labels=LAUNCHER, registry=registry)
    async def on_pod(namespace: str, labels: Mapping[str, str], **kwargs: Any) -> None:
        remember(kwargs)
        vmi_name = labels.get("kvtool.io/vmi")
        if vmi_name:
            await ctl.sync_vmi(namespace, vmi_name)
            await ctl.sync_vm(namespace, vmi_name)

    @kopf.on.event("v1", "nodes", registry=registry)
    async def on_node(name: str, **kwargs: Any) -> None:
        remember(kwargs)
        for (ns, vmi_name), store in list(kwargs["vmi_index"].items()):
            if any((b.get("status") or {}).get("nodeName") == name for b in store):
                await ctl.sync_vmi(ns, vmi_name)
                await ctl.sync_vm(ns, vmi_name)

    kopf.on.login(registry=registry)(kopfbase.login)
    return registry
