"""The handler<->launcher protocol, version 1: JSON lines over the launcher's unix socket.

One request per line, `{"v": 1, "id": N, "cmd": "...", ...}`, answered by one reply line
`{"v": 1, "id": N, "ok": true, "result": {...}}` or `{"v": 1, "id": N, "ok": false, "error": "...",
"reason": "..."}`. `watch` answers with status event lines instead, `console` with one reply line and
then raw bytes. Like KubeVirt's cmd.proto, `sync` always carries the full VMI. This module is pure
(no sockets are opened here) so both ends and the tests share one encoder and one validator.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any

from kvtool.errors import KvtoolError

VERSION = 1
# A VMI is a few KiB; the cap keeps a broken peer from making the other side buffer without end.
MAX_LINE = 4 << 20

COMMANDS = ("ping", "sync", "status", "shutdown", "pause", "unpause", "watch", "console", "migrate",
            "migrate-abort")
# Migrated: the domain left by live migration (it runs on the target now): not the VMI's end.
PHASES = ("Pending", "Running", "Paused", "Succeeded", "Failed", "Migrated")
FINAL_PHASES = ("Succeeded", "Failed", "Migrated")
STATUS_KEYS = ("phase", "domainState", "reason", "message", "name", "uuid", "startedAt", "interfaces",
               "guestReady", "consoleLog", "migration", "volumeSizes", "guestKernelError")
# Keys a launcher of an earlier version does not send: a newer handler reads them with a default.
OPTIONAL_STATUS_KEYS = ("guestKernelError",)
MAX_KERNEL_ERROR = 256
# DomainStatus.migration: null, or this launcher's side of one live migration.
MIGRATION_KEYS = ("uid", "role", "state", "mode", "startedAt", "endedAt", "message", "abortRequested",
                  "abortStatus")
MIGRATION_ROLES = ("source", "target")
# source: Running -> Completed | Failed; target: Preparing -> Ready -> Completed | Failed.
MIGRATION_STATES = ("Preparing", "Ready", "Running", "Completed", "Failed")
INTERFACE_KEYS = ("name", "mac", "ipAddress", "ipAddresses", "interfaceName", "infoSource")
PING_KEYS = ("launcherVersion", "pid", "libvirtVersion", "status")


class Reason:
    """Machine-readable `reason` values of error replies (the `error` text is for humans)."""

    BAD_REQUEST = "BadRequest"  # not JSON, not an object, a field of the wrong type
    UNSUPPORTED_VERSION = "UnsupportedVersion"
    UNKNOWN_COMMAND = "UnknownCommand"
    WRONG_VMI = "WrongVMI"  # sync for another VMI than the one this launcher runs
    INVALID_VMI = "InvalidVMI"  # the spec or its volumes cannot become a domain (missing image, bad field)
    DOMAIN_START_FAILED = "DomainStartFailed"  # libvirt refused to define or start the domain
    NETWORK_SETUP_FAILED = "NetworkSetupFailed"  # the guest's NIC could not be wired behind the pod interface
    NO_DOMAIN = "NoDomain"  # pause/unpause/console before the first sync
    NOT_MIGRATABLE = "NotMigratable"  # migrate of a domain that is not running, or a second migration
    SHUTTING_DOWN = "ShuttingDown"  # sync while the launcher stops
    LIBVIRT_ERROR = "LibvirtError"
    INTERNAL = "InternalError"
    # Only raised on the client side:
    UNAVAILABLE = "Unavailable"
    TIMEOUT = "Timeout"
    PROTOCOL = "ProtocolError"


class LauncherError(KvtoolError):
    """The launcher answered ok=false, or the conversation broke; `reason` is one of Reason's values."""

    def __init__(self, message: str, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason


class LauncherUnavailable(LauncherError):
    """Nobody listens on the socket (missing, refused) or the launcher hung up: it is not running (any more)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, Reason.UNAVAILABLE, hint)


# ---- encoding


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line. json.dumps escapes newlines inside strings, so a line is a message."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def decode(line: bytes | str) -> dict[str, Any]:
    """Parse one line into a message of this version; a LauncherError (BadRequest, UnsupportedVersion) if not."""
    if len(line) > MAX_LINE:
        raise LauncherError(f"message longer than {MAX_LINE} bytes", Reason.BAD_REQUEST)
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LauncherError(f"message is not JSON: {exc}", Reason.BAD_REQUEST) from None
    if not isinstance(message, dict):
        raise LauncherError(f"message is a JSON {type(message).__name__}, not an object", Reason.BAD_REQUEST)
    if message.get("v") != VERSION:
        raise LauncherError(f"protocol version {message.get('v')!r} is not supported (this side speaks {VERSION})",
                            Reason.UNSUPPORTED_VERSION, hint="run the same kvtool version for handler and launcher")
    return message


def request(request_id: int, cmd: str, **fields: Any) -> dict[str, Any]:
    if cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r}")
    return {"v": VERSION, "id": request_id, "cmd": cmd, **fields}


def ok(request_id: int | None, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "id": request_id, "ok": True, "result": dict(result)}


def error(request_id: int | None, message: str, reason: str) -> dict[str, Any]:
    return {"v": VERSION, "id": request_id, "ok": False, "error": message, "reason": reason}


def status_event(status: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "event": "status", "status": dict(status)}


def parse_request(message: Mapping[str, Any]) -> tuple[int, str]:
    """(id, cmd) of a decoded request, checked; the command's own fields are read by the server."""
    request_id = message.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 0:
        raise LauncherError(f"request id must be a non-negative integer, got {request_id!r}", Reason.BAD_REQUEST)
    cmd = message.get("cmd")
    if cmd not in COMMANDS:
        raise LauncherError(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})", Reason.UNKNOWN_COMMAND)
    return request_id, cmd


