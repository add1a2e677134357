"""The source side of a live migration: libvirt peer-to-peer, through the sockets the handler proxies.

The source libvirtd talks to the target's libvirtd, and the source QEMU streams memory (and copies
node-local disks over NBD) to the target QEMU, all through unix sockets in
`<sockets dir>/migration/<vmi uid>/`, where the node's handler listens and forwards over TLS to the
target node's handler (KubeVirt's migration proxy). The same paths exist on the target node, where the
target QEMU listens on them: one URI works on both ends.

A monitor thread bounds the job as KubeVirt does: abort when the remaining data has not shrunk for
`progressTimeout` seconds, and when the whole job takes longer than `completionTimeoutPerGiB` per GiB of
memory and copied disks (switch to post-copy instead, if allowed).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from kvtool.launchercom.protocol import LauncherError, Reason

log = logging.getLogger("kvtool.launcher.migration")

GIB = 1 << 30
MONITOR_PERIOD = 0.25
POST_COPY_RETRY = 10.0  # seconds past the deadline a refused switch to post-copy is tried again
# The switchover allowance (QEMU's downtime-limit), tuned as KubeVirt's VEP 291 does: first only
# INITIAL_DOWNTIME_MS, so a guest that dirties little switches over with a short pause; from memory pass
# RAMP_AFTER_ITERATION on it grows in RAMP_STEPS even steps to QEMU's own default, so a busy guest still
# converges as it would have without tuning.
INITIAL_DOWNTIME_MS = 100
MAX_DOWNTIME_MS = 300
RAMP_AFTER_ITERATION = 3
RAMP_STEPS = 4
CHANNELS = ("libvirt", "migration", "disks")  # the sockets of one migration, in the proxy dir


def socket_name(channel: str) -> str:
    return f"{channel}.sock"


@dataclass(frozen=True)
class Options:
    """KubeVirt's MigrationConfiguration, the parts the source launcher acts on."""

    completion_timeout_per_gib: int = 150
    progress_timeout: int = 150
    allow_auto_converge: bool = False
    allow_post_copy: bool = False
    bandwidth_mib: int = 0  # MiB/s; 0: unlimited

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Options:
        def number(key: str, default: int, low: int) -> int:
            value = raw.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise LauncherError(f"migrate option {key} must be an integer >= {low}, got {value!r}",
                                    Reason.BAD_REQUEST)
            return value

        def flag(key: str) -> bool:
            value = raw.get(key, False)
            if not isinstance(value, bool):
                raise LauncherError(f"migrate option {key} must be true or false, got {value!r}", Reason.BAD_REQUEST)
            return value

        return cls(number("completionTimeoutPerGiB", 150, 1), number("progressTimeout", 150, 1),
                   flag("allowAutoConverge"), flag("allowPostCopy"), number("bandwidthPerMigrationMiB", 0, 0))


@dataclass(frozen=True)
class DiskPlan:
    copy: tuple[str, ...]  # target devs of node-local writable disks: copied by NBD (incremental: top layer only)
    shared: tuple[str, ...]  # writable disks on shared storage (RWX claims, shared hostDisks): not copied
    copy_bytes: int


TOKEN_PREFIX = ".kvtool-migration-"  # + migration uid: the target's mark beside each disk it opens


def writable_disks(xml: str) -> list[tuple[str, Path]]:
    """(target dev, file) of the domain's writable file disks."""
    found = []
    for disk in ET.fromstring(xml).iterfind("./devices/disk"):
        if disk.get("device") not in (None, "disk") or disk.find("readonly") is not None:
            continue
        source, target = disk.find("source"), disk.find("target")
        path = source.get("file") if source is not None else None
        dev = target.get("dev") if target is not None else None
        if path and dev:
            found.append((dev, Path(path)))
    return found


