"""How many of KubeVirt's example VM/VMI manifests kvtool accepts with only the apiVersion changed.

Usage: python bench/kubevirt_examples.py DIR [--markdown]
DIR holds KubeVirt's examples/*.yaml (kubevirt/kubevirt, not vendored here: fetch them yourself). Each
kubevirt.io VirtualMachine or VirtualMachineInstance document is given apiVersion kvtool.io/v1alpha1 (a VMI
wrapped in a VM, as the issue measures it) and validated against kvtool's schemas, offline; the rest of the
files (instance types, pools, migrations, CDI) are counted apart. Prints accepted/total and, for each
refused manifest, its first reasons.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import yaml

from kvtool.api import kubevirt, schema


def as_kvtool(doc: dict) -> dict:
    """The issue's "apiVersion changed, VMIs wrapped in a VM" - nothing else touched."""
    if doc["kind"] == "VirtualMachine":
        return {**doc, "apiVersion": "kvtool.io/v1alpha1"}
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine", "metadata": doc.get("metadata"),
            "spec": {"runStrategy": "Always", "template": {"spec": doc.get("spec")}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print the refused ones as a Markdown table")
    args = parser.parse_args()
    files = sorted(args.directory.glob("*.yaml"))
    accepted: list[str] = []
    refused: dict[str, list[str]] = {}
    other: Counter[str] = Counter()
    for file in files:
        for i, doc in enumerate(d for d in yaml.safe_load_all(file.read_text()) if isinstance(d, dict)):
            if not kubevirt.is_kubevirt(doc):
                other[f"{doc.get('apiVersion')} {doc.get('kind')}"] += 1
                continue
            label = f"{file.name}" + (f"#{i + 1}" if i else "")
            issues = schema.validate(as_kvtool(doc), "virtualmachine.json")
            if issues:
                refused[label] = [str(issue) for issue in issues]
            else:
                accepted.append(label)
    total = len(accepted) + len(refused)
    print(f"{len(accepted)}/{total} KubeVirt VM/VMI manifests in {len(files)} files validate with only the "
          f"apiVersion changed ({sum(other.values())} other documents: "
          f"{', '.join(f'{n}x {k}' for k, n in other.most_common())})")
    if args.markdown:
        print("\n| manifest | why kvtool refuses it |\n|---|---|")
    for label, issues in sorted(refused.items()):
        reasons = "; ".join(issues[:3]) + (f" (+{len(issues) - 3} more)" if len(issues) > 3 else "")
        print(f"| {label} | {reasons} |" if args.markdown else f"  refused {label}: {reasons}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