def result_of(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The result of a reply, or the LauncherError it carries."""
    if reply.get("ok") is True:
        result = reply.get("result")
        if not isinstance(result, dict):
            raise LauncherError("reply has no result object", Reason.PROTOCOL)
        return result
    if reply.get("ok") is False:
        raise LauncherError(str(reply.get("error") or "the launcher reported an error"),
                            str(reply.get("reason") or Reason.INTERNAL))
    raise LauncherError(f"not a reply: {sorted(reply)}", Reason.PROTOCOL)


# ---- DomainStatus


def domain_status(*, phase: str = "Pending", domain_state: str = "NoState", reason: str = "", message: str = "",
                  name: str = "", uuid: str = "", started_at: str | None = None,
                  interfaces: list[dict[str, Any]] | None = None, guest_ready: bool = False,
                  console_log: str = "", migration: dict[str, Any] | None = None,
                  volume_sizes: dict[str, int] | None = None, guest_kernel_error: str = "") -> dict[str, Any]:
    """A DomainStatus dict with every key, so readers never need .get() defaults (but for an older
    launcher's: OPTIONAL_STATUS_KEYS)."""
    status = {"phase": phase, "domainState": domain_state, "reason": reason, "message": message, "name": name,
              "uuid": uuid, "startedAt": started_at, "interfaces": list(interfaces or []),
              "guestReady": guest_ready, "consoleLog": console_log, "migration": migration,
              "volumeSizes": dict(volume_sizes or {}), "guestKernelError": guest_kernel_error}
    check_status(status)
    return status


def interface_status(*, name: str, mac: str, ip_address: str = "", interface_name: str = "",
                     info_source: str = "") -> dict[str, Any]:
    return {"name": name, "mac": mac, "ipAddress": ip_address, "ipAddresses": [ip_address] if ip_address else [],
            "interfaceName": interface_name, "infoSource": info_source}


def check_status(status: Any) -> dict[str, Any]:
    """Raise LauncherError unless `status` is a well-formed DomainStatus; return it."""
    if not isinstance(status, dict):
        raise LauncherError(f"DomainStatus is a {type(status).__name__}, not an object", Reason.PROTOCOL)
    missing = [key for key in STATUS_KEYS if key not in status and key not in OPTIONAL_STATUS_KEYS]
    if missing:
        raise LauncherError(f"DomainStatus lacks {', '.join(missing)}", Reason.PROTOCOL)
    if status["phase"] not in PHASES:
        raise LauncherError(f"DomainStatus phase {status['phase']!r} is not one of {', '.join(PHASES)}",
                            Reason.PROTOCOL)
    for key in ("domainState", "reason", "message", "name", "uuid", "consoleLog"):
        if not isinstance(status[key], str):
            raise LauncherError(f"DomainStatus {key} is not a string", Reason.PROTOCOL)
    if status["startedAt"] is not None and not isinstance(status["startedAt"], str):
        raise LauncherError("DomainStatus startedAt is neither a string nor null", Reason.PROTOCOL)
    if not isinstance(status["guestReady"], bool):
        raise LauncherError("DomainStatus guestReady is not a boolean", Reason.PROTOCOL)
    if not isinstance(status["interfaces"], list) or not all(
            isinstance(i, dict) and all(k in i for k in INTERFACE_KEYS) for i in status["interfaces"]):
        raise LauncherError(f"DomainStatus interfaces must be objects with {', '.join(INTERFACE_KEYS)}",
                            Reason.PROTOCOL)
    kernel_error = status.get("guestKernelError", "")
    if not isinstance(kernel_error, str) or len(kernel_error) > MAX_KERNEL_ERROR:
        raise LauncherError(f"DomainStatus guestKernelError is not a string of at most {MAX_KERNEL_ERROR} characters",
                            Reason.PROTOCOL)
    sizes = status["volumeSizes"]
    if not isinstance(sizes, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in sizes.items()):
        raise LauncherError("DomainStatus volumeSizes must map volume names to sizes in bytes", Reason.PROTOCOL)
    migration = status["migration"]
    if migration is not None and not (
            isinstance(migration, dict) and all(k in migration for k in MIGRATION_KEYS)
            and migration["role"] in MIGRATION_ROLES and migration["state"] in MIGRATION_STATES):
        raise LauncherError(f"DomainStatus migration must be null or an object with {', '.join(MIGRATION_KEYS)}, "
                            f"a role of {', '.join(MIGRATION_ROLES)} and a state of {', '.join(MIGRATION_STATES)}",
                            Reason.PROTOCOL)
    return status


def proxy_dir_name(vmi_uid: str) -> str:
    """Where, relative to the sockets dir, a VMI's migration sockets live, on both nodes: the handlers' proxy
    listens there on the source, the target QEMU on the target."""
    return f"migration/{vmi_uid}"


def migration_status(*, uid: str, role: str, state: str, mode: str = "PreCopy", started_at: str | None = None,
                     ended_at: str | None = None, message: str = "", abort_requested: bool = False,
                     abort_status: str = "") -> dict[str, Any]:
    return {"uid": uid, "role": role, "state": state, "mode": mode, "startedAt": started_at, "endedAt": ended_at,
            "message": message, "abortRequested": abort_requested, "abortStatus": abort_status}


# ---- framing on a socket


class LineReader:
    """Reads lines from a socket without over-reading into what follows (the console's raw bytes)."""

    def __init__(self, sock: socket.socket, limit: int = MAX_LINE) -> None:
        self.sock = sock
        self.limit = limit
        self.buffer = bytearray()

    def readline(self) -> bytes | None:
        """The next line without its newline; None at end of stream (a partial last line is dropped)."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > self.limit:
                raise LauncherError(f"line longer than {self.limit} bytes", Reason.BAD_REQUEST)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk

    def take_buffer(self) -> bytes:
        """Bytes already read past the last line (handed over when a connection turns raw)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data
