"""kvtool.local.build: the cache key of the Go binaries, without running Go or a cluster.

A key that misses an input serves a stale binary; a key that hashes too much rebuilds for
minutes. Each test pins one side of that.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from kvtool import paths
from kvtool.errors import BuildError
from kvtool.local import build

GO = "go1.26.8"
GO_MOD = """module kvtool.io/containerd

go 1.25.0

require (
\tgithub.com/containerd/containerd/v2 v2.2.9
\tgithub.com/containerd/plugin v1.0.0
)

require (
\tgithub.com/containerd/log v0.1.0 // indirect
)

replace k8s.io/api => k8s.io/api v0.34.4
"""


@pytest.fixture
def module(tmp_path: Path) -> Path:
    """A containerd/-shaped module: a root main package and pause/ beside it."""
    src = tmp_path / "containerd"
    (src / "pause").mkdir(parents=True)
    (src / "go.mod").write_text(GO_MOD)
    (src / "go.sum").write_text("github.com/containerd/containerd/v2 v2.2.9 h1:abc=\n")
    (src / "main.go").write_text("package main\n")
    (src / "pause" / "main.go").write_text("package main\n\nfunc main() {}\n")
    return src


def test_module_version_reads_requirements_not_replacements() -> None:
    assert build.module_version(GO_MOD, "github.com/containerd/containerd/v2") == "v2.2.9"
    assert build.module_version(GO_MOD, "github.com/containerd/log") == "v0.1.0"  # `// indirect` is a comment
    assert build.module_version("require k8s.io/kubernetes v1.34.4\n", "k8s.io/kubernetes") == "v1.34.4"
    assert build.module_version(GO_MOD, "k8s.io/api") is None  # only a replace line names it
    assert build.module_version(GO_MOD, "github.com/containerd") is None


def test_the_checkout_stamps_containerd_2_and_kubernetes_1_34() -> None:
    """The kubelet reports containerd://<Version>: the stamp carries no "v" (upstream's default has none)."""
    root = paths.source_root()
    version = build.build_version(build.CONTAINERD, root / "containerd")
    assert version.startswith("v2.2."), version
    assert f"version.Version={version[1:]}" in build.CONTAINERD.ldflags(version)
    kube = build.build_version(build.CONTROLPLANE, root / "controlplane")
    assert kube.startswith("v1.34."), kube
    assert "-X k8s.io/component-base/version.gitMinor=34" in build.CONTROLPLANE.ldflags(kube)
    assert build.build_version(build.PAUSE, root / "containerd") == "dev"  # nothing to stamp


def test_the_build_command_is_static_trimmed_and_tagged() -> None:
    cmd = build.CONTAINERD.command("/usr/bin/go", "v2.2.9", Path("/tmp/out"))
    assert cmd[:4] == ["/usr/bin/go", "build", "-v", "-trimpath"]
    assert cmd[cmd.index("-tags") + 1] == "urfave_cli_no_docs"
    assert cmd[-3:] == ["-o", "/tmp/out", "."]
    assert dict(build.CONTAINERD.env)["CGO_ENABLED"] == "0"
    assert build.PAUSE.command("go", "dev", Path("p"))[-1] == "./pause"
    assert "-tags" not in build.CONTROLPLANE.command("go", "v1.34.4", Path("o"))


