"""Entry point: parse the command name, import its module, run it, map errors to exit codes.

Every command module exposes `add_arguments(parser)` and `run(args) -> int`.
This is the one place where exceptions become exit codes and messages.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from types import ModuleType
from typing import NoReturn

from kvtool import __version__
from kvtool.errors import KvtoolError

# name -> (module, one-line help). Modules are imported lazily: `kvtool status`
# must not pay for libvirt or Terraform imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("kvtool.cli.cluster", "run the embedded cluster (up, down, status)"),
    "image": ("kvtool.cli.image", "build, import and list VM images (embedded mode)"),
    "validate": ("kvtool.cli.validate", "check desired-state files offline"),
    "convert": ("kvtool.cli.convert", "write KubeVirt VMs and VMIs as kvtool's (plan and apply read them too)"),
    "plan": ("kvtool.cli.plan", "show what apply would change"),
    "apply": ("kvtool.cli.apply", "make the cluster match the desired state (or a saved plan)"),
    "destroy": ("kvtool.cli.destroy", "delete a stack's objects"),
    "status": ("kvtool.cli.status", "the VMs of a stack in a table"),
    "start": ("kvtool.cli.vmctl", "start a VM (virtctl start)"),
    "stop": ("kvtool.cli.vmctl", "stop a VM (virtctl stop)"),
    "restart": ("kvtool.cli.vmctl", "restart a VM"),
    "pause": ("kvtool.cli.vmctl", "pause a running VM"),
    "unpause": ("kvtool.cli.vmctl", "unpause a paused VM"),
    "migrate": ("kvtool.cli.migrate", "live-migrate a running VM to another node (virtctl migrate)"),
    "migrate-cancel": ("kvtool.cli.migrate", "cancel a VM's live migration; it stays where it runs"),
    "snapshot": ("kvtool.cli.snapshot", "snapshot a VM's claims (a VirtualMachineSnapshot)"),
    "restore": ("kvtool.cli.snapshot", "write a snapshot back into its VM (a VirtualMachineRestore)"),
    "scale": ("kvtool.cli.scale", "set how many VMs a VirtualMachinePool keeps (kubectl scale)"),
    "console": ("kvtool.cli.console", "attach to a VM's serial console (--tail to print its log)"),
    "expose": ("kvtool.cli.expose", "make a Service in front of a VM (virtctl expose)"),
    "port-forward": ("kvtool.cli.port_forward", "relay local ports to a VM, pod or Service (kubectl-style)"),
    "lab": ("kvtool.cli.lab", "a lab's student logins (lab passwords) and more time (lab extend --by 1h)"),
    "ssh": ("kvtool.cli.ssh", "ssh to a VM through a port-forward to its port 22 (virtctl ssh)"),
    "crds": ("kvtool.cli.crds", "print the CRDs generated from schemas/"),
    "install-crds": ("kvtool.cli.install_crds", "install kvtool's CRDs on the current cluster"),
    "install": ("kvtool.cli.install", "deploy kvtool on a cluster (or --print its manifests)"),
    "uninstall": ("kvtool.cli.uninstall", "remove kvtool from a cluster"),
    "controller": ("kvtool.cli.controller", "run the VM controller"),
    "handler": ("kvtool.cli.handler", "run the per-node handler"),
    "launcher": ("kvtool.cli.launcher", "run one VM's libvirt domain (the launcher pod's command)"),
    "tf": ("kvtool.cli.tf", "Terraform with kvtool's provider: init, plan, apply, destroy, output; install"),
    "tf-external": ("kvtool.cli.tf_external", "answer Terraform's external data source protocol (JSON on stdin)"),
    "disk-copy": ("kvtool.cli.disk_copy", "copy claim disks for a snapshot or restore (the copy Job's command)"),
}


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: $KUBECONFIG, the embedded "
                                             "cluster if up, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context to use")
    parser.add_argument("-v", "--verbose", action="store_true", help="say more, including which kubeconfig is used")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with `usage_exit_code` (argparse's 2 unless 2 means
    "changes present", as under `plan --detailed-exitcode`)."""

    usage_exit_code = 2

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