def mark_storage(xml: str, private_dir: Path, migration_uid: str) -> list[Path]:
    """On the target: a token beside each writable disk outside the pod's private dir (claims, host disks). The
    source finds it beside its own file when both pods open the same storage (a ReadWriteMany claim, a shared
    host disk, the embedded cluster's hostPath volumes), and copies the disk when it does not (a hostPath claim on
    another node's disk). The tokens made."""
    made = []
    for _dev, path in writable_disks(xml):
        if not path.is_relative_to(private_dir):
            token = path.parent / f"{TOKEN_PREFIX}{migration_uid}"
            token.touch()
            made.append(token)
    return made


def plan_disks(xml: str, private_dir: Path, sizes: Callable[[str], int], migration_uid: str = "") -> DiskPlan:
    """Which disks the migration copies: writable file disks in the pod's private dir (containerDisk overlays,
    emptyDisks, ephemeral overlays), and those outside it whose storage the target does not share (no token of
    this migration beside them, see mark_storage). Read-only ones (cloud-init and config ISOs) are re-created by
    the target."""
    copy, shared, total = [], [], 0
    for dev, path in writable_disks(xml):
        local = path.is_relative_to(private_dir) or not (path.parent / f"{TOKEN_PREFIX}{migration_uid}").exists()
        if local:
            copy.append(dev)
            total += sizes(str(path))
        else:
            shared.append(dev)
    return DiskPlan(tuple(copy), tuple(shared), total)


def flags(disks: DiskPlan, options: Options) -> int:
    value = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if disks.copy:
        value |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if disks.shared:
        # Claims kvtool lets migrate are ReadWriteMany: shared, though not on a filesystem libvirt recognises.
        value |= libvirt.VIR_MIGRATE_UNSAFE
    if options.allow_auto_converge:
        value |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if options.allow_post_copy:
        value |= libvirt.VIR_MIGRATE_POSTCOPY
    return value


