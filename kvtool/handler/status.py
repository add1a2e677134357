"""Domain status (from the launcher) → VMI status patch. Pure."""

from __future__ import annotations

from typing import Any

from kvtool.api.types import GUEST_KERNEL_ERROR

ORDER = {None: 0, "Pending": 1, "Scheduling": 2, "Scheduled": 3, "Running": 4, "Succeeded": 5, "Failed": 5}


def _cond(ctype: str, status: bool, reason: str = "", message: str = "", old: list[dict[str, Any]] | None = None,
          now: str = "") -> dict[str, Any]:
    value = "True" if status else "False"
    prev = next((c for c in old or [] if c.get("type") == ctype), None)
    when = prev.get("lastTransitionTime") if prev and prev.get("status") == value else now
    return {"type": ctype, "status": value, "reason": reason, "message": message[:4000], "lastTransitionTime": when}


def status_patch(vmi: dict[str, Any], domain: dict[str, Any], launcher_version: str | None,
                 now: str) -> dict[str, Any] | None:
    """The change to the VMI's status this domain status calls for, or None."""
    status = dict(vmi.get("status") or {})
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        return None
    dphase = domain.get("phase")
    new: dict[str, Any] = {}
    if migration := migration_patch(status, domain):
        new["migrationState"] = migration
    if dphase == "Migrated":
        return new or None  # the guest left for the target: the controller moves the VMI there
    target = {"Running": "Running", "Paused": "Running", "Succeeded": "Succeeded", "Failed": "Failed"}.get(dphase or "")
    if target and ORDER.get(target, 0) > ORDER.get(phase, 0):
        new["phase"] = target
        stamps = list(status.get("phaseTransitionTimestamps") or [])
        stamps.append({"phase": target, "phaseTransitionTimestamp": now})
        new["phaseTransitionTimestamps"] = stamps
        if target != "Running":
            new["reason"] = domain.get("reason") or ("GuestShutdown" if target == "Succeeded" else "DomainFailed")
    old = status.get("conditions") or []
    running = dphase == "Running"
    paused = dphase == "Paused"
    failed = dphase == "Failed"
    conds = [_cond("Paused", paused, "PausedByUser" if paused else "", "", old, now)]
    if not (running and probed_readiness(vmi)):
        # With a readiness probe, a running guest is Ready when the kubelet's probe passes: the controller,
        # which sees the pod, says so (controller/vmi.py); the handler only says when it is not running.
        conds.insert(0, _cond("Ready", running, "" if running else (domain.get("reason") or str(dphase)),
                              "" if running else domain.get("message", ""), old, now))
    if failed:
        reason = domain.get("reason") or "DomainFailed"
        conds.append(_cond("Failure", True, reason, domain.get("message", ""), old, now))
    if kernel_error := domain.get("guestKernelError"):
        name = (vmi.get("metadata") or {}).get("name", "NAME")
        conds.append(_cond(GUEST_KERNEL_ERROR, True, GUEST_KERNEL_ERROR,
                           f"the guest's kernel reported on its console: {kernel_error}. The guest may be hung: "
                           f"`kvtool console {name} --tail` shows the rest, `kvtool restart {name}` boots it again",
                           old, now))
    types = {c["type"] for c in conds}
    merged = [c for c in old if c.get("type") not in types] + conds
    if _key(merged) != _key(old):
        new["conditions"] = merged
    ifaces = domain.get("interfaces")
    if ifaces is not None and ifaces != status.get("interfaces"):
        new["interfaces"] = ifaces
    if launcher_version and status.get("launcherContainerImageVersion") != launcher_version:
        new["launcherContainerImageVersion"] = launcher_version
    state = domain.get("domainState")
    if state and status.get("domainState") != state:
        new["domainState"] = state
    if sizes := domain.get("volumeSizes"):
        volumes = [{"name": name, "size": size} for name, size in sorted(sizes.items())]
        if volumes != status.get("volumeStatus"):
            new["volumeStatus"] = volumes
    return new or None


def probed_readiness(vmi: dict[str, Any]) -> bool:
    return bool((vmi.get("spec") or {}).get("readinessProbe"))


def _key(conds: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((c.get("type"), c.get("status"), c.get("reason", ""), c.get("message", "")) for c in conds)



def migration_patch(status: dict[str, Any], domain: dict[str, Any]) -> dict[str, Any] | None:
    """The source launcher's view of the VMI's current migration -> changes to status.migrationState."""
    local = domain.get("migration") or {}
    state = status.get("migrationState") or {}
    if local.get("role") != "source" or not local.get("uid") or local.get("uid") != state.get("migrationUid"):
        return None
    want: dict[str, Any] = {"mode": local.get("mode") or "PreCopy"}
    if local.get("startedAt"):
        want["startTimestamp"] = local["startedAt"]
    if local.get("state") == "Completed":
        want.update(completed=True, endTimestamp=local.get("endedAt"))
    elif local.get("state") == "Failed":
        want.update(failed=True, endTimestamp=local.get("endedAt"), failureReason=local.get("message", "")[:1000])
    if local.get("abortStatus"):
        want["abortStatus"] = local["abortStatus"]
    changed = {k: v for k, v in want.items() if v is not None and state.get(k) != v}
    return changed or None
