"""The VM form: one widget per field, checked as the user types by the same schema `kvtool plan` uses.

Each change rebuilds the manifests the form stands for and runs
kvtool.api.schema on them; every problem is shown next to the field it is
about, in the schema's own words, and the form's `valid` turns False (which
disables Add and, in the lab builder, Apply). Cloud-init user data is a
secret: it is never shown back, never put into a message, and the textarea is
emptied once the VMs are added.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import ipywidgets as w
import traitlets

from kvtool.api import builder, schema
from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.notebook import manifest as mf
from kvtool.plan.model import SENSITIVE

FIELDS = ("name", "count", "cpu", "memory", "image", "run_strategy", "disks", "node_selector", "labels",
          "user_data")
MEMORY_UNITS = ("Mi", "Gi")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_INDEXED = re.compile(r"\.(volumes|disks)\[(\d+)\]")
ERROR_STYLE = "color:#b3261e;font-size:90%"
NOTE_STYLE = "color:#57606a;font-size:90%"
TAKEN_HINT = "change the name to add more"


class InvalidForm(ValueError):
    """The form holds input the schema refuses; `issues` maps each field to its messages."""

    def __init__(self, issues: Mapping[str, list[str]]) -> None:
        self.issues = dict(issues)
        super().__init__("; ".join(f"{k}: {m}" for k, ms in self.issues.items() for m in ms))


def field_for(path: str, doc: Mapping[str, Any]) -> str:
    """Which form field a schema issue's path (`spec.template.spec.volumes[1].emptyDisk...`) is about."""
    tspec = doc.get("spec", {}).get("template", {}).get("spec", {})
    m = _INDEXED.search(path)
    if m:
        items = tspec.get("volumes", []) if m.group(1) == "volumes" else tspec.get("domain", {}).get(
            "devices", {}).get("disks", [])
        index = int(m.group(2))
        name = items[index].get("name") if index < len(items) and isinstance(items[index], Mapping) else None
        return {builder.ROOT_DISK: "image", builder.CLOUDINIT_DISK: "user_data"}.get(str(name), "disks")
    rules = (("metadata.name", "name"), ("metadata.labels", "labels"), ("spec.template.metadata", "labels"),
             ("spec.runStrategy", "run_strategy"), ("spec.template.spec.domain.cpu", "cpu"),
             ("spec.template.spec.domain.memory", "memory"), ("spec.template.spec.domain.firmware", "image"),
             ("spec.template.spec.domain.devices.disks", "disks"), ("spec.template.spec.nodeSelector", "node_selector"),
             ("spec.template.spec.domain", "memory"))  # memory-given is reported on the domain
    for prefix, name in rules:
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            return name
    return "form"


def check(values: Mapping[str, Any], choices: Mapping[str, mf.ImageChoice],
          taken: Collection[str] = ()) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """(manifests, issues by field) for a form's values; pure, so tests and the widget share it."""
    issues: dict[str, list[str]] = {}

    def add(fieldname: str, message: str) -> None:
        if message not in issues.setdefault(fieldname, []):
            issues[fieldname].append(message)

    count = values.get("count", 1)
    if not isinstance(count, int) or not 1 <= count <= mf.MAX_COUNT:
        add("count", f"count must be between 1 and {mf.MAX_COUNT}")
        count = 1
    pairs: dict[str, dict[str, str]] = {}
    for key in ("node_selector", "labels"):
        try:
            pairs[key] = mf.parse_pairs(values.get(key) or "")
        except ValueError as exc:
            add(key, str(exc))
            pairs[key] = {}
    for key, value in pairs["labels"].items():
        if not LABEL_VALUE.match(value) or len(value) > 63:
            add("labels", f"label {key}={value!r}: a label value is at most 63 characters: letters, digits, "
                          "'-', '_' or '.', starting and ending with a letter or digit")
    image = values.get("image")
    if not image:
        add("image", "no image: build one with `kvtool image build tiny-linux`, or import a disk image")
    user_data = values.get("user_data") or None
    disks = [{"name": d.get("name", ""), d.get("source") or "size": d.get("value", "")}
             for d in values.get("disks") or []]
    choice = choices.get(str(image)) or mf.ImageChoice(str(image or "none"))
    docs = []
    for name in mf.names(str(values.get("name") or ""), count):
        try:
            doc = mf.vm_manifest(
                name, choice, namespace=values.get("namespace") or "default", cpu=values.get("cpu", 1),
                memory=memory_quantity(str(values.get("memory", "")), str(values.get("memory_unit", ""))),
                user_data=user_data, disks=disks, node_selector=pairs["node_selector"], labels=pairs["labels"],
                run_strategy=str(values.get("run_strategy") or "Always"))
        except builder.SpecError as exc:  # arguments the builder cannot place (a disk name used twice, ...)
            add("disks" if exc.path.startswith("disks") else "image" if "image" in exc.path or "kernel" in exc.path
                else "form", exc.detail)
            continue
        docs.append(doc)
        for issue in schema.validate(doc, VIRTUAL_MACHINE.schema or ""):
            message = issue.message
            if user_data is not None:
                message = message.replace(repr(user_data), SENSITIVE).replace(user_data, SENSITIVE)
            add(field_for(issue.path, doc), message)
    dups = [d["metadata"]["name"] for d in docs if d["metadata"]["name"] in taken]
    if dups:
        shown = ", ".join(dups) if len(dups) <= 3 else f"{dups[0]} … {dups[-1]} ({len(dups)} VMs)"
        add("name", f"{shown} {'is' if len(dups) == 1 else 'are'} already in this lab: {TAKEN_HINT}")
    return docs, issues


