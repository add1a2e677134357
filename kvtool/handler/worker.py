"""One worker per VMI on this node: connect to its launcher, sync, follow the domain, report.

The launcher protocol is blocking; each call runs in a thread, and the
`watch` stream is pumped from a thread into an asyncio queue. A handler
restarted while VMs run re-syncs (sync is idempotent) and follows them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from kvtool.api.types import wants_paused
from kvtool.handler.migration import SourceSide
from kvtool.handler.watch import watch_launcher
from kvtool.launchercom.client import LauncherClient, LauncherError, LauncherUnavailable

log = logging.getLogger("kvtool.handler")

SOCKET_WAIT = 120.0

Reporter = Callable[[dict[str, Any], str | None], Awaitable[None]]
Latest = Callable[[], dict[str, Any] | None]


class VMIWorker:
    def __init__(self, key: tuple[str, str], pod_uid: str, sockets_dir: Path, latest: Latest,
                 report: Reporter, source: SourceSide | None = None) -> None:
        self.key = key
        self.source = source  # the source half of a live migration of this VMI
        self.pod_uid = pod_uid
        self.socket = sockets_dir / f"{pod_uid}.sock"
        self.latest = latest
        self.report = report
        self.poked = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.version: str | None = None
        self.domain: dict[str, Any] = {}
        self.outcome = ""  # why run() ended, for the queue's retry log line

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"vmi-{self.key[0]}/{self.key[1]}")

    def poke(self) -> None:
        self.poked.set()

    def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def run(self) -> None:
        ns, name = self.key
        try:
            info = await self._connect()
            if info is None and _ended(self.latest()):
                # Placed at bind, the worker starts before the pod runs; a pod that never started (an image
                # that is not there) ends the VMI from the controller, and there is no launcher to miss.
                log.info("vmi=%s/%s event=ended-before-launcher", ns, name)
                self.outcome = "the VMI ended before its launcher answered"
                return
            if info is None:
                log.warning("vmi=%s/%s event=no-launcher socket=%s", ns, name, self.socket)
                self.outcome = f"the launcher did not answer on {self.socket}"
                return
            client = LauncherClient(self.socket)
            self.version = info.get("launcherVersion")
            vmi = self.latest()
            if vmi is None:
                return
            started = time.monotonic()
            try:
                self.domain = await asyncio.to_thread(client.sync, vmi)
            except LauncherUnavailable:
                raise  # the launcher went away: its pod's end tells the VMI's fate, not this worker
            except LauncherError as exc:
                log.warning("vmi=%s/%s event=sync-failed reason=%s", ns, name, exc.reason)
                self.domain = {"phase": "Failed", "reason": exc.reason or "SyncFailed", "message": exc.message}
            log.info("vmi=%s/%s event=synced phase=%s seconds=%.2f", ns, name, self.domain.get("phase"),
                     time.monotonic() - started)
            await self.report(self.domain, self.version)
            watcher = asyncio.get_running_loop().create_task(self._follow())
            try:
                while not watcher.done():
                    await self._reconcile_pause(client)
                    await self._reconcile_migration(client)
                    self.poked.clear()
                    waiter = asyncio.get_running_loop().create_task(self.poked.wait())
                    await asyncio.wait({watcher, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
            finally:
                watcher.cancel()
                if self.source is not None:
                    await self.source.close()
            self.outcome = "the launcher's domain watch ended"
        except asyncio.CancelledError:
            raise
        except LauncherUnavailable as exc:
            log.info("vmi=%s/%s event=launcher-gone detail=%r", ns, name, str(exc))
            self.outcome = f"launcher unavailable: {exc}"
        except Exception as exc:
            log.exception("vmi=%s/%s event=worker-error", ns, name)
            self.outcome = f"{type(exc).__name__}: {exc}"

    async def _connect(self) -> dict[str, Any] | None:
        """The launcher's ping reply, retrying while it starts: its socket file appears a moment before it
        accepts connections. None if it never answers (its pod's end then decides the VMI's phase)."""
        deadline = time.monotonic() + SOCKET_WAIT
        while await self._wait_for_socket():
            try:
                return await asyncio.to_thread(LauncherClient(self.socket).ping)
            except LauncherUnavailable:
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(0.05)
        return None

    async def _wait_for_socket(self) -> bool:
        deadline = time.monotonic() + SOCKET_WAIT
        while not self.socket.exists():
            if time.monotonic() > deadline or _ended(self.latest()):
                return False
            await asyncio.sleep(0.02)
        return True

    async def _follow(self) -> None:
        async for domain in self._watch():
            self.domain = domain
            await self.report(domain, self.version)

    def _watch(self) -> AsyncIterator[dict[str, Any]]:
        return watch_launcher(self.socket, self.key)

    async def _reconcile_migration(self, client: LauncherClient) -> None:
        vmi = self.latest()
        if vmi is None or self.source is None:
            return
        try:
            domain = await self.source.reconcile(vmi, self.domain, client)
        except LauncherError as exc:
            # Refused (not running, another migration): say so in migrationState, the controller fails it.
            log.warning("vmi=%s/%s event=migrate-refused reason=%s message=%r", *self.key, exc.reason, exc.message)
            uid = ((vmi.get("status") or {}).get("migrationState") or {}).get("migrationUid", "")
            domain = {**self.domain, "migration": {"uid": uid, "role": "source", "state": "Failed", "mode": "PreCopy",
                                                   "startedAt": None, "endedAt": None, "message": exc.message,
                                                   "abortRequested": False, "abortStatus": ""}}
        if domain is not None:
            self.domain = domain
            await self.report(domain, self.version)

    async def _reconcile_pause(self, client: LauncherClient) -> None:
        vmi = self.latest()
        if vmi is None:
            return
        want = wants_paused(vmi)
        phase = self.domain.get("phase")
        if want and phase == "Running":
            self.domain = await asyncio.to_thread(client.pause)
        elif not want and phase == "Paused":
            self.domain = await asyncio.to_thread(client.unpause)
        else:
            return
        await self.report(self.domain, self.version)


def _ended(vmi: dict[str, Any] | None) -> bool:
    """The VMI went, or reached a final phase: nothing left to start or follow."""
    return vmi is None or (vmi.get("status") or {}).get("phase") in ("Succeeded", "Failed")
