"""Build (or find in the cache) the kvtool-controlplane binary.

The binary links the real kube-apiserver, scheduler, controller-manager,
kubectl and etcd from Go modules (see controlplane/). A cold build takes
minutes, so the result is cached under a key made of everything that can
change it: go.mod, go.sum, our Go sources and the Go toolchain version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from kvtool import paths
from kvtool.errors import BuildError

log = logging.getLogger(__name__)

BINARY = "kvtool-controlplane"
# Names the multi-call binary answers to through symlinks.
ALIASES = ("kubectl",)


def controlplane_source() -> Path:
    src = Path(os.environ.get("KVTOOL_CONTROLPLANE_SRC") or paths.source_root() / "controlplane")
    if not (src / "go.mod").is_file():
        raise BuildError(
            f"control-plane sources not found at {src}",
            hint="run kvtool from a kvtool checkout, or set KVTOOL_CONTROLPLANE_BIN to a built binary",
        )
    return src


def go_executable() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("the Go toolchain is not installed (no `go` on PATH)",
                         hint="install Go 1.24 or newer, then run `make setup`")
    return go


def go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def build_key(src: Path, go: str) -> str:
    """Hash of the inputs of the build; equal keys give equal binaries."""
    h = hashlib.sha256()
    files = sorted([src / "go.mod", src / "go.sum", *src.glob("*.go")])
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(go_version(go).encode())
    h.update(Path(__file__).read_bytes())  # the build flags live here
    return h.hexdigest()[:16]


def cached_binary() -> Path | None:
    """The binary if it is already built for the current sources, else None."""
    override = os.environ.get("KVTOOL_CONTROLPLANE_BIN")
    if override:
        return Path(override)
    src = controlplane_source()
    out = paths.cache_dir() / "controlplane" / build_key(src, go_executable()) / BINARY
    return out if out.is_file() else None


def binary_dir(binary: Path) -> Path:
    return binary.parent


def ensure_binary(progress: bool = True) -> Path:
    """Return the control-plane binary, building it first if the cache misses."""
    override = os.environ.get("KVTOOL_CONTROLPLANE_BIN")
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise BuildError(f"KVTOOL_CONTROLPLANE_BIN={override} is not an executable file")
        return path
    src = controlplane_source()
    go = go_executable()
    key = build_key(src, go)
    outdir = paths.cache_dir() / "controlplane" / key
    out = outdir / BINARY
    if out.is_file():
        log.debug("control-plane binary cached at %s", out)
        _link_aliases(out)
        return out
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = outdir / f".{BINARY}.{os.getpid()}.tmp"
    version = _kubernetes_version(src)
    cmd = [go, "build", "-v", "-trimpath", "-ldflags", _ldflags(version), "-o", str(tmp), "."]
    _say(progress, f"Building {BINARY} ({version}) from Go modules; a cold build takes several minutes...")
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for count, line in enumerate(proc.stdout, start=1):
        tail.append(line.rstrip())
        if progress and count % 100 == 0:
            _say(progress, f"  ... {count} packages compiled ({time.monotonic() - start:.0f}s)")
    rc = proc.wait()
    if rc != 0:
        tmp.unlink(missing_ok=True)
        shown = "\n".join(f"    {line}" for line in list(tail)[-20:])
        raise BuildError(f"`go build` of {BINARY} failed (exit {rc}) in {src}:\n{shown}",
                         hint="check the Go toolchain and that the Go module proxy is reachable")
    tmp.rename(out)
    elapsed = time.monotonic() - start
    (outdir / "build-seconds").write_text(f"{elapsed:.1f}\n")
    _link_aliases(out)
    _say(progress, f"Built {out} in {elapsed:.0f}s")
    return out


def _ldflags(version: str) -> str:
    """Stamp the Kubernetes version the way its own release builds do (kubectl version checks it)."""
    major, minor = version.lstrip("v").split(".")[:2] if version.startswith("v1.") else ("0", "0")
    flags = ["-s", "-w", f"-X main.version={version}"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                  f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
    return " ".join(flags)


def _link_aliases(binary: Path) -> None:
    for alias in ALIASES:
        link = binary.parent / alias
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(binary.name)


def _kubernetes_version(src: Path) -> str:
    for line in (src / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("k8s.io/kubernetes", "require") and parts[-1].startswith("v1."):
            return parts[-1]
    return "dev"


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
    log.info(message)
