"""The launcher's command socket: $KVTOOL_SOCKETS_DIR/<pod uid>.sock, mode 0600, JSON lines.

One thread per connection (a handler holds a few: requests, a watch, maybe a
console). Every failure becomes an error reply with a reason; only a broken
connection ends its thread early.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvtool.launcher.runner import Runner
from kvtool.launchercom import protocol
from kvtool.launchercom.protocol import LauncherError, Reason

log = logging.getLogger("kvtool.launcher.server")

BACKLOG = 16
_NEXT, _CLOSE, _HANDED_OVER = "next", "close", "handed-over"  # what a request leaves of its connection


class Server:
    def __init__(self, path: Path, runner: Runner, default_grace: int) -> None:
        self.path = path
        self.runner = runner
        self.default_grace = default_grace
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._watchers: set[threading.Thread] = set()

    def start(self) -> None:
        """Bind, listen, then move the socket into place (replacing a stale socket file, never anything else):
        the file appears at bind(), and a connect between bind() and listen() would be refused, so clients
        (the handler, which waits for the file) only ever see one that listens."""
        fresh = self.path.with_name(self.path.name + ".new")
        for path in (self.path, fresh):
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise LauncherError(f"{path} exists and is not a socket", Reason.INTERNAL)
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(fresh))  # umask 077: only root can connect from the first moment
        os.chmod(fresh, 0o600)
        listener.listen(BACKLOG)
        os.replace(fresh, self.path)
        self._listener = listener
        threading.Thread(target=self._accept, name="accept", daemon=True).start()
        log.info("event=listening socket=%s", self.path)

    def stop_accepting(self) -> None:
        """No new connections; the socket file goes. Open connections keep being served."""
        with self._lock:
            self._closing = True
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close_connections(self, timeout: float = 2.0) -> None:
        """After the status board closed: let each watch send its last statuses, then hang up on everyone."""
        deadline = time.monotonic() + timeout
        with self._lock:
            watchers = list(self._watchers)
        for thread in watchers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            listener = self._listener
            if listener is None:
                return
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        after = _NEXT
        try:
            reader = protocol.LineReader(conn)
            while after == _NEXT:
                line = reader.readline()
                if line is None:
                    return
                after = self._handle(conn, reader, line)
        except (OSError, LauncherError) as exc:
            log.debug("event=connection-ended error=%r", str(exc))
        finally:
            with self._lock:
                self._connections.discard(conn)
            if after != _HANDED_OVER:
                conn.close()

    def _handle(self, conn: socket.socket, reader: protocol.LineReader, line: bytes) -> str:
        """Answer one request; say what becomes of the connection (_NEXT, _CLOSE, _HANDED_OVER)."""
        request_id = None
        try:
            message = protocol.decode(line)
            if isinstance(message.get("id"), int):
                request_id = message["id"]
            request_id, cmd = protocol.parse_request(message)
            if cmd == "watch":
                self._watch(conn)
                return _CLOSE
            if cmd == "console":
                def send_ok() -> None:
                    conn.sendall(protocol.encode(protocol.ok(request_id, {})))

                self.runner.console(conn, reader.take_buffer(), send_ok)
                return _HANDED_OVER
            result = self._dispatch(cmd, message)
            reply = protocol.ok(request_id, result)
        except LauncherError as exc:
            reply = protocol.error(request_id, exc.message, exc.reason)
        except Exception as exc:
            log.exception("event=request-failed")
            reply = protocol.error(request_id, f"internal error: {exc}", Reason.INTERNAL)
        conn.sendall(protocol.encode(reply))
        return _NEXT

    def _dispatch(self, cmd: str, message: dict[str, Any]) -> dict[str, Any]:
        handlers: dict[str, Callable[[], dict[str, Any]]] = {
            "ping": self.runner.ping,
            "status": self.runner.status,
            "sync": lambda: self.runner.sync(_field(message, "vmi", dict),
                                             migration_target=message.get("migrationTarget") is True),
            "migrate": lambda: self.runner.migrate(_field(message, "migrationUid", str),
                                                   _field(message, "proxyDir", str),
                                                   _field(message, "options", dict)),
            "migrate-abort": lambda: self.runner.migrate_abort(
                str(message.get("reason") or "aborted on request")[:500]),
            "shutdown": lambda: self.runner.shutdown(_grace(message, self.default_grace)),
            "pause": self.runner.pause,
            "unpause": self.runner.unpause,
        }
        return handlers[cmd]()

    def _watch(self, conn: socket.socket) -> None:
        """Stream status events until the launcher closes the board (then return: the caller hangs up)."""
        subscription = self.runner.board.subscribe()
        with self._lock:
            self._watchers.add(threading.current_thread())
        try:
            while (status := subscription.get()) is not None:
                conn.sendall(protocol.encode(protocol.status_event(status)))
        finally:
            self.runner.board.unsubscribe(subscription)
            with self._lock:
                self._watchers.discard(threading.current_thread())


def _field(message: dict[str, Any], key: str, kind: type) -> Any:
    value = message.get(key)
    if not isinstance(value, kind):
        raise LauncherError(f"{message.get('cmd')} needs `{key}` ({kind.__name__})", Reason.BAD_REQUEST)
    return value


def _grace(message: dict[str, Any], default: int) -> int:
    value = message.get("graceSeconds", default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 24 * 3600:
        raise LauncherError(f"graceSeconds must be an integer between 0 and 86400, got {value!r}",
                            Reason.BAD_REQUEST)
    return value
