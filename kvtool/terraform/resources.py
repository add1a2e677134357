"""`kvtool_virtual_machine`: one VM, written through kvtool's own plan/apply.

Each create/update makes the manifest with kvtool.api.builder, checks it
with kvtool.plan.desired (problems become diagnostics on the attribute),
and hands a one-object plan to kvtool.plan.apply — so the VM is exactly
what `kvtool apply` would write (labels, server-side apply as field manager
"kvtool", RestartRequired when a running VM's template changes) and
`kvtool plan` on the same stack agrees with it. Read reports what the
cluster has, so changes made outside Terraform show up as drift.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tf import schema as s
from tf import types as t
from tf.iface import (
    CreateContext,
    DeleteContext,
    ImportContext,
    PlanContext,
    ReadContext,
    Resource,
    UpdateContext,
)
from tf.types import Unknown

from kvtool.api.types import MANAGED_BY, MANAGED_BY_LABEL, STACK_LABEL, VIRTUAL_MACHINE
from kvtool.errors import KvtoolError
from kvtool.plan import desired
from kvtool.terraform import vmspec

if TYPE_CHECKING:
    from kvtool.terraform.provider import Connection, KvtoolProvider

DEFAULT_TIMEOUT = 300.0
# Computed from the cluster; unknown in a plan that changes the VM.
LIVE = ("status", "node", "ip")
COMPUTED = ("id", "uid", "stack", *LIVE)
# Read by the provider, never sent to the cluster.
PROVIDER_SIDE = ("wait_for_running", "wait_for_ip", "timeout")
WAITABLE = ("Always", "RerunOnFailure", "Once", "Manual")


def _attr(name: str, type_: t.TfType, description: str, **kwargs: Any) -> s.Attribute:
    return s.Attribute(name, type_, description=description, description_kind=s.TextFormat.Plain, **kwargs)


SCHEMA = s.Schema(version=0, description="A kvtool VirtualMachine (kvtool.io/v1alpha1).", attributes=[
    _attr("id", t.String(), "namespace/name", computed=True),
    _attr("name", t.String(), "The VM's name (a DNS-1123 label). Changing it replaces the VM.",
          required=True, requires_replace=True),
    _attr("namespace", t.String(), "Namespace (default: the provider's). Changing it replaces the VM.",
          optional=True, computed=True, requires_replace=True, default=None),  # None: plan() fills it in
    _attr("cpu", t.Number(), "vCPU cores.", optional=True, computed=True, default=1),
    _attr("memory", t.String(), "Guest memory, a Kubernetes quantity such as 128Mi or 2Gi.",
          optional=True, computed=True, default="128Mi"),
    _attr("image", t.String(), "Image to boot: a kernel image from the image store (such as tiny-linux) "
          "boots directly, any other image is the containerDisk root disk.", optional=True),
    _attr("disks", t.List(t.Map(t.String())), "Extra disks: {name, and one of image / size / claim, "
          "optional bus}.", optional=True),
    _attr("user_data", t.String(), "cloud-init user data (NoCloud).", optional=True, sensitive=True),
    _attr("run_strategy", t.String(), "Always, Halted, Manual, RerunOnFailure or Once.",
          optional=True, computed=True, default="Always"),
    _attr("node_selector", t.Map(t.String()), "Node labels the VM must be scheduled on.", optional=True),
    _attr("labels", t.Map(t.String()), "Labels of the VirtualMachine.", optional=True),
    _attr("manifest", t.String(), "JSON or YAML merged over the generated manifest (keyed lists such as "
          "disks and volumes merge by name; null deletes).", optional=True),
    _attr("wait_for_running", t.Bool(), "Wait until the VM's status is Running after create/update.",
          optional=True),
    _attr("wait_for_ip", t.Bool(), "Also wait until the guest reports an IP address (so outputs have it).",
          optional=True),
    _attr("timeout", t.String(), "How long to wait for Running (and the IP) or for deletion (default 5m).",
          optional=True),
    _attr("uid", t.String(), "The VirtualMachine's uid.", computed=True),
    _attr("stack", t.String(), "The kvtool stack (from the provider).", computed=True),
    _attr("status", t.String(), "printableStatus: Stopped, Starting, Running...", computed=True),
    _attr("node", t.String(), "Node the VM runs on.", computed=True),
    _attr("ip", t.String(), "The guest's IP address.", computed=True),
])
ATTRIBUTES = tuple(a.name for a in SCHEMA.attributes)


def diagnosed(fallback: Callable[[tuple[Any, ...]], Any]) -> Callable[..., Any]:
    """Turn any exception into an error diagnostic (never a traceback); return fallback(args)."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: VirtualMachineResource, ctx: Any, *args: Any) -> Any:
            try:
                return method(self, ctx, *args)
            except Exception as exc:
                summary, detail = vmspec.error_detail(exc)
                ctx.diagnostics.add_error(summary, detail)
                return fallback(args)
        return wrapper
    return wrap


