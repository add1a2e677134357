"""`kvtool launcher --namespace NS --name NAME --uid UID`: the launcher pod's command, one VM per process.

Configured by the KVTOOL_* environment of docs/runtime.md; never talks to the
Kubernetes API, so it imports nothing of kubernetes (it starts in ~0.1 s).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", required=True, help="the VMI's namespace")
    parser.add_argument("--name", required=True, help="the VMI's name")
    parser.add_argument("--uid", required=True, help="the VMI's metadata.uid (becomes the domain UUID)")


def run(args: argparse.Namespace) -> int:
    from kvtool.launcher import main

    return main.run(args.namespace, args.name, args.uid)
