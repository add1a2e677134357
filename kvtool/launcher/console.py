"""One console session: a client socket <-> a libvirt console stream, pumped by libvirt's event loop.

Both ends are non-blocking and registered with libvirt's default event loop
(what `virsh console` does), so a session costs no thread. Each direction has a
bounded buffer; while it is full, that side is not read (back-pressure reaches
the guest's UART instead of the launcher's memory).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import libvirt

log = logging.getLogger("kvtool.launcher.console")

CHUNK = 65536
BUFFER_MAX = 1 << 20

_STREAM_IN = libvirt.VIR_STREAM_EVENT_READABLE
_STREAM_OUT = libvirt.VIR_STREAM_EVENT_WRITABLE
_STREAM_END = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_FD_IN = libvirt.VIR_EVENT_HANDLE_READABLE
_FD_OUT = libvirt.VIR_EVENT_HANDLE_WRITABLE
_FD_END = libvirt.VIR_EVENT_HANDLE_ERROR | libvirt.VIR_EVENT_HANDLE_HANGUP


class ConsoleSession:
    """Started with an open stream and the client's socket (plus bytes the client already sent)."""

    def __init__(self, stream: libvirt.virStream, sock: socket.socket, pending: bytes = b"") -> None:
        self.stream = stream
        self.sock = sock
        self.to_guest = bytearray(pending)
        self.to_client = bytearray()
        self.closed = False
        self._lock = threading.RLock()
        sock.setblocking(False)
        self.stream.eventAddCallback(_STREAM_IN | _STREAM_END | (_STREAM_OUT if pending else 0), self._on_stream,
                                     None)
        self.watch = libvirt.virEventAddHandle(sock.fileno(), _FD_IN | _FD_END, self._on_socket, None)
        log.info("event=console-attached")

    # ---- event callbacks (libvirt's event thread)

    def _on_stream(self, _stream: libvirt.virStream, events: int, _opaque: object) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                if events & _STREAM_IN:
                    while len(self.to_client) < BUFFER_MAX:
                        data = self.stream.recv(CHUNK)
                        if isinstance(data, int):  # -2: nothing more for now
                            break
                        if not data:
                            self.close("guest side closed")
                            return
                        self.to_client += data
                    self._flush_client()
                if events & _STREAM_OUT:
                    self._flush_guest()
                if events & _STREAM_END and not events & _STREAM_IN:
                    self.close("console stream ended")
                    return
                self._update()
            except (libvirt.libvirtError, OSError) as exc:
                self.close(f"stream error: {exc}")

    def _on_socket(self, _watch: int, _fd: int, events: int, _opaque: object) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                if events & _FD_IN:
                    while len(self.to_guest) < BUFFER_MAX:
                        try:
                            data = self.sock.recv(CHUNK)
                        except BlockingIOError:
                            break
                        if not data:
                            self.close("client hung up")
                            return
                        self.to_guest += data
                    self._flush_guest()
                if events & _FD_OUT:
                    self._flush_client()
                if events & _FD_END and not events & _FD_IN:
                    self.close("client socket error")
                    return
                self._update()
            except (libvirt.libvirtError, OSError) as exc:
                self.close(f"socket error: {exc}")

    # ---- plumbing

    def _flush_client(self) -> None:
        while self.to_client:
            try:
                sent = self.sock.send(self.to_client)
            except BlockingIOError:
                return
            del self.to_client[:sent]

    def _flush_guest(self) -> None:
        while self.to_guest:
            sent = self.stream.send(bytes(self.to_guest[:CHUNK]))
            if sent == -2:
                return
            del self.to_guest[:sent]

    def _update(self) -> None:
        """Read a side only while its buffer has room; ask for writability while output waits."""
        if self.closed:
            return
        stream_events = (_STREAM_IN if len(self.to_client) < BUFFER_MAX else 0) | (
            _STREAM_OUT if self.to_guest else 0)
        fd_events = (_FD_IN if len(self.to_guest) < BUFFER_MAX else 0) | (_FD_OUT if self.to_client else 0)
        self.stream.eventUpdateCallback(stream_events | _STREAM_END)
        libvirt.virEventUpdateHandle(self.watch, fd_events | _FD_END)

    def close(self, why: str = "closed") -> None:
        """End the session from any thread; idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        log.info("event=console-detached why=%r", why)
        with contextlib.suppress(Exception):
            libvirt.virEventRemoveHandle(self.watch)
        with contextlib.suppress(Exception):
            self.stream.eventRemoveCallback()
        with contextlib.suppress(Exception):
            self.stream.abort()
        with contextlib.suppress(OSError):
            self.sock.close()
