"""Build (or find in the cache) the Go binaries the embedded cluster runs.

Nothing kvtool needs can be downloaded as a binary here, so it builds them from Go modules in
this checkout: kvtool-controlplane (controlplane/: the real kube-apiserver, scheduler,
controller-manager, kubelet, kube-proxy, kubectl and etcd), kvtool-containerd (containerd/:
containerd 2.x, its runc shim and ctr) and kvtool-pause (containerd/pause: the pod sandbox
process). A cold build takes minutes, so each result is cached under a key made of everything
that can change it: go.mod, go.sum, our Go sources, the build flags and the Go toolchain version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from kvtool import paths
from kvtool.errors import BuildError

log = logging.getLogger(__name__)

# Bump when the build changes in a way the command line does not show, to rebuild every binary.
KEY_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class GoBinary:
    """One binary built from a Go module of this checkout; every field is an input of its cache key."""

    name: str  # the file `go build -o` writes, e.g. "kvtool-containerd"
    module: str  # the module's directory under the checkout (also the cache subdirectory)
    package: str = "."  # the main package, relative to the module
    sources: tuple[str, ...] = ("*.go",)  # globs (relative to the module) of the Go files it compiles
    aliases: tuple[str, ...] = ()  # symlinks beside the binary: a multi-call binary reads argv[0]
    env: tuple[tuple[str, str], ...] = ()  # extra environment for `go build`, e.g. CGO_ENABLED=0
    tags: tuple[str, ...] = ()
    stamped_module: str = ""  # the required module whose version in go.mod names the build
    stamp: Callable[[str], list[str]] | None = None  # that version -> `-X` ldflags
    src_env: str = ""  # variable naming another module directory (tests build broken copies)
    bin_env: str = ""  # variable naming a prebuilt binary to use instead of building

    def ldflags(self, version: str) -> str:
        """Stripped (-s -w): the binaries are tens of MB and never debugged here."""
        return " ".join(["-s", "-w", *(self.stamp(version) if self.stamp else [])])

    def command(self, go: str, version: str, out: Path) -> list[str]:
        """The `go build` argv, run in the module directory (-trimpath keeps the result path-independent)."""
        cmd = [go, "build", "-v", "-trimpath"]
        if self.tags:
            cmd += ["-tags", ",".join(self.tags)]
        return [*cmd, "-ldflags", self.ldflags(version), "-o", str(out), self.package]


def _kubernetes_stamp(version: str) -> list[str]:
    """Stamp the Kubernetes version the way its own release builds do (kubectl and nodes report it)."""
    major, minor = version.lstrip("v").split(".")[:2] if version.startswith("v1.") else ("0", "0")
    flags = [f"-X main.version={version}"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                  f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
    return flags


def _containerd_stamp(version: str) -> list[str]:
    """Stamp like upstream's Makefile, minus the "v": the CRI Version RPC returns this string and
    the kubelet reports it as the node's containerRuntimeVersion (containerd://2.2.9)."""
    return [f"-X github.com/containerd/containerd/v2/version.Version={version.removeprefix('v')}"]


CONTROLPLANE = GoBinary(
    name="kvtool-controlplane", module="controlplane", aliases=("kubectl",),
    stamped_module="k8s.io/kubernetes", stamp=_kubernetes_stamp,
    src_env="KVTOOL_CONTROLPLANE_SRC", bin_env="KVTOOL_CONTROLPLANE_BIN")
# Static (no cgo): only the btrfs snapshotter needs cgo, and nodes use overlayfs. The shim must
# be reachable as `containerd-shim-runc-v2` beside the daemon, where containerd looks for it.
CONTAINERD = GoBinary(
    name="kvtool-containerd", module="containerd", aliases=("containerd", "containerd-shim-runc-v2", "ctr"),
    env=(("CGO_ENABLED", "0"),), tags=("urfave_cli_no_docs",),
    stamped_module="github.com/containerd/containerd/v2", stamp=_containerd_stamp,
    src_env="KVTOOL_CONTAINERD_SRC", bin_env="KVTOOL_CONTAINERD_BIN")
PAUSE = GoBinary(
    name="kvtool-pause", module="containerd", package="./pause", sources=("pause/*.go",),
    env=(("CGO_ENABLED", "0"),), src_env="KVTOOL_CONTAINERD_SRC", bin_env="KVTOOL_PAUSE_BIN")
# The embedded cluster's DNS (kvtool.local.components.coredns): upstream CoreDNS, a main package of ours
# that links only the plugins a cluster's Corefile uses.
COREDNS = GoBinary(
    name="kvtool-coredns", module="coredns", env=(("CGO_ENABLED", "0"),),
    stamped_module="github.com/coredns/coredns", bin_env="KVTOOL_COREDNS_BIN")
ALL = (CONTROLPLANE, CONTAINERD, PAUSE, COREDNS)
# Simulated nodes for the scale bench (not part of the cluster): upstream's own main package, named as a
# `tool` in kwok/go.mod; no Go sources of ours.
KWOK = GoBinary(
    name="kwok", module="kwok", package="sigs.k8s.io/kwok/cmd/kwok", sources=(), env=(("CGO_ENABLED", "0"),),
    stamped_module="sigs.k8s.io/kwok", bin_env="KVTOOL_KWOK_BIN")

# Kept for callers that predate the other binaries.
BINARY = CONTROLPLANE.name
ALIASES = CONTROLPLANE.aliases


def source_dir(spec: GoBinary) -> Path:
    src = Path(os.environ.get(spec.src_env, "") or paths.source_root() / spec.module)
    if not (src / "go.mod").is_file():
        hint = "run kvtool from a kvtool checkout"
        if spec.bin_env:
            hint += f", or set {spec.bin_env} to a built binary"
        raise BuildError(f"Go module {spec.module}/ (for {spec.name}) not found at {src}", hint=hint)
    return src


