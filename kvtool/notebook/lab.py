"""A lab: the desired state of one stack, built from forms, loaded from and saved to the CLI's YAML.

`Lab` is the plain model (documents for a stack, no widgets), so scripts and
tests use it directly; `LabBuilder` puts the VM form, the list of VMs, load/
save and the plan preview around it. A saved lab is exactly what
`kvtool plan -f FILE --stack STACK` reads.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ipywidgets as w
import yaml

from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.errors import KvtoolError
from kvtool.images import usage
from kvtool.kube.resources import target_for
from kvtool.notebook import forms
from kvtool.notebook import manifest as mf
from kvtool.notebook.message import message_html
from kvtool.notebook.planview import PlanView
from kvtool.notebook.session import Connection, Portal, connect, default_portal
from kvtool.plan import apply, desired, planner
from kvtool.plan.apply import ApplyResult
from kvtool.plan.model import SENSITIVE, Plan


class Lab:
    """The VMs (and other objects) one stack should have; `version` counts changes."""

    def __init__(self, stack: str = "lab", namespace: str = "default",
                 documents: Iterable[Mapping[str, Any]] = (), api: str = "auto") -> None:
        self.stack = desired.validate_stack(stack)
        self.namespace = namespace
        self.api = api  # "kvtool", "kubevirt" or "auto": whose VM API plan and apply drive
        self.documents: list[dict[str, Any]] = []
        self.version = 0
        self.add(*documents)

    def names(self) -> list[str]:
        return [d["metadata"]["name"] for d in self.vms()]

    def vms(self) -> Iterator[dict[str, Any]]:
        return (d for d in self.documents if d.get("kind") == VIRTUAL_MACHINE.kind)

    def add(self, *documents: Mapping[str, Any]) -> None:
        known = {(d.get("kind"), d["metadata"].get("name")) for d in self.documents}
        for doc in documents:
            key = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
            if key in known:
                raise KvtoolError(f"{key[0]} {key[1]} is already in this lab")
            known.add(key)
        self.documents += [copy.deepcopy(dict(d)) for d in documents]
        self.version += 1

    def remove(self, *names: str) -> None:
        self.documents = [d for d in self.documents if d["metadata"].get("name") not in names]
        self.version += 1

    def clear(self) -> None:
        self.documents = []
        self.version += 1

    def secrets(self) -> list[str]:
        """Every cloud-init user/network data string, so messages can mask them."""
        out = []
        for vm in self.vms():
            for vol in vm.get("spec", {}).get("template", {}).get("spec", {}).get("volumes") or []:
                ci = vol.get("cloudInitNoCloud") or {}
                out += [v for k, v in ci.items() if isinstance(v, str) and k != "secretRef" and v]
        return out

    def desired(self) -> desired.DesiredState:
        """Validated like `kvtool plan` validates files (InvalidInput lists every problem)."""
        return desired.load(objects=self.documents, stack=self.stack, namespace=self.namespace,
                            checks=[usage.checker()])

    def load(self, path: str | Path) -> None:
        """Replace the lab with a YAML file's documents, after checking them as the CLI would."""
        desired.load([path], stack=self.stack, namespace=self.namespace)
        docs, _ = desired.read_documents(Path(path))  # already checked: no issues left
        self.documents = []
        for _, doc in docs:  # a `kind: List` stands for its items, as kubectl writes it
            self.documents += doc["items"] if doc.get("kind") == "List" else [doc]
        self.version += 1

    def save(self, path: str | Path) -> Path:
        """Write the lab as multi-document YAML: `kvtool plan -f PATH --stack STACK` reads it as is."""
        path = Path(path)
        header = (f"# kvtool lab for stack {self.stack!r}, saved from a notebook.\n"
                  f"#   kvtool plan  -f {path.name} --stack {self.stack}\n"
                  f"#   kvtool apply -f {path.name} --stack {self.stack}\n")
        body = yaml.safe_dump_all(self.documents, sort_keys=False, default_flow_style=False)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(header + body)
        tmp.replace(path)
        return path

    def plan(self, conn: Connection | None = None) -> Plan:
        conn = conn or connect()
        return planner.plan(conn.res, desired.retarget(self.desired(), target_for(conn.res, self.api)), conn.server)

    def destroy_plan(self, conn: Connection | None = None) -> Plan:
        conn = conn or connect()
        return planner.destroy_plan(conn.res, self.stack, conn.server, target=target_for(conn.res, self.api))

    def apply(self, plan: Plan, conn: Connection | None = None) -> ApplyResult:
        """Apply a plan made by plan() or destroy_plan() if the cluster has not moved since (else StalePlan)."""
        conn = conn or connect()
        apply.check_fresh(conn.res, plan, conn.server)
        return apply.apply_plan(conn.res, plan, progress=False)


