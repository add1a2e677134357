"""The container images an embedded cluster's nodes run, built without Docker or a registry.

`build_launcher()` makes `kvtool.io/launcher:<version>-<hash>` from the same definition as
launcher_image/Dockerfile, in three layers, each cached under <cache>/oci/layers by the hash
of its own inputs, so that editing kvtool's Python rebuilds only the top one:

  base    mmdebstrap bookworm (minbase, slimmed like debian:bookworm-slim) with the packages
          marked `image` in setup/apt-packages.txt, QEMU and libvirt from bookworm-backports
          (setup/kvtool-backports.{sources,pref}, as on the host), then launcher_image/users.sh
  deps    kvtool's runtime requirements (launcher_image/requirements.py: pyproject's dependencies
          + the `runtime` extra, less pandas, which the image's commands never import),
          `pip install --target /opt/kvtool/lib` run on this host. Debian 12 here and in the
          image: the same Python 3.11 ABI and the same libvirt that libvirt-python compiles
          against, and pip reuses the host's wheel cache. Faster and simpler than pip in a chroot
          of the base, which would need pip, a compiler and libvirt-dev in the image (or a
          second build rootfs) and downloads every wheel again.
  kvtool  the kvtool package (schemas copied as real files) under /opt/kvtool/lib, byte-compiled,
          plus launcher_image/kvtool-entry as /usr/local/bin/kvtool and launcher_image/kvtool.pth

`build_pause()` wraps one static binary as `kvtool.io/pause:<hash>`, the pod sandbox image.
Both return an oci.Image: the reference and an OCI archive for `ctr -n k8s.io images import`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import runpy
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvtool import __version__, paths
from kvtool.errors import BuildError
from kvtool.images import debian, oci

log = logging.getLogger(__name__)

Progress = debian.Progress

LAUNCHER_REPOSITORY = "kvtool.io/launcher"
PAUSE_REPOSITORY = "kvtool.io/pause"
SUITE = "bookworm"
LIB_DIR = "opt/kvtool/lib"  # in the image; kvtool-entry and kvtool.pth name it too
ENTRY_PATH = "usr/local/bin/kvtool"
PTH_PATH = "usr/lib/python3/dist-packages/kvtool.pth"  # makes `python3 -c 'import kvtool, libvirt'` work too
LAUNCHER_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
LAUNCHER_CMD = ("kvtool", "--help")
# What debian:bookworm-slim leaves out (debuerreotype's slimify list), so the base matches the Dockerfile's.
SLIM_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/groff/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*", "path-exclude=/usr/share/linda/*",
)
# mtime of every file in the layers made here. 1980-01-01: SOURCE_DATE_EPOCH for pip as well, and wheels
# (zip files) cannot hold an earlier time when pip has to build one from an sdist (libvirt-python).
FIXED_MTIME = 315532800
# Bump when a layer's recipe changes in a way its key does not already show.
_RECIPES = {"base": "1", "deps": "3", "kvtool": "2", "pause": "1"}
_KEEP = {"base": 2, "deps": 2, "kvtool": 4, "pause": 2, "launcher": 2}  # cached files kept per kind
_USERS_ENV = "KVTOOL_USERS_SCRIPT"
_APT_SOURCES_ENV = "KVTOOL_APT_SOURCES"
_APT_PREFERENCES_ENV = "KVTOOL_APT_PREFERENCES"
APT_SOURCES_PATH = "etc/apt/sources.list.d/kvtool-backports.sources"  # where setup.sh puts them on the host too
APT_PREFERENCES_PATH = "etc/apt/preferences.d/kvtool-backports"


@dataclass(frozen=True)
class LauncherSource:
    """The files of a kvtool checkout the launcher image is made from (the Dockerfile reads the same ones)."""

    root: Path

    @classmethod
    def find(cls, root: Path | None = None) -> LauncherSource:
        source = cls(Path(root or paths.source_root()).absolute())
        for needed in (source.package_list, source.apt_sources, source.apt_preferences, source.pyproject,
                       source.entry, source.pth, source.users, source.requirements,
                       source.package / "cli" / "main.py", source.schemas):
            if not needed.exists():
                raise BuildError(f"{needed} is missing: building the launcher image needs kvtool's source checkout",
                                 hint="run `kvtool image build launcher` from the repository's .venv")
        return source

    @property
    def package_list(self) -> Path:
        return self.root / "setup" / "apt-packages.txt"

    @property
    def apt_sources(self) -> Path:
        return self.root / "setup" / "kvtool-backports.sources"

    @property
    def apt_preferences(self) -> Path:
        return self.root / "setup" / "kvtool-backports.pref"

    @property
    def pyproject(self) -> Path:
        return self.root / "pyproject.toml"

    @property
    def entry(self) -> Path:
        return self.root / "launcher_image" / "kvtool-entry"

    @property
    def pth(self) -> Path:
        return self.root / "launcher_image" / "kvtool.pth"

    @property
    def requirements(self) -> Path:
        return self.root / "launcher_image" / "requirements.py"

    @property
    def users(self) -> Path:
        return self.root / "launcher_image" / "users.sh"

    @property
    def package(self) -> Path:
        return self.root / "kvtool"

    @property
    def schemas(self) -> Path:
        return self.root / "schemas"


def oci_dir() -> Path:
    """Where layers and archives are cached: <cache>/oci (shared by every $KVTOOL_HOME)."""
    return paths.cache_dir() / "oci"


def launcher_packages(source: LauncherSource) -> list[str]:
    return debian.package_list("image", path=source.package_list)


def runtime_requirements(source: LauncherSource) -> list[str]:
    """The image's pinned Python requirements, from launcher_image/requirements.py (which the Dockerfile runs too)."""
    script = runpy.run_path(str(source.requirements))
    return list(script["requirements"](source.pyproject))


