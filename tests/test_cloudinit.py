"""The NoCloud seed ISO, read back by pycdlib, xorriso and blkid - the tools a guest's cloud-init relies on."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest
import yaml

from kvtool.domain import cloudinit, spec

USER_DATA = "#cloud-config\npassword: hunter2-secret\nchpasswd: {expire: false}\n"
NETWORK = "version: 2\nethernets:\n  eth0: {dhcp4: true}\n"


def read_iso(path: Path) -> dict[str, bytes]:
    """Files by their Rock Ridge name, checking that Joliet carries the same bytes."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.has_rock_ridge() and iso.has_joliet()
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            rr, joliet = io.BytesIO(), io.BytesIO()
            iso.get_file_from_iso_fp(rr, rr_path=f"/{name}")
            iso.get_file_from_iso_fp(joliet, joliet_path=f"/{name}")
            assert rr.getvalue() == joliet.getvalue()
            files[name] = rr.getvalue()
        return files
    finally:
        iso.close()


def write(path: Path, **changes: object) -> Path:
    args: dict[str, object] = {"instance_id": "default.vm-1", "hostname": "vm-1", "user_data": USER_DATA,
                               "network_data": NETWORK}
    args.update(changes)
    return cloudinit.write_nocloud_iso(path, **args)  # type: ignore[arg-type]


def test_iso_holds_the_three_nocloud_files(tmp_path: Path) -> None:
    iso = write(tmp_path / "cidata.iso")
    files = read_iso(iso)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "default.vm-1", "local-hostname": "vm-1"}
    assert files["user-data"].decode() == USER_DATA
    assert files["network-config"].decode() == NETWORK


def test_xorriso_and_blkid_read_it_like_a_guest_would(tmp_path: Path) -> None:
    iso = write(tmp_path / "cidata.iso")
    listing = subprocess.run(["xorriso", "-indev", str(iso), "-lsl", "/"], capture_output=True, text=True, check=True)
    modes = {line.split()[-1].strip("'"): line.split()[0] for line in listing.stdout.splitlines() if "'" in line}
    assert modes == {"meta-data": "-r--r--r--", "network-config": "-r--r--r--", "user-data": "-r--------"}
    out = tmp_path / "extracted"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)],
                   capture_output=True, check=True)
    assert (out / "user-data").read_text() == USER_DATA
    assert (out / "network-config").read_text() == NETWORK
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True,
                           check=True)
    assert label.stdout.strip() == "cidata"


def test_network_config_only_when_given(tmp_path: Path) -> None:
    assert sorted(read_iso(write(tmp_path / "a.iso", network_data=None))) == ["meta-data", "user-data"]
    assert sorted(read_iso(write(tmp_path / "b.iso", user_data=None))) == ["meta-data", "network-config"]


def test_same_inputs_same_bytes_in_any_timezone(tmp_path: Path) -> None:
    first = write(tmp_path / "a.iso").read_bytes()
    assert write(tmp_path / "b.iso").read_bytes() == first
    script = ("import sys; from pathlib import Path; from kvtool.domain import cloudinit; "
              "cloudinit.write_nocloud_iso(Path(sys.argv[1]), instance_id='default.vm-1', hostname='vm-1', "
              "user_data=sys.argv[2], network_data=sys.argv[3])")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.iso"), USER_DATA, NETWORK], check=True,
                   env={**os.environ, "TZ": "Pacific/Chatham"})
    assert (tmp_path / "c.iso").read_bytes() == first
    assert write(tmp_path / "d.iso", user_data=USER_DATA + "#\n").read_bytes() != first


def test_file_is_private_and_written_atomically(tmp_path: Path) -> None:
    iso = write(tmp_path / "cidata.iso")
    assert (iso.stat().st_mode & 0o777) == 0o600
    shared = write(tmp_path / "shared.iso", user_data=None, mode=0o644)
    assert (shared.stat().st_mode & 0o777) == 0o644
    write(tmp_path / "cidata.iso", hostname="renamed")  # replaces in place
    assert yaml.safe_load(read_iso(iso)["meta-data"])["local-hostname"] == "renamed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cidata.iso", "shared.iso"]


def test_meta_data_is_yaml_quoted_not_spliced() -> None:
    assert yaml.safe_load(cloudinit.meta_data("123", "h")) == {"instance-id": "123", "local-hostname": "h"}
    assert yaml.safe_load(cloudinit.meta_data("1e3", "true")) == {"instance-id": "1e3", "local-hostname": "true"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"hostname": "bad_host"}, "cloudinit.hostname: 'bad_host' is not a valid hostname"),
    ({"hostname": "a\nb"}, "cloudinit.hostname"),
    ({"instance_id": "x: y"}, "cloudinit.instance_id: 'x: y' is not a valid instance id"),
    ({"user_data": b"#cloud-config"}, "cloudinit.user_data: expected text, got bytes"),
])
def test_bad_arguments_fail_without_echoing_user_data(tmp_path: Path, changes: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(spec.ConversionError) as caught:
        write(tmp_path / "x.iso", **changes)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_payload_from_each_kubevirt_field() -> None:
    path = "spec.volumes[1].cloudInitNoCloud"
    secrets = {"ci": {"userdata": USER_DATA, "networkData": NETWORK}}
    assert cloudinit.nocloud_payload({"userData": USER_DATA}, path) == cloudinit.NoCloudPayload(USER_DATA, None)
    encoded = base64.b64encode(USER_DATA.encode()).decode()
    got = cloudinit.nocloud_payload({"userDataBase64": encoded, "networkData": NETWORK}, path)
    assert got == cloudinit.NoCloudPayload(USER_DATA, NETWORK)
    got = cloudinit.nocloud_payload({"secretRef": {"name": "ci"}, "networkDataSecretRef": {"name": "ci"}}, path,
                                    secrets=secrets)
    assert got == cloudinit.NoCloudPayload(USER_DATA, NETWORK)
    assert "hunter2" not in repr(got) and "hunter2" not in str(got)


@pytest.mark.parametrize(("source", "message"), [
    ({}, "cloudInitNoCloud: needs user data or network data"),
    ({"userData": "a", "userDataBase64": "YQ=="}, "set only one of userData, userDataBase64, secretRef"),
    ({"userDataBase64": "not base64!"}, "cloudInitNoCloud.userDataBase64: is not base64 of UTF-8 text"),
    ({"secretRef": {"name": "missing"}}, "cloudInitNoCloud.secretRef.name: secret 'missing' was not provided"),
    ({"secretRef": {"name": "ci"}}, "secret 'ci' has no key userdata or userData"),
    ({"userData": 5}, "cloudInitNoCloud.userData: expected a string, got int"),
])
def test_bad_payload_names_the_field(source: dict[str, object], message: str) -> None:
    with pytest.raises(spec.ConversionError, match=r"^spec\.volumes") as caught:
        cloudinit.nocloud_payload(source, "spec.volumes[1].cloudInitNoCloud", secrets={"ci": {"networkdata": "x"}})
    assert message in str(caught.value)
