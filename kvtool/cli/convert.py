"""`kvtool convert PATH...`: KubeVirt VirtualMachines and VirtualMachineInstances as kvtool's, in YAML.

The same conversion `plan`/`apply` do on the fly; the result is checked like any desired state, so what it
writes applies (or the refusal names the field kvtool does not support).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kvtool import paths
from kvtool.api import builder, kubevirt
from kvtool.errors import KvtoolError
from kvtool.plan import desired


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (cloud-init user data) as `|` blocks, the way people write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(c in value for c in "\r\t") and value == value.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories ('-' for stdin)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--run-strategy", choices=builder.RUN_STRATEGIES,
                        help="for bare VirtualMachineInstances (default: their kvtool.io/run-strategy annotation, "
                             "else Always)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace for the check (not written)")


def run(args: argparse.Namespace) -> int:
    documents: list[dict] = []
    converted = 0
    problems: list[desired.InputIssue] = []
    for path in desired.expand_paths(args.paths):
        docs, issues = desired.read_documents(path, desired.read_stdin() if str(path) == "-" else None)
        problems += issues
        for _, doc in docs:
            for _, item in desired.unlist(desired.Location(str(path), 0), doc):
                if kubevirt.is_kubevirt(item):
                    item = kubevirt.from_kubevirt(item, args.run_strategy).manifest
                    converted += 1
                documents.append(item)
    if problems:
        raise desired.InvalidInput(problems)
    if not converted:  # before writing anything: a refusal leaves no output behind
        raise KvtoolError("no KubeVirt VirtualMachine or VirtualMachineInstance in the input",
                          hint=f"kvtool converts {' and '.join(kubevirt.KINDS)} of {kubevirt.GROUP}/"
                               f"{', '.join(kubevirt.VERSIONS)}")
    # Check what we write, as plan would: a refused field is named now, not when it is applied.
    desired.load(objects=documents, namespace=args.namespace)
    text = yaml.dump_all(documents, Dumper=_BlockDumper, sort_keys=False, width=120)
    if args.output:
        paths.write_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    print(f"Converted {converted} KubeVirt document(s); {len(documents)} written.", file=sys.stderr)
    return 0
