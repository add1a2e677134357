"""`kvtool image build | import | list | rm`: the local image store used in embedded mode.

`image build` also makes the container images the embedded cluster's nodes import (OCI archives
under kvtool's cache, not VM images in the store).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvtool.errors import KvtoolError
from kvtool.images import container, debian_cloud, store, tiny_linux

# VM images `kvtool image build` knows how to make into the store, name -> builder.
BUILDERS = {tiny_linux.NAME: tiny_linux.build, debian_cloud.NAME: debian_cloud.build}
# Container images it makes as OCI archives for the nodes' containerd, name -> builder.
CONTAINER_BUILDERS = {"launcher": container.build_launcher}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build an image from Debian packages (no image downloads)")
    build.add_argument("name", choices=sorted({*BUILDERS, *CONTAINER_BUILDERS}),
                       help="image to build: a VM image into the store, or `launcher`, the container image "
                            "archive the nodes import")
    build.add_argument("--force", action="store_true", help="rebuild even if the store (or the cache) already has it")
    imp = sub.add_parser("import", help="copy a qcow2 or raw disk image into the store")
    imp.add_argument("name", help="image name (a DNS-1123 label, e.g. debian-12)")
    imp.add_argument("file", type=Path, help="the .qcow2 or raw disk image")
    imp.add_argument("--force", action="store_true", help="replace an image of the same name")
    sub.add_parser("list", help="list the images in the store")
    rm = sub.add_parser("rm", help="remove an image from the store")
    rm.add_argument("name")


def run(args: argparse.Namespace) -> int:
    images = store.ImageStore()
    if args.action == "build" and args.name in CONTAINER_BUILDERS:
        built = CONTAINER_BUILDERS[args.name](force=args.force, progress=_progress)
        print(f"{built.reference}: OCI image archive, {_size(built.size)}, in {built.archive}")
        return 0
    if args.action == "build":
        image = BUILDERS[args.name](images, force=args.force, progress=_progress)
        print(f"{image.name}: {image.kind} image, {_size(image.size)}, in {image.directory}")
        return 0
    if args.action == "import":
        image = images.import_disk(args.name, args.file, force=args.force)
        print(f"{image.name}: {image.format} disk, {_size(image.size)} "
              f"(virtual {_size(image.virtual_size or 0)}), in {image.directory}")
        return 0
    if args.action == "rm":
        images.remove(args.name)
        print(f"removed {args.name}")
        return 0
    if args.action == "list":
        return _list(images)
    raise KvtoolError(f"unknown action {args.action!r}")


def _list(images: store.ImageStore) -> int:
    found = images.list()
    if not found:
        print(f"No images in {images.root}. Build one with `kvtool image build tiny-linux`.", file=sys.stderr)
        return 0
    print(f"{'NAME':<24} {'KIND':<7} {'SIZE':>9}  CREATED")
    for image in found:
        print(f"{image.name:<24} {image.kind:<7} {_size(image.size):>9}  {image.created}")
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
