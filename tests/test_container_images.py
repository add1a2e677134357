"""The nodes' container images: the parts that need no network (package list, keys, the kvtool layer, pause).

The full launcher build (mmdebstrap + pip, minutes) is not run here; `kvtool image build launcher` does it.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import runpy
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtool.errors import BuildError
from kvtool.images import container, debian, oci


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KVTOOL_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache" / "oci"


def test_package_list_reads_uses(tmp_path: Path) -> None:
    listing = tmp_path / "apt-packages.txt"
    listing.write_text("# comment\n  # indented comment\n\nqemu-utils   image\ngcc build\nrunc node\npython3 image\n")
    assert debian.package_list("image", path=listing) == ["qemu-utils", "python3"]
    assert debian.package_list("build", "node", path=listing) == ["gcc", "runc"]
    listing.write_text("qemu-utils\n")
    with pytest.raises(BuildError, match=":1: expected"):
        debian.package_list("image", path=listing)
    with pytest.raises(ValueError):
        debian.package_list("imgae", path=listing)


def test_the_repository_lists() -> None:
    source = container.LauncherSource.find()
    packages = container.launcher_packages(source)
    assert {"qemu-system-x86", "libvirt-daemon-driver-qemu", "python3"} <= set(packages)
    assert "gcc" not in packages and "mmdebstrap" not in packages
    requirements = container.runtime_requirements(source)
    names = {r.split("==")[0].lower() for r in requirements}
    assert {"kubernetes", "kopf", "libvirt-python", "pycdlib"} <= names
    assert not names & {"pytest", "jupyterlab", "pandas"}, "dependencies + the runtime extra, less NOT_IN_IMAGE"


# The commands the image runs (launcher_image/Dockerfile), each imported by name from kvtool.cli.main.
IMAGE_COMMANDS = ("kvtool.cli.main", "kvtool.cli.launcher", "kvtool.cli.handler", "kvtool.cli.controller")


def test_image_commands_never_import_what_the_image_leaves_out() -> None:
    """The proof behind launcher_image/requirements.py's NOT_IN_IMAGE, on the import graph (lazy imports too)."""
    grimp = pytest.importorskip("grimp")
    not_in_image = runpy.run_path(str(container.LauncherSource.find().requirements))["NOT_IN_IMAGE"]
    import_names = {name for name, dists in importlib.metadata.packages_distributions().items()
                    if any(d.lower() in not_in_image for d in dists)}
    assert import_names, f"{not_in_image} are not installed here, so the check would prove nothing"
    graph = grimp.build_graph("kvtool", include_external_packages=True)
    for command in IMAGE_COMMANDS:
        reached = graph.find_upstream_modules(command) & import_names
        assert not reached, (f"{command} imports {sorted(reached)}: take it out of NOT_IN_IMAGE in "
                             "launcher_image/requirements.py, or the image's command fails")
    # The graph cannot see imports by string; kvtool.cli.main's table of commands must stay the only one.
    dynamic = {p.relative_to(container.LauncherSource.find().root).as_posix()
               for p in container.LauncherSource.find().package.rglob("*.py")
               if "import_module(" in p.read_text() or "__import__(" in p.read_text()}
    assert dynamic <= {"kvtool/cli/main.py"}, f"imports by name in {sorted(dynamic)}: check them for NOT_IN_IMAGE"


def test_tree_digest_sees_paths_and_ignores_bytecode(tmp_path: Path) -> None:
    tree = tmp_path / "pkg"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "m.py").write_text("x = 1\n")
    first = container._tree_digest(tree)
    (tree / "a" / "__pycache__").mkdir()
    (tree / "a" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    assert container._tree_digest(tree) == first
    (tree / "b").mkdir()
    (tree / "a" / "m.py").rename(tree / "b" / "m.py")
    assert container._tree_digest(tree) != first, "a moved file changes the key"


def test_kvtool_layer(tmp_path: Path) -> None:
    source = container.LauncherSource.find()
    work = tmp_path / "work"
    work.mkdir()
    layer = container._build_kvtool(source, work, tmp_path / "kvtool.tar")
    with tarfile.open(layer.path) as tar:
        found = {m.name: m for m in tar.getmembers()}
        entry = tar.extractfile(found[container.ENTRY_PATH]).read()  # type: ignore[union-attr]
    lib = container.LIB_DIR
    assert entry == source.entry.read_bytes() and found[container.ENTRY_PATH].mode == 0o755
    assert container.PTH_PATH in found
    schema = found[f"{lib}/kvtool/api/schemas/common.json"]
    assert schema.isreg(), "the schemas symlink became real files"
    assert f"{lib}/kvtool/cli/main.py" in found
    assert any(n.startswith(f"{lib}/kvtool/cli/__pycache__/main.cpython-311") for n in found), "byte-compiled"
    assert {(m.uid, m.gid, m.mtime) for m in found.values()} == {(0, 0, container.FIXED_MTIME)}
    assert all(m.mode in (0o755, 0o644) for m in found.values())
    shutil.rmtree(work)
    work.mkdir()
    again = container._build_kvtool(source, work, tmp_path / "again.tar")
    assert again.digest == layer.digest, "the same source gives the same layer"


def test_pause_image(cache: Path, tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None or container._needs_loader(Path(busybox)):
        pytest.skip("needs busybox-static as a stand-in static binary")
    messages: list[str] = []
    image = container.build_pause(Path(busybox), progress=messages.append)
    name, tag = oci.split_reference(image.reference)
    assert name == container.PAUSE_REPOSITORY and tag in image.archive.name
    assert image.archive.parent == cache / "archives"
    with tarfile.open(image.archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}  # type: ignore[union-attr]
    [descriptor] = json.loads(files["index.json"])["manifests"]
    assert descriptor["annotations"][oci.ANNOTATION_CONTAINERD_NAME] == image.reference
    manifest = json.loads(files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")])
    assert config["config"]["Entrypoint"] == ["/pause"]
    [layer] = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(files["blobs/sha256/" + layer["digest"][7:]])) as tar:
        [member] = tar.getmembers()
    assert (member.name, member.mode, member.size) == ("pause", 0o755, Path(busybox).stat().st_size)
    again = container.build_pause(Path(busybox), progress=messages.append)
    assert again == image and any("cached" in m for m in messages)


def test_pause_refuses_a_dynamic_binary(cache: Path) -> None:
    with pytest.raises(BuildError, match="dynamically linked"):
        container.build_pause(Path(shutil.which("ls") or "/bin/ls"))
