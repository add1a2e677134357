"""The one DomainStatus of this launcher, and the queues of everyone watching it.

Writers (libvirt's event thread, the console-log tailer, request threads) call
update(); each `watch` connection has its own queue, so a slow reader still
sees every change, in order, and never blocks a writer.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from kvtool.launchercom import protocol

log = logging.getLogger("kvtool.launcher.status")


class StatusBoard:
    def __init__(self, name: str, uuid: str, console_log: str) -> None:
        self._status = protocol.domain_status(name=name, uuid=uuid, console_log=console_log)
        self._lock = threading.Lock()
        self._subscribers: list[queue.SimpleQueue[dict[str, Any] | None]] = []
        self._closed = False

    def get(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._status)

    @property
    def phase(self) -> str:
        with self._lock:
            return self._status["phase"]

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply changes (DomainStatus keys); publish the new status if anything changed. Returns it."""
        with self._lock:
            unknown = set(changes) - set(protocol.STATUS_KEYS)
            if unknown:
                raise KeyError(f"not DomainStatus keys: {sorted(unknown)}")
            if self._status["phase"] in protocol.FINAL_PHASES and changes.get("phase") not in (
                    None, self._status["phase"]):
                return copy.deepcopy(self._status)  # final is final: a late event must not revive it
            new = {**self._status, **copy.deepcopy(dict(changes))}
            if new == self._status:
                return copy.deepcopy(new)
            protocol.check_status(new)
            old_phase = self._status["phase"]
            self._status = new
            snapshot = copy.deepcopy(new)
            for subscriber in self._subscribers:
                subscriber.put(copy.deepcopy(new))
        if snapshot["phase"] != old_phase:
            log.info("event=phase phase=%s domain_state=%s reason=%s", snapshot["phase"], snapshot["domainState"],
                     snapshot["reason"] or "-")
        return snapshot

    def update_interface(self, index: int, changes: Mapping[str, Any]) -> None:
        with self._lock:
            interfaces = copy.deepcopy(self._status["interfaces"])
        if index >= len(interfaces):
            return
        interfaces[index].update(changes)
        self.update({"interfaces": interfaces})

    def subscribe(self) -> queue.SimpleQueue[dict[str, Any] | None]:
        """A queue holding the current status, then every change; None once the launcher closes the board."""
        subscriber: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self._lock:
            subscriber.put(copy.deepcopy(self._status))
            if self._closed:
                subscriber.put(None)
            else:
                self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: queue.SimpleQueue[dict[str, Any] | None]) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def close(self) -> None:
        """The launcher is exiting: end every watch after the last status."""
        with self._lock:
            self._closed = True
            for subscriber in self._subscribers:
                subscriber.put(None)
            self._subscribers.clear()
