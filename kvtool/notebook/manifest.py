"""Form values → VirtualMachine manifests, through the shared builder (kvtool.api.builder).

The form adds what only it knows: which images exist (the local image store
the embedded cluster's nodes boot from, and images VMs in the cluster already
use), whether each is a kernel or a disk image, and lab naming (`lab-01..N`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3

from kvtool.api import builder
from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.errors import KvtoolError
from kvtool.images import store
from kvtool.kube.resources import Resources

log = logging.getLogger(__name__)

RUN_STRATEGIES = builder.RUN_STRATEGIES
MAX_COUNT = 100


@dataclass(frozen=True)
class ImageChoice:
    """An image a VM can boot: `kernel` (direct kernel boot) or `disk` (a containerDisk root disk)."""

    name: str
    kind: str = "kernel"
    origin: str = "store"  # "store" or "cluster"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind}, {self.origin})"


def vm_manifest(name: str, image: ImageChoice, *, namespace: str = "default", cpu: int = 1,
                memory: str = "128Mi", user_data: str | None = None, disks: Sequence[Mapping[str, Any]] = (),
                node_selector: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                run_strategy: str = "Always") -> dict[str, Any]:
    """The shared builder's manifest for a form's values. A kernel image boots with its own kernelArgs (the
    launcher adds the guest's hostname), so a lab saved today still gets the image's options tomorrow."""
    return builder.virtual_machine(name, namespace=namespace, cpu=cpu, memory=memory, image=image.name,
                                   image_kind=image.kind, disks=disks,
                                   user_data=user_data, run_strategy=run_strategy, node_selector=node_selector,
                                   labels=labels)


def names(base: str, count: int) -> list[str]:
    """`lab`, 3 → lab-01, lab-02, lab-03; a count of 1 keeps the name as typed."""
    if count == 1:
        return [base]
    width = max(2, len(str(count)))
    return [f"{base}-{i:0{width}d}" for i in range(1, count + 1)]


def parse_pairs(text: str) -> dict[str, str]:
    """`a=b, c=d` → {"a": "b", "c": "d"}; ValueError naming the first bad entry."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.replace("\n", ",").split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part!r} is not key=value (separate pairs with commas)")
        out[key.strip()] = value.strip()
    return out


def store_images(image_store: store.ImageStore | None = None) -> list[ImageChoice]:
    """The local store's images: the embedded cluster's nodes boot from this store."""
    try:
        images = (image_store or store.ImageStore()).list()
    except (KvtoolError, OSError) as exc:
        log.warning("cannot read the image store: %s", exc)
        return []
    return [ImageChoice(i.name, i.kind, "store") for i in images]


def cluster_images(res: Resources) -> list[ImageChoice]:
    """Images the cluster's VMs already boot (kernel or containerDisk), for clusters with their own images."""
    found: dict[str, ImageChoice] = {}
    items, _ = res.list(VIRTUAL_MACHINE)
    for vm in items:
        tspec = vm.get("spec", {}).get("template", {}).get("spec", {})
        kernel = tspec.get("domain", {}).get("firmware", {}).get("kernelBoot", {}).get("container", {}).get("image")
        if kernel:
            found.setdefault(kernel, ImageChoice(kernel, "kernel", "cluster"))
        for vol in tspec.get("volumes") or []:
            image = (vol.get("containerDisk") or {}).get("image")
            if image:
                found.setdefault(image, ImageChoice(image, "disk", "cluster"))
    return sorted(found.values(), key=lambda c: c.name)


def image_choices(res: Resources | None = None, image_store: store.ImageStore | None = None) -> list[ImageChoice]:
    """Store images first, then cluster-only ones; a cluster that cannot be read only costs its images."""
    choices = store_images(image_store)
    if res is not None:
        try:
            known = {c.name for c in choices}
            choices += [c for c in cluster_images(res) if c.name not in known]
        except (KvtoolError, OSError, urllib3.exceptions.HTTPError) as exc:  # unreachable: store images only
            log.warning("cannot list the cluster's images: %s", exc)
    return choices
