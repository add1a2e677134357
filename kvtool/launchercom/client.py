"""LauncherClient: the handler's (and `kvtool console`'s) side of the launcher socket.

Request/reply commands share one connection, one call at a time. `watch` and
`console` take a connection over for good, so each opens its own. Every
failure is a LauncherError; LauncherUnavailable means nobody is (or is no
longer) listening, which is how a caller learns that the launcher has exited.
"""

from __future__ import annotations

import errno
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvtool.launchercom import protocol
from kvtool.launchercom.protocol import LauncherError, LauncherUnavailable, Reason

__all__ = ["LauncherClient", "LauncherError", "LauncherUnavailable"]

# The first sync waits for the private libvirtd and, on a node without a capability cache, QEMU's probe.
SYNC_TIMEOUT = 120.0
_GONE = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)
_OUT_OF_STEP = (Reason.TIMEOUT, Reason.PROTOCOL, Reason.BAD_REQUEST, Reason.UNSUPPORTED_VERSION)


class LauncherClient:
    """A connection to one launcher. `timeout` bounds each call (None: wait forever)."""

    def __init__(self, socket_path: Path, timeout: float | None = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: protocol.LineReader | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ---- commands

    def ping(self) -> dict[str, Any]:
        """{"launcherVersion", "pid", "libvirtVersion", "status"}."""
        return self._call("ping")

    def sync(self, vmi: dict[str, Any], timeout: float | None = None, migration_target: bool = False) -> dict[str, Any]:
        """Send the full VMI; the launcher defines and starts the domain the first time. Returns DomainStatus.
        migration_target: prepare everything the domain needs (volumes, network) and wait for it to arrive by
        live migration instead of starting it."""
        if timeout is None and self.timeout is not None:
            timeout = max(self.timeout, SYNC_TIMEOUT)
        extra = {"migrationTarget": True} if migration_target else {}
        return protocol.check_status(self._call("sync", timeout=timeout, vmi=vmi, **extra))

    def migrate(self, migration_uid: str, proxy_dir: str, options: dict[str, Any]) -> dict[str, Any]:
        """Start live-migrating the running domain through the handler's sockets in `proxy_dir` (relative to the
        sockets dir); returns at once with DomainStatus (its `migration` follows the job)."""
        return protocol.check_status(self._call("migrate", migrationUid=migration_uid, proxyDir=proxy_dir,
                                                options=options))

    def migrate_abort(self, reason: str = "aborted on request") -> dict[str, Any]:
        """Cancel the running outgoing migration; `reason` leads its failure message."""
        return protocol.check_status(self._call("migrate-abort", reason=reason))

    def status(self) -> dict[str, Any]:
        return protocol.check_status(self._call("status"))

    def shutdown(self, grace_seconds: int) -> dict[str, Any]:
        """ACPI power button now; the launcher destroys the domain when grace_seconds run out."""
        if not isinstance(grace_seconds, int) or isinstance(grace_seconds, bool) or grace_seconds < 0:
            raise ValueError(f"grace_seconds must be a non-negative integer, got {grace_seconds!r}")
        return protocol.check_status(self._call("shutdown", graceSeconds=grace_seconds))

    def pause(self) -> dict[str, Any]:
        return protocol.check_status(self._call("pause"))

    def unpause(self) -> dict[str, Any]:
        return protocol.check_status(self._call("unpause"))

    def watch(self) -> Iterator[dict[str, Any]]:
        """DomainStatus dicts: the current one, then one per change; ends when the launcher closes."""
        sock = self._connect()
        try:
            sock.sendall(protocol.encode(protocol.request(next(self._ids), "watch")))
            sock.settimeout(None)  # events come when the domain changes, which may be never
            reader = protocol.LineReader(sock)
            while True:
                line = _read(reader)
                if line is None:
                    return
                message = protocol.decode(line)
                if message.get("event") == "status":
                    yield protocol.check_status(message.get("status"))
                else:
                    protocol.result_of(message)  # an error reply raises; anything else is not for us
        finally:
            sock.close()

    def console(self) -> socket.socket:
        """A socket carrying the guest's serial console both ways, raw; the caller closes it."""
        sock = self._connect()
        try:
            sock.sendall(protocol.encode(protocol.request(next(self._ids), "console")))
            protocol.result_of(protocol.decode(_read_exact_line(sock)))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> LauncherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            if exc.errno in _GONE:
                raise LauncherUnavailable(f"no launcher listens on {self.socket_path} ({exc.strerror})") from None
            raise LauncherError(f"cannot connect to {self.socket_path}: {exc}", Reason.UNAVAILABLE) from None
        return sock

    def _call(self, cmd: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
                self._reader = protocol.LineReader(self._sock)
            assert self._reader is not None
            request_id = next(self._ids)
            effective = self.timeout if timeout is None else timeout
            try:
                self._sock.settimeout(effective)
                self._sock.sendall(protocol.encode(protocol.request(request_id, cmd, **fields)))
                deadline = None if effective is None else time.monotonic() + effective
                while True:
                    line = _read(self._reader)
                    if line is None:
                        raise LauncherUnavailable(f"the launcher at {self.socket_path} closed the connection")
                    reply = protocol.decode(line)
                    if reply.get("id") == request_id:
                        return protocol.result_of(reply)
                    if deadline is not None and time.monotonic() > deadline:
                        raise LauncherError(f"no reply to {cmd} within {effective} s", Reason.TIMEOUT)
            except LauncherError as exc:
                # An ok=false reply leaves the conversation in step; anything else does not.
                if isinstance(exc, LauncherUnavailable) or exc.reason in _OUT_OF_STEP:
                    self._drop()
                raise
            except TimeoutError:
                self._drop()  # a late reply would answer the next call otherwise
                raise LauncherError(f"no reply to {cmd} within {effective} s", Reason.TIMEOUT) from None
            except OSError as exc:
                self._drop()
                raise LauncherUnavailable(f"lost the launcher at {self.socket_path}: {exc}") from None

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None


def _read(reader: protocol.LineReader) -> bytes | None:
    try:
        return reader.readline()
    except ConnectionResetError:
        return None


def _read_exact_line(sock: socket.socket) -> bytes:
    """One line, consuming nothing after it: the bytes that follow belong to the raw console."""
    data = bytearray()
    while True:
        peek = sock.recv(4096, socket.MSG_PEEK)
        if not peek:
            raise LauncherUnavailable("the launcher closed the console connection before replying")
        end = peek.find(b"\n")
        take = len(peek) if end < 0 else end + 1
        data += sock.recv(take)
        if end >= 0:
            return bytes(data[:-1])
        if len(data) > protocol.MAX_LINE:
            raise LauncherError("console reply line is too long", Reason.PROTOCOL)
