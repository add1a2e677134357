"""Small builders of VM manifests for tests (plain dicts, as users write them)."""

from __future__ import annotations

import copy
from typing import Any

from kvtool.images import tiny_linux

# kernelArgs replace the image's own command line; tests add the guest's hostname to it.
KERNEL_ARGS = tiny_linux.DEFAULT_CMDLINE


def vm(name: str, *, cores: int = 1, memory: str = "128Mi", run_strategy: str = "Halted",
       namespace: str | None = None, labels: dict[str, str] | None = None, user_data: str | None = None,
       image: str = "tiny-linux") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "kvtool.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": run_strategy,
            "template": {"spec": {
                "domain": {"cpu": {"cores": cores}, "memory": {"guest": memory},
                           "firmware": {"kernelBoot": {"kernelArgs": f"{KERNEL_ARGS} kvtool.hostname={name}",
                                                       "container": {"image": image}}},
                           "devices": {"disks": [], "interfaces": [{"name": "default", "masquerade": {}}]}},
                "networks": [{"name": "default", "pod": {}}],
            }},
        },
    }
    if namespace:
        doc["metadata"]["namespace"] = namespace
    if labels:
        doc["metadata"]["labels"] = dict(labels)
    if user_data is not None:
        tspec = doc["spec"]["template"]["spec"]
        tspec["domain"]["devices"]["disks"].append({"name": "cloudinit", "disk": {"bus": "virtio"}})
        tspec["volumes"] = [{"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}}]
    return doc


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path set (list items by index)."""
    out = copy.deepcopy(doc)
    cur: Any = out
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur[int(p)] if p.isdigit() else cur.setdefault(p, {})
    last = parts[-1]
    if last.isdigit():
        cur[int(last)] = value
    else:
        cur[last] = value
    return out
