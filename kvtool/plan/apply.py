"""Carry out a plan: server-side apply (field manager `kvtool`), deletes, replaces, with bounded concurrency.

A saved plan is applied only if the cluster still looks the way the plan
saw it (resourceVersions, object existence, the same API server). Failures
do not stop independent work; the result says what was applied and what
was not, so a re-run converges.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from kvtool.api import timeutil
from kvtool.api.types import FIELD_MANAGER, PLANNABLE, STACK_LABEL, VIRTUAL_MACHINE, Kind, kind_for
from kvtool.errors import KvtoolError
from kvtool.kube.resources import KubeError, Resources, list_watch
from kvtool.plan import planner
from kvtool.plan.desired import Desired, Location
from kvtool.plan.model import Action, Plan, ResourceChange

DEFAULT_CONCURRENCY = 16


class StalePlan(KvtoolError):
    """The cluster changed since the plan was made."""


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_attempted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted

    def report(self) -> str:
        lines = []
        if self.failed:
            lines.append(f"{len(self.failed)} change(s) failed:")
            lines += [f"  - {addr}: {msg}" for addr, msg in self.failed]
        if self.not_attempted:
            lines.append(f"{len(self.not_attempted)} change(s) were not attempted: {', '.join(self.not_attempted)}")
        if self.failed or self.not_attempted:
            lines.append(f"{len(self.applied)} change(s) were applied. Fix the errors and run the same command again: "
                         "applying is idempotent.")
        return "\n".join(lines)


def _kind(rc: ResourceChange) -> Kind:
    kind = kind_for(rc.api_version, rc.kind)
    if kind is None:
        raise KvtoolError(f"the plan names an unknown kind {rc.kind} ({rc.api_version})")
    return kind


def check_fresh(res: Resources, plan: Plan, server: str) -> None:
    """Refuse a saved plan the cluster has moved away from."""
    if plan.server and plan.server != server:
        raise StalePlan(f"this plan was made for {plan.server}, but the current cluster is {server}",
                        hint="use the same kubeconfig as `kvtool plan`, or make a new plan")
    wanted = [Desired(_kind(rc), rc.manifest or {}, Location("<plan>", 0)) for rc in plan.changes
              if rc.manifest is not None]
    # The plan's own kinds too: a plan for KubeVirt's API names kubevirt.io VirtualMachines.
    kinds = tuple(dict.fromkeys([*PLANNABLE, *(_kind(rc) for rc in plan.changes)]))
    live = planner.fetch(res, plan.stack, wanted, kinds)
    current = {**live.others, **live.members}
    moved = []
    known = set()
    for rc in plan.changes:
        key = (rc.api_version, rc.kind, rc.namespace, rc.name)
        known.add(key)
        obj = current.get(key)
        now_rv = obj.get("metadata", {}).get("resourceVersion") if obj else None
        if now_rv != rc.resource_version:
            before = rc.resource_version or "absent"
            moved.append(f"{rc.address}: {'deleted' if now_rv is None else 'changed'} since the plan "
                         f"(resourceVersion {before} -> {now_rv or 'absent'})")
    if not plan.destroy:
        moved += [f"{k[1].lower()} {k[2]}/{k[3]}: joined the stack since the plan" for k in live.members
                  if k not in known]
    if moved:
        raise StalePlan("the saved plan is stale; the cluster changed since it was made:\n"
                        + "\n".join(f"  - {m}" for m in moved[:20])
                        + (f"\n  ... and {len(moved) - 20} more" if len(moved) > 20 else ""),
                        hint="run `kvtool plan` again and review the new plan")


def _conflict_message(exc: KubeError) -> str:
    """`.spec...cores owned by kubectl-patch` from the API server's FieldManagerConflict causes."""
    conflicts = [c for c in exc.causes if "FieldManagerConflict" in (c.get("reason"), c.get("type"))]
    fields = [c.get("field", "") for c in conflicts if c.get("field")]
    managers = sorted({c.get("message", "").split('"')[1] for c in conflicts if c.get("message", "").count('"') >= 2})
    shown = ", ".join(fields) or exc.message
    return (f"conflict: {shown} owned by field manager {', '.join(managers) or '(unknown)'}; "
            "rerun with --force-conflicts to take these fields over")


def _restart_required(res: Resources, rc: ResourceChange) -> None:
    now = timeutil.stamp()
    fields = ", ".join(f.path for f in rc.fields if f.requires_restart)
    res.apply(VIRTUAL_MACHINE, {
        "apiVersion": rc.api_version, "kind": rc.kind,
        "metadata": {"name": rc.name, "namespace": rc.namespace},
        "status": {"conditions": [{"type": "RestartRequired", "status": "True", "reason": "TemplateChanged",
                                   "message": f"changed while running: {fields}"[:4000],
                                   "lastTransitionTime": now}]},
    }, subresource="status", force=True, field_manager=FIELD_MANAGER)


