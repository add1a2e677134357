"""`kvtool crds` prints the CRDs generated from schemas/; `kvtool install-crds` applies them."""

from __future__ import annotations

import argparse
import sys

from kvtool.api import crd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(crd.crds_yaml())
    return 0