def test_equal_inputs_give_equal_keys_wherever_the_module_lives(module: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(module, tmp_path / "elsewhere" / "containerd")
    key = build.build_key(build.CONTAINERD, module, GO)
    assert len(key) == 16 and key == build.build_key(build.CONTAINERD, copy, GO)
    assert key != build.build_key(build.PAUSE, module, GO)  # two binaries of one module, two cache dirs


@pytest.mark.parametrize("change", ["go.mod", "go.sum", "main.go", "new.go", "go", "tags", "env"])
def test_every_input_changes_the_key(module: Path, change: str) -> None:
    spec, go = build.CONTAINERD, GO
    before = build.build_key(spec, module, go)
    if change in ("go.mod", "go.sum", "main.go"):
        (module / change).write_text((module / change).read_text() + "\n// edited\n")
    elif change == "new.go":
        (module / "applets.go").write_text("package main\n")
    elif change == "go":
        go = "go1.27.0"
    elif change == "tags":
        spec = dataclasses.replace(spec, tags=())
    else:
        spec = dataclasses.replace(spec, env=(("CGO_ENABLED", "1"),))
    assert build.build_key(spec, module, go) != before


def test_a_containerd_version_bump_changes_the_stamp_and_the_key(module: Path) -> None:
    before = build.build_key(build.CONTAINERD, module, GO)
    (module / "go.mod").write_text(GO_MOD.replace("v2.2.9", "v2.2.10"))
    assert build.build_version(build.CONTAINERD, module) == "v2.2.10"
    assert build.build_key(build.CONTAINERD, module, GO) != before


def test_each_binary_hashes_only_its_own_sources(module: Path) -> None:
    """Editing the pause program must not rebuild containerd (minutes), and the other way round."""
    daemon, pause = (build.build_key(s, module, GO) for s in (build.CONTAINERD, build.PAUSE))
    (module / "pause" / "main.go").write_text("package main\n\nfunc main() { select {} }\n")
    assert build.build_key(build.CONTAINERD, module, GO) == daemon
    assert build.build_key(build.PAUSE, module, GO) != pause
    (module / "main.go").write_text("package main\n// edited\n")
    assert build.build_key(build.PAUSE, module, GO) != daemon
    assert [f.name for f in build.input_files(build.PAUSE, module)] == ["go.mod", "go.sum", "main.go"]


@pytest.fixture
def no_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache in tmp_path and a Go toolchain that must not be run."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KVTOOL_CACHE", str(cache))
    monkeypatch.setattr(build, "go_executable", lambda: "/nonexistent/go")
    monkeypatch.setattr(build, "go_version", lambda _go: GO)

    def no_build(*_args: object) -> None:
        raise AssertionError("a cached binary was rebuilt")

    monkeypatch.setattr(build, "_build", no_build)
    return cache


def test_a_cache_hit_returns_the_binary_and_links_its_applets(module: Path, no_go: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVTOOL_CONTAINERD_SRC", str(module))
    key = build.build_key(build.CONTAINERD, module, GO)
    binary = no_go / "containerd" / key / "kvtool-containerd"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"\x7fELF")
    (binary.parent / "ctr").write_text("a stale copy, not a link")
    assert build.cached(build.CONTAINERD) == binary
    assert build.ensure_containerd(progress=False) == binary
    for alias in ("containerd", "containerd-shim-runc-v2", "ctr"):
        link = binary.parent / alias
        assert link.is_symlink() and os.readlink(link) == "kvtool-containerd"  # relative: the dir can move
    assert build.cached(build.PAUSE) is None  # its own key, not built yet


def test_a_prebuilt_binary_overrides_the_build(no_go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prebuilt = tmp_path / "my-containerd"
    prebuilt.write_text("#!/bin/sh\n")
    prebuilt.chmod(0o755)
    monkeypatch.setenv("KVTOOL_CONTAINERD_BIN", str(prebuilt))
    assert build.ensure_containerd(progress=False) == prebuilt
    prebuilt.chmod(0o644)
    with pytest.raises(BuildError, match="KVTOOL_CONTAINERD_BIN"):
        build.ensure_containerd(progress=False)


def test_a_missing_module_says_which_binary_and_how_to_skip_the_build(
        no_go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVTOOL_CONTAINERD_SRC", str(tmp_path / "nowhere"))
    with pytest.raises(BuildError) as err:
        build.ensure_pause(progress=False)
    assert "kvtool-pause" in err.value.message and "KVTOOL_PAUSE_BIN" in (err.value.hint or "")