def memory_quantity(amount: str, unit: str) -> str:
    """`128` + `Mi` → `128Mi`; an amount typed with its own suffix (`1Gi`, `512M`) is taken as typed."""
    amount = amount.strip()
    return amount if amount[-1:].isalpha() else f"{amount}{unit}"


class DisksEditor(w.VBox):
    """Extra disks, one row each: name, source (an empty disk of a size, a PVC, or an image) and its value."""

    SOURCES = (("empty disk, size", "size"), ("PVC, claim name", "claim"), ("image", "image"))
    value: traitlets.List[dict[str, str]] = traitlets.List()

    def __init__(self) -> None:
        self._rows: list[w.HBox] = []
        self.add_button = w.Button(description="Add disk", icon="plus", layout=w.Layout(width="auto"))
        self.add_button.add_class("kvt-disk-add")
        self.add_button.on_click(lambda _: self.add_disk())
        super().__init__([self.add_button])
        self.add_class("kvt-form-disks")

    def add_disk(self, name: str = "", value: str = "1Gi", source: str = "size") -> None:
        name = name or f"data{len(self._rows) + 1}"
        name_w = w.Text(value=name, placeholder="name", layout=w.Layout(width="9em"))
        source_w = w.Dropdown(options=self.SOURCES, value=source, layout=w.Layout(width="11em"))
        value_w = w.Text(value=value, placeholder="1Gi", layout=w.Layout(width="10em"))
        remove = w.Button(icon="trash", tooltip="remove this disk", layout=w.Layout(width="3em"))
        for widget, cls in ((name_w, "kvt-disk-name"), (source_w, "kvt-disk-source"), (value_w, "kvt-disk-value"),
                            (remove, "kvt-disk-remove")):
            widget.add_class(cls)
        row = w.HBox([name_w, source_w, value_w, remove])
        remove.on_click(lambda _: self._remove(row))
        for widget in (name_w, source_w, value_w):
            widget.observe(lambda _: self._sync(), "value")
        self._rows.append(row)
        self.children = (*self._rows, self.add_button)
        self._sync()

    def clear(self) -> None:
        self._rows = []
        self.children = (self.add_button,)
        self._sync()

    def _remove(self, row: w.HBox) -> None:
        self._rows.remove(row)
        self.children = (*self._rows, self.add_button)
        self._sync()

    def _sync(self) -> None:
        self.value = [{"name": r.children[0].value.strip(), "source": r.children[1].value,
                       "value": r.children[2].value.strip()} for r in self._rows]


