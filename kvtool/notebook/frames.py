"""DataFrames for users' own analysis: the VMs' status, and how long VMIs took to start.

Both read the cluster once (no widgets, no threads), through the same
kvtool.inventory code the CLI's `kvtool status` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from kvtool import inventory
from kvtool.api.types import STACK_LABEL, VIRTUAL_MACHINE_INSTANCE
from kvtool.notebook.session import Connection, connect

PHASES = ("Pending", "Scheduling", "Scheduled", "Running")
LATENCY_COLUMNS = ["namespace", "stack", "name", "node", "phase", "created",
                   *(f"{p.lower()}_s" for p in PHASES), "start_latency_s"]


def status_frame(stack: str | None = None, *, namespace: str | None = None,
                 labels: Mapping[str, str] | None = None, wide: bool = True,
                 connection: Connection | None = None) -> pd.DataFrame:
    """One row per kvtool-managed VM (joined with its VMI): name, status, phase, node, ip, cpu, memory, age…"""
    conn = connection or connect()
    return inventory.status_frame(conn.res, stack, namespace, labels, wide=wide)


def latency_rows(vmis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seconds from each VMI's creationTimestamp to each phase it reached (pure: tests feed it dicts)."""
    rows = []
    for vmi in vmis:
        meta, status = vmi.get("metadata", {}), vmi.get("status") or {}
        created = pd.to_datetime(meta.get("creationTimestamp"), utc=True)
        row: dict[str, Any] = {"namespace": meta.get("namespace"), "name": meta.get("name"),
                               "stack": (meta.get("labels") or {}).get(STACK_LABEL, ""),
                               "node": status.get("nodeName", ""), "phase": status.get("phase", ""),
                               "created": created}
        seen: dict[str, pd.Timestamp] = {}
        for t in status.get("phaseTransitionTimestamps") or []:
            if t.get("phase") and t.get("phaseTransitionTimestamp"):
                seen.setdefault(t["phase"], pd.to_datetime(t["phaseTransitionTimestamp"], utc=True))
        for phase in PHASES:
            at = seen.get(phase)
            # creationTimestamp has whole seconds; a transition in the same second is not negative time.
            row[f"{phase.lower()}_s"] = max(0.0, (at - created).total_seconds()) if at is not None else None
        row["start_latency_s"] = row["running_s"]
        rows.append(row)
    return rows


def start_latency_frame(stack: str | None = None, *, namespace: str | None = None,
                        connection: Connection | None = None) -> pd.DataFrame:
    """Per VMI: seconds from creation to Pending/Scheduling/Scheduled/Running, from its own timestamps."""
    conn = connection or connect()
    vmis, _ = conn.res.list(VIRTUAL_MACHINE_INSTANCE, namespace, label_selector=inventory.selector(stack))
    df = pd.DataFrame(latency_rows(vmis), columns=LATENCY_COLUMNS)
    for col in LATENCY_COLUMNS[6:]:
        df[col] = pd.to_numeric(df[col])
    return df.sort_values(["namespace", "name"], ignore_index=True)