def launcher_config() -> oci.ImageConfig:
    return oci.ImageConfig(
        cmd=LAUNCHER_CMD, env=LAUNCHER_ENV,
        labels=(("org.opencontainers.image.title", "kvtool"), ("org.opencontainers.image.version", __version__)),
    )


# ---- the launcher image


def build_launcher(force: bool = False, progress: Progress | None = None, root: Path | None = None) -> oci.Image:
    """The launcher image's archive: from the cache when every layer's inputs are unchanged, else (re)built.

    `force` rebuilds all three layers. Holds <cache>/oci/.lock, so concurrent builds wait and then reuse.
    """
    say = progress or log.info
    source = LauncherSource.find(root)
    cache = oci_dir()
    packages = launcher_packages(source)
    requirements = runtime_requirements(source)
    with _locked(cache):
        base = _cached_layer(cache, "base", _base_key(source, packages), force, say,
                             lambda work, out: _build_base(source, packages, work, out, say))
        deps = _cached_layer(cache, "deps", _deps_key(requirements), force, say,
                             lambda work, out: _build_deps(requirements, work, out, say))
        code = _cached_layer(cache, "kvtool", _kvtool_key(source), force, say,
                             lambda work, out: _build_kvtool(source, work, out))
        manifest = oci.build_manifest([base, deps, code], launcher_config())
        tag = f"{__version__}-{manifest.short_digest}"
        return _archive(cache, "launcher", manifest, f"{LAUNCHER_REPOSITORY}:{tag}", f"launcher-{tag}", say)


def _base_key(source: LauncherSource, packages: list[str]) -> str:
    recipe = {"recipe": _RECIPES["base"], "argv": _mmdebstrap_argv(packages, "MODE", Path("TARGET")),
              "packages": sorted(packages), "users": source.users.read_text(),
              "apt": [source.apt_sources.read_text(), source.apt_preferences.read_text()]}
    return _digest(recipe)


