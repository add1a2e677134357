"""OCI image-layout archives: layer tars from trees, manifests, the archive `ctr images import` reads. No cluster."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from kvtool.errors import BuildError
from kvtool.images import oci

REF = "kvtool.io/test:1.0-abc"


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"\x7fELF pretend")
    (root / "bin" / "tool").chmod(0o755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-hardlink")
    (root / "bin" / "sh").symlink_to("tool")
    (root / "dev").mkdir()
    os.mkfifo(root / "dev" / "initctl")
    (root / "a-first").write_text("sorted before bin\n")
    return root


def members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def blob_names(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}  # type: ignore[union-attr]


def test_layer_from_tree_entries(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    layer = oci.layer_from_tree(tree, tmp_path / "layer.tar", mtime=0, comment="test")
    found = {m.name: m for m in members(layer.path)}
    names = list(found)
    assert names == ["a-first", "bin", "bin/sh", "bin/tool", "bin/tool-hardlink", "dev", "dev/initctl",
                     "etc", "etc/passwd"], "sorted, each directory before its contents, the root itself left out"
    assert found["bin/sh"].issym() and found["bin/sh"].linkname == "tool"
    assert found["bin/tool"].isreg() and found["bin/tool"].mode == 0o755
    assert found["bin/tool-hardlink"].islnk() and found["bin/tool-hardlink"].linkname == "bin/tool"
    assert found["dev/initctl"].isfifo()
    assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in found.values())
    assert layer.digest == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()
    assert layer.size == layer.path.stat().st_size
    assert oci.describe_layer(layer.path, "test") == layer


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod and chown need root")
def test_layer_keeps_numeric_owners_and_skips_devices(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    os.mknod(tree / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chown(tree / "etc" / "passwd", 64055, 64056)  # uids this host may have no names for
    layer = oci.layer_from_tree(tree, tmp_path / "layer.tar")
    found = {m.name: m for m in members(layer.path)}
    assert "dev/null" not in found
    assert (found["etc/passwd"].uid, found["etc/passwd"].gid, found["etc/passwd"].uname) == (64055, 64056, "")
    assert found["etc/passwd"].mtime == int((tree / "etc" / "passwd").stat().st_mtime), "real mtimes by default"
    forced = oci.layer_from_tree(tree, tmp_path / "forced.tar", owner=(0, 0))
    assert {(m.uid, m.gid) for m in members(forced.path)} == {(0, 0)}


def test_layer_is_deterministic(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = oci.layer_from_tree(tree, tmp_path / "1.tar", mtime=1000, owner=(0, 0), normalize_modes=True)
    os.utime(tree / "etc" / "passwd", (5, 5))
    (tree / "etc" / "passwd").chmod(0o600)  # a different umask: normalized away
    second = oci.layer_from_tree(tree, tmp_path / "2.tar", mtime=1000, owner=(0, 0), normalize_modes=True)
    assert first.digest == second.digest
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    assert {m.name: m.mode for m in members(second.path)}["etc/passwd"] == 0o644


def test_exclude(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    layer = oci.layer_from_tree(tree, tmp_path / "layer.tar", exclude=lambda name: name == "bin")
    assert not any(m.name.startswith("bin") for m in members(layer.path))


def two_layers(tmp_path: Path) -> list[oci.Layer]:
    tree = make_tree(tmp_path / "tree")
    other = tmp_path / "other"
    (other / "opt").mkdir(parents=True)
    (other / "opt" / "file").write_text("top layer\n")
    return [oci.layer_from_tree(tree, tmp_path / "base.tar", mtime=0, owner=(0, 0), comment="base"),
            oci.layer_from_tree(other, tmp_path / "top.tar", mtime=0, owner=(0, 0), comment="top")]


CONFIG = oci.ImageConfig(entrypoint=("/bin/tool",), cmd=("--help",), env=("PATH=/bin", "A=1"),
                         working_dir="/opt", user="65532", labels=(("b", "2"), ("a", "1")))


def test_archive_structure_and_digests(tmp_path: Path) -> None:
    layers = two_layers(tmp_path)
    manifest = oci.build_manifest(layers, CONFIG)
    image = oci.write_archive(tmp_path / "image.tar", manifest, REF)
    assert image.reference == REF and image.digest == manifest.digest
    assert image.size == (tmp_path / "image.tar").stat().st_size
    files = blob_names(image.archive)
    names = [m.name for m in members(image.archive)]
    assert names[:2] == ["blobs", "blobs/sha256"] and names[-2:] == ["index.json", "oci-layout"]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1], f"{name} is not named by its digest"

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_INDEX
    [descriptor] = index["manifests"]
    assert descriptor["annotations"] == {oci.ANNOTATION_REF_NAME: "1.0-abc", oci.ANNOTATION_CONTAINERD_NAME: REF}
    assert descriptor["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest_blob = files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")]
    assert descriptor["size"] == len(manifest_blob) and descriptor["mediaType"] == oci.MEDIA_MANIFEST

    doc = json.loads(manifest_blob)
    assert doc["config"]["mediaType"] == oci.MEDIA_CONFIG
    assert [entry["digest"] for entry in doc["layers"]] == [layer.digest for layer in layers]
    assert all(entry["mediaType"] == oci.MEDIA_LAYER for entry in doc["layers"])
    for entry in [doc["config"], *doc["layers"]]:
        assert len(files["blobs/sha256/" + entry["digest"].removeprefix("sha256:")]) == entry["size"]
    assert files["blobs/sha256/" + layers[1].digest.removeprefix("sha256:")] == layers[1].path.read_bytes()

    config = json.loads(files["blobs/sha256/" + doc["config"]["digest"].removeprefix("sha256:")])
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.digest for layer in layers]}
    assert config["config"] == {"Entrypoint": ["/bin/tool"], "Cmd": ["--help"], "Env": ["PATH=/bin", "A=1"],
                                "WorkingDir": "/opt", "User": "65532", "Labels": {"a": "1", "b": "2"}}
    assert config["history"] == [{"created_by": "base"}, {"created_by": "top"}]
    assert "created" not in config, "no timestamp: the same inputs must give the same digest"


def test_archive_is_deterministic(tmp_path: Path) -> None:
    layers = two_layers(tmp_path)
    first = oci.write_archive(tmp_path / "1.tar", oci.build_manifest(layers, CONFIG), REF)
    second = oci.write_archive(tmp_path / "2.tar", oci.build_manifest(layers, CONFIG), REF)
    assert first.digest == second.digest
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert oci.build_manifest(layers, oci.ImageConfig(cmd=("other",))).digest != first.digest
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed into place"


def test_same_layer_twice_is_one_blob(tmp_path: Path) -> None:
    [layer, _] = two_layers(tmp_path)
    image = oci.write_archive(tmp_path / "image.tar", oci.build_manifest([layer, layer], CONFIG), REF)
    assert sum(1 for name in blob_names(image.archive) if name.endswith(layer.digest.removeprefix("sha256:"))) == 1


def test_damaged_layer_is_refused(tmp_path: Path) -> None:
    layers = two_layers(tmp_path)
    manifest = oci.build_manifest(layers, CONFIG)
    data = bytearray(layers[0].path.read_bytes())
    data[600] ^= 0xFF
    layers[0].path.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="damaged"):
        oci.write_archive(tmp_path / "image.tar", manifest, REF)
    assert not (tmp_path / "image.tar").exists() and not list(tmp_path.glob(".*.tmp"))


def test_split_reference() -> None:
    assert oci.split_reference("kvtool.io/launcher:0.1.0-abc") == ("kvtool.io/launcher", "0.1.0-abc")
    assert oci.split_reference("localhost:5000/pause:3") == ("localhost:5000/pause", "3")
    for bad in ("kvtool.io/launcher", "localhost:5000/pause", ":tag"):
        with pytest.raises(ValueError):
            oci.split_reference(bad)


def test_canonical_json_is_sorted_and_compact() -> None:
    assert oci.canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'.encode()
