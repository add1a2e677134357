"""A rate-limited work queue of keys, after client-go's workqueue: no work is ever silently dropped.

Watch events only *add keys*; workers take one key at a time and sync it from the caches. A key
added while it is being processed is processed again right after (never twice at once). A sync
that raises is retried with per-key exponential backoff (client-go's ItemExponentialFailureRateLimiter)
and logged with its key and reason; a successful one resets the key's backoff, and may ask to be
run again after a delay. A periodic resync re-adds every known key, so even a lost event heals.
Every task and timer is held by the queue and cancelled on stop: nothing is garbage-collected
mid-flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger("kvtool.workqueue")

K = TypeVar("K", bound=Hashable)
# What a sync returns: None when done, or seconds after which the key wants another sync.
Process = Callable[[K], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    def __init__(self, name: str, process: Process[K], *, workers: int = 4, base_delay: float = 0.1,
                 max_delay: float = 60.0, resync: float | None = None,
                 keys: Callable[[], Iterable[K]] | None = None, forget_on_success: bool = True) -> None:
        self.name = name
        # False when a key's work outlives its sync (e.g. a worker task it starts): the owner then calls
        # forget() once that work has proved healthy, so the backoff keeps growing until it has.
        self.forget_on_success = forget_on_success
        self.process = process
        self.workers = workers
        self.base_delay, self.max_delay = base_delay, max_delay
        self.resync, self.keys = resync, keys
        self.queue: asyncio.Queue[K] = asyncio.Queue()
        self.queued: set[K] = set()
        self.processing: set[K] = set()
        self.dirty: set[K] = set()
        self.failures: dict[K, int] = {}
        self.timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # -- adding keys -----------------------------------------------------------------
    def add(self, key: K) -> None:
        if key in self.processing:
            self.dirty.add(key)  # run again once the current sync ends
        elif key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Add the key after `delay` seconds; an earlier pending add wins over a later one."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        pending = self.timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self.timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: K) -> None:
        self.timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        """Add the key after its backoff (base * 2^(failures-1), capped); the delay."""
        failures = self.failures.get(key, 0) + 1
        self.failures[key] = failures
        delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self.failures.pop(key, None)

    def __len__(self) -> int:
        return len(self.queued)

    # -- running -------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.workers):
            self.tasks.add(loop.create_task(self._work(), name=f"{self.name}-worker-{i}"))
        if self.resync and self.keys is not None:
            self.tasks.add(loop.create_task(self._resync(), name=f"{self.name}-resync"))

    async def stop(self) -> None:
        for _when, timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def _resync(self) -> None:
        assert self.resync is not None and self.keys is not None
        while True:
            await asyncio.sleep(self.resync)
            for key in list(self.keys()):
                self.add(key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            self.processing.add(key)
            try:
                again = await self.process(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.add_rate_limited(key)
                log.warning("queue=%s key=%s event=retry failures=%d in=%.2fs error=%r", self.name, _show(key),
                            self.failures[key], delay, str(exc) or type(exc).__name__)
            else:
                if self.forget_on_success:
                    self.forget(key)
                if again is not None:
                    self.add_after(key, again)
            finally:
                self.processing.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.add(key)


def _show(key: Hashable) -> str:
    return "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
