"""Which cluster a notebook talks to, and the one sync adapter between blocking work and widgets.

kvtool's core (plan, apply, watch) is synchronous: the `kubernetes` client
blocks. Inside Jupyter the kernel runs an asyncio loop on the main thread and
widget messages must come from that thread, so the Portal runs blocking work
on worker threads and hands every widget update back to the loop
(call_soon_threadsafe). Outside a kernel (pytest, scripts) there is no loop;
updates then run at once under a lock. Every widget goes through this one
adapter; nothing here is written twice for sync and async callers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kvtool.kube import clients
from kvtool.kube import config as kubeconfig
from kvtool.kube.resources import Resources

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Connection:
    """A cluster: the client, its API server URL (plans record it) and where the kubeconfig came from."""

    res: Resources
    server: str
    kubeconfig: kubeconfig.ResolvedKubeconfig


def connect(kubeconfig_path: str | None = None, context: str | None = None) -> Connection:
    """Resolve the kubeconfig as every kvtool command does (--kubeconfig > $KUBECONFIG > embedded > ~/.kube)."""
    resolved = kubeconfig.resolve(kubeconfig_path, context)
    api = clients.api_client(resolved.path, resolved.context)
    return Connection(Resources(api), api.configuration.host, resolved)


class Portal:
    """Run blocking work off the kernel's loop; bring widget updates back onto it, in order."""

    def __init__(self, workers: int = 4) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # no kernel: updates run in the calling thread
        self._loop_thread = threading.get_ident() if self._loop else None
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kvtool-notebook")
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()

    @property
    def on_loop(self) -> bool:
        """True on the thread that owns the widgets (or anywhere, when there is no kernel loop)."""
        return self._loop is None or threading.get_ident() == self._loop_thread

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a widget update on the loop thread (now, if already there)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            with self._lock:
                _run_logged(fn, *args)
            return
        if threading.get_ident() == self._loop_thread:
            self.drain()  # earlier updates first
            _run_logged(fn, *args)
            return
        self._queue.put(lambda: fn(*args))
        loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """Run queued updates; called by the loop, or by a cell that blocks the loop while waiting."""
        while True:
            try:
                fn = self._queue.get_nowait()
            except queue.Empty:
                return
            _run_logged(fn)

    def submit(self, work: Callable[[], T], on_error: Callable[[BaseException], None] | None = None) -> Future[T]:
        """Run work on a worker thread; its failure goes to on_error on the loop thread."""
        fut = self._pool.submit(work)
        with self._pending_lock:
            self._pending.add(fut)

        def done(f: Future[T]) -> None:
            exc = f.exception()
            if exc is not None:
                if on_error is None:
                    log.error("notebook background task failed", exc_info=exc)
                else:
                    self.call(on_error, exc)
            with self._pending_lock:
                self._pending.discard(f)

        fut.add_done_callback(done)
        return fut

    def wait_idle(self, timeout: float = 60) -> None:
        """Until submitted work has finished and its updates ran (tests, and cells that must block)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} notebook task(s) still running after {timeout:.0f}s")
            self.pause(0.05)
        self.drain()

    def pause(self, seconds: float) -> None:
        """Sleep, running queued widget updates meanwhile when called on the (blocked) loop thread."""
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self.drain()
        time.sleep(seconds)
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self.drain()


def _run_logged(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # a failing widget update must not kill the loop or the worker
        log.exception("notebook widget update failed")


_default: Portal | None = None
_default_lock = threading.Lock()


def default_portal() -> Portal:
    """The kernel's shared portal, created on first use (from a cell, so it sees the kernel's loop)."""
    global _default
    with _default_lock:
        if _default is None or (_default._loop is not None and _default._loop.is_closed()):
            _default = Portal()
        return _default
