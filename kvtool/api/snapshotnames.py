"""Names the snapshot controller and its clients agree on: backup claims, copy Jobs, a lab VM's baseline."""

from __future__ import annotations

import hashlib

BASELINE_ANNOTATION = "kvtool.io/baseline"  # "true" on a VM: snapshot it before its first start (a lab's reset)
BASELINE_LABEL = "kvtool.io/baseline-of"  # on a baseline snapshot: the VM's name


def short_name(base: str, suffix: str, limit: int = 63) -> str:
    """`<base>-<suffix>` as a DNS label of at most `limit` characters: a long base is cut and given a hash of
    itself, so two long names never meet."""
    name = f"{base}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[:limit - len(suffix) - 10].rstrip('-')}-{digest}-{suffix}"


def backup_claim(snapshot: str, volume: str) -> str:
    return short_name(snapshot, volume)


def copy_job(kind: str, name: str) -> str:
    return short_name(name, kind)


def baseline(vm: str) -> str:
    """A lab VM's baseline snapshot (BASELINE_ANNOTATION): what `kvtool lab reset` restores."""
    return short_name(vm, "baseline", 52)