def mask(text: str, secrets: Iterable[str]) -> str:
    for s in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(repr(s), SENSITIVE).replace(s, SENSITIVE)
    return text


def lab_table(lab: Lab) -> str:
    """The lab's VMs as HTML; user data is only ever shown as set or not."""
    head = "".join(f"<th style='padding:2px 8px;text-align:left'>{h}</th>" for h in
                   ("name", "cpu", "memory", "image", "run strategy", "disks", "user data"))
    rows = []
    for vm in lab.vms():
        spec = vm.get("spec", {})
        tspec = spec.get("template", {}).get("spec", {})
        domain = tspec.get("domain", {})
        vols = tspec.get("volumes") or []
        image = (domain.get("firmware", {}).get("kernelBoot", {}).get("container", {}).get("image")
                 or next((v["containerDisk"]["image"] for v in vols if "containerDisk" in v), ""))
        disks = sum(1 for v in vols if "emptyDisk" in v or "persistentVolumeClaim" in v)
        has_ud = any("cloudInitNoCloud" in v for v in vols)
        cells = (vm["metadata"]["name"], domain.get("cpu", {}).get("cores", 1),
                 domain.get("memory", {}).get("guest", ""), image, spec.get("runStrategy", ""), disks,
                 "set (hidden)" if has_ud else "—")
        rows.append("<tr class='kvt-lab-row'>" + "".join(
            f"<td style='padding:2px 8px'>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<i>No VMs in this lab yet: fill the form and click Add to lab, or load a YAML file.</i>"
    return f"<table class='kvt-lab-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class LabBuilder(w.VBox):
    """Form → lab → plan preview → Apply / Destroy, for one stack."""

    def __init__(self, stack: str = "lab", *, namespace: str = "default", connection: Connection | None = None,
                 images: list[mf.ImageChoice] | None = None, portal: Portal | None = None, api: str = "auto") -> None:
        self.lab = Lab(stack, namespace, api=api)
        self.portal = portal or default_portal()
        self._conn = connection
        self._previewed: int | None = None
        self.stack = w.Text(value=stack, description="Stack", continuous_update=True)
        self.stack_error = w.HTML()
        self.form = forms.VMForm(images=images, namespace=namespace, taken=self.lab.names, on_add=self._added)
        self.table = w.HTML(lab_table(self.lab))
        self.select = w.SelectMultiple(options=[], rows=4, description="Selected")
        self.remove_button = w.Button(description="Remove selected", icon="minus")
        self.path = w.Text(value=f"{stack}.yaml", description="YAML file")
        self.load_button = w.Button(description="Load", icon="folder-open")
        self.save_button = w.Button(description="Save", icon="save")
        self.preview_button = w.Button(description="Preview plan", button_style="info", icon="search")
        self.message = w.HTML()
        self.plan_view = PlanView(self.connection, lambda: self.lab.stack, self.portal, api=api)
        for widget, cls in ((self.stack, "kvt-lab-stack"), (self.stack_error, "kvt-error-stack"),
                            (self.table, "kvt-lab-list"), (self.select, "kvt-lab-select"),
                            (self.remove_button, "kvt-lab-remove"), (self.path, "kvt-lab-path"),
                            (self.load_button, "kvt-lab-load"), (self.save_button, "kvt-lab-save"),
                            (self.preview_button, "kvt-preview"), (self.message, "kvt-lab-message")):
            widget.add_class(cls)
        self.stack.observe(lambda _: self._stack_changed(), "value")
        self.form.observe(lambda _: self._form_changed(), "input_valid")
        self.remove_button.on_click(lambda _: self.remove(*self.select.value))
        self.load_button.on_click(lambda _: self._guard(lambda: self.load(self.path.value)))
        self.save_button.on_click(lambda _: self._guard(lambda: self.save(self.path.value)))
        self.preview_button.on_click(lambda _: self._preview_in_background())
        super().__init__([
            w.HBox([self.stack, self.stack_error]),
            w.HTML("<h4 style='margin:6px 0'>New VMs</h4>"), self.form,
            w.HTML("<h4 style='margin:6px 0'>The lab</h4>"), self.table,
            w.HBox([self.select, self.remove_button]),
            w.HBox([self.path, self.load_button, self.save_button]),
            self.preview_button, self.message, self.plan_view,
        ])
        self.add_class("kvt-lab")
        self._form_changed()
        if images is None:
            self.portal.submit(self._cluster_images)

    # ---- the connection (made on first use, so building the form needs no cluster)

    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = connect()
        return self._conn

    def _cluster_images(self) -> None:
        try:
            res = self.connection().res
        except KvtoolError:
            return  # no cluster yet: the store's images are all we can offer
        choices = mf.image_choices(res)
        self.portal.call(self.form.set_images, choices)

    # ---- keeping the preview honest

    def _changed(self) -> None:
        self.table.value = lab_table(self.lab)
        self.select.options = self.lab.names()
        self.form.revalidate()
        if self._previewed is not None and self._previewed != self.lab.version:
            self.plan_view.block("outdated", "the lab changed since the preview: preview again")

    def _form_changed(self) -> None:
        bad = not self.form.input_valid
        self.plan_view.block("form", "the form has invalid input: fix the fields marked in red" if bad else None)

    def _stack_changed(self) -> None:
        try:
            self.lab.stack = desired.validate_stack(self.stack.value.strip())
        except KvtoolError as exc:
            self.stack_error.value = f"<span style='{forms.ERROR_STYLE}'>{html.escape(exc.message)}</span>"
            self.preview_button.disabled = True
            self.plan_view.block("stack", "the stack name is invalid")
            return
        self.stack_error.value = ""
        self.preview_button.disabled = False
        self.plan_view.block("stack", None)
        self.lab.version += 1
        self._changed()

    def _say(self, text: str, kind: str = "info") -> None:
        self.message.value = message_html(mask(text, self.lab.secrets()), kind)

    def _guard(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except (KvtoolError, OSError) as exc:
            self._say(str(exc), "error")

    # ---- what the buttons do (also callable from cells)

    def _added(self, docs: list[dict[str, Any]]) -> None:
        self.lab.add(*docs)
        self._say(f"Added {', '.join(d['metadata']['name'] for d in docs)}.", "ok")
        self._changed()

    def add(self, **values: Any) -> list[dict[str, Any]]:
        """Fill the form with values and add its VMs (a cell's equivalent of typing and clicking)."""
        if values:
            self.form.set(**values)
        return self.form.add()

    def remove(self, *names: str) -> None:
        self.lab.remove(*names)
        self._say(f"Removed {', '.join(names)}." if names else "")
        self._changed()

    def load(self, path: str | Path) -> None:
        self.lab.load(path)
        self._say(f"Loaded {len(self.lab.documents)} object(s) from {path}.", "ok")
        self._changed()

    def save(self, path: str | Path) -> Path:
        out = self.lab.save(path)
        self._say(f"Saved {len(self.lab.documents)} object(s) to {out}: "
                  f"kvtool plan -f {out} --stack {self.lab.stack}", "ok")
        return out

    def preview(self) -> Plan:
        """Plan the lab against the cluster and show it; Apply then applies exactly this plan."""
        version = self.lab.version
        try:
            plan = self.lab.plan(self.connection())
        except desired.InvalidInput as exc:
            self.portal.call(self._say, str(exc), "error")
            raise

        self.portal.call(self.show_plan, plan, version)
        return plan

    def show_plan(self, plan: Plan, version: int | None = None) -> None:
        """Make `plan` (of the lab at `version`, default: as it is now) the preview Apply will apply."""
        version = self.lab.version if version is None else version
        self._previewed = version
        self.plan_view.show(plan)
        self._say("")
        if version != self.lab.version:
            self.plan_view.block("outdated", "the lab changed since the preview: preview again")

    def _preview_in_background(self) -> None:
        self.preview_button.disabled = True

        def work() -> None:
            try:
                self.preview()
            finally:
                self.portal.call(setattr, self.preview_button, "disabled", False)

        self.portal.submit(work, on_error=lambda exc: self._say(str(exc), "error"))

    def apply(self) -> ApplyResult:
        return self.plan_view.apply()

    def destroy(self, confirm: bool = False) -> ApplyResult | Plan:
        return self.plan_view.destroy(confirm=confirm)
