"""The migration proxy: the source launcher's sockets, over TLS, to the target launcher's (KubeVirt's design).

On the source node the handler listens on unix sockets in `<sockets>/migration/<vmi uid>/`, where
the source libvirtd and QEMU connect (launcher/migration.py); each connection is forwarded over TLS
to the target node's handler, which forwards it to the target launcher's libvirtd socket or to the
unix socket the target QEMU listens on at the same path. Three channels: libvirt's RPC, QEMU's
migration stream and the NBD disk copy. KubeVirt names them by the launcher's ports; so does
`targetDirectMigrationNodePorts` (handler port -> 0 libvirt, 49152 migration, 49153 disks).

The event loop accepts; each connection's bytes then move in a thread of its own (`_relay`), which
drives both directions of its one TLS connection from one selector, so OpenSSL never sees one
connection from two threads (post-copy's target asks for pages over the stream the source sends them
on). `python bench/migration_proxy.py` measures a proxy pair moving 1 GiB: asyncio's TLS streams (memory
BIOs, in the loop) moved ~370 MB/s for ~4.3 CPU seconds, this ~600-800 MB/s for ~2.1; the CPU matters on
a node whose cores the guest being migrated also wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("kvtool.handler.migration")

CHANNEL_PORTS = {"libvirt": 0, "migration": 49152, "disks": 49153}
BUFFER = 1 << 18
CONNECT_TIMEOUT = 10.0  # the TCP connect and the TLS handshake; the relay itself has no timeout
KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}  # a vanished peer node ends the relay
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# Opens the onward end for an accepted connection: (its TLS socket, its plain one, whether the accepted one is TLS).
Opener = Callable[[socket.socket], tuple[ssl.SSLSocket, socket.socket, bool]]


def _attempt(blocked: int, call: Callable[[memoryview], int], data: memoryview) -> tuple[int, int]:
    """(bytes moved, 0), or (0, the selector event this socket waits for before the call can go on)."""
    try:
        return call(data), 0
    except BlockingIOError:
        return 0, blocked
    except ssl.SSLWantReadError:
        return 0, READ
    except ssl.SSLWantWriteError:
        return 0, WRITE


class _Leg:
    """One direction of a relay: what was read from `src` and not yet written to `dst`."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.buffer = memoryview(bytearray(BUFFER))
        self.pending: memoryview | None = None
        self.eof = False
        self.moved = 0
        self.waits: dict[socket.socket, int] = {}

    def pump(self) -> bool:
        """Move bytes until a socket would block or the source ended; True when any byte moved."""
        self.waits = {}
        progressed = False
        while True:
            if self.pending is None and (self.eof or not self._fill()):
                return progressed
            pending = self.pending
            assert pending is not None
            sent, blocked = _attempt(WRITE, self.dst.send, pending)
            if blocked:
                self.waits = {self.dst: blocked}
                return progressed
            progressed = True
            self.moved += sent
            self.pending = pending[sent:] if sent < len(pending) else None

    def _fill(self) -> bool:
        """Read up to a whole buffer (a TLS read returns one 16 KiB record); False when nothing came."""
        filled = 0
        while filled < BUFFER:
            try:
                got, blocked = _attempt(READ, self.src.recv_into, self.buffer[filled:])
            except ssl.SSLZeroReturnError:
                got, blocked = 0, 0
            if blocked:
                if not filled:
                    self.waits = {self.src: blocked}
                break
            if not got:
                self.eof = True
                break
            filled += got
        if filled:
            self.pending = self.buffer[:filled]
        return bool(filled)

    @property
    def done(self) -> bool:
        return self.eof and self.pending is None


