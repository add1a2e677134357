"""What the launcher does with its one VMI: the commands of the protocol and the domain's life.

Request threads (server.py), libvirt's event thread and the console-log tailer
all meet here; every decision about the outcome - which phase, which exit code -
is made in this class and handed to main.py through `finished`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import libvirt

from kvtool import __version__
from kvtool.api import timeutil
from kvtool.api.types import wants_paused
from kvtool.errors import KvtoolError
from kvtool.launcher import config as config_mod
from kvtool.launcher import domain as domain_mod
from kvtool.launcher import guestinfo, hostvirt
from kvtool.launcher.console import ConsoleSession
from kvtool.launcher.libvirtd import Libvirtd
from kvtool.launcher.status import StatusBoard
from kvtool.launchercom.protocol import LauncherError, Reason, migration_status, proxy_dir_name
from kvtool.podnet.netcmd import NetError

log = logging.getLogger("kvtool.launcher")

FAILED_EXIT_DELAY = 1.0  # after a failed start: time for the handler to read the Failed status
MIGRATED_EXIT_DELAY = 2.0  # after the domain left by migration: time for the handler to report it
ADOPT_WAIT = 30.0  # a sync on a migration target waits this long for the migrated domain
POWER_BUTTON_REPEAT = 5.0  # a guest still booting misses the first press; pressing again is harmless


def generated_mac(uid: str, interface: str) -> str:
    """A stable, locally administered, unicast MAC per (VMI uid, interface name)."""
    digest = hashlib.sha256(f"{uid}/{interface}".encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{o:02x}" for o in octets)


class Runner:
    def __init__(self, config: config_mod.Config, daemon: Libvirtd) -> None:
        self.config = config
        self.daemon = daemon
        self.board = StatusBoard(config.domain_name, config.uid, str(config.console_log))
        self.hypervisor = domain_mod.Hypervisor(daemon.uri, self._on_lifecycle, self._on_disconnect)
        self.finished = threading.Event()
        self.exit_code = 0
        self.timings: dict[str, float] = {}
        self._sync_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._started = False
        self._start_error: LauncherError | None = None
        self._stopping = False
        self._stop_deadline: float | None = None
        self._stop_thread: threading.Thread | None = None
        self._stop_wake = threading.Event()  # a shorter grace period, or the end
        self._consoles: list[ConsoleSession] = []
        self._watcher: guestinfo.ConsoleLogWatcher | None = None
        self._network: Any = None  # network.PodNetworking, once the pod network is wired
        self._wired: dict[str, Any] = {}  # interface name -> network.Wired
        self._warm = threading.Thread(target=self._warm_up, name="warm-up", daemon=True)
        # Live migration: this launcher as a target (prepared, waiting for the domain) or a source.
        self._target_ready = False
        self._target_interfaces: list[tuple[str, str]] = []
        self._adopted = threading.Event()
        self._tokens: list[Path] = []  # the target's marks beside the disks it opens (migration.mark_storage)
        self._outgoing: Any = None  # migration.Outgoing

    # ---- startup

    def start_warm_up(self) -> None:
        self._warm.start()

    def _warm_up(self) -> None:
        """While waiting for the first sync: import the converter, connect, let libvirt probe QEMU."""
        try:
            from kvtool.launcher import volumes  # noqa: F401  (pays the import before the sync does)

            self.daemon.wait_ready()
            started = time.monotonic()
            self.hypervisor.connect()
            self.timings["connect"] = time.monotonic() - started
            if not self.daemon.seeded:
                self.hypervisor.warm_up(hostvirt.detect_virt_type())
                self.timings["capabilities_probe"] = time.monotonic() - started
                self.daemon.save_cache()
        except Exception as exc:  # the sync reports it properly; this only logs
            log.warning("event=warm-up-failed error=%r", str(exc))

    # ---- commands

    def ping(self) -> dict[str, Any]:
        return {"launcherVersion": __version__, "pid": os.getpid(), "libvirtVersion": domain_mod.library_version(),
                "status": self.board.get()}

    def status(self) -> dict[str, Any]:
        return self.board.get()

    def sync(self, vmi: Mapping[str, Any], migration_target: bool = False) -> dict[str, Any]:
        self._check_identity(vmi)
        with self._sync_lock:
            if self._start_error is not None:
                raise self._start_error
            if self._started:
                return self.board.get()
            if self._stopping:
                raise LauncherError("the launcher is shutting down", Reason.SHUTTING_DOWN)
            if self._target_ready:
                if migration_target:
                    return self.board.get()
                # The VMI moved here while libvirt's "resumed" event is still on its way: wait for it.
                if not self._adopted.wait(ADOPT_WAIT):
                    raise LauncherError("this launcher waits for its domain to arrive by live migration",
                                        Reason.NO_DOMAIN)
                return self.board.get()
            if migration_target:
                return self._prepare_target(vmi)
            return self._first_sync(vmi)

    def _check_identity(self, vmi: Mapping[str, Any]) -> None:
        if not isinstance(vmi, Mapping):
            raise LauncherError("sync needs the VMI object in `vmi`", Reason.BAD_REQUEST)
        meta = vmi.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        wanted = {"uid": self.config.uid, "name": self.config.name, "namespace": self.config.namespace}
        for key, value in wanted.items():
            got = meta.get(key)
            if (got is not None or key != "namespace") and got != value:
                raise LauncherError(f"this launcher runs VMI {self.config.namespace}/{self.config.name} "
                                    f"(uid {self.config.uid}); the sync has metadata.{key} {got!r}", Reason.WRONG_VMI)

    def _first_sync(self, vmi: Mapping[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        xml, interfaces, virt_type = self._prepare(vmi)
        before_start = time.monotonic()
        try:
            self.hypervisor.start(xml, paused=wants_paused(vmi))
        except libvirt.libvirtError as exc:
            self._fail_start(Reason.DOMAIN_START_FAILED, domain_mod.error_message(exc))
        self.timings["define_and_start"] = time.monotonic() - before_start
        self.timings["sync"] = time.monotonic() - started
        self._started = True
        log.info("event=domain-started domain=%s virt_type=%s sync_seconds=%.3f start_seconds=%.3f",
                 self.config.domain_name, virt_type, self.timings["sync"], self.timings["define_and_start"])
        threading.Thread(target=self.daemon.save_cache, name="save-cache", daemon=True).start()
        changes: dict[str, Any] = {"startedAt": timeutil.stamp(),
                                   "interfaces": [self._interface_status(name, mac) for name, mac in interfaces]}
        try:
            state, reason = self.hypervisor.state()
        except libvirt.libvirtError:  # gone already: its Shutoff event decides the phase
            return self.board.update(changes)
        if state in ("Running", "Paused"):
            changes.update({"phase": state, "domainState": state, "reason": reason})
        return self.board.update(changes)

    def _prepare_target(self, vmi: Mapping[str, Any]) -> dict[str, Any]:
        """Everything the domain needs here - volumes (the same overlays and empty disks, for the disk copy to
        fill), the cloud-init ISOs, the pod network - but no domain: it arrives by live migration."""
        from kvtool.launcher import migration

        started = time.monotonic()
        xml, interfaces, _virt_type = self._prepare(vmi)
        proxy = self.config.sockets_dir / proxy_dir_name(self.config.uid)
        proxy.mkdir(mode=0o700, parents=True, exist_ok=True)  # the target QEMU listens in here
        uid = ((vmi.get("status") or {}).get("migrationState") or {}).get("migrationUid") or ""
        try:
            self._tokens = migration.mark_storage(xml, self.config.state_dir, str(uid))
        except OSError as exc:
            self._fail_start(Reason.DOMAIN_START_FAILED, f"cannot mark the volumes for the migration: {exc}")
        self._target_interfaces = interfaces
        self._target_ready = True
        log.info("event=migration-target-ready seconds=%.3f tokens=%d", time.monotonic() - started,
                 len(self._tokens))
        return self.board.update({"migration": migration_status(uid=str(uid), role="target", state="Ready",
                                                                started_at=timeutil.stamp_precise())})

    def _prepare(self, vmi: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]], str]:
        """Volumes, the pod network, the domain XML, the connection and the console tailer: (xml, [(interface,
        mac)], virt type). A failure fails the start (_fail_start)."""
        from kvtool.domain import ConversionError, DomainInputs, ResolvedInterface, XMLModelError, domain_xml
        from kvtool.launcher import volumes

        started = time.monotonic()
        try:
            resolved = volumes.resolve(vmi, self.config)
            interfaces = self._interfaces(resolved.spec)
            self._wire(resolved.spec)
            interfaces = [(n, self._wired[n].mac if n in self._wired else mac) for n, mac in interfaces]
            virt_type = hostvirt.detect_virt_type()
            taps = {n: w.tap for n, w in self._wired.items()}
            inputs = DomainInputs(
                name=self.config.domain_name, uuid=self.config.uid, spec=resolved.spec, volumes=resolved.volumes,
                interfaces={name: ResolvedInterface(tap=taps.get(name), mac=mac) for name, mac in interfaces},
                kernel=resolved.kernel, initrd=resolved.initrd, serial_log=self.config.console_log,
                virt_type=virt_type, console_pty=True,
                metadata={"namespace": self.config.namespace, "name": self.config.name, "uid": self.config.uid})
            xml = domain_xml(inputs)
        except NetError as exc:
            self._fail_start(Reason.NETWORK_SETUP_FAILED, _message(exc))
        except (ConversionError, XMLModelError, KvtoolError) as exc:
            self._fail_start(Reason.INVALID_VMI, _message(exc))
        except (OSError, subprocess.SubprocessError) as exc:  # the node, not the VMI: disk full, qemu-img hung
            self._fail_start(Reason.DOMAIN_START_FAILED, f"preparing the volumes failed: {exc}")
        self.timings["prepare"] = time.monotonic() - started
        try:
            self.daemon.wait_ready()
            self.hypervisor.connect()
        except (KvtoolError, libvirt.libvirtError) as exc:
            self._fail_start(Reason.DOMAIN_START_FAILED, _message(exc))
        self._watcher = guestinfo.ConsoleLogWatcher(self.config.console_log, self._on_guest_ready, self._on_guest_ip,
                                                    self._on_guest_kernel_error)
        self._watcher.start()
        if self.config.volumes_dir is not None:
            self.board.update({"volumeSizes": {
                name: volume.path.stat().st_size for name, volume in resolved.volumes.items()
                if volume.path.is_relative_to(self.config.volumes_dir) and not volume.readonly}})
        return xml, interfaces, virt_type

    def _wire(self, spec: Mapping[str, Any]) -> None:
        """The guest's NIC behind the pod interface (launcher/network.py); none without a pod network."""
        if self.config.pod_interface is None:
            return
        from kvtool.launcher import network

        started = time.monotonic()
        self._network = network.PodNetworking(self.config)
        self._wired = self._network.setup(spec, lambda name: generated_mac(self.config.uid, name))
        self.timings["network"] = time.monotonic() - started

    def _interface_status(self, name: str, mac: str) -> dict[str, Any]:
        """KubeVirt reports the pod IP for an interface on the pod network (the guest's own is private)."""
        wired = self._wired.get(name)
        ip = str(wired.pod_ip) if wired else ""
        doc = {"name": name, "mac": mac, "ipAddress": ip, "ipAddresses": [ip] if ip else [], "interfaceName": "",
               "infoSource": "domain"}
        return {**doc, "podInterfaceName": wired.pod_interface} if wired else doc

    def _interfaces(self, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
        from kvtool.domain import spec as s
        from kvtool.domain.configure import network

        devices = s.mapping(s.mapping(spec.get("domain"), "spec.domain").get("devices"), "spec.domain.devices")
        found = []
        for i, entry in enumerate(s.sequence(devices.get("interfaces"), "spec.domain.devices.interfaces")):
            path = f"spec.domain.devices.interfaces[{i}]"
            iface = s.mapping(entry, path)
            name = s.string(iface.get("name"), f"{path}.name", pattern=s.IFACE_NAME)
            mac = iface.get("macAddress")
            mac = network.mac_address(mac, f"{path}.macAddress") if mac is not None else generated_mac(
                self.config.uid, name)
            found.append((name, mac))
        return found

    def _fail_start(self, reason: str, message: str) -> NoReturn:
        """The domain could not be defined or started: Failed, an error reply, exit 1 shortly after."""
        log.error("event=start-failed reason=%s message=%r", reason, message)
        self.board.update({"phase": "Failed", "domainState": "Shutoff", "reason": reason, "message": message})
        self._start_error = LauncherError(message, reason)
        timer = threading.Timer(FAILED_EXIT_DELAY, self._finish, args=(1,))
        timer.daemon = True
        timer.start()
        raise self._start_error

    def pause(self) -> dict[str, Any]:
        return self._act("pause", self.hypervisor.pause, "Paused")

    def unpause(self) -> dict[str, Any]:
        return self._act("unpause", self.hypervisor.unpause, "Running")

    def _act(self, what: str, action: Any, phase: str) -> dict[str, Any]:
        if not self._started or self.board.phase in ("Succeeded", "Failed"):
            raise LauncherError(f"cannot {what}: the domain is not running (phase {self.board.phase})",
                                Reason.NO_DOMAIN)
        try:
            action()
            state, reason = self.hypervisor.state()
        except libvirt.libvirtError as exc:
            raise LauncherError(f"{what} failed: {domain_mod.error_message(exc)}", Reason.LIBVIRT_ERROR) from None
        if state in ("Running", "Paused"):
            return self.board.update({"phase": phase if state == phase else self.board.phase,
                                      "domainState": state, "reason": reason})
        return self.board.get()

    def migrate(self, migration_uid: str, proxy_dir: str, raw_options: Mapping[str, Any]) -> dict[str, Any]:
        """Start migrating the running domain out (launcher/migration.py); idempotent for one migration uid."""
        from kvtool.launcher import migration

        options = migration.Options.parse(raw_options)
        if proxy_dir != proxy_dir_name(self.config.uid):
            raise LauncherError(f"proxyDir must be {proxy_dir_name(self.config.uid)!r}, got {proxy_dir!r}",
                                Reason.BAD_REQUEST)
        with self._state_lock:
            current = self._outgoing
            if current is not None and current.uid == migration_uid:
                return self.board.get()
            if current is not None and not current.done.is_set():
                raise LauncherError(f"migration {current.uid} is still running", Reason.NOT_MIGRATABLE)
            if not self._started or self._stopping or self.board.phase not in ("Running", "Paused") \
                    or self.hypervisor.dom is None:
                raise LauncherError(f"cannot migrate: the domain is not running (phase {self.board.phase})",
                                    Reason.NOT_MIGRATABLE)
            dom = self.hypervisor.dom
            try:
                disks = migration.plan_disks(dom.XMLDesc(0), self.config.state_dir,
                                             lambda path: int(dom.blockInfo(path)[0]), migration_uid)
                memory = int(dom.maxMemory()) * 1024
            except libvirt.libvirtError as exc:
                raise LauncherError(f"cannot migrate: {domain_mod.error_message(exc)}", Reason.LIBVIRT_ERROR) from None
            self._outgoing = migration.Outgoing(
                migration_uid, dom, self.config.sockets_dir / proxy_dir, options, disks, memory,
                self._report_outgoing)
            status = self.board.update({"migration": migration_status(
                uid=migration_uid, role="source", state="Running", started_at=timeutil.stamp_precise())})
        self._outgoing.start()
        return status

    def migrate_abort(self, reason: str) -> dict[str, Any]:
        with self._state_lock:
            outgoing = self._outgoing
        if outgoing is None or not outgoing.abort(reason):
            raise LauncherError("no migration is running", Reason.NOT_MIGRATABLE)
        self._report_outgoing({"abortRequested": True})
        return self.board.get()

    def _report_outgoing(self, changes: Mapping[str, Any]) -> None:
        current = self.board.get()["migration"]
        if current is None:
            return
        doc = {**current, **changes}
        if changes.get("state") in ("Completed", "Failed") and not current.get("endedAt"):
            doc["endedAt"] = timeutil.stamp_precise()
        self.board.update({"migration": doc})

    def console(self, sock: socket.socket, pending: bytes, send_ok: Callable[[], None]) -> None:
        """Open the console stream, confirm with send_ok(), then pump the connection in a session."""
        if not self._started or not self.hypervisor.active():
            raise LauncherError("no running domain to attach to", Reason.NO_DOMAIN)
        try:
            stream = self.hypervisor.open_console()
        except libvirt.libvirtError as exc:
            raise LauncherError(f"console: {domain_mod.error_message(exc)}", Reason.LIBVIRT_ERROR) from None
        try:
            send_ok()
        except OSError:
            stream.abort()
            raise
        with self._state_lock:
            self._consoles = [c for c in self._consoles if not c.closed]
            self._consoles.append(ConsoleSession(stream, sock, pending))

    # ---- stopping

    def shutdown(self, grace_seconds: int) -> dict[str, Any]:
        self.request_stop(grace_seconds, "shutdown command")
        return self.board.get()

    def request_stop(self, grace_seconds: int, why: str) -> None:
        """ACPI power button now (again every few seconds), destroy when the grace period ends."""
        with self._state_lock:
            deadline = time.monotonic() + grace_seconds
            first = not self._stopping
            self._stopping = True
            if self._stop_deadline is None or deadline < self._stop_deadline:
                self._stop_deadline = deadline
                self._stop_wake.set()
            log.info("event=stop-requested why=%r grace_seconds=%d", why, grace_seconds)
            if first:
                self._stop_thread = threading.Thread(target=self._stop_loop, name="stop", daemon=True)
                self._stop_thread.start()

    def _stop_loop(self) -> None:
        with self._sync_lock:  # a sync in progress finishes first; none starts after
            started = self._started
        if not started or not self.hypervisor.active():
            if self._start_error is None:
                self._finish(0)
            return
        try:
            if self.hypervisor.state()[0] == "Paused":
                self.hypervisor.unpause()  # a paused guest cannot see the power button
        except libvirt.libvirtError as exc:
            log.warning("event=unpause-for-shutdown-failed error=%r", domain_mod.error_message(exc))
        while not self.finished.is_set() and self.hypervisor.active():
            self._stop_wake.clear()
            with self._state_lock:
                remaining = (self._stop_deadline or 0) - time.monotonic()
            if remaining <= 0:
                log.warning("event=grace-period-expired action=destroy")
                try:
                    self.hypervisor.destroy()
                except libvirt.libvirtError as exc:
                    log.error("event=destroy-failed error=%r", domain_mod.error_message(exc))
                return
            try:
                self.hypervisor.press_power_button()
            except libvirt.libvirtError as exc:
                log.info("event=power-button-failed error=%r", domain_mod.error_message(exc))
            self._stop_wake.wait(min(remaining, POWER_BUTTON_REPEAT))

    def _finish(self, code: int) -> None:
        with self._state_lock:
            if self.finished.is_set():
                return
            self.exit_code = code
            self.finished.set()
            self._stop_wake.set()

    # ---- events

    def _on_lifecycle(self, state: str, reason: str) -> None:
        if self._target_ready and not self._started:
            self._on_incoming(state, reason)
            return
        if state in ("Running", "Paused", "Shutdown", "Crashed", "PMSuspended") and not self._started:
            return  # libvirt starts QEMU paused, then resumes it; the sync reports the state it ends in
        if state == "Paused" and reason == "Migration":
            return  # the last stop-and-copy moment of an outgoing migration: not the user's pause
        if state in ("Running", "Paused"):
            changes: dict[str, Any] = {"phase": state, "domainState": state, "reason": reason}
            if state == "Running" and self.board.get()["startedAt"] is None:
                changes["startedAt"] = timeutil.stamp()
            self.board.update(changes)
        elif state in ("Shutdown", "Crashed", "PMSuspended"):
            self.board.update({"domainState": state, "reason": reason})
        elif state == "Shutoff":
            self._on_stopped(reason)

    def _on_incoming(self, state: str, reason: str) -> None:
        """A migration target's domain: adopted when it resumes here (the migration's end), a failure when it
        stops before that (the incoming migration failed or was cancelled: the guest stays on the source)."""
        if state == "Shutoff" or (state == "Running" and reason in ("Migrated", "PostCopy")):
            for token in self._tokens:
                token.unlink(missing_ok=True)
        if state == "Running" and reason in ("Migrated", "PostCopy"):
            try:
                self.hypervisor.adopt(self.config.domain_name)
            except libvirt.libvirtError as exc:
                log.error("event=adopt-failed error=%r", domain_mod.error_message(exc))
                return
            self._started = True
            log.info("event=domain-arrived domain=%s reason=%s", self.config.domain_name, reason)
            migration = self.board.get()["migration"] or {}
            ended = {**migration, "state": "Completed", "endedAt": timeutil.stamp_precise()} if migration else None
            self.board.update({
                "phase": "Running", "domainState": "Running", "reason": reason, "startedAt": timeutil.stamp(),
                "interfaces": [self._interface_status(name, mac) for name, mac in self._target_interfaces],
                "migration": ended})
            self._adopted.set()
        elif state == "Shutoff":
            migration = self.board.get()["migration"] or {}
            message = f"the incoming migration ended without the domain ({reason})"
            log.warning("event=incoming-migration-failed reason=%s", reason)
            failed = ({**migration, "state": "Failed", "message": message, "endedAt": timeutil.stamp_precise()}
                      if migration else None)
            self.board.update({"phase": "Failed", "domainState": "Shutoff", "reason": "MigrationFailed",
                               "message": message, "migration": failed})
            timer = threading.Timer(FAILED_EXIT_DELAY, self._finish, args=(1,))
            timer.daemon = True
            timer.start()

    def _on_stopped(self, reason: str) -> None:
        with self._state_lock:
            stopping = self._stopping
        if reason == "Migrated":
            # The guest runs on the target now. Stay a moment so the handler reports the migration's end.
            migration = self.board.get()["migration"] or {}
            self.board.update({"phase": "Migrated", "domainState": "Shutoff", "reason": reason,
                               "message": "the domain moved to the migration target",
                               "migration": {**migration, "state": "Completed",
                                             "endedAt": migration.get("endedAt") or timeutil.stamp_precise()}
                               if migration else None})
            timer = threading.Timer(MIGRATED_EXIT_DELAY, self._finish, args=(0,))
            timer.daemon = True
            timer.start()
            return
        if reason == "Shutdown":
            phase, message = "Succeeded", "the guest shut down"
        elif reason == "Destroyed" and stopping:
            # KubeVirt's rule: a destroy after a requested shutdown's grace period is still a requested stop.
            phase, message = "Succeeded", "the guest did not shut down within the grace period and was destroyed"
        else:
            phase, message = "Failed", f"the domain stopped unexpectedly ({reason})"
        self.board.update({"phase": phase, "domainState": "Shutoff", "reason": reason, "message": message})
        self._finish(0 if phase == "Succeeded" else 1)

    def _on_disconnect(self, why: str) -> None:
        if self.finished.is_set():
            return
        self.board.update({"phase": "Failed", "reason": "LibvirtdLost", "message": why})
        self._finish(1)

    def daemon_died(self) -> None:
        """main.py saw the libvirtd process end while it was still needed."""
        if self.finished.is_set():
            return
        message = f"libvirtd exited unexpectedly: {self.daemon.log_tail()}"
        log.error("event=libvirtd-died message=%r", message)
        if self.board.phase not in ("Succeeded", "Failed"):
            self.board.update({"phase": "Failed", "reason": "LibvirtdLost", "message": message})
        self._finish(1)

    def _on_guest_ready(self, hostname: str) -> None:
        if not self.board.get()["guestReady"]:
            self.timings.setdefault("guest_ready", time.monotonic())
            log.info("event=guest-ready hostname=%s", hostname)
        self.board.update({"guestReady": True})

    def _on_guest_kernel_error(self, message: str) -> None:
        """The first report stays: what follows an oops is mostly its consequences."""
        if not self.board.get().get("guestKernelError"):
            log.warning("event=guest-kernel-error message=%r", message)
            self.board.update({"guestKernelError": message})

    def _on_guest_ip(self, ip: guestinfo.GuestIP) -> None:
        log.info("event=guest-ip interface=%s address=%s/%d gateway=%s", ip.interface, ip.address, ip.prefix,
                 ip.gateway or "-")
        if self._wired:  # the pod IP stays the reported one; the guest confirmed its lease
            self.timings.setdefault("guest_ip", time.monotonic())
            self.board.update_interface(0, {"interfaceName": ip.interface, "infoSource": "domain, serial-console"})
            return
        self.board.update_interface(0, {"ipAddress": ip.address, "ipAddresses": [ip.address],
                                        "interfaceName": ip.interface, "infoSource": "serial-console"})

    # ---- teardown

    def close(self) -> None:
        """Detach consoles, stop tailing, destroy/undefine the domain, end every watch."""
        with self._state_lock:
            consoles, self._consoles = self._consoles, []
        for session in consoles:
            session.close("launcher exiting")
        if self._watcher is not None:
            self._watcher.stop()
        self.hypervisor.close()
        if self._network is not None:
            self._network.close()
        self.board.close()


def _message(exc: Exception) -> str:
    """One line for DomainStatus.message: libvirt's own text, or ours with its hint."""
    if isinstance(exc, libvirt.libvirtError):
        return domain_mod.error_message(exc)
    if isinstance(exc, KvtoolError):
        return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    return str(exc)