def downtime_for(iteration: int) -> int:
    """The switchover allowance in ms once libvirt reports memory pass `iteration` (1 is the first full copy)."""
    steps = max(0, iteration - RAMP_AFTER_ITERATION + 1)
    return min(MAX_DOWNTIME_MS, INITIAL_DOWNTIME_MS + (MAX_DOWNTIME_MS - INITIAL_DOWNTIME_MS) * steps // RAMP_STEPS)


def completion_timeout(memory_bytes: int, disks: DiskPlan, options: Options) -> float:
    """KubeVirt's: completionTimeoutPerGiB per GiB of memory and copied disks, rounded up to whole GiB."""
    return options.completion_timeout_per_gib * max(1, math.ceil((memory_bytes + disks.copy_bytes) / GIB))


class Outgoing:
    """One outgoing migration: a thread runs libvirt's blocking migrate call, another bounds it."""

    def __init__(self, uid: str, dom: libvirt.virDomain, proxy: Path, options: Options, disks: DiskPlan,
                 memory_bytes: int, report: Callable[[dict[str, Any]], None]) -> None:
        self.uid = uid
        self.dom = dom
        self.proxy = proxy
        self.options = options
        self.disks = disks
        self.deadline = completion_timeout(memory_bytes, disks, options)
        self.report = report  # changes to DomainStatus.migration
        self.done = threading.Event()
        self.mode = "PreCopy"
        self.downtime_ms = 0  # the allowance last given to QEMU
        self.abort_requested = False
        self.abort_reason = ""
        self._lock = threading.Lock()

    def start(self) -> None:
        self._set_downtime(downtime_for(0))  # before the copy starts: then only the monitor thread sets it
        threading.Thread(target=self._run, name="migration", daemon=True).start()
        threading.Thread(target=self._monitor, name="migration-monitor", daemon=True).start()

    def abort(self, why: str) -> bool:
        """Ask libvirt to cancel the job; False if it already ended."""
        with self._lock:
            if self.done.is_set():
                return False
            self.abort_requested = True
            self.abort_reason = why
        log.warning("event=migration-abort uid=%s why=%r", self.uid, why)
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as exc:
            log.warning("event=migration-abort-failed uid=%s error=%r", self.uid, exc.get_error_message())
        return True

    def _run(self) -> None:
        sockets = {c: self.proxy / socket_name(c) for c in CHANNELS}
        params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: f"unix://{sockets['migration']}"}
        if self.disks.copy:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(self.disks.copy)
            params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = f"unix://{sockets['disks']}"
        if self.options.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.options.bandwidth_mib
        value = flags(self.disks, self.options)
        started = time.monotonic()
        log.info("event=migration-started uid=%s flags=%d copy_disks=%s shared_disks=%s completion_timeout=%.0fs",
                 self.uid, value, ",".join(self.disks.copy) or "-", ",".join(self.disks.shared) or "-", self.deadline)
        try:
            self.dom.migrateToURI3(f"qemu+unix:///system?socket={sockets['libvirt']}", params, value)
        except libvirt.libvirtError as exc:
            with self._lock:
                self.done.set()
                aborted, why = self.abort_requested, self.abort_reason
            message = exc.get_error_message() or str(exc)
            log.error("event=migration-failed uid=%s seconds=%.2f aborted=%s error=%r", self.uid,
                      time.monotonic() - started, aborted, message)
            self.report({"state": "Failed", "message": f"{why}: {message}" if why else message,
                         "abortStatus": "Succeeded" if aborted else ""})
            return
        with self._lock:
            self.done.set()
        log.info("event=migration-completed uid=%s seconds=%.2f mode=%s", self.uid, time.monotonic() - started,
                 self.mode)
        self.report({"state": "Completed", "mode": self.mode,
                     "abortStatus": "Failed" if self.abort_requested else ""})

    def _set_downtime(self, ms: int) -> None:
        if ms == self.downtime_ms:
            return
        try:
            self.dom.migrateSetMaxDowntime(ms, 0)
        except libvirt.libvirtError as exc:  # QEMU keeps its previous allowance: slower, never wrong
            if self.done.is_set() or exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return  # the domain left (the job ended after its stats were read): nothing left to tune
            log.warning("event=downtime-not-set uid=%s ms=%d error=%r", self.uid, ms, exc.get_error_message())
            return
        self.downtime_ms = ms
        log.info("event=migration-downtime uid=%s ms=%d", self.uid, ms)

    def _monitor(self) -> None:
        started = time.monotonic()
        best, best_at = math.inf, started
        while not self.done.wait(MONITOR_PERIOD):
            try:
                stats = self.dom.jobStats()
            except libvirt.libvirtError:
                continue
            remaining = stats.get("data_remaining")
            if isinstance(iteration := stats.get("memory_iteration"), int):
                self._set_downtime(downtime_for(iteration))
            now = time.monotonic()
            if isinstance(remaining, int) and remaining < best:
                best, best_at = remaining, now
            if now - best_at > self.options.progress_timeout:
                self.abort(f"no progress for {self.options.progress_timeout} s (progressTimeout)")
                return
            if now - started > self.deadline:
                if self.options.allow_post_copy and self.mode == "PreCopy":
                    try:
                        self.dom.migrateStartPostCopy()
                        self.mode = "PostCopy"
                        self.report({"mode": "PostCopy"})
                        log.info("event=migration-post-copy uid=%s after=%.1fs", self.uid, now - started)
                        continue
                    except libvirt.libvirtError as exc:
                        # QEMU refuses the switch until the copy has really begun (a short deadline can come
                        # first, on a loaded machine): try again each period, for POST_COPY_RETRY seconds.
                        post_copy_error = exc.get_error_message()
                        log.warning("event=post-copy-failed uid=%s error=%r", self.uid, post_copy_error)
                        if now - started < self.deadline + POST_COPY_RETRY:
                            continue
                        self.abort(f"not completed within {self.deadline:.0f} s (completionTimeoutPerGiB "
                                   f"{self.options.completion_timeout_per_gib} s per GiB), and the switch to "
                                   f"post-copy failed for {POST_COPY_RETRY:.0f} s: {post_copy_error}")
                        return
                self.abort(f"not completed within {self.deadline:.0f} s (completionTimeoutPerGiB "
                           f"{self.options.completion_timeout_per_gib} s per GiB)")
                return
