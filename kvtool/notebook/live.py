"""The live status table: a watch on VMs and VMIs → a pandas DataFrame → one Output assignment.

Two background threads (a Kubernetes watch blocks) LIST then WATCH the
stack's VMs and VMIs from the list's resourceVersion, relisting only when
the server says the version is gone or the connection fails. Every event
updates an in-memory cache; the table is re-rendered on the kernel's loop
(through the Portal), coalescing bursts, and written to the Output widget in
one `outputs = (...)` assignment: clear_output() followed by a display
arrives out of order in the browser.
"""

from __future__ import annotations

import datetime as dt
import html
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w
import pandas as pd
import traitlets
import urllib3

from kvtool import inventory
from kvtool.api.types import KVTOOL, Kind
from kvtool.errors import KvtoolError
from kvtool.kube import clients
from kvtool.kube.resources import Resources, list_watch, target_for
from kvtool.notebook import manifest as mf
from kvtool.notebook.session import Connection, Portal, connect, default_portal

LIVE_COLUMNS = ["name", "status", "phase", "node", "ip", "cpu", "memory", "age", "message"]
WATCH_SECONDS = 20  # how long one watch request lasts; also how late a stopped table's threads exit
ObjKey = tuple[str, str]


class LiveTable(w.VBox):
    """A stack's VMs, kept current by watches; `frame` is the latest DataFrame."""

    names: traitlets.List[str] = traitlets.List()  # VM names in the table, for the console view's dropdown

    def __init__(self, stack: str | None = None, *, namespace: str | None = None,
                 labels: Mapping[str, str] | None = None, connection: Connection | None = None,
                 columns: list[str] | None = None, portal: Portal | None = None, start: bool = True,
                 api: str = "auto", refresh: float | None = None) -> None:
        self.portal = portal or default_portal()
        # Seconds between redraws with no event: the rows' ages and a lab's time left change by the clock alone.
        self.refresh = refresh
        self.columns = list(columns or LIVE_COLUMNS)
        self.namespace = namespace
        self._conn = connection
        self._watch_res: Resources | None = None
        self._filter: tuple[str | None, dict[str, str]] = (stack, dict(labels or {}))
        self.api = api  # "kvtool", "kubevirt" or "auto" (kvtool's VM API where served, else KubeVirt's)
        self._target = KVTOOL
        self._cache: dict[Kind, dict[ObjKey, dict[str, Any]]] = {KVTOOL.vm: {}, KVTOOL.vmi: {}}
        self._listed: set[Kind] = set()
        self._cond = threading.Condition()
        self._gen = 0
        self._stopped = threading.Event()
        self._render_scheduled = False
        self._frame = inventory.frame([])
        self._error = ""
        self.updated_at: dt.datetime | None = None
        self.stack_filter = w.Text(value=stack or "", description="Stack", placeholder="every stack")
        self.label_filter = w.Text(value=",".join(f"{k}={v}" for k, v in self._filter[1].items()),
                                   description="Labels", placeholder="course=intro-linux")
        self.filter_button = w.Button(description="Filter", icon="filter")
        self.status = w.HTML()
        self.out = w.Output()
        for widget, cls in ((self.stack_filter, "kvt-live-stack"), (self.label_filter, "kvt-live-labels"),
                            (self.filter_button, "kvt-live-filter"), (self.status, "kvt-live-status"),
                            (self.out, "kvt-live-table")):
            widget.add_class(cls)
        self.filter_button.on_click(lambda _: self._filter_clicked())
        super().__init__([w.HBox([self.stack_filter, self.label_filter, self.filter_button]), self.status, self.out])
        self.add_class("kvt-live")
        self._render()
        if start:
            self.start()

    # ---- public surface

    @property
    def frame(self) -> pd.DataFrame:
        """The latest table (all columns of kvtool.inventory.frame), a copy the caller may change."""
        with self._cond:
            return self._frame.copy()

    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect()
        return self._conn

    def start(self) -> None:
        """(Re)start the watches for the current filter."""
        conn = self.connection()
        if self._watch_res is None:
            # Its own connection pool: a watch abandoned mid-stream must not hand a half-read
            # connection back to the pool that plan and apply use.
            self._watch_res = Resources(clients.api_client(conn.kubeconfig.path, conn.kubeconfig.context))
        target = target_for(conn.res, self.api)
        with self._cond:
            if target is not self._target:
                self._target = target
                self._cache = {target.vm: {}, target.vmi: {}}
            self._gen += 1
            gen = self._gen
            self._stopped.clear()
            self._listed.clear()
            for cache in self._cache.values():
                cache.clear()
        stack, labels = self._filter
        for kind, selector in ((target.vm, inventory.selector(stack, labels)),
                               (target.vmi, inventory.selector(stack))):
            threading.Thread(target=self._watch, args=(kind, selector, gen), daemon=True,
                             name=f"kvtool-watch-{kind.plural}").start()
        if self.refresh:
            threading.Thread(target=self._tick, args=(gen, self.refresh), daemon=True, name="kvtool-live-tick").start()

    def stop(self) -> None:
        """Stop watching; the threads finish their current request (at most WATCH_SECONDS) and exit."""
        with self._cond:
            self._gen += 1
            self._stopped.set()
        self.portal.call(self._render)

    def set_filter(self, stack: str | None = None, labels: Mapping[str, str] | None = None) -> None:
        self._filter = (stack or None, dict(labels or {}))
        self.stack_filter.value = stack or ""
        self.label_filter.value = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        self.start()

    def wait_for(self, predicate: Callable[[pd.DataFrame], bool], timeout: float = 120,
                 what: str = "the condition") -> pd.DataFrame:
        """Block until predicate(frame) holds on a fully listed table; the table keeps updating meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                ready = len(self._listed) == len(self._cache) and not self._stopped.is_set()
                frame = self._frame.copy()
            if ready and predicate(frame):
                return frame
            if time.monotonic() > deadline:
                shown = frame[self.columns].to_string(index=False) if not frame.empty else "(no VMs)"
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last seen:\n{shown}"
                                   + (f"\nwatch error: {self._error}" if self._error else ""))
            self.portal.pause(0.1)  # runs the table's own updates when this blocks the kernel's loop

    # ---- watching (background threads)

    def _active(self, gen: int) -> bool:
        return gen == self._gen and not self._stopped.is_set()

    def _watch(self, kind: Kind, selector: str, gen: int) -> None:
        res = self._watch_res
        assert res is not None
        backoff = 0.5
        while self._active(gen):
            try:
                for etype, obj in list_watch(res, kind, self.namespace, selector, watch_seconds=lambda: WATCH_SECONDS):
                    if not self._active(gen):
                        return
                    if etype == "SYNC":
                        self._apply(kind, gen, replace=obj)
                    elif etype != "IDLE":
                        self._apply(kind, gen, event=(etype, obj))
                    backoff = 0.5
                    self._error = ""
            except (KvtoolError, OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
                self._error = str(exc).splitlines()[0]
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 10)
                self._schedule_render()

    def _tick(self, gen: int, every: float) -> None:
        """Recompute the rows every `every` seconds while this generation of watches runs."""
        while not self._stopped.wait(every) and self._active(gen):
            with self._cond:
                self._frame = self._compute()
            self._schedule_render()

    def _apply(self, kind: Kind, gen: int, replace: list[dict[str, Any]] | None = None,
               event: tuple[str, dict[str, Any]] | None = None) -> None:
        with self._cond:
            if not self._active(gen):
                return
            cache = self._cache[kind]
            if replace is not None:
                cache.clear()
                cache.update({_key(o): o for o in replace})
                self._listed.add(kind)
            elif event is not None:
                typ, obj = event
                if typ == "DELETED":
                    cache.pop(_key(obj), None)
                else:
                    cache[_key(obj)] = obj
            self._frame = self._compute()
            self._cond.notify_all()
        self._schedule_render()

    def _compute(self) -> pd.DataFrame:
        now = dt.datetime.now(dt.UTC)
        vmis = self._cache[self._target.vmi]
        rows = [inventory.vm_row(vm, vmis.get(k), now) for k, vm in self._cache[self._target.vm].items()]
        rows.sort(key=lambda r: (r["namespace"] or "", r["name"]))
        return inventory.frame(rows)

    # ---- rendering (on the kernel's loop)

    def _schedule_render(self) -> None:
        with self._cond:
            if self._render_scheduled:
                return  # the pending render will show this change too
            self._render_scheduled = True
        self.portal.call(self._render)

    def _render(self) -> None:
        with self._cond:
            self._render_scheduled = False
            frame = self._frame.copy()
            listed = len(self._listed) == len(self._cache)
        self.updated_at = dt.datetime.now()
        stack = self._filter[0]
        shown = frame[self.columns]
        if frame.empty:
            body = f"<i>No VMs{f' in stack {html.escape(stack)}' if stack else ''}.</i>"
            text = "No VMs."
        else:
            body = shown.to_html(index=False, escape=True, border=0, classes="kvt-live-df", na_rep="")
            text = shown.to_string(index=False)
        # One assignment replaces the whole output: no clear-then-append race in the browser.
        self.out.outputs = ({"output_type": "display_data", "metadata": {},
                             "data": {"text/html": body, "text/plain": text}},)
        self.names = list(frame["name"]) if not frame.empty else []
        state = ("stopped" if self._stopped.is_set() else "watching" if listed else "listing…")
        counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        error = f" · <span style='color:#cf222e'>{html.escape(self._error)}</span>" if self._error else ""
        self.status.value = (f"<span style='opacity:.75'>{state} · stack {html.escape(stack or 'any')} · "
                             f"{len(frame)} VM(s){': ' + html.escape(summary) if summary else ''} · "
                             f"updated {self.updated_at:%H:%M:%S}</span>{error}")

    def _filter_clicked(self) -> None:
        try:
            labels = mf.parse_pairs(self.label_filter.value)
        except ValueError as exc:
            self.status.value = f"<span style='color:#cf222e'>{html.escape(str(exc))}</span>"
            return
        self.set_filter(self.stack_filter.value.strip() or None, labels)


def _key(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta.get("name", ""))
