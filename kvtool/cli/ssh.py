"""`kvtool ssh [USER@]NAME [-i KEY] [-- COMMAND...]`: OpenSSH to a VM through a port-forward to its port 22.

As `virtctl ssh --local-ssh`: the local `ssh` does the protocol, keys and terminal, and reaches the guest
through the same relay as `kvtool port-forward` (a local port on 127.0.0.1 that only this command uses).
The VM's host key is remembered under its name (HostKeyAlias), in kvtool's own known-hosts file by default,
so one VM's key never stands for another's, and a VM rebuilt with a new key is refused as ssh refuses any.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kvtool import paths
from kvtool.cli import common
from kvtool.errors import KvtoolError

EPILOG = """\
NAME is a VM (NAME, vm/NAME or vmi/NAME). USER defaults to your ssh configuration's (the guest image's
default user is often a better guess: debian-12's is `debian`). Everything after `--` is the remote
command. Exit status: the remote command's, or 255 when ssh itself fails (as ssh).
"""
SSH_PORT = 22
TRAILING_ARGS = "remote_command"  # kvtool.cli.main puts what follows `--` here
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$", re.IGNORECASE)  # what useradd accepts, case aside
_NAME_RE = re.compile(r"^(?:(vm|vmi|virtualmachine|virtualmachineinstance)/)?([a-z0-9]([-a-z0-9]*[a-z0-9])?)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", metavar="[USER@]NAME")
    parser.add_argument("remote_command", nargs="*", metavar="COMMAND",
                        help="a command to run instead of a login shell (after `--` when it has options)")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("-l", "--username", help="the user to log in as (or USER@NAME)")
    parser.add_argument("-i", "--identity-file", type=Path, help="the private key (ssh -i)")
    parser.add_argument("-p", "--port", type=int, default=SSH_PORT, help="the guest's SSH port (default 22)")
    parser.add_argument("-t", "--tty", action="store_true", help="force a terminal (ssh -t)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                        help="an ssh -o option (repeatable)")
    parser.add_argument("--known-hosts", type=Path, help="where host keys are kept (default ~/.kvtool/known_hosts)")


def parse_target(target: str, username: str | None) -> tuple[str | None, str]:
    """(user or None, VM name) from [USER@][vm/|vmi/]NAME; a clear error for anything else."""
    given, sep, rest = target.rpartition("@")
    user = given if sep else username
    match = _NAME_RE.match(rest)
    if not match:
        raise KvtoolError(f"{target!r} is not [USER@]NAME: NAME must be a VM's name (or vm/NAME, vmi/NAME)")
    if user is not None and not _USER_RE.match(user):
        raise KvtoolError(f"{user!r} is not a user name: letters, digits, '_', '.', '-', starting with a letter")
    return user, match.group(2)


def ssh_argv(ssh: str, port: int, name: str, namespace: str, user: str | None, args: argparse.Namespace,
             known_hosts: Path) -> list[str]:
    """The ssh command line: to 127.0.0.1:`port` (the relay), the host key filed under the VM's name."""
    argv = [ssh, "-p", str(port), "-o", f"HostKeyAlias=vm/{name}.{namespace}", "-o",
            f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
    if args.identity_file:
        argv += ["-i", str(args.identity_file), "-o", "IdentitiesOnly=yes"]
    if args.tty:
        argv.append("-t")
    for option in args.options:
        argv += ["-o", option]
    if user:
        argv += ["-l", user]
    command = args.remote_command
    return [*argv, "127.0.0.1", *(["--", *command] if command else [])]


def run(args: argparse.Namespace) -> int:
    from kvtool.podnet import forward

    user, name = parse_target(args.target, args.username)
    if not 1 <= args.port <= 65535:
        raise KvtoolError(f"port {args.port} is out of range")
    if args.identity_file and not args.identity_file.is_file():
        raise KvtoolError(f"{args.identity_file}: no such key file", hint="give the private key with -i")
    ssh = shutil.which("ssh")
    if not ssh:
        raise KvtoolError("`ssh` is not installed", hint="apt-get install openssh-client")
    known_hosts = args.known_hosts or paths.kvtool_home() / "known_hosts"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    conn = common.connect(args)
    relay = forward.Relay(forward.resolve(conn.res, args.namespace, name, args.port), 0).start()
    try:
        return subprocess.run(ssh_argv(ssh, relay.port, name, args.namespace, user, args, known_hosts),
                              stdin=sys.stdin).returncode
    finally:
        relay.close()
