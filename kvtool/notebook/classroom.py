"""A class in a notebook: upload the roster, one VM per student from a template, then each student's row with
its time left, a console per student, more time for everyone, and a reset to the start after a confirmation.

The same library calls as `kvtool apply --roster --ttl`, `kvtool lab extend` and `kvtool lab reset`
(kvtool.plan.roster, kvtool.labctl): what the notebook makes, the CLI sees, and the other way round.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w

from kvtool import labctl
from kvtool.api import expiry, timeutil
from kvtool.errors import KvtoolError
from kvtool.kube.resources import target_for
from kvtool.notebook.console import ConsoleView
from kvtool.notebook.live import LiveTable
from kvtool.notebook.message import message_html
from kvtool.notebook.planview import PlanView
from kvtool.notebook.session import Connection, Portal, connect, default_portal
from kvtool.plan import desired, planner, roster
from kvtool.plan.model import Plan

CLASS_COLUMNS = ["student", "name", "status", "ip", "expires", "message"]
REFRESH = 15.0  # seconds between redraws of the time left
RESET_TIMEOUT = 600.0  # seconds a reset waits for the restarted VMs to run again


def roster_html(students: roster.Roster) -> str:
    """The class list as read: login, how they log in (their key, or a password kept in a Secret), other columns."""
    extra = sorted({k for s in students.students for k in s.extra})
    head = "".join(f"<th style='padding:2px 8px;text-align:left'>{html.escape(h)}</th>"
                   for h in ("student", "login with", *extra))
    rows = []
    for s in students.students:
        how = f"key ({s.ssh_key.split()[0]})" if s.ssh_key else "password (kvtool lab passwords)"
        cells = (s.name, how, *(s.extra.get(k, "") for k in extra))
        rows.append("<tr class='kvt-roster-row'>" + "".join(
            f"<td style='padding:2px 8px'>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return (f"<div>{len(students.students)} student(s) from {html.escape(students.source)}</div>"
            f"<table class='kvt-roster-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


class Classroom(w.VBox):
    """Roster upload → plan → Apply; the class's live table (student, VM, status, IP, time left); Extend; Reset…;
    a console per student. Every button has a method of the same meaning for cells."""

    def __init__(self, stack: str, template: str | Path | Sequence[Mapping[str, Any]], *,
                 namespace: str = "default", ttl: str | None = None, on_expiry: str = expiry.STOP,
                 connection: Connection | None = None, portal: Portal | None = None, start: bool = True,
                 refresh: float = REFRESH, api: str = "auto", baseline: bool = True) -> None:
        self.stack = desired.validate_stack(stack)
        self.api = api  # whose VM API: "kvtool", "kubevirt" or "auto" (kvtool's where the cluster serves it)
        self.namespace = namespace
        self.templates = self._templates(template)
        self.roster: roster.Roster | None = None
        self.portal = portal or default_portal()
        self._conn = connection
        self.upload = w.FileUpload(accept=".csv,text/csv", multiple=False, description="Roster CSV")
        self.roster_view = w.HTML("<i>Upload the class list: a CSV with a <code>name</code> column (each "
                                  "student's login), an optional <code>ssh_key</code> column, any others.</i>")
        self.ttl = w.Text(value=ttl or "", description="Time limit", placeholder="e.g. 3h; empty: no end")
        self.on_expiry = w.Dropdown(options=list(expiry.POLICIES), value=on_expiry, description="Then")
        # VMs with claims are snapshotted before their first boot, so Reset can put their disks back.
        self.baseline = w.Checkbox(value=baseline, description="Baseline snapshot of disks (for Reset)")
        self.preview_button = w.Button(description="Preview plan", button_style="info", icon="search",
                                       disabled=True)
        self.plan_view = PlanView(self.connection, lambda: self.stack, self.portal, api=api)
        self.live = LiveTable(self.stack, namespace=namespace, connection=connection, columns=CLASS_COLUMNS,
                              portal=self.portal, start=False, refresh=refresh, api=api)
        self.extend_by = w.Text(value="1h", description="Extend by", layout=w.Layout(width="16em"))
        self.extend_button = w.Button(description="Extend", icon="clock-o")
        self.reset_button = w.Button(description="Reset…", button_style="warning", icon="undo")
        self.reset_confirm = w.Button(description="Yes, reset", button_style="danger")
        self.reset_cancel = w.Button(description="Cancel")
        self.reset_question = w.HTML()
        self.reset_box = w.HBox([self.reset_question, self.reset_confirm, self.reset_cancel],
                                layout=w.Layout(display="none"))
        self.message = w.HTML()
        self.console = ConsoleView(self.live, namespace=namespace, connection=connection, portal=self.portal)
        for widget, cls in ((self.upload, "kvt-roster-upload"), (self.roster_view, "kvt-roster"),
                            (self.ttl, "kvt-roster-ttl"), (self.on_expiry, "kvt-roster-on-expiry"),
                            (self.baseline, "kvt-roster-baseline"),
                            (self.preview_button, "kvt-roster-preview"), (self.extend_by, "kvt-lab-extend-by"),
                            (self.extend_button, "kvt-lab-extend"), (self.reset_button, "kvt-lab-reset"),
                            (self.reset_confirm, "kvt-lab-reset-confirm"), (self.reset_cancel, "kvt-lab-reset-cancel"),
                            (self.reset_box, "kvt-lab-reset-box"), (self.message, "kvt-classroom-message")):
            widget.add_class(cls)
        self.upload.observe(lambda change: self._uploaded(change["new"]), "value")
        self.preview_button.on_click(lambda _: self._background(self.preview))
        self.extend_button.on_click(lambda _: self._background(lambda: self.extend(self.extend_by.value)))
        self.reset_button.on_click(lambda _: self._background(self.ask_reset))
        self.reset_confirm.on_click(lambda _: self._background(lambda: self.reset(confirm=True)))
        self.reset_cancel.on_click(lambda _: self._cancel_reset())
        super().__init__([
            w.HTML("<h4 style='margin:6px 0'>The class</h4>"), self.upload, self.roster_view,
            w.HBox([self.ttl, self.on_expiry, self.baseline]), self.preview_button, self.plan_view,
            w.HTML("<h4 style='margin:6px 0'>The students' VMs</h4>"), self.live,
            w.HBox([self.extend_by, self.extend_button, self.reset_button]), self.reset_box, self.message,
            w.HTML("<h4 style='margin:6px 0'>A student's console</h4>"), self.console,
        ])
        self.add_class("kvt-classroom")
        if start:
            self.live.start()

    # ---- set-up

    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect()
        return self._conn

    def _templates(self, template: str | Path | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The template documents, checked as `kvtool plan -f` checks them."""
        if isinstance(template, (str, Path)):
            state = desired.load([template], stack=self.stack, namespace=self.namespace)
        else:
            state = desired.load(objects=template, stack=self.stack, namespace=self.namespace)
        if not any(o.kind.kind == "VirtualMachine" for o in state.objects):
            raise KvtoolError("the template has no VirtualMachine to make once per student")
        return [o.manifest for o in state.objects]

    def _say(self, text: str, kind: str = "info") -> None:
        self.portal.call(setattr, self.message, "value", message_html(text, kind))

    def _background(self, action: Callable[[], Any]) -> None:
        self.portal.submit(action, on_error=lambda exc: self._say(str(exc), "error"))

    # ---- the roster

    def _uploaded(self, files: Any) -> None:
        if not files:
            return
        upload = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        with contextlib.suppress(KvtoolError):  # load_roster shows what is wrong, row by row, with the roster
            self.load_roster(bytes(upload["content"]), name=str(upload.get("name") or "upload"))

    def load_roster(self, data: str | Path | bytes | Any, name: str | None = None) -> roster.Roster:
        """Read the class list (a CSV path, an upload's bytes, or a DataFrame) and show it; Preview then plans
        one VM per student. A bad roster is shown with every problem's row and column, and changes nothing."""
        try:
            students = (roster.read_text(data, name or "upload") if isinstance(data, bytes) else roster.read(data))
        except KvtoolError as exc:
            self.roster = None
            self.portal.call(setattr, self.preview_button, "disabled", True)
            self.portal.call(setattr, self.roster_view, "value",
                             f"<div class='kvt-roster-error' style='color:#cf222e'>"
                             f"{html.escape(str(exc)).replace(chr(10), '<br>')}</div>")
            raise
        self.roster = students
        self.portal.call(setattr, self.roster_view, "value", roster_html(students))
        self.portal.call(setattr, self.preview_button, "disabled", False)
        self.plan_view.block("outdated", "the roster changed since the preview: preview again")
        return students

    # ---- plan and apply

    def desired(self) -> desired.DesiredState:
        """One VM (and login Secret) per student, the passwords the cluster already has kept, with the time limit."""
        if self.roster is None:
            raise KvtoolError("no roster yet: upload the class list (or call load_roster)")
        conn = self.connection()
        found = labctl.login_secrets(conn.res, self.namespace, self.stack)
        state = labctl.roster_state(self.templates, self.roster, stack=self.stack, namespace=self.namespace,
                                    passwords=roster.passwords_of(found))
        ttl = self.ttl.value.strip() or None
        try:
            labctl.lab_settings(state, ttl=ttl, on_expiry=self.on_expiry.value if ttl else None,
                                baseline=self.baseline.value)
        except ValueError as exc:
            raise KvtoolError(f"Time limit: {exc}") from None
        return state

    def preview(self) -> Plan:
        """Plan the class against the cluster and show it: Apply applies exactly this plan."""
        conn = self.connection()
        state = self.desired()
        plan = planner.plan(conn.res, desired.retarget(state, target_for(conn.res, self.api)), conn.server)
        self.portal.call(self.plan_view.show, plan)
        self._say(f"{len(self.roster.students) if self.roster else 0} student(s): review the plan, then Apply. "
                  f"Initial passwords (students without a key): kvtool lab passwords --stack {self.stack}")
        return plan

    def apply(self) -> Any:
        return self.plan_view.apply()

    # ---- the running class

    def extend(self, by: str) -> list[tuple[str, dt.datetime]]:
        """Every VM's deadline `by` later (from now, if it has passed); VMs its expiry stopped start again."""
        try:
            delta = dt.timedelta(seconds=timeutil.parse_duration(by.strip()))
        except ValueError as exc:
            raise KvtoolError(f"Extend by: {exc}") from None
        timed = labctl.extend(self.connection().res, self.namespace, self.stack, delta)
        latest = max(at for _, at in timed)
        self._say(f"Extended {len(timed)} VM(s) by {by.strip()}: the lab now ends at {timeutil.stamp(latest)}.", "ok")
        return timed

    def ask_reset(self) -> list[str]:
        """The reset's question, with the VMs it restarts; a lab it would refuse says why and asks nothing."""
        res = self.connection().res
        vms = labctl.stack_vms(res, self.namespace, self.stack)
        if not vms:
            raise KvtoolError(f"stack {self.stack!r} has no VMs to reset")
        refusal = labctl.reset_refusal(self.stack, vms, labctl.baselines(res, self.namespace, vms))
        if refusal is not None:
            raise refusal
        names = [v["metadata"]["name"] for v in vms]

        def ask() -> None:
            self.reset_question.value = (f"<b>Reset {len(names)} VM(s) to their start?</b> Everything the students "
                                         f"wrote on them is lost: {html.escape(', '.join(names))}&nbsp;")
            self.reset_box.layout.display = "flex"
        self.portal.call(ask)
        self._say("")
        return names

    def reset(self, confirm: bool = False, timeout: float = RESET_TIMEOUT) -> list[str]:
        """Every VM of the class back to its images (`kvtool lab reset`); only with confirm=True, the second
        click: without it, the question alone. Returns once the restarted VMs run again."""
        if not confirm:
            return self.ask_reset()
        self.portal.call(setattr, self.reset_box.layout, "display", "none")
        res = self.connection().res
        before = labctl.running_instances(res, self.namespace, self.stack)
        lines = labctl.reset(res, self.namespace, self.stack)
        self._say("Reset: " + "; ".join(lines) + ". Waiting for them to run again…", "info")
        back = labctl.wait_restarted(res, self.namespace, before, timeout)
        self._say("Reset: " + "; ".join(lines) + f". {back}", "ok")
        return lines

    def _cancel_reset(self) -> None:
        self.reset_box.layout.display = "none"
        self._say("Reset cancelled: nothing was restarted.")