def _mmdebstrap_argv(packages: list[str], mode: str, target: Path) -> list[str]:
    # Hooks are fixed strings: the users script and the apt files reach the chroot through the environment,
    # never a command line. The setup hook runs before apt's first update, so the pin decides every version.
    return ["mmdebstrap", f"--mode={mode}", "--variant=minbase", "--format=directory",
            f"--include={','.join(packages)}",
            f'--setup-hook=mkdir -p "$1/{Path(APT_SOURCES_PATH).parent}" "$1/{Path(APT_PREFERENCES_PATH).parent}"'
            f' && printf "%s" "${_APT_SOURCES_ENV}" > "$1/{APT_SOURCES_PATH}"'
            f' && printf "%s" "${_APT_PREFERENCES_ENV}" > "$1/{APT_PREFERENCES_PATH}"',
            '--aptopt=Acquire::Languages "none"',
            *(f"--dpkgopt={option}" for option in SLIM_DPKG_OPTIONS),
            f'--customize-hook=chroot "$1" /bin/sh -c "${_USERS_ENV}"',
            # The runtime mounts its own; the builder's would otherwise end up in every pod.
            '--customize-hook=rm -f "$1/etc/hostname" "$1/etc/resolv.conf"',
            SUITE, str(target)]


def _build_base(source: LauncherSource, packages: list[str], work: Path, out: Path, say: Progress) -> oci.Layer:
    mmdebstrap = debian.tool("mmdebstrap", "mmdebstrap")
    rootfs = work / "rootfs"
    # As root mmdebstrap chroots directly (its own choice too); unprivileged it needs user namespaces.
    mode = "root" if os.geteuid() == 0 else "unshare"
    argv = [mmdebstrap, *_mmdebstrap_argv(packages, mode, rootfs)[1:]]
    say(f"base layer: mmdebstrap {SUITE} with {len(packages)} packages (downloads from Debian's mirror; minutes)")
    env = {**os.environ, _USERS_ENV: source.users.read_text(), _APT_SOURCES_ENV: source.apt_sources.read_text(),
           _APT_PREFERENCES_ENV: source.apt_preferences.read_text()}
    debian.run_logged(argv, "mmdebstrap", say, env=env,
                forward=lambda line: line.startswith("I: "), timeout=3600)
    say("base layer: writing the layer tar")
    comment = (f"mmdebstrap --variant=minbase {SUITE} + {' '.join(packages)} (pinned: {APT_PREFERENCES_PATH}); "
               "launcher_image/users.sh")
    # Real mtimes: the Debian Python's .pyc files are checked against their sources' timestamps.
    return oci.layer_from_tree(rootfs, out, comment=comment)


def _deps_key(requirements: list[str]) -> str:
    return _digest({"recipe": _RECIPES["deps"], "requirements": sorted(requirements), "python": _image_python(),
                    "lib": LIB_DIR})


def _build_deps(requirements: list[str], work: Path, out: Path, say: Progress) -> oci.Layer:
    root = work / "root"
    target = _make_dirs(root, LIB_DIR)
    python = _image_python()
    say(f"deps layer: pip install --target /{LIB_DIR} ({len(requirements)} requirements, with {python})")
    argv = [sys.executable, "-m", "pip", "--python", python, "install", "--target", str(target), "--no-compile",
            "--no-input", "--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off",
            *requirements]
    # SOURCE_DATE_EPOCH: a wheel built from an sdist (libvirt-python) gets fixed timestamps.
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_MTIME)}
    debian.run_logged(argv, "pip install", say, env=env, forward=lambda line: line.startswith("Successfully"),
                timeout=3600)
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts whose #! names this host's Python
    say("deps layer: byte-compiling")
    problems = _compile(target, f"/{LIB_DIR}")
    if problems:  # as pip does: a package may ship files that are not Python 3 (templates, tests)
        log.info("some files in the deps layer do not compile: %s", problems)
    say("deps layer: writing the layer tar")
    comment = f"pip install --target /{LIB_DIR} " + " ".join(requirements)
    return oci.layer_from_tree(root, out, mtime=FIXED_MTIME, owner=(0, 0), normalize_modes=True, comment=comment)


def _image_python() -> str:
    """Debian's python3.11 when this host has it (the very build the image runs), else this interpreter."""
    debian_python = Path("/usr/bin/python3.11")
    if debian_python.is_file():
        return str(debian_python)
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"the launcher image runs Python 3.11; this is {sys.version.split()[0]}",
                         hint="apt-get install python3.11 (Debian 12)")
    return sys.executable


