"""A launcher's `watch` stream as an async iterator: the handler's workers follow their domains with it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kvtool.launchercom.client import LauncherClient, LauncherError

log = logging.getLogger("kvtool.handler")
async def watch_launcher(socket: Path, key: tuple[str, str]) -> AsyncIterator[dict[str, Any]]:
    """The launcher's `watch` stream (a blocking client pumped from a thread) as an async iterator."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    client = LauncherClient(socket, timeout=None)
    done = object()

    def pump() -> None:
        try:
            for st in client.watch():
                loop.call_soon_threadsafe(queue.put_nowait, st)
        except (LauncherError, OSError) as exc:
            log.debug("vmi=%s/%s event=watch-ended detail=%r", *key, str(exc))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    threading.Thread(target=pump, daemon=True, name=f"watch-{key[1]}").start()
    try:
        while (item := await queue.get()) is not done:
            yield item
    finally:
        client.close()