class VirtualMachineResource(Resource):
    def __init__(self, provider: KvtoolProvider) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "virtual_machine"

    @classmethod
    def get_schema(cls) -> s.Schema:
        return SCHEMA

    # -- validation and planning -------------------------------------------------------------

    def config_defaults(self) -> dict[str, Any]:
        """What an attribute left out of the configuration means (see provider.Servicer)."""
        return {"namespace": self.provider.namespace, "cpu": 1, "memory": "128Mi", "run_strategy": "Always"}

    def validate(self, diags: Any, type_name: str, config: dict[str, Any]) -> None:
        super().validate(diags, type_name, config)
        if diags.has_errors() or not vmspec.check_known(config):
            return  # values known only later are checked when planning
        self._check(diags, {**config, "namespace": config.get("namespace") or "default"},
                    self.provider.stack or "default")

    def _check(self, diags: Any, state: dict[str, Any], stack: str) -> tuple[dict[str, Any], float] | None:
        """(manifest, timeout in seconds), or None with every problem as a diagnostic on its attribute."""
        try:
            timeout = vmspec.parse_duration(state.get("timeout"), DEFAULT_TIMEOUT)
        except ValueError as exc:
            diags.add_error("Invalid timeout", str(exc), path=["timeout"])
            return None
        for wait in ("wait_for_running", "wait_for_ip"):
            if state.get(wait) and state.get("run_strategy") not in (*WAITABLE, None):
                diags.add_error(f"Invalid {wait}", f"a VM with run_strategy {state['run_strategy']!r} never "
                                f"becomes Running; drop {wait} or change run_strategy", path=[wait])
                return None
        built = vmspec.build({**state, "cpu": _number(state.get("cpu"))}, stack=stack,
                             image_kind=self.provider.image_kind)
        for p in built.problems:
            diags.add_error(p.summary, p.detail, path=p.path or None)
        return None if built.manifest is None else (built.manifest, timeout)

    def plan(self, ctx: PlanContext, current: dict[str, Any] | None, planned: dict[str, Any]) -> dict[str, Any]:
        planned = dict(planned)
        if planned.get("namespace") is None:
            planned["namespace"] = self.provider.namespace
        known = not (vmspec.is_unknown(planned["namespace"]) or vmspec.is_unknown(planned.get("name")))
        planned["id"] = f"{planned['namespace']}/{planned['name']}" if known else Unknown
        planned["stack"] = self.provider.stack
        if vmspec.check_known({k: v for k, v in planned.items() if k not in COMPUTED}):
            self._check(ctx.diagnostics, planned, self.provider.stack)
        if current is not None:
            for attr in (*vmspec.SPEC_ATTRIBUTES, "manifest"):
                before, after = current.get(attr), planned.get(attr)
                if before is not None and after is not None and before != after and vmspec.check_known(after) \
                        and vmspec.same(attr, before, after):
                    planned[attr] = before  # the same thing spelled differently (1Gi/1024Mi, JSON/YAML): no change
        if current is None:
            for attr in ("uid", *LIVE):
                planned[attr] = Unknown
        elif self._changes_vm(current, planned):
            for attr in LIVE:
                planned[attr] = Unknown
        return planned

    @staticmethod
    def _changes_vm(current: dict[str, Any], planned: dict[str, Any]) -> bool:
        """True if applying `planned` sends something to the cluster (not only provider-side settings)."""
        for attr in ATTRIBUTES:
            if attr in COMPUTED or attr in PROVIDER_SIDE:
                continue
            if vmspec.is_unknown(planned.get(attr)) or not vmspec.same(attr, current.get(attr), planned.get(attr)):
                return True
        return current.get("stack") != planned.get("stack")

    # -- create, read, update, delete, import ----------------------------------------------------

    @diagnosed(lambda args: None)
    def create(self, ctx: CreateContext, planned: dict[str, Any]) -> dict[str, Any] | None:
        checked = self._check(ctx.diagnostics, planned, self.provider.stack)
        if checked is None:
            return None
        manifest, timeout = checked
        conn = self.provider.connection()
        live = conn.res.get(conn.target.vm, planned["namespace"], planned["name"])
        if live is not None:
            labels = live["metadata"].get("labels") or {}
            owner = (f"stack {labels[STACK_LABEL]!r}" if labels.get(MANAGED_BY_LABEL) == MANAGED_BY
                     and STACK_LABEL in labels else "no kvtool stack")
            raise KvtoolError(f"virtualmachine {planned['id']} already exists (it belongs to {owner})",
                              hint=f"import it: terraform import <address> {planned['id']}")
        self._apply(conn, manifest, None, adopt=False)
        return self._finish(ctx, conn, planned, timeout)

    @diagnosed(lambda args: args[0])
    def read(self, ctx: ReadContext, current: dict[str, Any]) -> dict[str, Any] | None:
        conn = self.provider.connection()
        live = conn.res.get(conn.target.vm, current.get("namespace") or self.provider.namespace, current["name"])
        if live is None:
            return None  # deleted outside Terraform: the next plan creates it again
        expected = vmspec.build({**current, "cpu": _number(current.get("cpu"))}, stack=self.provider.stack,
                                image_kind=self.provider.image_kind).manifest
        state = vmspec.refresh(current, live, expected)
        return self._with_live(conn, state, live)

    @diagnosed(lambda args: args[0])
    def update(self, ctx: UpdateContext, current: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
        checked = self._check(ctx.diagnostics, planned, self.provider.stack)
        if checked is None:
            return current
        manifest, timeout = checked
        conn = self.provider.connection()
        if self._changes_vm(current, planned):
            live = conn.res.get(conn.target.vm, planned["namespace"], planned["name"])
            self._apply(conn, manifest, live, adopt=True)  # it is in our state: ours, even if imported
        return self._finish(ctx, conn, planned, timeout)

    @diagnosed(lambda args: args[0])
    def delete(self, ctx: DeleteContext, current: dict[str, Any]) -> None:
        conn = self.provider.connection()
        namespace, name = current.get("namespace") or self.provider.namespace, current["name"]
        timeout = vmspec.parse_duration(current.get("timeout"), DEFAULT_TIMEOUT)
        conn.res.delete(conn.target.vm, namespace, name)
        deadline = time.monotonic() + timeout
        while conn.res.get(conn.target.vm, namespace, name) is not None:
            if time.monotonic() > deadline:
                raise KvtoolError(f"virtualmachine {namespace}/{name} was not deleted within {timeout:.0f}s",
                                  hint="see `kubectl describe vm` for finalizers; raise the timeout attribute")
            time.sleep(0.25)
        return None

    def import_(self, ctx: ImportContext, id: str) -> dict[str, Any] | None:
        try:
            return self._import(ctx, id)
        except Exception as exc:
            summary, detail = vmspec.error_detail(exc)
            ctx.diagnostics.add_error(summary, detail)
            return None

    def _import(self, ctx: ImportContext, id: str) -> dict[str, Any] | None:
        namespace, _, name = id.rpartition("/")
        namespace = namespace or self.provider.namespace
        if not name or "/" in namespace:
            ctx.diagnostics.add_error("Invalid import ID", f"expected NAMESPACE/NAME (or NAME), got {id!r}")
            return None
        conn = self.provider.connection()
        live = conn.res.get(conn.target.vm, namespace, name)
        if live is None:
            ctx.diagnostics.add_error("Cannot import a VM that does not exist",
                                      f"virtualmachine {namespace}/{name} was not found")
            return None
        state: dict[str, Any] = dict.fromkeys(ATTRIBUTES)
        state.update(vmspec.attributes_of(live), name=name, namespace=namespace)
        built = vmspec.build({**state, "cpu": _number(state["cpu"])}, stack=self.provider.stack,
                             image_kind=self.provider.image_kind)
        extra = vmspec.residual(live, built.manifest) if built.manifest is not None else None
        if extra:
            state["manifest"] = json.dumps(extra, sort_keys=True, separators=(",", ":"))
        stack = (live["metadata"].get("labels") or {}).get(STACK_LABEL)
        if stack != self.provider.stack:
            ctx.diagnostics.add_warning(
                f"virtualmachine {namespace}/{name} moves to stack {self.provider.stack!r}",
                f"It is labelled with stack {stack!r}; the next apply labels it with the provider's stack.")
        return self._with_live(conn, state, live)

    # -- helpers ---------------------------------------------------------------------------------

    def _apply(self, conn: Connection, manifest: dict[str, Any], live: dict[str, Any] | None, adopt: bool) -> None:
        """One object through kvtool's planner and applier: same diff, same SSA, same RestartRequired."""
        from kvtool.plan import apply, planner  # with the Kubernetes client: only when talking to the cluster

        one = desired.DesiredState(self.provider.stack, [desired.Desired(VIRTUAL_MACHINE, manifest,
                                                                        desired.Location("terraform", 0))])
        obj = desired.retarget(one, conn.target).objects[0]
        labels = (live or {}).get("metadata", {}).get("labels") or {}
        mine = live is not None and labels.get(MANAGED_BY_LABEL) == MANAGED_BY and \
            labels.get(STACK_LABEL) == self.provider.stack
        state = planner.LiveState(members={obj.key: live} if mine and live is not None else {},
                                  others={obj.key: live} if live is not None and not mine else {})
        plan = planner.make_plan(one, state, conn.server, adopt=adopt)
        conflicts = [f for c in plan.changes for f in c.conflicts]
        if conflicts and not self.provider.force_conflicts:
            owners = sorted({m for f in conflicts for m in f.conflict_with})
            raise KvtoolError(f"virtualmachine {obj.namespace}/{obj.name}: {', '.join(f.path for f in conflicts)} "
                              f"changed outside Terraform and now belong(s) to field manager {', '.join(owners)}",
                              hint="set force_conflicts = true in the provider block to take them over")
        result = apply.apply_plan(conn.res, plan, force_conflicts=self.provider.force_conflicts, progress=False)
        if result.failed:
            address, message = result.failed[0]
            hint = None
            if "--force-conflicts" in message:
                message = message.split("; rerun with --force-conflicts")[0]
                hint = "set force_conflicts = true in the provider block to take these fields over"
            raise KvtoolError(f"{address}: {message}", hint=hint)

    def _finish(self, ctx: Any, conn: Connection, planned: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The planned values plus what only the cluster knows; waits for Running when asked."""
        namespace, name = planned["namespace"], planned["name"]
        live = conn.res.get(conn.target.vm, namespace, name)
        if (planned.get("wait_for_running") or planned.get("wait_for_ip")) and live is not None:
            # A timeout still returns the state: Terraform keeps the VM (tainted) instead of losing it.
            live, problem = self._wait_running(conn, live, timeout, need_ip=bool(planned.get("wait_for_ip")))
            if problem:
                ctx.diagnostics.add_error(*problem)
        if live is None:
            raise KvtoolError(f"virtualmachine {namespace}/{name} disappeared right after it was applied")
        state = self._with_live(conn, dict(planned), live)
        for attr in COMPUTED:
            if attr in planned and not vmspec.is_unknown(planned[attr]):
                state[attr] = planned[attr]  # the plan promised this value; the next refresh updates it
        return state

    def _with_live(self, conn: Connection, state: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
        from kvtool import inventory

        meta = live["metadata"]
        # The controller sets status.created when the VMI exists; a stopped VM costs no second GET.
        created = (live.get("status") or {}).get("created")
        vmi = conn.res.get(conn.target.vmi, meta.get("namespace"), meta["name"]) if created else None
        row = inventory.vm_row(live, vmi)
        state.update(id=f"{meta.get('namespace')}/{meta['name']}", uid=meta.get("uid"),
                     stack=(meta.get("labels") or {}).get(STACK_LABEL), status=row["status"],
                     node=row["node"] or None, ip=row["ip"] or None)
        return state

    @staticmethod
    def _wait_running(conn: Connection, live: dict[str, Any], timeout: float,
                      need_ip: bool) -> tuple[Any, tuple[str, str] | None]:
        """(the VM once Running [with an IP], None), or (the VM as last seen, (summary, detail)) after `timeout`."""
        namespace, name = live["metadata"].get("namespace"), live["metadata"]["name"]
        from kvtool import inventory

        deadline = time.monotonic() + timeout
        while True:
            status = (live.get("status") or {}).get("printableStatus")
            ip = ""
            if status == "Running" and need_ip:
                ip = inventory.vm_row(live, conn.res.get(conn.target.vmi, namespace, name))["ip"]
            if status == "Running" and (ip or not need_ip):
                return live, None
            if time.monotonic() > deadline:
                what = "reporting an IP address" if status == "Running" else "Running"
                return live, (f"virtualmachine {namespace}/{name} was not {what} within {timeout:.0f}s",
                              f"Its status is {status or 'not reported yet'}. Check `kvtool status` and the VM's "
                              "events, or raise the timeout attribute. Terraform marks the VM tainted.")
            time.sleep(1.0)
            live = conn.res.get(conn.target.vm, namespace, name) or live


def _number(value: Any) -> Any:
    """Terraform numbers arrive as float or int; the manifest wants an int where it is whole."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
