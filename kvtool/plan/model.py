"""The plan as a model: what will change, field by field, and why.

Text, JSON, notebook HTML and the Terraform provider all render this one
object. Its JSON form is versioned (FORMAT_VERSION) so saved plans and
`--json` consumers can tell what they read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

FORMAT_VERSION = "1.0"
SENSITIVE = "(sensitive value)"


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    NOOP = "no-op"


@dataclass
class FieldChange:
    path: str
    before: Any = None
    after: Any = None
    before_set: bool = True
    after_set: bool = True
    sensitive: bool = False
    forces_replacement: bool = False
    requires_restart: bool = False
    conflict_with: list[str] = field(default_factory=list)  # other field managers owning this field

    def shown(self, value: Any) -> Any:
        return SENSITIVE if self.sensitive else value

    def notes(self, force_hint: str = "--force-conflicts") -> list[str]:
        """Why this change matters beyond its values; every renderer shows the same notes."""
        notes = []
        if self.forces_replacement:
            notes.append("forces replacement")
        if self.requires_restart:
            notes.append("takes effect on restart")
        if self.conflict_with:
            notes.append(f"owned by {', '.join(self.conflict_with)}: apply needs {force_hint}")
        return notes


@dataclass
class ResourceChange:
    api_version: str
    kind: str
    namespace: str | None
    name: str
    action: Action
    fields: list[FieldChange] = field(default_factory=list)
    manifest: dict[str, Any] | None = None  # the desired object (None when deleting)
    resource_version: str | None = None  # what the plan saw; apply refuses if it moved
    uid: str | None = None
    replace_reasons: list[str] = field(default_factory=list)
    restart_required: bool = False
    source: str | None = None  # file and document the object came from
    notes: list[str] = field(default_factory=list)  # what else follows from it (the VMs a pool makes or removes)

    @property
    def address(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()} {ns}{self.name}"

    @property
    def conflicts(self) -> list[FieldChange]:
        return [f for f in self.fields if f.conflict_with]


@dataclass
class Plan:
    stack: str
    server: str
    changes: list[ResourceChange] = field(default_factory=list)
    destroy: bool = False
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    format_version: str = FORMAT_VERSION

    @property
    def actionable(self) -> list[ResourceChange]:
        return [c for c in self.changes if c.action != Action.NOOP]

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    def summary(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy), counting a replace as one add and one destroy like Terraform."""
        add = sum(1 for c in self.changes if c.action in (Action.CREATE, Action.REPLACE))
        change = sum(1 for c in self.changes if c.action == Action.UPDATE)
        destroy = sum(1 for c in self.changes if c.action in (Action.DELETE, Action.REPLACE))
        return add, change, destroy

    def summary_line(self) -> str:
        if not self.has_changes:
            return "No changes. The cluster matches the desired state."
        add, change, destroy = self.summary()
        return f"Plan: {add} to add, {change} to change, {destroy} to destroy."

    # -- JSON ---------------------------------------------------------------
    def to_json(self, include_secrets: bool = False) -> dict[str, Any]:
        """The versioned JSON form; secrets masked unless include_secrets (saved plan files only)."""
        data = asdict(self)
        add, change, destroy = self.summary()
        data["summary"] = {"add": add, "change": change, "destroy": destroy}
        for rc, out in zip(self.changes, data["changes"], strict=True):
            out["address"] = rc.address
            if not include_secrets:
                for f, fout in zip(rc.fields, out["fields"], strict=True):
                    if f.sensitive:
                        fout["before"] = SENSITIVE if f.before_set else None
                        fout["after"] = SENSITIVE if f.after_set else None
                out["manifest"] = None if rc.manifest is None else mask_manifest(rc)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        version = str(data.get("format_version", ""))
        if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
            raise ValueError(f"plan format {version!r} is not supported (this kvtool writes {FORMAT_VERSION})")
        changes = []
        for c in data["changes"]:
            c = {k: v for k, v in c.items() if k != "address"}
            c["action"] = Action(c["action"])
            c["fields"] = [FieldChange(**f) for f in c["fields"]]
            changes.append(ResourceChange(**c))
        return cls(stack=data["stack"], server=data["server"], changes=changes, destroy=data.get("destroy", False),
                   created_at=data["created_at"], format_version=version)


def mask_manifest(rc: ResourceChange) -> dict[str, Any] | None:
    """The desired manifest with sensitive values replaced (for --json and the notebook)."""
    from kvtool.plan import diff  # the masking rules live with the diff's path logic

    return diff.masked(rc)
