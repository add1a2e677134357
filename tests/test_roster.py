"""kvtool.plan.roster: a roster (CSV or DataFrame) and a template VM → one VM per student. Pure, no cluster."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kvtool.api import builder
from kvtool.plan import desired, roster
from kvtool.plan.roster import RosterError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN2gD9dqFVDgLDbl3Rw+r1Ua3nCOGYFYjNEpxrfpAG5B ada@laptop"
TEMPLATE_DATA = "#cloud-config\npackages: [git]\nruncmd:\n  - [touch, /etc/lab]\n"


def template(user_data: str | None = TEMPLATE_DATA) -> dict:
    return builder.virtual_machine("lab", image="debian-12", image_kind="disk", memory="1Gi", user_data=user_data)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "students.csv"
    path.write_text(text)
    return path


def user_data_of(vm: dict) -> str:
    volume = next(v for v in vm["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v)
    return volume["cloudInitNoCloud"]["userData"]


def test_csv_rows_become_students_with_keys_and_extra_columns(tmp_path: Path) -> None:
    path = write(tmp_path, f"\ufeffname,ssh_key,group\nada,{KEY},tuesday\n\ngrace,,thursday\n")
    r = roster.read(path)
    assert r.names() == ["ada", "grace"]
    assert r.students[0].ssh_key == KEY and r.students[0].extra == {"group": "tuesday"}
    assert r.students[1].ssh_key is None


def test_a_dataframe_is_a_roster_too() -> None:
    frame = pd.DataFrame({"name": ["ada", "alan"], "ssh_key": [KEY, None]})
    r = roster.read(frame)
    assert [(s.name, s.ssh_key) for s in r.students] == [("ada", KEY), ("alan", None)]


def test_every_problem_names_its_row_and_column(tmp_path: Path) -> None:
    private = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa...").decode()
    path = write(tmp_path, "name,ssh_key\nAda Lovelace,\nada,not-a-key\nada,\nroot,\nbob," + private + "\n")
    with pytest.raises(RosterError) as err:
        roster.read(path)
    assert err.value.problems == [
        "row 2, column name: 'Ada Lovelace' is not a login name: use lowercase letters, digits and '-', "
        "starting with a letter, at most 32 characters",
        "row 3, column ssh_key: expected one OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'",
        "row 4, column name: 'ada' is already on row 3",
        "row 5, column name: 'root' is a system account's name; pick another",
        "row 6, column ssh_key: the key's data is not a ssh-ed25519 key (a private key or a truncated copy?)",
    ]
    assert str(path) in str(err.value) and "nothing was sent to the cluster" in str(err.value)


def test_a_roster_without_a_name_column_or_students_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RosterError, match="there is no `name` column \\(found: student, key\\)"):
        roster.read(write(tmp_path, "student,key\nada,\n"))
    with pytest.raises(RosterError, match="it has no students"):
        roster.read(write(tmp_path, "name,ssh_key\n"))
    with pytest.raises(RosterError, match="cannot read it"):
        roster.read(tmp_path / "missing.csv")


def test_one_vm_per_student_with_their_account_and_the_templates_config() -> None:
    r = roster.from_rows([{"name": "ada", "ssh_key": KEY, "group": "tue"}, {"name": "alan", "ssh_key": ""}], "<t>")
    docs = roster.expand([template()], r, make_password=lambda: "pw-alan-123")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("VirtualMachine", "lab-ada"), ("Secret", "lab-alan-login"), ("VirtualMachine", "lab-alan")]
    ada, secret, alan = docs
    assert ada["metadata"]["labels"][roster.STUDENT_LABEL] == "ada"
    assert ada["spec"]["template"]["metadata"]["labels"][roster.STUDENT_LABEL] == "ada"
    assert ada["metadata"]["annotations"] == {"roster.kvtool.io/group": "tue"}
    config = yaml.safe_load(user_data_of(ada))
    assert user_data_of(ada).startswith("#cloud-config\n")
    assert config["packages"] == ["git"] and config["runcmd"] == [["touch", "/etc/lab"]]
    assert config["users"][0] == "default", "the image's user keeps the teacher's accessCredentials key"
    assert config["users"][1]["name"] == "ada" and config["users"][1]["ssh_authorized_keys"] == [KEY]
    assert "ssh_pwauth" not in config and "plain_text_passwd" not in config["users"][1]
    # The keyless student's config, password included, is in the Secret; the VM only names it.
    alan_ci = next(v for v in alan["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v)
    assert alan_ci["cloudInitNoCloud"] == {"secretRef": {"name": "lab-alan-login"}}
    assert secret["stringData"]["password"] == "pw-alan-123"
    login = yaml.safe_load(secret["stringData"]["userdata"])
    assert login["ssh_pwauth"] is True
    assert login["users"][1] | {} == {"name": "alan", "shell": "/bin/bash", "groups": ["sudo"],
                                      "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": False,
                                      "plain_text_passwd": "pw-alan-123"}
    # What comes out is valid desired state, the password masked in any plan (Secret data is sensitive).
    state = desired.load(objects=docs, stack="lab")
    assert [o.name for o in state.objects] == ["lab-ada", "lab-alan-login", "lab-alan"]


def test_existing_passwords_are_kept_so_a_second_plan_changes_nothing() -> None:
    r = roster.from_rows([{"name": "alan"}], "<t>")
    found = [{"metadata": {"name": "lab-alan-login", "labels": {roster.STUDENT_LABEL: "alan"}},
              "data": {"password": base64.b64encode(b"kept-1234").decode()}}]
    assert roster.passwords_of(found) == {"lab-alan": "kept-1234"}

    def never() -> str:
        raise AssertionError("a password on file must be reused")

    secret = roster.expand([template()], r, passwords=roster.passwords_of(found), make_password=never)[0]
    assert secret["stringData"]["password"] == "kept-1234"
    assert roster.expand([template()], r, passwords={"lab-alan": "kept-1234"}) == \
        roster.expand([template()], r, passwords={"lab-alan": "kept-1234"})


def test_a_template_without_cloud_init_gets_a_cloud_init_disk() -> None:
    docs = roster.expand([template(user_data=None)], roster.from_rows([{"name": "ada", "ssh_key": KEY}], "<t>"))
    spec = docs[0]["spec"]["template"]["spec"]
    assert spec["domain"]["devices"]["disks"][-1] == {"name": "cloudinit", "disk": {"bus": "virtio"}}
    assert yaml.safe_load(user_data_of(docs[0]))["users"][1]["name"] == "ada"
    desired.load(objects=docs, stack="lab")


@pytest.mark.parametrize(("user_data", "message"), [
    ("#!/bin/sh\necho hi\n", "must be #cloud-config"),
    ("#cloud-config\n[1, 2]\n", "must be a cloud-config mapping, not a list"),
    ("#cloud-config\nusers: ada\n", "users must be a list"),
    ("#cloud-config\nruncmd: [\n", "is not YAML"),
])
def test_a_template_whose_user_data_cannot_take_accounts_is_refused(user_data: str, message: str) -> None:
    with pytest.raises(RosterError, match=message) as err:
        roster.expand([template(user_data)], roster.from_rows([{"name": "ada"}], "<t>"))
    assert "template lab:" in str(err.value)


def test_a_vm_name_too_long_is_refused_naming_the_student() -> None:
    r = roster.from_rows([{"name": "a" * 32}], "<t>")
    long = builder.virtual_machine("x" * 40, image="debian-12", image_kind="disk")
    with pytest.raises(RosterError, match=f"student {'a' * 32}: the VM name .* is longer than 63"):
        roster.expand([long], r)


def test_other_documents_pass_through_once() -> None:
    key_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "teacher-key"},
                  "stringData": {"key": KEY}}
    docs = roster.expand([key_secret, template()], roster.from_rows([{"name": "ada"}, {"name": "bob"}], "<t>"))
    assert [d["metadata"]["name"] for d in docs] == ["teacher-key", "lab-ada-login", "lab-ada", "lab-bob-login",
                                                     "lab-bob"]


def test_passwords_are_twelve_characters_without_look_alikes() -> None:
    words = {roster.new_password() for _ in range(50)}
    assert len(words) == 50 and all(len(w) == 12 and not set(w) & set("0O1lI") for w in words)


def test_a_lab_with_persistent_disks_is_not_reset_by_a_restart() -> None:
    from kvtool import labctl

    ephemeral = builder.virtual_machine("lab-ada", image="debian-12", image_kind="disk", user_data=TEMPLATE_DATA,
                                        disks=[{"name": "scratch", "size": "1Gi"}])
    kept = builder.virtual_machine("lab-bob", image="debian-12", image_kind="disk",
                                   disks=[{"name": "home", "claim": "bob-home"}])
    assert labctl.persistent_disks(ephemeral) == []
    assert labctl.persistent_disks(kept) == ["home (persistentVolumeClaim bob-home)"]
    assert labctl.reset_refusal("intro", [ephemeral], {}) is None
    refusal = labctl.reset_refusal("intro", [ephemeral, kept], {"lab-bob": None})
    assert refusal is not None and str(refusal).startswith(
        "cannot reset stack 'intro': these VMs keep disks a restart does not undo "
        "(lab-bob: home (persistentVolumeClaim bob-home): no baseline snapshot lab-bob-baseline); nothing was reset")
    assert "kvtool apply --baseline" in (refusal.hint or "")
    # A baseline that is not ready yet, or failed, refuses too; a ready one makes the lab resettable.
    pending = {"metadata": {"name": "lab-bob-baseline"}, "status": {"phase": "InProgress"}}
    failed = {"metadata": {"name": "lab-bob-baseline"},
              "status": {"phase": "Failed", "error": {"message": "no VolumeSnapshotClass"}}}
    ready = {"metadata": {"name": "lab-bob-baseline"}, "status": {"phase": "Succeeded", "readyToUse": True}}
    assert "is not ready (phase InProgress)" in str(labctl.reset_refusal("intro", [kept], {"lab-bob": pending}))
    assert "is not ready (no VolumeSnapshotClass)" in str(labctl.reset_refusal("intro", [kept], {"lab-bob": failed}))
    assert labctl.reset_refusal("intro", [ephemeral, kept], {"lab-bob": ready}) is None
    # A host disk has no snapshots: no baseline helps.
    host = builder.virtual_machine("lab-cy", image="debian-12", image_kind="disk")
    host["spec"]["template"]["spec"]["volumes"].append({"name": "data", "hostDisk": {"path": "/srv/cy.img",
                                                                                       "type": "Disk"}})
    assert "a host disk has no snapshots" in str(labctl.reset_refusal("intro", [host], {"lab-cy": ready}))
