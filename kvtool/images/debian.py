"""Fetch a Debian package file with apt and unpack it, without installing anything.

Downloads are kept in kvtool's cache (<cache>/downloads/) under the exact
package version, so a rebuild needs no network: resolving the version with
apt-cache reads only the local package lists.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from kvtool import paths
from kvtool.errors import BuildError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

_APT_HINT = "run `apt-get update` (the machine needs Debian's package lists and mirror)"


# Where a package of setup/apt-packages.txt is needed (its second column).
PACKAGE_USES = ("image", "build", "node", "dev")


def package_list(*uses: str, path: Path | None = None) -> list[str]:
    """Packages of setup/apt-packages.txt (or `path`) marked with any of `uses`, in file order.

    The one reader of that list in Python; `make setup` and launcher_image/Dockerfile read it with awk
    the same way (comment lines start with '#', then "package use" per line).
    """
    unknown = set(uses) - set(PACKAGE_USES)
    if unknown:
        raise ValueError(f"unknown package uses {sorted(unknown)}; expected some of {PACKAGE_USES}")
    path = path or paths.source_root() / "setup" / "apt-packages.txt"
    try:
        text = path.read_text()
    except OSError as exc:
        raise BuildError(f"cannot read the package list {path}: {exc}",
                         hint="run kvtool from its source checkout (the list is not in the wheel)") from exc
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2 or fields[1] not in PACKAGE_USES:
            raise BuildError(f"{path}:{number}: expected 'package use' with a use in {PACKAGE_USES}, got {line!r}")
        if fields[1] in uses:
            found.append(fields[0])
    return found


def downloads_dir() -> Path:
    return paths.cache_dir() / "downloads"


def tool(name: str, package: str) -> str:
    """Absolute path of a required command, or a BuildError naming the package to install."""
    found = shutil.which(name)
    if not found:
        raise BuildError(f"`{name}` is not installed", hint=f"apt-get install {package}")
    return found


def run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 600, hint: str | None = _APT_HINT) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BuildError(f"{what} failed (exit {result.returncode}): {' / '.join(detail)}", hint=hint)
    return result.stdout


def dependency(meta_package: str, prefix: str) -> str:
    """The package `meta_package` depends on whose name starts with `prefix` (how Debian's kernel metas work)."""
    out = run([tool("apt-cache", "apt"), "depends", meta_package], f"apt-cache depends {meta_package}")
    for line in out.splitlines():
        kind, _, pkg = line.strip().partition(": ")
        if kind.lstrip("|") == "Depends" and pkg.startswith(prefix):
            return pkg.strip()
    raise BuildError(f"{meta_package} does not depend on any {prefix}* package in the local package lists",
                     hint=_APT_HINT)


def candidate(package: str) -> tuple[str, str]:
    """(version, architecture) apt would download for `package`."""
    out = run([tool("apt-cache", "apt"), "show", "--no-all-versions", package], f"apt-cache show {package}")
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith(" "))
    if "Version" not in fields:
        raise BuildError(f"apt knows no version of {package}", hint=_APT_HINT)
    return fields["Version"], fields.get("Architecture", "all")


def download(package: str, version: str, arch: str, cache: Path | None = None) -> Path:
    """The .deb of `package` `version` (see candidate()), from the cache or fetched with `apt-get download`."""
    cache = cache or downloads_dir()
    target = cache / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
    if target.is_file():
        log.info("using cached %s", target)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        # As root apt drops to the _apt user, which cannot write our 0700 temp dir: apt then
        # downloads unsandboxed and warns. Say so up front instead of printing the warning.
        sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        run([tool("apt-get", "apt"), *sandbox, "download", f"{package}={version}"],
             f"apt-get download {package}={version}", cwd=Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise BuildError(f"apt-get download {package} left {len(debs)} .deb files, expected one")
        check = run([tool("dpkg-deb", "dpkg"), "--field", str(debs[0]), "Package", "Version"],
                     "dpkg-deb --field", hint=None)
        if f"Package: {package}" not in check or f"Version: {version}" not in check:
            raise BuildError(f"downloaded file is not {package} {version}: {check.strip()}")
        os.replace(debs[0], target)  # atomic: concurrent builds each publish a complete file
    log.info("downloaded %s", target)
    return target


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of a .deb into `dest` (`dpkg -x`: no scripts run, nothing installed)."""
    run([tool("dpkg", "dpkg"), "-x", str(deb), str(dest)], f"dpkg -x {deb.name}",
         hint=f"the cached file may be damaged: delete {deb} and build again")


def remove_tree(path: Path) -> None:
    """rmtree, refusing if anything is mounted below `path`: a failed chroot build may leave /proc or /dev there."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        mounted = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    if mounted:
        raise BuildError(f"{path} still has mounts below it ({', '.join(mounted)}); not removing it",
                         hint=f"unmount them (umount -R {mounted[0]}) and delete {path}")
    shutil.rmtree(path, ignore_errors=True)


def run_logged(argv: list[str], what: str, say: Progress, env: dict[str, str], forward: Callable[[str], bool],
               timeout: float, hint: str = "Debian's mirror and PyPI must be reachable") -> None:
    """Run a long build step: pass its milestone lines to `say`, keep its last lines for the error."""
    log.info("running %s", argv)
    tail: deque[str] = deque(maxlen=15)
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", env=env) as proc:
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                tail.append(line)
                if forward(line):
                    say(f"  {what}: {line}")
            code = proc.wait()
        finally:
            watchdog.cancel()
    if code != 0:
        raise BuildError(f"{what} failed (exit {code}; killed after {timeout:.0f} s if negative):\n  "
                         + "\n  ".join(tail), hint=hint)
