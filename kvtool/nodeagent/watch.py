"""The pods bound to this node, kept current by list + watch; and the agent's work queue.

The Node authorizer lets a node list and watch only pods with the field selector
spec.nodeName=<node>, which kopf cannot express, so this is a plain watch: resume from the last
resourceVersion, re-list on 410 Gone, reconnect with backoff. Every change puts the pod's uid on
the queue; the worker reads the latest object from here, never from the event.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

log = logging.getLogger("kvtool.nodeagent")

WATCH_TIMEOUT = 300
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0


class WorkQueue:
    """Keys to sync, each at most once in the ready set; delayed adds wait in a timer heap."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: dict[str, None] = {}
        self._timers: list[tuple[float, str]] = []

    def add(self, key: str, delay: float = 0.0) -> None:
        with self._cond:
            if delay <= 0:
                self._ready[key] = None
            else:
                heapq.heappush(self._timers, (time.monotonic() + delay, key))
            self._cond.notify()

    def get(self, timeout: float) -> str | None:
        """The next key due, or None after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    self._ready[heapq.heappop(self._timers)[1]] = None
                if self._ready:
                    key = next(iter(self._ready))
                    del self._ready[key]
                    return key
                if now >= deadline:
                    return None
                wake = min(deadline, self._timers[0][0]) if self._timers else deadline
                self._cond.wait(max(0.0, wake - now))


class PodWatch:
    """This node's pods by uid. `on_change(uid)` after each change; `on_list(uids)` after each full list."""

    def __init__(self, api: client.ApiClient, node: str, on_change: Callable[[str], None],
                 on_list: Callable[[set[str]], None], stop: threading.Event) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.selector = f"spec.nodeName={node}"
        self.on_change, self.on_list, self.stop = on_change, on_list, stop
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}
        self._last: dict[str, dict[str, Any]] = {}  # also pods already gone: their grace period matters
        self.synced = threading.Event()

    def get(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._pods.get(uid)

    def last_known(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._last.get(uid)

    def forget(self, uid: str) -> None:
        with self._lock:
            if uid not in self._pods:
                self._last.pop(uid, None)

    def uids(self) -> set[str]:
        with self._lock:
            return set(self._pods)

    def _list(self) -> str:
        items: list[dict[str, Any]] = []
        token = None
        while True:
            resp = self.core.list_pod_for_all_namespaces(field_selector=self.selector, limit=500, _continue=token,
                                                         _preload_content=False, _request_timeout=(10, 60))
            doc = json.loads(resp.data)
            items.extend(doc.get("items") or [])
            token = (doc.get("metadata") or {}).get("continue")
            if not token:
                break
        with self._lock:
            gone = set(self._pods) - {p["metadata"]["uid"] for p in items}
            self._pods = {p["metadata"]["uid"]: p for p in items}
            self._last.update(self._pods)
        self.synced.set()  # before the callbacks: the worker skips keys until the first list is in
        for uid in gone:
            self.on_change(uid)
        for uid in self.uids():
            self.on_change(uid)
        self.on_list(self.uids())
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, rv: str) -> str | None:
        """Follow events from rv until the server ends the watch; the rv to resume from, None to re-list."""
        resp = self.core.list_pod_for_all_namespaces(field_selector=self.selector, watch=True, resource_version=rv,
                                                     allow_watch_bookmarks=True, timeout_seconds=WATCH_TIMEOUT,
                                                     _preload_content=False, _request_timeout=(10, WATCH_TIMEOUT + 30))
        try:
            buf = b""
            for chunk in resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            log.info("event=watch-expired node=%s message=%r", self.node, obj.get("message"))
                            return None
                        raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if event.get("type") == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    with self._lock:
                        self._last[uid] = obj
                        if event["type"] == "DELETED":
                            self._pods.pop(uid, None)
                        else:
                            self._pods[uid] = obj
                    self.on_change(uid)
                if self.stop.is_set():
                    return rv
        finally:
            resp.release_conn()
        return rv

    def run(self) -> None:
        """List, then watch, until stop; every failure is logged and retried with backoff."""
        rv: str | None = None
        backoff = BACKOFF_START
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch(rv)
                backoff = BACKOFF_START
            except client.ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                log.warning("event=watch-reconnect node=%s status=%s error=%r retry_in=%.1fs", self.node,
                            exc.status, exc.reason, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception as exc:  # the loop's edge: connection resets, timeouts, bad lines
                log.warning("event=watch-reconnect node=%s error=%r retry_in=%.1fs", self.node, str(exc), backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