def controlplane_source() -> Path:
    return source_dir(CONTROLPLANE)


def go_executable() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("the Go toolchain is not installed (no `go` on PATH)",
                         hint="install Go 1.25 or newer, then run `make setup`")
    return go


def go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def module_version(go_mod: str, module: str) -> str | None:
    """The version go.mod requires of `module` (replace directives are not requirements)."""
    for line in go_mod.splitlines():
        parts = line.split("//")[0].split()
        if parts[:1] == ["require"]:
            parts = parts[1:]
        if len(parts) == 2 and parts[0] == module:
            return parts[1]
    return None


def build_version(spec: GoBinary, src: Path) -> str:
    found = module_version((src / "go.mod").read_text(), spec.stamped_module) if spec.stamped_module else None
    return found or "dev"


def input_files(spec: GoBinary, src: Path) -> list[Path]:
    """go.mod, go.sum and our own Go files of the package: what the build reads besides the module cache."""
    files = {src / "go.mod", src / "go.sum"}
    for pattern in spec.sources:
        files.update(p for p in src.glob(pattern) if p.is_file())
    return sorted(f for f in files if f.is_file())


def build_key(spec: GoBinary, src: Path, go_version: str) -> str:
    """Hash of the inputs of the build; equal keys give equal binaries.

    The inputs are our files, the exact `go build` command line (flags, tags, version stamp),
    its extra environment and the toolchain; the module cache is pinned by go.sum.
    """
    h = hashlib.sha256(f"kvtool-go-build/{KEY_FORMAT}\0".encode())
    for f in input_files(spec, src):
        h.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    command = spec.command("go", build_version(spec, src), Path(spec.name))
    fields = [*command, *(f"{k}={v}" for k, v in spec.env), go_version]
    h.update("\0".join(fields).encode())
    return h.hexdigest()[:16]


def output_path(spec: GoBinary, key: str) -> Path:
    return paths.cache_dir() / spec.module / key / spec.name


def cached(spec: GoBinary) -> Path | None:
    """The binary if it is already built for the current sources, else None."""
    override = os.environ.get(spec.bin_env) if spec.bin_env else None
    if override:
        return Path(override)
    go = go_executable()
    out = output_path(spec, build_key(spec, source_dir(spec), go_version(go)))
    return out if out.is_file() else None


def cached_binary() -> Path | None:
    """The control-plane binary if it is already built for the current sources, else None."""
    return cached(CONTROLPLANE)


def binary_dir(binary: Path) -> Path:
    return binary.parent


def ensure(spec: GoBinary, progress: bool = True) -> Path:
    """Return the binary, building it first if the cache misses."""
    override = os.environ.get(spec.bin_env) if spec.bin_env else None
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise BuildError(f"{spec.bin_env}={override} is not an executable file")
        return path
    src = source_dir(spec)
    go = go_executable()
    out = output_path(spec, build_key(spec, src, go_version(go)))
    if out.is_file():
        log.debug("%s cached at %s", spec.name, out)
        _link_aliases(out, spec.aliases)
        return out
    _build(spec, src, go, out, progress)
    _link_aliases(out, spec.aliases)
    return out


def ensure_binary(progress: bool = True) -> Path:
    """The control-plane binary (kubectl and the other components are symlinks beside it)."""
    return ensure(CONTROLPLANE, progress)


def ensure_containerd(progress: bool = True) -> Path:
    """kvtool-containerd; `containerd`, `containerd-shim-runc-v2` and `ctr` are symlinks beside it."""
    return ensure(CONTAINERD, progress)


def ensure_pause(progress: bool = True) -> Path:
    """kvtool-pause, the static process of the pod-sandbox image."""
    return ensure(PAUSE, progress)


def ensure_coredns(progress: bool = True) -> Path:
    return ensure(COREDNS, progress)


def ensure_kwok(progress: bool = True) -> Path:
    return ensure(KWOK, progress)


def ensure_all(progress: bool = True) -> list[Path]:
    return [ensure(spec, progress) for spec in ALL]


def _build(spec: GoBinary, src: Path, go: str, out: Path, progress: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{spec.name}.{os.getpid()}.tmp"
    version = build_version(spec, src)
    env = dict(os.environ, **dict(spec.env))
    label = f"{spec.name} ({version})" if spec.stamped_module else spec.name
    _say(progress, f"Building {label} from Go modules; a cold build can take several minutes...")
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(spec.command(go, version, tmp), cwd=src, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for count, line in enumerate(proc.stdout, start=1):
        tail.append(line.rstrip())
        if progress and count % 100 == 0:
            _say(progress, f"  ... {count} packages compiled ({time.monotonic() - start:.0f}s)")
    rc = proc.wait()
    if rc != 0:
        tmp.unlink(missing_ok=True)
        shown = "\n".join(f"    {line}" for line in list(tail)[-20:])
        raise BuildError(f"`go build` of {spec.name} failed (exit {rc}) in {src}:\n{shown}",
                         hint="check the Go toolchain and that the Go module proxy is reachable")
    tmp.rename(out)
    elapsed = time.monotonic() - start
    (out.parent / "build-seconds").write_text(f"{elapsed:.1f}\n")
    _say(progress, f"Built {out} in {elapsed:.0f}s")


def _link_aliases(binary: Path, aliases: tuple[str, ...]) -> None:
    for alias in aliases:
        link = binary.parent / alias
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            with contextlib.suppress(FileExistsError):  # another kvtool process linked it first
                link.symlink_to(binary.name)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
    log.info(message)