def _compile(tree: Path, image_path: str) -> str:
    """Byte-compile `tree`, which is `image_path` in the image; "" or what failed to compile.

    Hash-checked .pyc files stay valid whatever mtimes the layer gives their sources (the image also sets
    PYTHONDONTWRITEBYTECODE, so without them every start would compile kubernetes' thousands of modules).
    A fresh interpreter with a fixed hash seed, one file after another: marshal's output depends on the
    compiling process's state (reference counts, set order), and the layer's bytes must not.
    """
    argv = [_image_python(), "-s", "-m", "compileall", "-q", "-j", "1", "--invalidation-mode", "checked-hash",
            "-d", image_path, str(tree)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    return "" if result.returncode == 0 else (result.stdout + result.stderr).strip()[-2000:]


def _kvtool_key(source: LauncherSource) -> str:
    return _digest({"recipe": _RECIPES["kvtool"], "package": _tree_digest(source.package),
                    "schemas": _tree_digest(source.schemas), "entry": source.entry.read_text(),
                    "pth": source.pth.read_text(), "python": _image_python()})


def _build_kvtool(source: LauncherSource, work: Path, out: Path) -> oci.Layer:
    root = work / "root"
    lib = _make_dirs(root, LIB_DIR)
    # symlinks=False: kvtool/api/schemas links to ../../schemas, which the image does not have.
    shutil.copytree(source.package, lib / "kvtool", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    problems = _compile(lib / "kvtool", f"/{LIB_DIR}/kvtool")
    if problems:
        raise BuildError(f"byte-compiling {source.package} failed: {problems}")
    _make_dirs(root, str(Path(ENTRY_PATH).parent))
    shutil.copyfile(source.entry, root / ENTRY_PATH)
    (root / ENTRY_PATH).chmod(0o755)
    _make_dirs(root, str(Path(PTH_PATH).parent))
    shutil.copyfile(source.pth, root / PTH_PATH)
    return oci.layer_from_tree(root, out, mtime=FIXED_MTIME, owner=(0, 0), normalize_modes=True,
                               comment=f"kvtool {__version__} in /{LIB_DIR}; /{ENTRY_PATH}; /{PTH_PATH}")


# ---- the pause image


def build_pause(binary: Path, progress: Progress | None = None) -> oci.Image:
    """`kvtool.io/pause:<hash>`: `binary` (static: the image has no libc) as /pause, run as 65535 like k8s' pause."""
    say = progress or log.info
    binary = Path(binary).absolute()
    if not binary.is_file():
        raise BuildError(f"{binary} is not a file", hint="pass the path of the built kvtool-pause binary")
    if _needs_loader(binary):
        raise BuildError(f"{binary} is dynamically linked; the pause image holds nothing but it",
                         hint="build it with CGO_ENABLED=0")
    cache = oci_dir()
    key = _digest({"recipe": _RECIPES["pause"], "binary": hashlib.sha256(binary.read_bytes()).hexdigest()})

    def build(work: Path, out: Path) -> oci.Layer:
        root = work / "root"
        root.mkdir()
        shutil.copyfile(binary, root / "pause")
        (root / "pause").chmod(0o755)
        return oci.layer_from_tree(root, out, mtime=FIXED_MTIME, owner=(0, 0), normalize_modes=True,
                                   comment=f"{binary.name} as /pause")

    with _locked(cache):
        layer = _cached_layer(cache, "pause", key, False, say, build)
        manifest = oci.build_manifest([layer], oci.ImageConfig(entrypoint=("/pause",), user="65535:65535"))
        tag = manifest.short_digest
        return _archive(cache, "pause", manifest, f"{PAUSE_REPOSITORY}:{tag}", f"pause-{tag}", say)


def _needs_loader(path: Path) -> bool:
    """True if `path` is an ELF file with a PT_INTERP header (a dynamic loader it needs), or is not ELF at all."""
    with path.open("rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return True
        e_phoff, = struct.unpack_from("<Q", head, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 0x36)
        fh.seek(e_phoff)
        table = fh.read(e_phentsize * e_phnum)
    return any(struct.unpack_from("<I", table, i * e_phentsize)[0] == 3 for i in range(e_phnum))


# ---- the cache


def _cached_layer(cache: Path, kind: str, key: str, force: bool, say: Progress,
                  build: Callable[[Path, Path], oci.Layer]) -> oci.Layer:
    """The layer `kind` made from inputs hashing to `key`: <cache>/layers/<kind>-<key>.tar, built if missing."""
    tar = cache / "layers" / f"{kind}-{key}.tar"
    meta = tar.with_suffix(".json")
    if not force and (layer := _load_layer(tar, meta)) is not None:
        say(f"{kind} layer: cached ({_mib(layer.size)}, {tar.name})")
        return layer
    started = time.monotonic()
    with _work_dir(cache, kind) as work:
        built = build(work, work / "layer.tar")
        tar.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built.path, tar)
    layer = oci.Layer(path=tar, digest=built.digest, size=built.size, comment=built.comment)
    paths.write_atomic(meta, json.dumps({"digest": layer.digest, "size": layer.size, "comment": layer.comment},
                                        indent=2) + "\n")
    say(f"{kind} layer: built in {time.monotonic() - started:.0f} s ({_mib(layer.size)})")
    _prune(cache / "layers", kind, _KEEP[kind])
    return layer


def _load_layer(tar: Path, meta: Path) -> oci.Layer | None:
    try:
        doc = json.loads(meta.read_text())
        size = tar.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("size") != size or not str(doc.get("digest", "")).startswith("sha256:"):
        return None
    for f in (tar, meta):
        os.utime(f)  # recently used: pruning goes by mtime
    return oci.Layer(path=tar, digest=doc["digest"], size=size, comment=str(doc.get("comment", "")))


def _archive(cache: Path, kind: str, manifest: oci.Manifest, reference: str, name: str,
             say: Progress) -> oci.Image:
    archive = cache / "archives" / f"{name}.tar"
    if archive.is_file():
        os.utime(archive)
        say(f"archive: cached ({archive})")
        return oci.Image(reference=reference, archive=archive, digest=manifest.digest, size=archive.stat().st_size)
    started = time.monotonic()
    image = oci.write_archive(archive, manifest, reference)
    say(f"archive: written in {time.monotonic() - started:.1f} s ({_mib(image.size)})")
    _prune(cache / "archives", kind, _KEEP[kind])
    return image


def _prune(directory: Path, kind: str, keep: int) -> None:
    """Keep the `keep` most recently used <kind>-*.tar files (and their .json): old builds are hundreds of MB."""
    files = sorted(directory.glob(f"{kind}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        log.info("removing old %s", old)
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """The cache to ourselves; what a killed build left behind is removed first (nobody else can be using it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for leftover in sorted((cache / "tmp").glob("*")):
                debian.remove_tree(leftover)
            for partial in (cache / "archives").glob(".*.tmp"):
                partial.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _work_dir(cache: Path, kind: str) -> Iterator[Path]:
    """A scratch dir on the cache's filesystem (layers are renamed into place), removed afterwards."""
    parent = cache / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=parent))
    try:
        yield work
    finally:
        debian.remove_tree(work)


def _make_dirs(root: Path, relative: str) -> Path:
    """root/relative with every directory 0755 whatever the umask (they become the image's directories)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    path = root
    for part in Path(relative).parts:
        path = path / part
        path.mkdir(exist_ok=True)
        path.chmod(0o755)
    return path


def _tree_digest(root: Path) -> str:
    """sha256 over each file's relative path, executable bit and content, following symlinks (as copytree does).

    store.files_digest names files by their base name only: a tree needs the path, or a file moved
    between packages would not change the key.
    """
    lines: list[tuple[str, str]] = []
    for directory, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(directory) / name
            rel = path.relative_to(root).as_posix()
            executable = "x" if os.access(path, os.X_OK) else "-"
            lines.append((rel, f"{hashlib.sha256(path.read_bytes()).hexdigest()} {executable} {rel}\n"))
    return hashlib.sha256("".join(line for _, line in sorted(lines)).encode()).hexdigest()


def _digest(doc: object) -> str:
    """16 hex digits of a layer's inputs: names the cached layer."""
    return hashlib.sha256(oci.canonical_json(doc)).hexdigest()[:16]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
