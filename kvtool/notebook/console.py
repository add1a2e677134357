"""A per-VM console tail: the last lines of a VM's serial console log, optionally followed.

The log is found the way `kvtool console --tail` finds it (kvtool.consoles:
VMI → launcher socket → the launcher's consoleLog path). Following re-reads
that local file once a second on a worker thread; the text reaches the page
in one HTML assignment.
"""

from __future__ import annotations

import html
import re
import threading
import time
from pathlib import Path

import ipywidgets as w

from kvtool import consoles
from kvtool.errors import KvtoolError
from kvtool.notebook.live import LiveTable
from kvtool.notebook.session import Connection, Portal, connect, default_portal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")
FOLLOW_SECONDS = 1.0


def clean(data: bytes) -> str:
    """Console bytes as text a page can show: UTF-8 (replacing bad bytes), no terminal escapes."""
    return ANSI.sub("", data.decode("utf-8", errors="replace"))


class ConsoleView(w.VBox):
    """Pick a VM (from a LiveTable, or type its name), show its console log's tail; Follow keeps it current."""

    def __init__(self, live: LiveTable | None = None, *, namespace: str = "default",
                 connection: Connection | None = None, lines: int = 40, portal: Portal | None = None) -> None:
        self.portal = portal or default_portal()
        self.namespace = namespace
        self._live = live
        self._conn = connection  # else the live table's, on first use: building the view needs no cluster
        self._follow_stop = threading.Event()
        self._follow_stop.set()
        self.vm = w.Combobox(description="VM", placeholder="VM name", ensure_option=False)
        self.lines = w.IntText(value=lines, description="Lines", layout=w.Layout(width="12em"))
        self.tail_button = w.Button(description="Tail", icon="terminal")
        self.follow = w.ToggleButton(description="Follow", icon="refresh", value=False)
        self.log_view = w.HTML("<i>Pick a running VM and click Tail.</i>")
        self.message = w.HTML()
        for widget, cls in ((self.vm, "kvt-console-vm"), (self.lines, "kvt-console-lines"),
                            (self.tail_button, "kvt-console-tail"), (self.follow, "kvt-console-follow"),
                            (self.log_view, "kvt-console-log"), (self.message, "kvt-console-message")):
            widget.add_class(cls)
        self.tail_button.on_click(lambda _: self._tail_in_background())
        self.follow.observe(lambda change: self._set_follow(bool(change["new"])), "value")
        if live is not None:
            live.observe(lambda change: setattr(self.vm, "options", tuple(change["new"])), "names")
            self.vm.options = tuple(live.names)
        super().__init__([w.HBox([self.vm, self.lines, self.tail_button, self.follow]), self.message, self.log_view])
        self.add_class("kvt-console")

    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._live.connection() if self._live is not None else connect()
        return self._conn

    def _namespace_of(self, name: str) -> str:
        if self._live is not None:
            frame = self._live.frame
            match = frame[frame["name"] == name]
            if not match.empty and match.iloc[0]["namespace"]:
                return str(match.iloc[0]["namespace"])
        return self.namespace

    def _log_path(self, name: str) -> Path:
        return consoles.console_log(self.connection().res, self._namespace_of(name), name)

    def tail(self, name: str | None = None, lines: int | None = None) -> str:
        """The last lines of the VM's console (and show them); KvtoolError when it has no console yet."""
        name = (name or self.vm.value).strip()
        if not name:
            raise KvtoolError("pick a VM first")
        lines = self.lines.value if lines is None else lines
        try:
            text = clean(consoles.tail(self.connection().res, self._namespace_of(name), name, max(0, lines)))
        except KvtoolError as exc:
            self.portal.call(self._show, name, None, str(exc))
            raise
        self.portal.call(self._show, name, text, "")
        return text

    def wait_for(self, name: str, text: str, timeout: float = 120) -> str:
        """Re-read the VM's console log until `text` appears (a boot message, user data's output); show it."""
        deadline = time.monotonic() + timeout
        path: Path | None = None
        last_error = ""
        while time.monotonic() < deadline:
            try:
                path = path or self._log_path(name)
                data = clean(path.read_bytes())
            except (KvtoolError, OSError) as exc:  # not running yet, or no log yet
                last_error, data = str(exc), ""
            if text in data:
                lines = self.lines.value
                shown = "".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else data
                self.portal.call(self._show, name, shown, "")
                return shown
            self.portal.pause(0.5)
        raise TimeoutError(f"{text!r} did not appear on the console of {name} within {timeout:.0f}s"
                           + (f" ({last_error})" if last_error else ""))

    def _show(self, name: str, text: str | None, error: str) -> None:
        self.message.value = f"<span style='color:#cf222e'>{html.escape(error)}</span>" if error else ""
        if text is not None:
            self.log_view.value = (f"<div style='opacity:.7'>{html.escape(name)}: last {self.lines.value} line(s)</div>"
                              "<pre style='background:#0d1117;color:#e6edf3;padding:6px;max-height:24em;"
                              f"overflow:auto;white-space:pre-wrap'>{html.escape(text)}</pre>")

    def _tail_in_background(self) -> None:
        name = self.vm.value
        self.portal.submit(lambda: self.tail(name), on_error=lambda exc: self._show(name, None, str(exc)))

    def _set_follow(self, on: bool) -> None:
        if not on:
            self._follow_stop.set()
            return
        name = self.vm.value.strip()
        self._follow_stop = stop = threading.Event()
        threading.Thread(target=self._follow, args=(name, stop), daemon=True, name="kvtool-console-follow").start()

    def _follow(self, name: str, stop: threading.Event) -> None:
        try:
            path = self._log_path(name)
        except KvtoolError as exc:
            self.portal.call(self._show, name, None, str(exc))
            self.portal.call(setattr, self.follow, "value", False)
            return
        last = b""
        while not stop.is_set():
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.portal.call(self._show, name, None, f"console log unreadable: {exc}")
                return
            if data != last:
                last = data
                lines = self.lines.value
                shown = b"".join(data.splitlines(keepends=True)[-lines:] if lines > 0 else [data])
                self.portal.call(self._show, name, clean(shown), "")
            stop.wait(FOLLOW_SECONDS)
