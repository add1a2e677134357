"""The handler's two sides of a live migration (the controller decides; the launchers move the guest).

Source (this node runs the VMI): once the controller wrote the target's address and ports into
`status.migrationState`, open the source proxy and tell the launcher to migrate; ask it to abort when
`abortRequested` appears. Target (this node runs the migration's target pod): prepare the target
launcher, open the TLS listeners, and write their address and ports into `migrationState`, which is
what the controller waits for to call the target ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kvtool.api import timeutil
from kvtool.api.types import SECRET, VIRTUAL_MACHINE_INSTANCE
from kvtool.handler.migration_proxy import SourceProxy, TargetProxy
from kvtool.handler.watch import watch_launcher
from kvtool.kube import migrationtls
from kvtool.kube.resources import KubeError, Resources
from kvtool.launchercom.client import LauncherClient, LauncherError, LauncherUnavailable
from kvtool.launchercom.protocol import proxy_dir_name

log = logging.getLogger("kvtool.handler.migration")

LAUNCHER_WAIT = 120.0


def launcher_options(config: dict[str, Any] | None) -> dict[str, Any]:
    """migrationState.migrationConfiguration (KubeVirt's names) -> the launcher's migrate options."""
    config = config or {}
    options: dict[str, Any] = {}
    for key in ("completionTimeoutPerGiB", "progressTimeout"):
        if isinstance(config.get(key), int):
            options[key] = config[key]
    for key in ("allowAutoConverge", "allowPostCopy"):
        if isinstance(config.get(key), bool):
            options[key] = config[key]
    if isinstance(config.get("bandwidthPerMigrationMiB"), int):
        options["bandwidthPerMigrationMiB"] = config["bandwidthPerMigrationMiB"]
    return options


class Support:
    """What both sides share: the node, its handler's address, the sockets dir and the TLS contexts."""

    def __init__(self, res: Resources, node: str, address: str, sockets_dir: Path, namespace: str) -> None:
        self.res = res
        self.node = node
        self.address = address
        self.sockets_dir = sockets_dir
        self.namespace = namespace
        self._contexts: Any = None

    async def contexts(self) -> Any:
        """(server, client) SSL contexts from the controller's Secret, loaded once."""
        if self._contexts is None:
            secret = await asyncio.to_thread(self.res.get, SECRET, self.namespace, migrationtls.SECRET_NAME)
            if secret is None:
                raise RuntimeError(f"Secret {self.namespace}/{migrationtls.SECRET_NAME} is missing: the controller "
                                   "makes it when it starts")
            self._contexts = migrationtls.contexts(migrationtls.material(secret))
        return self._contexts


class SourceSide:
    """The source half for one VMI worker: the proxy and the launcher's migrate/abort calls."""

    def __init__(self, support: Support, key: tuple[str, str]) -> None:
        self.support = support
        self.key = key
        self.proxy: SourceProxy | None = None
        self.started_uid = ""
        self.abort_sent = ""

    async def reconcile(self, vmi: dict[str, Any], domain: dict[str, Any],
                        client: LauncherClient) -> dict[str, Any] | None:
        """The launcher's new DomainStatus when this called it, else None."""
        state = (vmi.get("status") or {}).get("migrationState") or {}
        uid = state.get("migrationUid") or ""
        local = domain.get("migration") or {}
        running_here = bool(uid) and local.get("uid") == uid and local.get("state") == "Running"
        if running_here and (state.get("abortRequested") or state.get("failed")) and self.abort_sent != uid:
            # Cancelled (the migration was deleted), or failed by the controller (its target pod ended).
            self.abort_sent = uid
            try:
                why = state.get("failureReason") or "cancelled: the migration was deleted"
                return await asyncio.to_thread(client.migrate_abort, why)
            except LauncherError as exc:
                log.info("vmi=%s/%s event=abort-not-sent reason=%s detail=%r", *self.key, exc.reason, exc.message)
                return None
        mine = uid and state.get("sourceNode") == self.support.node and not state.get("completed") \
            and not state.get("failed")
        if self.proxy is not None and not running_here and (not mine or local.get("uid") == uid):
            await self.close()
        if not mine:
            return None
        if self.started_uid == uid or local.get("uid") == uid or state.get("abortRequested"):
            return None
        address, ports = state.get("targetNodeAddress"), state.get("targetDirectMigrationNodePorts")
        if not address or not ports:
            return None  # the target is not ready yet
        _server, client_ctx = await self.support.contexts()
        vmi_uid = vmi["metadata"]["uid"]
        self.proxy = SourceProxy(uid, self.support.sockets_dir / proxy_dir_name(vmi_uid), address, ports, client_ctx,
                                 migrationtls.PEER_NAME)
        await self.proxy.start()
        self.started_uid = uid
        log.info("vmi=%s/%s event=migration-start migration=%s target=%s", *self.key, uid, state.get("targetNode"))
        return await asyncio.to_thread(client.migrate, uid, proxy_dir_name(vmi_uid),
                                       launcher_options(state.get("migrationConfiguration")))

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None


class TargetWorker:
    """This node is a migration's target: prepare the target launcher, listen, report, follow, until it ends."""

    def __init__(self, support: Support, key: tuple[str, str], migration_uid: str,
                 patch: Callable[[tuple[str, str], dict[str, Any]], Awaitable[None]]) -> None:
        self.support = support
        self.key = key  # the VMI's (namespace, name)
        self.migration_uid = migration_uid
        self.patch = patch
        self.proxy: TargetProxy | None = None
        self.task: asyncio.Task[None] | None = None
        self.published = False  # the source may be sending: from here on, its outcome is the migration's

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"migration-target-{self.key[1]}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None

    async def run(self) -> None:
        ns, name = self.key
        try:
            vmi, pod_uid = await self._target_pod()
            socket = self.support.sockets_dir / f"{pod_uid}.sock"
            client = await self._connect(socket)
            started = time.monotonic()
            domain = await asyncio.to_thread(client.sync, vmi, None, True)
            log.info("vmi=%s/%s event=migration-target-prepared migration=%s seconds=%.2f", ns, name,
                     self.migration_uid, time.monotonic() - started)
            server_ctx, _client = await self.support.contexts()
            vmi_uid = vmi["metadata"]["uid"]
            proxy_dir = self.support.sockets_dir / proxy_dir_name(vmi_uid)
            self.proxy = TargetProxy(self.migration_uid, self.support.address, {
                "libvirt": self.support.sockets_dir / f"{pod_uid}.libvirt" / "libvirt-sock",
                "migration": proxy_dir / "migration.sock", "disks": proxy_dir / "disks.sock"}, server_ctx)
            ports = await self.proxy.start()
            await self.patch(self.key, {"migrationUid": self.migration_uid, "targetNodeAddress": self.support.address,
                                        "targetDirectMigrationNodePorts": ports})
            self.published = True
            async for domain in watch_launcher(socket, self.key):
                if domain.get("phase") == "Running":
                    await self.patch(self.key, {"migrationUid": self.migration_uid, "targetNodeDomainDetected": True,
                                                "targetNodeDomainReadyTimestamp": timeutil.stamp_precise()})
                    log.info("vmi=%s/%s event=migration-target-running migration=%s", ns, name, self.migration_uid)
                    return
                if domain.get("phase") == "Failed":
                    log.warning("vmi=%s/%s event=migration-target-failed migration=%s message=%r", ns, name,
                                self.migration_uid, domain.get("message"))
                    return
        except asyncio.CancelledError:
            raise
        except (LauncherError, KubeError, RuntimeError, OSError, ValueError) as exc:
            log.error("vmi=%s/%s event=migration-target-error migration=%s error=%r", ns, name, self.migration_uid,
                      str(exc))
            if not self.published:
                # Nothing was sent yet: fail the migration now, with the reason, rather than at its timeout.
                try:
                    reason = f"preparing the target on node {self.support.node} failed: {exc}"[:1000]
                    await self.patch(self.key, {"migrationUid": self.migration_uid, "failed": True,
                                                "failureReason": reason, "endTimestamp": timeutil.stamp_precise()})
                except KubeError as write:
                    log.error("vmi=%s/%s event=migration-target-report-failed error=%r", ns, name, write.message)

    async def _target_pod(self) -> tuple[dict[str, Any], str]:
        """The VMI and its target pod's uid: the entry of activePods on this node the controller added."""
        deadline = time.monotonic() + LAUNCHER_WAIT
        while True:
            vmi = await asyncio.to_thread(self.support.res.get, VIRTUAL_MACHINE_INSTANCE, *self.key)
            if vmi is None:
                raise RuntimeError("the VMI is gone")
            status = vmi.get("status") or {}
            state = status.get("migrationState") or {}
            if state.get("migrationUid") != self.migration_uid:
                raise RuntimeError(f"the VMI's migration is {state.get('migrationUid')!r} now")
            pods = [uid for uid, node in (status.get("activePods") or {}).items()
                    if node == self.support.node and node != status.get("nodeName")]
            if pods:
                return vmi, pods[0]
            if time.monotonic() > deadline:
                raise RuntimeError("no target pod of this node in the VMI's activePods")
            await asyncio.sleep(0.2)

    async def _connect(self, socket: Path) -> LauncherClient:
        deadline = time.monotonic() + LAUNCHER_WAIT
        while True:
            if socket.exists():
                try:
                    await asyncio.to_thread(LauncherClient(socket).ping)
                    return LauncherClient(socket, timeout=120)
                except LauncherUnavailable:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the target launcher did not answer on {socket}")
            await asyncio.sleep(0.05)