def _wait_gone(res: Resources, kind: Kind, rc: ResourceChange, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while res.get(kind, rc.namespace, rc.name) is not None:
        if time.monotonic() > deadline:
            raise KvtoolError(f"{rc.address} was not deleted within {timeout:.0f}s")
        time.sleep(0.2)


def _one(res: Resources, rc: ResourceChange, force_conflicts: bool, delete_timeout: float) -> None:
    kind = _kind(rc)
    if rc.action in (Action.DELETE, Action.REPLACE):
        res.delete(kind, rc.namespace, rc.name, uid=rc.uid)
        if rc.action == Action.REPLACE:
            _wait_gone(res, kind, rc, delete_timeout)
    if rc.action in (Action.CREATE, Action.UPDATE, Action.REPLACE):
        assert rc.manifest is not None
        try:
            res.apply(kind, rc.manifest, force=force_conflicts, validated=kind.schema is not None, parse=False)
        except KubeError as exc:
            if exc.status == 409 and exc.reason == "Conflict":
                raise KvtoolError(_conflict_message(exc)) from exc
            raise
        if rc.restart_required and kind == VIRTUAL_MACHINE:  # KubeVirt's controller says this for its own VMs
            _restart_required(res, rc)


def _waves(plan: Plan) -> list[list[ResourceChange]]:
    """Creates/updates by kind (secrets before the VMs that use them), then deletes in reverse."""
    order = [k.kind for k in PLANNABLE]
    waves: list[list[ResourceChange]] = []
    for kind in order:
        wave = [c for c in plan.actionable if c.kind == kind and c.action != Action.DELETE]
        if wave:
            waves.append(wave)
    for kind in reversed(order):
        wave = [c for c in plan.actionable if c.kind == kind and c.action == Action.DELETE]
        if wave:
            waves.append(wave)
    return waves


def apply_plan(res: Resources, plan: Plan, *, force_conflicts: bool = False,
               concurrency: int = DEFAULT_CONCURRENCY, progress: bool = True,
               on_progress: Callable[[int, int], None] | None = None,
               delete_timeout: float = 120) -> ApplyResult:
    result = ApplyResult()
    total = len(plan.actionable)
    done = 0
    bar = tqdm(total=total, desc="Applying", unit="obj", file=sys.stderr, leave=False,
               disable=not progress or total == 0 or not sys.stderr.isatty())
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for wave in _waves(plan):
                futures = {pool.submit(_one, res, rc, force_conflicts, delete_timeout): rc for rc in wave}
                for fut in as_completed(futures):
                    rc = futures[fut]
                    try:
                        fut.result()
                        result.applied.append(rc.address)
                    except KvtoolError as exc:
                        result.failed.append((rc.address, exc.message))
                    done += 1
                    bar.update(1)
                    if on_progress:
                        on_progress(done, total)
    finally:
        bar.close()
    return result


# -- waiting for VMs to reach the state their runStrategy asks for -----------

def vm_settled(vm: dict[str, Any]) -> bool:
    spec, status = vm.get("spec", {}), vm.get("status") or {}
    strategy = spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")
    printable = status.get("printableStatus")
    if strategy in ("Always", "RerunOnFailure"):
        return printable == "Running" and bool(status.get("ready"))
    if strategy == "Once":
        return printable in ("Running", "Stopped", "Succeeded")
    if strategy == "Halted":
        return printable in (None, "Stopped")
    return True  # Manual: whatever the user asked for later


def wait_for_vms(res: Resources, names: Iterable[tuple[str, str]], timeout: float, progress: bool = True,
                 stack: str | None = None, kind: Kind = VIRTUAL_MACHINE) -> list[str]:
    """Wait until every (namespace, name) VM settles; return those that did not.

    One LIST, then a watch from its resourceVersion: no polling."""
    pending = set(names)
    deadline = time.monotonic() + timeout
    selector = f"{STACK_LABEL}={stack}" if stack else None
    bar = tqdm(total=len(pending), desc="Waiting for VMs", unit="vm", file=sys.stderr, leave=False,
               disable=not progress or not pending or not sys.stderr.isatty())

    def see(vm: dict[str, Any]) -> None:
        key = (vm["metadata"].get("namespace"), vm["metadata"]["name"])
        if key in pending and vm_settled(vm):
            pending.discard(key)
            bar.update(1)

    try:
        events = list_watch(res, kind, label_selector=selector,
                            watch_seconds=lambda: int(deadline - time.monotonic()))
        for etype, obj in events:
            for vm in obj if etype == "SYNC" else [obj] if etype in ("ADDED", "MODIFIED") else []:
                see(vm)
            if not pending or time.monotonic() > deadline:
                break
    finally:
        bar.close()
    return sorted(f"{ns}/{n}" for ns, n in pending)
