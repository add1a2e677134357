"""`kvtool tf-external`: answer Terraform's external data source protocol from the cluster.

    data "external" "vm" {
      program = ["kvtool", "tf-external"]
      query   = { stack = "lab", name = "lab-1" }
    }

Reads one JSON object on stdin, prints one flat JSON object of strings on
stdout; bad input is a message on stderr and exit code 1 (kvtool.cli.main).
"""

from __future__ import annotations

import argparse
import json
import sys

from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ('query keys: stack, namespace, name, selector (k=v,...), kubeconfig, context. '
                     'With name: that VM\'s status, node, ip...; without: count, names, ips (JSON), running.')


def run(args: argparse.Namespace) -> int:
    from kvtool.terraform import external

    query = external.parse_query(sys.stdin.read())
    args.kubeconfig = query.get("kubeconfig") or args.kubeconfig
    args.context = query.get("context") or args.context
    conn = common.connect(args)
    print(json.dumps(external.answer(conn.res, query), sort_keys=True))
    return 0
