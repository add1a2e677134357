"""The migration proxy: the source launcher's sockets, over TLS, to the target launcher's (KubeVirt's design).

On the source node the handler listens on unix sockets in `<sockets>/migration/<vmi uid>/`, where
the source libvirtd and QEMU connect (launcher/migration.py); each connection is forwarded over TLS
to the target node's handler, which forwards it to the target launcher's libvirtd socket or to the
unix socket the target QEMU listens on at the same path. Three channels: libvirt's RPC, QEMU's
migration stream and the NBD disk copy. KubeVirt names them by the launcher's ports; so does
`targetDirectMigrationNodePorts` (handler port -> 0 libvirt, 49152 migration, 49153 disks).

Bytes move in threads with blocking sockets, not in the handler's event loop: measured on these
machines, a pair of proxies carries ~650 MB/s this way and ~350 MB/s through asyncio's TLS streams, and
the guest's memory is most of what a migration moves. The async start/close keep the callers' shape.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("kvtool.handler.migration")

CHANNEL_PORTS = {"libvirt": 0, "migration": 49152, "disks": 49153}
BUFFER = 1 << 20
CONNECT_TIMEOUT = 10.0


def _pump(src: socket.socket, dst: socket.socket) -> int:
    """src → dst until src's end of stream; then half-close dst. Bytes moved."""
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    moved = 0
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
            moved += n
    except OSError:  # ssl.SSLError too: the other side went away
        pass
    finally:
        with contextlib.suppress(OSError):
            # A TLS peer sees the TCP FIN (without close_notify) as an SSLEOFError: its end of stream too.
            dst.shutdown(socket.SHUT_WR)
    return moved


def _splice(a: socket.socket, b: socket.socket) -> tuple[int, int]:
    """Both directions until both ends are done: (a → b, b → a) bytes."""
    back = [0]
    thread = threading.Thread(target=lambda: back.__setitem__(0, _pump(b, a)), daemon=True, name="proxy-back")
    thread.start()
    forth = _pump(a, b)
    thread.join()
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.close()
    return forth, back[0]


class _Listener:
    """One listening socket and its accept thread; each connection is handled in a thread of its own."""

    def __init__(self, sock: socket.socket, handle: Callable[[socket.socket], None], name: str) -> None:
        self.sock = sock
        self.handle = handle
        self.name = name
        self.closed = False
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=name).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name=f"{self.name}-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        finally:
            with self.lock:
                self.connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Proxy:
    listeners: list[_Listener]

    async def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()


class TargetProxy(_Proxy):
    """TLS listeners on the handler's address, one per channel, each forwarding to a unix socket here."""

    def __init__(self, key: str, address: str, sockets: dict[str, Path], context: ssl.SSLContext) -> None:
        self.key = key
        self.address = address
        self.sockets = sockets  # channel -> unix socket of the target launcher
        self.context = context
        self.listeners: list[_Listener] = []
        self.ports: dict[str, int] = {}  # handler port (as text) -> KubeVirt's launcher port of the channel

    async def start(self) -> dict[str, int]:
        for channel, path in self.sockets.items():
            sock = socket.create_server((self.address, 0))
            port = sock.getsockname()[1]
            self.listeners.append(_Listener(sock, self._forwarder(channel, path), f"migration-target-{channel}"))
            self.ports[str(port)] = CHANNEL_PORTS[channel]
        log.info("migration=%s event=target-proxy-listening address=%s ports=%s", self.key, self.address,
                 ",".join(self.ports))
        return self.ports

    def _forwarder(self, channel: str, path: Path) -> Callable[[socket.socket], None]:
        def forward(conn: socket.socket) -> None:
            try:
                conn.settimeout(CONNECT_TIMEOUT)
                outer = self.context.wrap_socket(conn, server_side=True)
                outer.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                log.warning("migration=%s event=tls-refused channel=%s error=%r", self.key, channel, str(exc))
                return
            inner = socket.socket(socket.AF_UNIX)
            try:
                inner.connect(str(path))
            except OSError as exc:
                log.warning("migration=%s event=target-connect-failed channel=%s error=%r", self.key, channel,
                            str(exc))
                outer.close()
                inner.close()
                return
            sent, received = _splice(outer, inner)
            log.info("migration=%s event=channel-closed side=target channel=%s bytes_in=%d bytes_out=%d", self.key,
                     channel, sent, received)
        return forward


class SourceProxy(_Proxy):
    """Unix listeners where the source launcher connects, each forwarding over TLS to the target handler."""

    def __init__(self, key: str, directory: Path, address: str, ports: dict[str, int],
                 context: ssl.SSLContext, server_name: str) -> None:
        self.key = key
        self.directory = directory
        self.address = address
        by_channel = {v: int(k) for k, v in ports.items()}
        self.ports = {channel: by_channel[code] for channel, code in CHANNEL_PORTS.items() if code in by_channel}
        self.context = context
        self.server_name = server_name
        self.listeners: list[_Listener] = []

    async def start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for channel, port in self.ports.items():
            path = self.directory / f"{channel}.sock"
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            path.chmod(0o600)
            sock.listen(8)
            self.listeners.append(_Listener(sock, self._forwarder(channel, port), f"migration-source-{channel}"))
        log.info("migration=%s event=source-proxy-listening dir=%s target=%s", self.key, self.directory, self.address)

    def _forwarder(self, channel: str, port: int) -> Callable[[socket.socket], None]:
        def forward(conn: socket.socket) -> None:
            try:
                raw = socket.create_connection((self.address, port), timeout=CONNECT_TIMEOUT)
                outer = self.context.wrap_socket(raw, server_hostname=self.server_name)
                outer.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                log.warning("migration=%s event=source-connect-failed channel=%s target=%s:%d error=%r", self.key,
                            channel, self.address, port, str(exc))
                return
            sent, received = _splice(conn, outer)
            log.info("migration=%s event=channel-closed side=source channel=%s bytes_out=%d bytes_in=%d", self.key,
                     channel, sent, received)
        return forward

    async def close(self) -> None:
        await super().close()
        for channel in self.ports:
            (self.directory / f"{channel}.sock").unlink(missing_ok=True)