class VMForm(w.VBox):
    """Name, count, CPU, memory, image, run strategy, disks, node selector, labels and cloud-init user data."""

    valid = traitlets.Bool(False)  # everything fine: Add is enabled
    input_valid = traitlets.Bool(False)  # the schema accepts the input (names the lab already has aside)

    def __init__(self, *, images: Sequence[mf.ImageChoice] | None = None, namespace: str = "default",
                 taken: Callable[[], Collection[str]] | None = None,
                 on_add: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.namespace = namespace
        self._taken = taken or (lambda: ())
        self._on_add = on_add
        self.issues: dict[str, list[str]] = {}
        self._choices: dict[str, mf.ImageChoice] = {}
        style = {"description_width": "8em"}
        self.name = w.Text(value="lab", description="Name", continuous_update=True, style=style)
        self.count = w.IntText(value=1, description="Count", style=style, layout=w.Layout(width="14em"))
        self.cpu = w.IntText(value=1, description="CPU cores", style=style, layout=w.Layout(width="14em"))
        self.memory = w.Text(value="128", description="Memory", continuous_update=True, style=style,
                             layout=w.Layout(width="14em"))
        self.memory_unit = w.Dropdown(options=MEMORY_UNITS, value="Mi", layout=w.Layout(width="5em"))
        self.image = w.Dropdown(description="Image", style=style)
        self.run_strategy = w.Dropdown(options=mf.RUN_STRATEGIES, value="Always", description="Run strategy",
                                       style=style)
        self.disks = DisksEditor()
        self.node_selector = w.Text(description="Node selector", placeholder="kubernetes.io/hostname=kvtool-node-1",
                                    continuous_update=True, style=style)
        self.labels = w.Text(description="Labels", placeholder="course=intro-linux", continuous_update=True,
                             style=style)
        self.user_data = w.Textarea(description="User data", placeholder="#cloud-config or #!/bin/sh (kept secret)",
                                    continuous_update=True, style=style, layout=w.Layout(width="40em", height="6em"))
        self.add_button = w.Button(description="Add to lab", button_style="primary", icon="plus")
        self.names_preview = w.HTML()
        self.general = w.HTML()
        self.errors = {f: w.HTML() for f in FIELDS}
        for fieldname, widget in self.inputs.items():
            widget.add_class(f"kvt-form-{fieldname.replace('_', '-')}")
            self.errors[fieldname].add_class("kvt-error")
            self.errors[fieldname].add_class(f"kvt-error-{fieldname.replace('_', '-')}")
        self.memory_unit.add_class("kvt-form-memory-unit")
        self.add_button.add_class("kvt-form-add")
        self.names_preview.add_class("kvt-form-names")
        self.general.add_class("kvt-error")
        self.general.add_class("kvt-error-form")
        rows = [
            w.HBox([self.name, self.errors["name"]]),
            w.HBox([self.count, self.names_preview, self.errors["count"]]),
            w.HBox([self.cpu, self.errors["cpu"]]),
            w.HBox([self.memory, self.memory_unit, self.errors["memory"]]),
            w.HBox([self.image, self.errors["image"]]),
            w.HBox([self.run_strategy, self.errors["run_strategy"]]),
            w.HBox([w.Label("Disks", layout=w.Layout(width="8em")), self.disks, self.errors["disks"]]),
            w.HBox([self.node_selector, self.errors["node_selector"]]),
            w.HBox([self.labels, self.errors["labels"]]),
            w.HBox([self.user_data, self.errors["user_data"]]),
            self.general,
            self.add_button,
        ]
        super().__init__(rows)
        self.add_class("kvt-form")
        self.set_images(images if images is not None else mf.store_images())
        for widget in (*self.inputs.values(), self.memory_unit):
            widget.observe(lambda _: self.revalidate(), "value")
        self.add_button.on_click(lambda _: self.add())
        self.revalidate()

    @property
    def inputs(self) -> dict[str, w.DOMWidget]:
        return {f: getattr(self, f) for f in FIELDS}

    def set_images(self, images: Sequence[mf.ImageChoice]) -> None:
        """Fill the image dropdown (store images first); keeps the current choice when it is still offered."""
        self._choices = {c.name: c for c in images}
        current = self.image.value
        self.image.options = [(c.label, c.name) for c in images]
        if current in self._choices:
            self.image.value = current
        elif images:
            self.image.value = images[0].name

    def values(self) -> dict[str, Any]:
        return {"name": self.name.value.strip(), "count": self.count.value, "cpu": self.cpu.value,
                "memory": self.memory.value, "memory_unit": self.memory_unit.value, "image": self.image.value,
                "run_strategy": self.run_strategy.value, "disks": list(self.disks.value),
                "node_selector": self.node_selector.value, "labels": self.labels.value,
                "user_data": self.user_data.value, "namespace": self.namespace}

    def set(self, **values: Any) -> None:
        """Fill fields programmatically (what a notebook cell does instead of typing)."""
        for key, value in values.items():
            if key == "disks":
                self.disks.clear()
                for d in value:
                    source = next(k for k in ("size", "claim", "image") if k in d)
                    self.disks.add_disk(d["name"], d[source], source)
            elif key in FIELDS or key == "memory_unit":
                getattr(self, key).value = value
            else:
                raise TypeError(f"VMForm has no field {key!r}; fields: {', '.join(FIELDS)}")

    def revalidate(self) -> None:
        docs, issues = check(self.values(), self._choices, set(self._taken()))
        self._docs, self.issues = docs, issues
        for fieldname, widget in self.errors.items():
            widget.value = _messages(issues.get(fieldname, []))
        self.general.value = _messages(issues.get("form", []))
        names = [d["metadata"]["name"] for d in docs]
        shown = names if len(names) <= 3 else [names[0], "…", names[-1]]
        self.names_preview.value = (f"<span style='opacity:.7'>→ {html.escape(', '.join(shown))}</span>"
                                    if len(names) > 1 else "")
        self.input_valid = not self.schema_issues
        self.valid = not issues
        self.add_button.disabled = not self.valid

    @property
    def schema_issues(self) -> dict[str, list[str]]:
        """Problems with the input itself, leaving out clashes with VMs already in the lab."""
        out = {k: [m for m in ms if not m.endswith(TAKEN_HINT)] for k, ms in self.issues.items()}
        return {k: ms for k, ms in out.items() if ms}

    def manifests(self) -> list[dict[str, Any]]:
        """The manifests the form stands for; InvalidForm when any field is refused."""
        self.revalidate()
        if self.issues:
            raise InvalidForm(self.issues)
        return [dict(d) for d in self._docs]

    def add(self) -> list[dict[str, Any]]:
        """Hand the VMs to the lab (on_add), then forget the user data so it is never shown again."""
        docs = self.manifests()
        if self._on_add is not None:
            self._on_add(docs)
        self.user_data.value = ""
        self.revalidate()
        return docs


def _messages(messages: list[str]) -> str:
    """Schema messages in red; a name the lab already has is only a note (the input itself is fine)."""
    return "".join(f"<div style='{NOTE_STYLE if m.endswith(TAKEN_HINT) else ERROR_STYLE}'>{html.escape(m)}</div>"
                   for m in messages)