def _relay(tls: ssl.SSLSocket, plain: socket.socket) -> tuple[int, int]:
    """Both directions until the TLS side ends (TLS has no half close); (plain -> TLS, TLS -> plain) bytes."""
    tls.setblocking(False)
    plain.setblocking(False)
    outward, inward = _Leg(plain, tls), _Leg(tls, plain)
    plain_closed = False
    try:
        with selectors.DefaultSelector() as selector:
            while not outward.done:
                progressed = outward.pump() | (not inward.done and inward.pump())
                if inward.done and not plain_closed:
                    plain_closed = True
                    with contextlib.suppress(OSError):
                        plain.shutdown(socket.SHUT_WR)  # the other direction may still carry a reply
                if progressed or outward.done:
                    continue
                interest: dict[socket.socket, int] = {}
                for leg in (outward, inward):
                    for sock, event in leg.waits.items():
                        interest[sock] = interest.get(sock, 0) | event
                for sock, events in interest.items():
                    selector.register(sock, events)
                selector.select()
                for sock in interest:
                    selector.unregister(sock)
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            tls.unwrap()  # close_notify, best effort: the peer reads a clean end
        tls.close()
        plain.close()
    return outward.moved, inward.moved


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE.items():
        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _Proxy:
    """Listeners whose accepted connections each get a relay thread; the event loop only accepts."""

    def __init__(self, key: str, side: str) -> None:
        self.key = key
        self.side = side
        self.listeners: list[socket.socket] = []
        self.tasks: list[asyncio.Task[None]] = []  # one accept loop per listener

    def _listen(self, listener: socket.socket, channel: str, open_relay: Opener) -> None:
        listener.setblocking(False)
        self.listeners.append(listener)
        self.tasks.append(asyncio.get_running_loop().create_task(
            self._accept(listener, channel, open_relay), name=f"migration-{self.key[:8]}-accept-{channel}"))

    async def _accept(self, listener: socket.socket, channel: str, open_relay: Opener) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                accepted, _peer = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of file descriptors: say so, and go on accepting
                log.warning("migration=%s event=%s-accept-failed channel=%s error=%r", self.key, self.side, channel,
                            str(exc))
                await asyncio.sleep(1)
                continue
            threading.Thread(target=self._carry, args=(channel, accepted, open_relay), daemon=True,
                             name=f"migration-{self.key[:8]}-{channel}").start()

    def _carry(self, channel: str, accepted: socket.socket, open_relay: Opener) -> None:
        """One accepted connection (in its thread): open the onward one, relay, log the byte counts."""
        try:
            accepted.setblocking(True)
            tls, plain, accepted_is_tls = open_relay(accepted)
        except (OSError, ssl.SSLError) as exc:
            log.warning("migration=%s event=%s-connect-failed channel=%s error=%r", self.key, self.side, channel,
                        str(exc))
            accepted.close()
            return
        to_tls, to_plain = _relay(tls, plain)
        forwarded, returned = (to_plain, to_tls) if accepted_is_tls else (to_tls, to_plain)
        log.info("migration=%s event=channel-closed side=%s channel=%s bytes_forwarded=%d bytes_returned=%d",
                 self.key, self.side, channel, forwarded, returned)

    async def close(self) -> None:
        """Stop accepting; connections already relayed run on until their ends close them."""
        for task in self.tasks:
            task.cancel()
        for listener in self.listeners:
            listener.close()
        self.tasks.clear()
        self.listeners.clear()


class TargetProxy(_Proxy):
    """TLS listeners on the handler's address, one per channel, each forwarding to a unix socket here."""

    def __init__(self, key: str, address: str, sockets: dict[str, Path], context: ssl.SSLContext) -> None:
        super().__init__(key, "target")
        self.address = address
        self.sockets = sockets  # channel -> unix socket of the target launcher
        self.context = context
        self.ports: dict[str, int] = {}  # handler port (as text) -> KubeVirt's launcher port of the channel

    async def start(self) -> dict[str, int]:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        for channel, path in self.sockets.items():
            listener = socket.create_server((self.address, 0), family=family)
            self.ports[str(listener.getsockname()[1])] = CHANNEL_PORTS[channel]
            self._listen(listener, channel, self._opener(path))
        log.info("migration=%s event=target-proxy-listening address=%s ports=%s", self.key, self.address,
                 ",".join(self.ports))
        return self.ports

    def _opener(self, path: Path) -> Opener:
        def open_relay(accepted: socket.socket) -> tuple[ssl.SSLSocket, socket.socket, bool]:
            accepted.settimeout(CONNECT_TIMEOUT)
            _keepalive(accepted)
            tls = self.context.wrap_socket(accepted, server_side=True)  # refuses a peer without our CA's cert
            inner = socket.socket(socket.AF_UNIX)
            try:
                inner.settimeout(CONNECT_TIMEOUT)
                inner.connect(str(path))
            except OSError:
                inner.close()
                tls.close()
                raise
            return tls, inner, True
        return open_relay


class SourceProxy(_Proxy):
    """Unix listeners where the source launcher connects, each forwarding over TLS to the target handler."""

    def __init__(self, key: str, directory: Path, address: str, ports: dict[str, int],
                 context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(key, "source")
        self.directory = directory
        self.address = address
        by_channel = {v: int(k) for k, v in ports.items()}
        self.ports = {channel: by_channel[code] for channel, code in CHANNEL_PORTS.items() if code in by_channel}
        self.context = context
        self.server_name = server_name

    async def start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for channel, port in self.ports.items():
            path = self.directory / f"{channel}.sock"
            path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(path))
            path.chmod(0o600)
            listener.listen()
            self._listen(listener, channel, self._opener(port))
        log.info("migration=%s event=source-proxy-listening dir=%s target=%s", self.key, self.directory, self.address)

    def _opener(self, port: int) -> Opener:
        def open_relay(accepted: socket.socket) -> tuple[ssl.SSLSocket, socket.socket, bool]:
            outer = socket.create_connection((self.address, port), timeout=CONNECT_TIMEOUT)
            try:
                _keepalive(outer)
                tls = self.context.wrap_socket(outer, server_hostname=self.server_name)
            except (OSError, ssl.SSLError):
                outer.close()
                raise
            return tls, accepted, False
        return open_relay

    async def close(self) -> None:
        await super().close()
        for channel in self.ports:
            (self.directory / f"{channel}.sock").unlink(missing_ok=True)
