"""Plans as HTML (beside kvtool.plan.render's text), and the widget that applies exactly what it showed.

`render_html` only reads the plan model, like the text renderer: one row per
resource with its action symbol, then its changed fields before → after,
colour-coded, and the Terraform summary line. Sensitive values are masked by
the model (FieldChange.shown), never here.

PlanView holds one previewed Plan. Apply checks that the cluster still looks
the way the plan saw it (apply.check_fresh) and otherwise says so and stops:
it never re-plans behind the user's back. Destroy shows the destroy plan first
and needs a second click to confirm.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from kvtool.errors import KvtoolError
from kvtool.kube.resources import target_for
from kvtool.notebook.message import message_html
from kvtool.notebook.session import Connection, Portal, default_portal
from kvtool.plan import apply, planner
from kvtool.plan.apply import ApplyResult
from kvtool.plan.model import SENSITIVE, Action, FieldChange, Plan, ResourceChange
from kvtool.plan.render import SYMBOL

# (text colour, row background) per action: Terraform's green / yellow / magenta / red.
COLOURS = {Action.CREATE: ("#1a7f37", "#e6ffec"), Action.UPDATE: ("#9a6700", "#fff8c5"),
           Action.REPLACE: ("#8250df", "#fbefff"), Action.DELETE: ("#cf222e", "#ffebe9"),
           Action.NOOP: ("#57606a", "#ffffff")}
WHAT = {Action.CREATE: "will be created", Action.UPDATE: "will be updated in place",
        Action.REPLACE: "must be replaced", Action.DELETE: "will be destroyed", Action.NOOP: "unchanged"}
CELL = "padding:2px 8px;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top"


def _value(f: FieldChange, value: Any, is_set: bool) -> str:
    if not is_set:
        return "<span style='opacity:.6'>(absent)</span>"
    if f.sensitive:
        return f"<i>{html.escape(SENSITIVE)}</i>"
    return f"<code>{html.escape(json.dumps(value, ensure_ascii=False, sort_keys=True))}</code>"


def _notes(f: FieldChange) -> str:
    notes = f.notes(force_hint="force_conflicts")
    return f" <span style='opacity:.7'># {html.escape('; '.join(notes))}</span>" if notes else ""


def _field_rows(rc: ResourceChange, indent: bool = True) -> list[str]:
    colour = COLOURS[rc.action][0]
    lead = f"<td style='{CELL}'></td><td style='{CELL}'></td>" if indent else ""
    rows = []
    for f in rc.fields:
        sym = "+" if not f.before_set else "-" if not f.after_set else "~"
        rows.append(f"<tr class='kvt-plan-field'>{lead}"
                    f"<td style='{CELL};color:{colour}'>{sym} <code>{html.escape(f.path)}</code>{_notes(f)}</td>"
                    f"<td style='{CELL}'>{_value(f, f.before, f.before_set)}</td>"
                    f"<td style='{CELL}'>→ {_value(f, f.after, f.after_set)}</td></tr>")
    return rows


def _resource_rows(rc: ResourceChange, destroy_plan: bool) -> list[str]:
    colour, background = COLOURS[rc.action]
    what = WHAT[rc.action]
    if rc.action == Action.DELETE and not destroy_plan:
        what += " (no longer in the desired state)"
    if rc.restart_required:
        what += "; the running VM takes the change on restart"
    reasons = "".join(f"<div style='opacity:.8'>{html.escape(r)}</div>" for r in [*rc.replace_reasons, *rc.notes])
    name = f"{rc.namespace}/{rc.name}" if rc.namespace else rc.name
    head = (f"<tr class='kvt-plan-resource kvt-action-{rc.action.value}' style='background:{background}'>"
            f"<td style='{CELL};color:{colour};font-weight:bold;font-family:monospace'>"
            f"{html.escape(SYMBOL[rc.action])}</td>"
            f"<td style='{CELL}'><b>{html.escape(name)}</b> <span style='opacity:.6'>{html.escape(rc.kind)}</span></td>"
            f"<td style='{CELL};color:{colour}' colspan='3'>{html.escape(what)}{reasons}</td></tr>")
    if rc.action == Action.DELETE:
        return [head]
    if rc.action == Action.CREATE and rc.fields:
        # Every field of a new VM is new: fold them, so a class of 30 VMs stays readable.
        inner = "".join(_field_rows(rc, indent=False))
        return [head, f"<tr><td style='{CELL}'></td><td style='{CELL}' colspan='4'><details><summary>"
                      f"{len(rc.fields)} field(s)</summary><table style='border-collapse:collapse'>{inner}</table>"
                      "</details></td></tr>"]
    return [head, *_field_rows(rc)]


def render_html(plan: Plan, *, show_noop: bool = False) -> str:
    """The plan as an HTML table with the summary line; everything user-given is escaped."""
    changes = plan.changes if show_noop else plan.actionable
    rows = [r for rc in changes for r in _resource_rows(rc, plan.destroy)]
    parts = [f"<div class='kvt-plan-html'><div style='margin-bottom:4px'>Stack <b>{html.escape(plan.stack)}</b> on "
             f"<code>{html.escape(plan.server)}</code></div>"]
    if rows:
        parts.append("<table class='kvt-plan-table' style='border-collapse:collapse;margin-bottom:6px'>"
                     f"<thead><tr><th style='{CELL}'></th><th style='{CELL}'>VM</th><th style='{CELL}'>change</th>"
                     f"<th style='{CELL}'>before</th><th style='{CELL}'>after</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    conflicts = sum(len(rc.conflicts) for rc in plan.changes)
    if conflicts:
        parts.append(f"<div style='color:#9a6700'>Warning: {conflicts} field(s) are owned by another field "
                     "manager; apply refuses them unless forced.</div>")
    restart = [rc.address for rc in plan.changes if rc.restart_required]
    if restart:
        parts.append(f"<div style='color:#9a6700'>Note: {len(restart)} running VM(s) take their changes on "
                     "restart.</div>")
    parts.append(f"<div class='kvt-plan-summary' style='font-weight:bold'>{html.escape(plan.summary_line())}</div>")
    parts.append("</div>")
    return "".join(parts)


def secrets(plan: Plan | None) -> set[str]:
    """The plan's sensitive values (user data...), so messages about it can mask them."""
    found: set[str] = set()
    for rc in plan.changes if plan else ():
        for f in rc.fields:
            if f.sensitive:
                found |= {v for v in (f.before, f.after) if isinstance(v, str) and v}
    return found


