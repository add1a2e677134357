"""`kvtool install [--image REF] [--print]`: deploy kvtool on a cluster, or print its manifests."""

from __future__ import annotations

import argparse
import sys

import yaml

from kvtool.cli import common
from kvtool.deploy import install, manifests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default=manifests.DEFAULT_IMAGE,
                        help=f"the kvtool image (launcher, handler, controller; default {manifests.DEFAULT_IMAGE})")
    parser.add_argument("--print", action="store_true", dest="print_only", help="print the manifests, apply nothing")
    parser.add_argument("--dry-run", action="store_true", help="have the API server validate everything, apply nothing")


def run(args: argparse.Namespace) -> int:
    docs = manifests.all_manifests(args.image)
    if args.print_only:
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, width=120))
        return 0
    conn = common.connect(args)
    install.apply_all(conn.res, docs, dry_run=args.dry_run, say=lambda m: print(m, file=sys.stderr))
    print(f"kvtool {'validated' if args.dry_run else 'installed'} on {conn.server} "
          f"(namespace {manifests.NAMESPACE}, image {args.image}).")
    return 0