def _usage_exit_code(argv: list[str]) -> int:
    """1 for `plan` (whose 2 means changes) and wherever --detailed-exitcode, or a prefix argparse
    accepts for it, is on the command line: a usage error must not read as "changes present"."""
    detailed = any(len(arg) > 2 and "--detailed-exitcode".startswith(arg.split("=", 1)[0]) for arg in argv)
    return 1 if detailed or _first_command(argv) == "plan" else 2


def build_parser(command: str | None, usage_exit_code: int = 2) -> tuple[_Parser, ModuleType | None]:
    parser = _Parser(
        prog="kvtool",
        description="Virtual machines next to containers on Kubernetes, with Terraform-style plan/apply.",
        epilog="commands:\n" + "\n".join(f"  {n:<14} {h}" for n, (_, h) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.usage_exit_code = usage_exit_code
    parser.add_argument("--version", action="version", version=f"kvtool {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    module = None
    for name, (modname, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.usage_exit_code = usage_exit_code
        if name == command:
            module = importlib.import_module(modname)
            _global_options_for_sub(sp)
            module.add_arguments(sp)
    return parser, module


def _global_options_for_sub(parser: argparse.ArgumentParser) -> None:
    # Accept the global flags after the command too (`kvtool status --kubeconfig X`).
    parser.add_argument("--kubeconfig", dest="sub_kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--context", dest="sub_context", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", dest="sub_verbose", action="store_true", help=argparse.SUPPRESS)


def _first_command(argv: list[str]) -> str | None:
    takes_value = {"--kubeconfig", "--context"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in takes_value:
            skip = True
            continue
        if not arg.startswith("-"):
            return arg
    return None


# Long-running commands keep Python's cyclic garbage collector on.
DAEMONS = {"controller", "handler", "launcher", "notebook"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _first_command(argv) not in DAEMONS:
        # A short-lived command: the cyclic GC only slows down building large plans (~30% at 1000 VMs);
        # reference counting still frees what it is done with.
        gc.disable()
    parser, module = build_parser(_first_command(argv), _usage_exit_code(argv))
    # A command that runs a command of its own (`kvtool ssh VM -i KEY -- uname -a`) takes what follows `--`
    # whole: argparse cannot give a positional list both words before options and words after `--`.
    trailing_dest = getattr(module, "TRAILING_ARGS", None)
    trailing: list[str] = []
    if trailing_dest and "--" in argv:
        argv, trailing = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    if trailing_dest:
        setattr(args, trailing_dest, [*getattr(args, trailing_dest), *trailing])
    if module is None:
        parser.print_help(sys.stderr)
        return 1 if args.command is None else parser.usage_exit_code
    args.kubeconfig = getattr(args, "sub_kubeconfig", None) or args.kubeconfig
    args.context = getattr(args, "sub_context", None) or args.context
    args.verbose = getattr(args, "sub_verbose", False) or args.verbose
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.verbose and args.command not in DAEMONS:
        # urllib3 logs every retry of an unreachable server; the one-sentence error below says it once.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        return int(module.run(args) or 0)
    except KvtoolError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as exc:  # last: only transport failures become a message, anything else stays a bug
        from kvtool.kube import transport  # only now: it imports urllib3, which most failures never need

        why = transport.reason(exc)
        if why is None:
            raise
        print(f"Error: {_unreachable(args, exc, why)}", file=sys.stderr)
        return 1


def _unreachable(args: argparse.Namespace, exc: BaseException, why: str) -> str:
    """One sentence: which server failed how, and which kubeconfig named it (see kvtool.cli.common.connect)."""
    from kvtool.kube import transport

    conn = getattr(args, "connection", None)
    if conn is None:  # a command that made its own client (`cluster`, say): the error may name the server
        server = transport.server_of(exc)
        return f"cannot reach the Kubernetes API server{f' {server}' if server else ''}: {why}."
    ctx = f", context {conn.context}" if conn.context else ""
    return (f"cannot reach the Kubernetes API server {conn.server}: {why}; the server comes from kubeconfig "
            f"{conn.kubeconfig.path} (from {conn.kubeconfig.source}{ctx}).")


if __name__ == "__main__":
    sys.exit(main())
