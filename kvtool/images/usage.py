"""Whether a VM's images are used as what they are: caught at validate/plan time, not in a crash loop.

The launcher refuses a kernel image attached as a containerDisk (or a disk image booted as a kernel)
with InvalidVMI; the image store on this machine already knows each image's kind, so validate and
plan say it first, naming the file, document and field. Images the store does not hold are not
judged here: a real cluster's nodes may have them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kvtool.images.store import Image, ImageStore

Problem = tuple[str, str]  # (field path, message)
Finder = Callable[[str], Image | None]  # an image's metadata by name; None: not on this machine


def problems(manifest: dict[str, Any], find: Finder) -> list[Problem]:
    """Misused images of one VirtualMachine or VirtualMachineInstance manifest."""
    kind = manifest.get("kind")
    if kind == "VirtualMachine":
        prefix, spec = "spec.template.spec", ((manifest.get("spec") or {}).get("template") or {}).get("spec")
    elif kind == "VirtualMachineInstance":
        prefix, spec = "spec", manifest.get("spec")
    else:
        return []
    if not isinstance(spec, dict):
        return []
    out: list[Problem] = []
    for i, vol in enumerate(spec.get("volumes") or []):
        name = ((vol or {}).get("containerDisk") or {}).get("image") if isinstance(vol, dict) else None
        image = find(name) if isinstance(name, str) else None
        if image is not None and image.kind != "disk":
            out.append((f"{prefix}.volumes[{i}].containerDisk.image",
                        f"image {name!r} is a {image.kind} image (kernel + initrd), not a disk: boot it with "
                        f"{prefix}.domain.firmware.kernelBoot.container.image instead"))
    boot = (((spec.get("domain") or {}).get("firmware") or {}).get("kernelBoot") or {}).get("container") \
        if isinstance(spec.get("domain"), dict) else None
    name = boot.get("image") if isinstance(boot, dict) else None
    image = find(name) if isinstance(name, str) else None
    if image is not None and image.kind != "kernel":
        out.append((f"{prefix}.domain.firmware.kernelBoot.container.image",
                    f"image {name!r} is a {image.kind} image, not a kernel: attach it as a containerDisk volume "
                    "instead"))
    return out


def checker(store: ImageStore | None = None) -> Callable[[dict[str, Any]], list[Problem]]:
    """A desired-state check (kvtool.plan.desired.load's `checks`) against this machine's image store. It reads
    each image's metadata once: a plan of 1000 VMs of one image asked the disk 1000 times."""
    find = functools.cache((store or ImageStore()).find)
    return lambda manifest: problems(manifest, find)
