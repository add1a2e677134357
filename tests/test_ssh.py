"""`kvtool ssh`: its target parsing and the ssh command line (pure), and its refusals from the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kvtool.cli import ssh
from kvtool.errors import KvtoolError
from tests.conftest import kvtool


def _args(*argv: str, remote: tuple[str, ...] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ssh.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.remote_command += remote
    return args


@pytest.mark.parametrize(("target", "username", "expected"), [
    ("web", None, (None, "web")),
    ("debian@web", None, ("debian", "web")),
    ("debian@vm/web-1", "ignored", ("debian", "web-1")),
    ("vmi/web", "student", ("student", "web")),
])
def test_targets(target: str, username: str | None, expected: tuple[str | None, str]) -> None:
    assert ssh.parse_target(target, username) == expected


@pytest.mark.parametrize(("target", "message"), [
    ("Web", "is not \\[USER@\\]NAME"),
    ("pod/web", "is not \\[USER@\\]NAME"),
    ("debian@", "is not \\[USER@\\]NAME"),
    ("-oProxyCommand=x@web", "is not a user name"),
    ("a b@web", "is not a user name"),
])
def test_bad_targets_are_refused(target: str, message: str) -> None:
    with pytest.raises(KvtoolError, match=message):
        ssh.parse_target(target, None)


def test_the_ssh_command_line_goes_to_the_relay_and_files_the_key_under_the_vm() -> None:
    args = _args("debian@web", "-i", "/k/id", "-o", "ConnectTimeout=5", remote=("uname", "-a"))
    argv = ssh.ssh_argv("/usr/bin/ssh", 40123, "web", "lab", "debian", args, Path("/h/known_hosts"))
    assert argv[:3] == ["/usr/bin/ssh", "-p", "40123"]
    assert "HostKeyAlias=vm/web.lab" in argv and "UserKnownHostsFile=/h/known_hosts" in argv
    assert argv[argv.index("-i") + 1] == "/k/id" and "ConnectTimeout=5" in argv
    assert argv[argv.index("-l") + 1] == "debian"
    # The host is always the relay; the remote command comes after `--`, so ssh never reads it as options.
    assert argv[-4:] == ["127.0.0.1", "--", "uname", "-a"]
    assert ssh.ssh_argv("ssh", 1, "web", "default", None, _args("web"), Path("k"))[-1] == "127.0.0.1"


def test_the_cli_refuses_before_connecting(tmp_path: Path) -> None:
    result = kvtool("ssh", "bad name", env={"KVTOOL_HOME": str(tmp_path)})
    assert result.returncode != 0 and "is not [USER@]NAME" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # Options before and after NAME, the remote command after `--` with options of its own: all parsed.
    result = kvtool("ssh", "-n", "lab", "debian@web", "-i", str(tmp_path / "missing"), "--", "ls", "-l",
                    env={"KVTOOL_HOME": str(tmp_path)})
    assert result.returncode != 0 and "no such key file" in result.stderr, result.stderr
