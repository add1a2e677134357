"""The launcher's libvirt side: one connection to the private libvirtd, one domain, its events.

libvirt's default event loop runs in a thread of its own (virEventRegisterDefaultImpl
before the first connection, then virEventRunDefaultImpl forever): it delivers
lifecycle events and keepalives, and pumps console streams, so no request thread
ever waits on the guest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import libvirt

log = logging.getLogger("kvtool.launcher.domain")

KEEPALIVE_INTERVAL = 5  # seconds; after 3 unanswered the connection counts as lost
KEEPALIVE_COUNT = 3

# libvirt lifecycle event -> (KubeVirt's domain state name, {detail: reason name}).
_EVENTS: dict[int, tuple[str, dict[int, str]]] = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("Running", {
        libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED: "Booted", libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED: "Restored",
        libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "FromSnapshot",
        libvirt.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "Wakeup",
        # An incoming migration made the domain here (paused until the migration ends).
        libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "IncomingMigration"}),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("Paused", {
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: "User", libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: "IOError",
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: "Watchdog",
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: "APIError",
        # The source's last moment of a live migration (stop-and-copy), and a post-copy one.
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: "Migration",
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY: "Migration"}),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("Running", {libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED: "Unpaused",
                                                   # the target runs the guest, or a failed migration left it here
                                                   libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED: "Migrated",
                                                   libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY: "PostCopy"}),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("Shutdown", {}),  # the guest finished shutting down; Shutoff follows
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("Shutoff", {
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "Shutdown", libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "Destroyed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "Crashed", libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "Failed",
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "Saved", libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "Migrated"}),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("PMSuspended", {}),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("Crashed", {libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED: "Panicked"}),
}
# virDomainGetState -> KubeVirt's names, for reads after our own actions (pause, unpause).
_STATES = {libvirt.VIR_DOMAIN_NOSTATE: "NoState", libvirt.VIR_DOMAIN_RUNNING: "Running",
           libvirt.VIR_DOMAIN_BLOCKED: "Blocked", libvirt.VIR_DOMAIN_PAUSED: "Paused",
           libvirt.VIR_DOMAIN_SHUTDOWN: "Shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "Shutoff",
           libvirt.VIR_DOMAIN_CRASHED: "Crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "PMSuspended"}
_PAUSED_REASONS = {libvirt.VIR_DOMAIN_PAUSED_USER: "User", libvirt.VIR_DOMAIN_PAUSED_IOERROR: "IOError"}

Lifecycle = Callable[[str, str], None]  # (domain state, reason)
Disconnected = Callable[[str], None]  # (why)

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once per process)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions, not on stderr
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _run_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("event=libvirt-event-loop-failed")


def library_version() -> str:
    version = libvirt.getVersion()
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def error_message(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


class Hypervisor:
    """The connection to the private libvirtd and the one domain defined through it."""

    def __init__(self, uri: str, on_lifecycle: Lifecycle, on_disconnect: Disconnected) -> None:
        self.uri = uri
        self.on_lifecycle = on_lifecycle
        self.on_disconnect = on_disconnect
        self.conn: libvirt.virConnect | None = None
        self.dom: libvirt.virDomain | None = None
        self._closing = False
        self._lock = threading.Lock()

    def connect(self) -> None:
        with self._lock:
            if self.conn is not None:
                return
            start_event_loop()
            conn = libvirt.open(self.uri)
            conn.registerCloseCallback(self._closed, None)
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            self.conn = conn

    def warm_up(self, virt_type: str) -> None:
        """Make libvirt probe QEMU now, while the launcher waits for its first sync.

        Domain capabilities probe just qemu-system-x86_64, as defining the domain would; getCapabilities
        would also probe qemu-system-i386 (another ~1 s, measured) for nothing.
        """
        assert self.conn is not None
        self.conn.getDomainCapabilities(None, "x86_64", "q35", virt_type)

    def hypervisor_version(self) -> str:
        if self.conn is None:
            return ""
        version = self.conn.getVersion()
        return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"

    def start(self, xml: str, paused: bool = False) -> None:
        """Define and start (paused: the vCPUs never run until unpaused); on a start failure the definition is
        removed again. Raises libvirtError."""
        assert self.conn is not None
        dom = self.conn.defineXML(xml)
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        except libvirt.libvirtError:
            _quietly(dom.undefine)
            raise
        self.dom = dom

    def adopt(self, name: str) -> None:
        """Take the domain a live migration brought to this libvirtd as this launcher's own."""
        assert self.conn is not None
        self.dom = self.conn.lookupByName(name)

    def state(self) -> tuple[str, str]:
        assert self.dom is not None
        state, reason = self.dom.state()
        name = _STATES.get(state, "NoState")
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return name, _PAUSED_REASONS.get(reason, "Unknown")
        return name, "Booted" if state == libvirt.VIR_DOMAIN_RUNNING else "Unknown"

    def active(self) -> bool:
        return self.dom is not None and bool(_quietly(self.dom.isActive))

    def press_power_button(self) -> None:
        assert self.dom is not None
        self.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy(self) -> None:
        if self.dom is not None and self.active():
            self.dom.destroy()

    def pause(self) -> None:
        assert self.dom is not None
        self.dom.suspend()

    def unpause(self) -> None:
        assert self.dom is not None
        self.dom.resume()

    def open_console(self) -> libvirt.virStream:
        """A non-blocking stream on the serial console; VIR_DOMAIN_CONSOLE_FORCE: the newest client wins."""
        assert self.conn is not None and self.dom is not None
        stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        self.dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        return stream

    def close(self) -> None:
        """Destroy a still-running domain, undefine it, close the connection."""
        with self._lock:
            self._closing = True
            conn, dom, self.conn, self.dom = self.conn, self.dom, None, None
        if dom is not None:
            if _quietly(dom.isActive):
                _quietly(dom.destroy)
            _quietly(dom.undefine)
        if conn is not None:
            _quietly(conn.unregisterCloseCallback)
            _quietly(conn.close)

    # ---- callbacks (libvirt's event thread)

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
                   _opaque: object) -> None:
        known = _EVENTS.get(event)
        if known is None:
            return  # defined / undefined
        state, reasons = known
        reason = reasons.get(detail, "Shutdown" if state == "Shutdown" else "Unknown")
        log.info("event=lifecycle domain=%s state=%s reason=%s", dom.name(), state, reason)
        try:
            self.on_lifecycle(state, reason)
        except Exception:
            log.exception("event=lifecycle-handler-failed")

    def _closed(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        if self._closing:
            return
        why = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error", libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
               libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive"}.get(reason, "client")
        log.error("event=libvirt-connection-lost reason=%s", why)
        self.on_disconnect(f"lost the connection to libvirtd ({why})")


def _quietly(call: Callable[[], object]) -> object:
    try:
        return call()
    except libvirt.libvirtError as exc:
        log.debug("event=libvirt-call-failed call=%s error=%r", getattr(call, "__name__", call), error_message(exc))
        return None