def complete_line(plan: Plan) -> str:
    """The CLI's closing line, so notebook and terminal read the same."""
    add, change, destroy = plan.summary()
    verb = "Destroy" if plan.destroy else "Apply"
    return f"{verb} complete! Resources: {add} added, {change} changed, {destroy} destroyed."


class PlanView(w.VBox):
    """A previewed plan with Apply (exactly this plan) and Destroy (after a confirmation)."""

    def __init__(self, connection: Callable[[], Connection], stack: Callable[[], str],
                 portal: Portal | None = None, api: str = "auto") -> None:
        self._connection = connection
        self._stack = stack
        self.api = api  # whose VM API a destroy plan lists: "kvtool", "kubevirt" or "auto"
        self.portal = portal or default_portal()
        self.plan: Plan | None = None
        self.busy = False
        self._blockers: dict[str, str] = {}
        self.html = w.HTML("<i>No plan yet: preview one.</i>")
        self.apply_button = w.Button(description="Apply", button_style="success", icon="play", disabled=True)
        self.destroy_button = w.Button(description="Destroy…", button_style="danger", icon="trash")
        self.confirm_button = w.Button(description="Yes, destroy", button_style="danger")
        self.cancel_button = w.Button(description="Cancel")
        self.confirm_box = w.HBox([w.HTML("<b>Really destroy these VMs?</b>&nbsp;"), self.confirm_button,
                                   self.cancel_button], layout=w.Layout(display="none"))
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress",
                                      layout=w.Layout(visibility="hidden"))
        self.message = w.HTML()
        for widget, cls in ((self.html, "kvt-plan"), (self.apply_button, "kvt-apply"),
                            (self.destroy_button, "kvt-destroy"), (self.confirm_button, "kvt-destroy-confirm"),
                            (self.cancel_button, "kvt-destroy-cancel"), (self.confirm_box, "kvt-destroy-box"),
                            (self.progress, "kvt-progress"), (self.message, "kvt-message")):
            widget.add_class(cls)
        self.apply_button.on_click(lambda _: self._in_background(self.apply))
        self.destroy_button.on_click(lambda _: self._in_background(self.preview_destroy))
        self.confirm_button.on_click(lambda _: self._in_background(self.confirm_destroy))
        self.cancel_button.on_click(lambda _: self.cancel_destroy())
        super().__init__([self.html, w.HBox([self.apply_button, self.destroy_button]), self.confirm_box,
                          self.progress, self.message])
        self.add_class("kvt-planview")

    # ---- state shown by the buttons

    def block(self, key: str, reason: str | None) -> None:
        """Keep Apply disabled while `reason` holds (e.g. the form has invalid input); None lifts it."""
        if reason:
            self._blockers[key] = reason
        else:
            self._blockers.pop(key, None)
        self._refresh_buttons()

    @property
    def blocked(self) -> str | None:
        return "; ".join(self._blockers.values()) or None

    def show(self, plan: Plan) -> None:
        """Display a plan to apply (the preview); any earlier outcome message is cleared."""
        self.plan = plan
        self._blockers.pop("outdated", None)
        self._blockers.pop("applied", None)
        self.html.value = render_html(plan)
        self.confirm_box.layout.display = "none"
        self._say("")
        self.progress.layout.visibility = "hidden"
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        ready = self.plan is not None and self.plan.has_changes and not self.plan.destroy
        self.apply_button.disabled = self.busy or not ready or bool(self._blockers)
        self.destroy_button.disabled = self.busy
        self.confirm_button.disabled = self.busy
        self.apply_button.tooltip = self.blocked or ""

    def _say(self, text: str, kind: str = "info") -> None:
        for secret in sorted(secrets(self.plan), key=len, reverse=True):  # a server error may quote a value
            text = text.replace(secret, SENSITIVE)
        self.message.value = message_html(text, kind)

    # ---- actions: the sync methods are the core; buttons run them on a worker thread

    def _in_background(self, action: Callable[[], Any]) -> None:
        if self.busy:
            return
        self.busy = True
        self._refresh_buttons()

        def failed(exc: BaseException) -> None:
            if not isinstance(exc, apply.StalePlan):  # a stale plan has said so already, with what to do
                self._say(str(exc), "error")
            self._done()

        self.portal.submit(action, on_error=failed)

    def _done(self) -> None:
        self.busy = False
        self._refresh_buttons()

    def _ui(self, fn: Callable[..., Any], *args: Any) -> None:
        self.portal.call(fn, *args)

    def _progress(self, done: int, total: int, label: str) -> None:
        def update() -> None:
            self.progress.max = max(total, 1)
            self.progress.value = done
            self.progress.description = label
            self.progress.layout.visibility = "visible"
            self.progress.bar_style = ""
        self._ui(update)

    def _run(self, plan: Plan, label: str) -> ApplyResult:
        conn = self._connection()
        try:
            apply.check_fresh(conn.res, plan, conn.server)
        except apply.StalePlan as exc:
            self._ui(self.block, "outdated", "the cluster changed since the preview")
            self._ui(self._say, f"Nothing was applied: {exc.message}\nPreview the plan again and review it.", "error")
            raise
        self._progress(0, len(plan.actionable), label)
        result = apply.apply_plan(conn.res, plan, progress=False,
                                  on_progress=lambda d, t: self._progress(d, t, label))

        def finish() -> None:
            self.progress.bar_style = "success" if result.ok else "danger"
            if result.ok:
                self._say(complete_line(plan), "ok")
            else:
                self._say(result.report(), "error")
            self.block("applied", "this plan was applied: preview again for further changes")
        self._ui(finish)
        return result

    def apply(self) -> ApplyResult:
        """Apply the previewed plan, unchanged; StalePlan (shown, not retried) if the cluster moved."""
        try:
            plan = self.plan
            if plan is None or not plan.has_changes or plan.destroy:
                raise KvtoolError("there is no plan with changes to apply: preview one first")
            if self._blockers:
                raise KvtoolError(f"Apply is disabled: {self.blocked}")
            return self._run(plan, "Applying")
        finally:
            self._ui(self._done)

    def preview_destroy(self) -> Plan:
        """The destroy plan of the stack, shown with a confirmation step; nothing is deleted yet."""
        try:
            conn = self._connection()
            plan = planner.destroy_plan(conn.res, self._stack(), conn.server, target=target_for(conn.res, self.api))

            def show() -> None:
                self.plan = plan
                self.html.value = render_html(plan)
                if plan.has_changes:
                    self.confirm_box.layout.display = "flex"
                    self._say(f"Destroy {len(plan.actionable)} object(s) of stack {plan.stack!r}? Confirm below.",
                              "warn")
                else:
                    self._say(f"Stack {plan.stack!r} has nothing to destroy.")
            self._ui(show)
            return plan
        finally:
            self._ui(self._done)

    def confirm_destroy(self) -> ApplyResult:
        try:
            plan = self.plan
            if plan is None or not plan.destroy:
                raise KvtoolError("no destroy plan to confirm: click Destroy first")
            self._ui(setattr, self.confirm_box.layout, "display", "none")
            return self._run(plan, "Destroying")
        finally:
            self._ui(self._done)

    def cancel_destroy(self) -> None:
        self.confirm_box.layout.display = "none"
        self.plan = None
        self.html.value = "<i>Destroy cancelled. Preview a plan to continue.</i>"
        self._say("")
        self._refresh_buttons()

    def destroy(self, confirm: bool = False) -> ApplyResult | Plan:
        """Programmatic destroy: the plan alone unless confirm=True (the notebook's teardown cell)."""
        plan = self.preview_destroy()
        return self.confirm_destroy() if confirm and plan.has_changes else plan
