"""The migration proxy: the source launcher's sockets, over TLS, to the target launcher's (KubeVirt's design).

On the source node the handler listens on unix sockets in `<sockets>/migration/<vmi uid>/`, where
the source libvirtd and QEMU connect (launcher/migration.py); each connection is forwarded over TLS
to the target node's handler, which forwards it to the target launcher's libvirtd socket or to the
unix socket the target QEMU listens on at the same path. Three channels: libvirt's RPC, QEMU's
migration stream and the NBD disk copy. KubeVirt names them by the launcher's ports; so does
`targetDirectMigrationNodePorts` (handler port -> 0 libvirt, 49152 migration, 49153 disks).

Bytes move in the handler's event loop through asyncio's TLS streams (memory BIOs, one thread). Blocking
SSL sockets in two threads per connection measured faster (~650 against ~350 MB/s for a proxy pair) but
read and write one OpenSSL connection from two threads at once, which OpenSSL does not allow: post-copy,
whose target asks for pages over the same stream the source sends them on, hung that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("kvtool.handler.migration")

CHANNEL_PORTS = {"libvirt": 0, "migration": 49152, "disks": 49153}
BUFFER = 1 << 18
Forward = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    moved = 0
    try:
        while chunk := await reader.read(BUFFER):
            writer.write(chunk)
            moved += len(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
    return moved


async def _splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, int]:
    try:
        sent, received = await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
        return sent, received
    finally:
        for _, writer in (a, b):
            writer.close()


async def _carry(key: str, side: str, channel: str, accepted: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 onward: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """One accepted connection, spliced to its onward one until both ends are done; logged with its byte counts."""
    inward, outward = await _splice(accepted, onward)
    log.info("migration=%s event=channel-closed side=%s channel=%s bytes_forwarded=%d bytes_returned=%d", key, side,
             channel, inward, outward)


class _Proxy:
    servers: list[asyncio.base_events.Server]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()


class TargetProxy(_Proxy):
    """TLS listeners on the handler's address, one per channel, each forwarding to a unix socket here."""

    def __init__(self, key: str, address: str, sockets: dict[str, Path], context: ssl.SSLContext) -> None:
        self.key = key
        self.address = address
        self.sockets = sockets  # channel -> unix socket of the target launcher
        self.context = context
        self.servers: list[asyncio.base_events.Server] = []
        self.ports: dict[str, int] = {}  # handler port (as text) -> KubeVirt's launcher port of the channel

    async def start(self) -> dict[str, int]:
        for channel, path in self.sockets.items():
            server = await asyncio.start_server(self._forwarder(channel, path), self.address, 0, ssl=self.context)
            self.servers.append(server)
            port = server.sockets[0].getsockname()[1]
            self.ports[str(port)] = CHANNEL_PORTS[channel]
        log.info("migration=%s event=target-proxy-listening address=%s ports=%s", self.key, self.address,
                 ",".join(self.ports))
        return self.ports

    def _forwarder(self, channel: str, path: Path) -> Forward:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                inner = await asyncio.open_unix_connection(str(path))
            except OSError as exc:
                log.warning("migration=%s event=target-connect-failed channel=%s error=%r", self.key, channel,
                            str(exc))
                writer.close()
                return
            await _carry(self.key, "target", channel, (reader, writer), inner)
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
        self.servers: list[asyncio.base_events.Server] = []

    async def start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for channel, port in self.ports.items():
            path = self.directory / f"{channel}.sock"
            path.unlink(missing_ok=True)
            server = await asyncio.start_unix_server(self._forwarder(channel, port), str(path))
            path.chmod(0o600)
            self.servers.append(server)
        log.info("migration=%s event=source-proxy-listening dir=%s target=%s", self.key, self.directory, self.address)

    def _forwarder(self, channel: str, port: int) -> Forward:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                outer = await asyncio.open_connection(self.address, port, ssl=self.context,
                                                      server_hostname=self.server_name)
            except (OSError, ssl.SSLError) as exc:
                log.warning("migration=%s event=source-connect-failed channel=%s target=%s:%d error=%r", self.key,
                            channel, self.address, port, str(exc))
                writer.close()
                return
            await _carry(self.key, "source", channel, (reader, writer), outer)
        return forward

    async def close(self) -> None:
        await super().close()
        for channel in self.ports:
            (self.directory / f"{channel}.sock").unlink(missing_ok=True)
