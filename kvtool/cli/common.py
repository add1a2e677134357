"""What several commands share: connecting to the cluster, stack and file options."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from kvtool.api.types import DEFAULT_STACK, TARGETS, Target
from kvtool.kube import clients
from kvtool.kube import config as kubeconfig
from kvtool.kube.resources import Resources, target_for


@dataclass
class Connection:
    res: Resources
    server: str
    kubeconfig: kubeconfig.ResolvedKubeconfig
    context: str | None = None  # the context in use, also when the kubeconfig's current-context chose it

    @property
    def target(self) -> str:
        """`https://host:port (context c)`: the cluster a command is about to change."""
        return f"{self.server} (context {self.context})" if self.context else self.server


def connect(args: argparse.Namespace) -> Connection:
    """A client for the cluster the user chose; kept on `args.connection` so that kvtool.cli.main can
    name the server and kubeconfig when the connection fails."""
    resolved = kubeconfig.resolve(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    if getattr(args, "verbose", False):
        print(f"Using kubeconfig {resolved.describe()}", file=sys.stderr)
    api = clients.api_client(resolved.path, resolved.context)
    conn = Connection(Resources(api), api.configuration.host, resolved,
                      clients.context_name(resolved.path, resolved.context))
    args.connection = conn
    return conn


def add_api(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", choices=["auto", *TARGETS], default="auto",
                        help="whose VM API to drive: kvtool's (kvtool.io) or KubeVirt's (kubevirt.io/v1, on clusters "
                             "running KubeVirt); auto: kvtool's where the cluster serves it, else KubeVirt's")


def api_target(args: argparse.Namespace, conn: Connection) -> Target:
    """The VM API the command drives (see add_api); auto asks the cluster which it serves."""
    return target_for(conn.res, getattr(args, "api", "auto"))


def show_target(conn: Connection) -> None:
    """Name the cluster on stderr, where it cannot break machine-readable stdout (`plan --json`)."""
    print(f"Target cluster: {conn.target}", file=sys.stderr)


def add_stack(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", default=DEFAULT_STACK,
                        help="the stack (unit of ownership, like a Terraform state) to work on "
                             f"(default {DEFAULT_STACK!r})")


def add_files(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("-f", "--filename", dest="files", action="append", default=[], required=required,
                        metavar="PATH", help="YAML/JSON file or directory of desired objects (repeatable; - for stdin)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace for objects that name none")


def add_roster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--roster", metavar="CSV",
                        help="one copy of each VirtualMachine in -f per student of this CSV (columns: name, optional "
                             "ssh_key, any others), each with the student's own account; see docs/labs.md")


def add_expiry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ttl", metavar="DURATION",
                        help="each VM expires this long after it is created (e.g. 3h, 90m, 2d); the controller then "
                             "stops it (or deletes it, --on-expiry delete); `kvtool lab extend` gives more time")
    parser.add_argument("--on-expiry", choices=["stop", "delete"], help="what happens at the end of --ttl "
                                                                           "(default stop)")
    parser.add_argument("--baseline", action="store_true",
                        help="snapshot each VM's claims before its first boot, so `kvtool lab reset` can put them "
                             "back (annotation kvtool.io/baseline)")


def confirm(question: str) -> bool:
    print(f"\n{question}\n  Only 'yes' will be accepted to approve.\n", file=sys.stderr)
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        return False
    return answer.strip() == "yes"


def configure_daemon_logging() -> None:
    """Daemons log key=value lines at INFO; kopf's own chatter only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    for noisy in ("kopf", "kopf.objects", "kopf.activities", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_in_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in-cluster", action="store_true",
                        help="use the pod's service account instead of a kubeconfig")


def daemon_connection(args: argparse.Namespace):
    """The API client a daemon uses, exported for kopf's login too (which reads $KUBECONFIG)."""
    import os

    from kvtool.kube import clients

    if args.in_cluster:
        os.environ.pop("KUBECONFIG", None)
        res = clients.in_cluster_resources()
        return res, res.api
    conn = connect(args)
    os.environ["KUBECONFIG"] = conn.kubeconfig.path
    return conn.res, conn.res.api
