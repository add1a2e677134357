"""Put providers where Terraform finds them without a registry.

Terraform installs a provider from a local directory laid out as
HOST/NAMESPACE/TYPE/VERSION/OS_ARCH/terraform-provider-TYPE_vVERSION (an
"unpacked" filesystem mirror). `install()` writes kvtool's provider there as
a small launcher for this Python; `cli_config()` is the CLI configuration
that points Terraform at the directory. The default directory is one of
Terraform's implied mirrors (~/.local/share/terraform/plugins), which plain
`terraform init` searches even with no CLI configuration at all.

`build_external()` builds HashiCorp's `external` provider from the Go module
proxy, for using `kvtool tf-external` through the real `data "external"`.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from kvtool import __version__, paths
from kvtool.errors import KvtoolError

SOURCE = "kvtool.io/kvtool/kvtool"
EXECUTABLE = "terraform-provider-kvtool"
# hashicorp/external: the one version the Go module proxy serves here (v2.x answer 403). Its go.mod
# names the old path github.com/terraform-providers/..., so `go install` refuses it; the module zip is
# fetched from the same proxy, checked against this digest, and built with `go build`.
EXTERNAL_SOURCE = "registry.terraform.io/hashicorp/external"
EXTERNAL_VERSION = "1.2.0"
EXTERNAL_MODULE = "github.com/hashicorp/terraform-provider-external"
EXTERNAL_ZIP_SHA256 = "79bd9b04fc1cbde21e7dc374e1fd6a0197592293729356a4e2fb1ef72fd37ef2"

LAUNCHER = '''#!{python}
"""kvtool's Terraform provider {version} (written by `kvtool tf install`)."""
import sys

from kvtool.terraform.provider import main

sys.exit(main())
'''


def os_arch() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{sys.platform}_{arch}"


def default_plugin_dir() -> Path:
    """Terraform's implied local mirror on Linux: found by `terraform init` with no CLI config."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "terraform" / "plugins"


def kvtool_plugin_dir() -> Path:
    """The mirror `kvtool tf` uses when the user has no CLI configuration of their own."""
    return paths.cache_dir() / "terraform" / "plugins"


def provider_path(plugin_dir: Path, source: str, version: str, executable: str) -> Path:
    return plugin_dir / source / version / os_arch() / f"{executable}_v{version}"


def install(plugin_dir: Path | None = None, python: str | None = None) -> Path:
    """Write the provider launcher into the mirror; return its path. Idempotent."""
    target = provider_path(plugin_dir or default_plugin_dir(), SOURCE, __version__, EXECUTABLE)
    text = LAUNCHER.format(python=python or sys.executable, version=__version__)
    if target.is_file() and target.read_text() == text:
        return target
    return paths.write_atomic(target, text, 0o755)


def installed_sources(plugin_dir: Path) -> list[str]:
    """Provider sources (HOST/NAMESPACE/TYPE) present in a mirror."""
    found = []
    for source in (SOURCE, EXTERNAL_SOURCE):
        if (plugin_dir / source).is_dir() and any((plugin_dir / source).rglob("terraform-provider-*")):
            found.append(source)
    return found


def cli_config(plugin_dir: Path, sources: Sequence[str] = (SOURCE,), direct: bool = True) -> str:
    """A CLI configuration: these sources from the mirror, everything else from the registry
    (`direct=False`: nothing else at all, for isolated tests)."""
    quoted = ", ".join(f'"{s}"' for s in sources)
    text = (f'provider_installation {{\n  filesystem_mirror {{\n    path    = "{plugin_dir}"\n'
            f"    include = [{quoted}]\n  }}\n")
    if direct:
        text += f"  direct {{\n    exclude = [{quoted}]\n  }}\n"
    return text + "}\n"


def write_cli_config(path: Path, plugin_dir: Path, sources: Sequence[str] = (SOURCE,), direct: bool = True) -> Path:
    return paths.write_atomic(path, cli_config(plugin_dir, sources, direct))  # concurrent `kvtool tf` runs


def ensure_kvtool_config() -> Path:
    """kvtool's own mirror and CLI config (used by `kvtool tf` when the user has none)."""
    plugin_dir = kvtool_plugin_dir()
    install(plugin_dir)
    return write_cli_config(plugin_dir.parent / "terraform.rc", plugin_dir, installed_sources(plugin_dir))


# -- hashicorp/external, built from the Go module proxy --------------------------------------------

def go_executable() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go is None:
        raise KvtoolError("the Go toolchain is needed to build hashicorp/external (no `go` on PATH)",
                          hint="install Go 1.24 or newer (https://go.dev/dl/) and put it on PATH")
    return go


def build_external(plugin_dir: Path, say: Callable[[str], None] = print) -> Path:
    """Build hashicorp/external into the mirror (once; a cold build takes ~5 minutes)."""
    target = provider_path(plugin_dir, EXTERNAL_SOURCE, EXTERNAL_VERSION, "terraform-provider-external")
    if target.is_file():
        return target
    go = go_executable()
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    proxy = _go_proxy(go, env)
    url = f"{proxy}/{EXTERNAL_MODULE}/@v/v{EXTERNAL_VERSION}.zip"
    say(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            data = resp.read()
    except OSError as exc:
        raise KvtoolError(f"cannot download {url}: {exc}", hint="check GOPROXY (`go env GOPROXY`)") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXTERNAL_ZIP_SHA256:
        raise KvtoolError(f"{url} has sha256 {digest}, expected {EXTERNAL_ZIP_SHA256}; refusing to build it")
    with tempfile.TemporaryDirectory(prefix="kvtool-external-") as tmp:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(tmp)
        src = Path(tmp) / f"{EXTERNAL_MODULE}@v{EXTERNAL_VERSION}"
        for p in src.rglob("*"):
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(src / "vendor", ignore_errors=True)  # module zips carry only vendor/modules.txt
        target.parent.mkdir(parents=True, exist_ok=True)
        say(f"building hashicorp/external {EXTERNAL_VERSION} with {go} (dependencies from the Go module proxy)")
        result = subprocess.run([go, "build", "-trimpath", "-o", str(target) + ".tmp", "."], cwd=src, env=env,
                                capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise KvtoolError(f"building hashicorp/external failed:\n{result.stderr[-3000:]}")
    os.replace(str(target) + ".tmp", target)
    return target


def _go_proxy(go: str, env: dict[str, str]) -> str:
    value = subprocess.run([go, "env", "GOPROXY"], capture_output=True, text=True, env=env, check=True).stdout
    for entry in value.strip().replace("|", ",").split(","):
        if entry.startswith(("https://", "http://")):
            return entry.rstrip("/")
    raise KvtoolError(f"GOPROXY is {value.strip()!r}: no module proxy URL to fetch hashicorp/external from")
