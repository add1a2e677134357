"""A class roster → one VM per student, each with its own account, from a template VM. Pure: no cluster.

A roster is a CSV file or a pandas DataFrame with a `name` column (the student's login, also part of
the VM's name), an optional `ssh_key` column (an OpenSSH public key) and any other columns (kept on
the VM as `roster.kvtool.io/<column>` annotations). Each VirtualMachine of the template becomes
`<template>-<student>`: the template's cloud-config plus a user for the student (their key, or an
initial password), the image's default user kept for the teacher's accessCredentials key.

A student without a key gets a password. It lives in a Secret (`<vm>-login`, key `password`, and
the whole user data under `userdata`, which the VM reads through `cloudInitNoCloud.secretRef`), so
it never appears in the VM, the plan or the status; a password already in the cluster is reused
(`passwords=`), so planning the same roster twice changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import copy
import csv
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvtool.api.types import STACK_LABEL, STUDENT_LABEL
from kvtool.errors import KvtoolError

EXTRA_PREFIX = "roster.kvtool.io/"
PASSWORD_KEY = "password"
USERDATA_KEY = "userdata"
NAME_COLUMN = "name"
KEY_COLUMN = "ssh_key"
# A login that is also a DNS label, so `<template>-<name>` is a valid VM name.
LOGIN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# Logins the image already has (or that a student must not take over).
RESERVED = frozenset({"root", "debian", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news",
                      "uucp", "proxy", "backup", "list", "irc", "nobody", "sshd", "systemd-network"})
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
MAX_VM_NAME = 63


class RosterError(KvtoolError):
    """Problems with a roster or its template; every one is listed with its row and column."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the roster {source}; nothing was sent to the cluster:\n"
                         f"{lines}", hint=f"a roster has a `{NAME_COLUMN}` column (the student's login), an optional "
                                          f"`{KEY_COLUMN}` column (an OpenSSH public key) and any other columns")


@dataclass(frozen=True)
class Student:
    """One roster row: a login, an optional public key, the other columns as given."""

    name: str
    ssh_key: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Roster:
    source: str  # the file, or "<DataFrame>"
    students: tuple[Student, ...]

    def names(self) -> list[str]:
        return [s.name for s in self.students]


def read(source: str | Path | Any) -> Roster:
    """A roster from a CSV file's path or a pandas DataFrame (anything with `to_dict("records")`)."""
    if not isinstance(source, (str, Path)):
        frame: Any = source
        records = frame.fillna("").astype(str).to_dict("records")
        return from_rows(records, "<DataFrame>", columns=[str(c) for c in frame.columns], first_row=1)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's CSV export often starts with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise RosterError(str(path), [f"cannot read it: {exc}"]) from None
    return read_text(text, str(path))


def read_text(text: str | bytes, source: str) -> Roster:
    """A roster from a CSV's contents (an upload in a notebook); `source` names it in messages."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RosterError(source, [f"it is not UTF-8 text: {exc}"]) from None
    reader = csv.DictReader(text.removeprefix("\ufeff").splitlines())
    columns = list(reader.fieldnames or [])
    rows = [{k: (v if isinstance(v, str) else "") for k, v in row.items() if k is not None} for row in reader]
    return from_rows(rows, source, columns=columns, first_row=2)  # row 1 is the header


def from_rows(rows: Iterable[Mapping[str, Any]], source: str, *, columns: Sequence[str] | None = None,
              first_row: int = 1) -> Roster:
    """A roster from dicts (row numbers in messages count from `first_row`)."""
    rows = list(rows)
    columns = [c.strip() for c in (columns if columns is not None else (list(rows[0]) if rows else []))]
    if NAME_COLUMN not in columns:
        raise RosterError(source, [f"there is no `{NAME_COLUMN}` column (found: {', '.join(columns) or 'none'})"])
    problems: list[str] = []
    students: list[Student] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=first_row):
        cells = {str(k).strip(): ("" if v is None else str(v)).strip() for k, v in row.items()}
        if not any(cells.values()):
            continue  # a blank line
        name, key = cells.get(NAME_COLUMN, ""), cells.get(KEY_COLUMN, "") or None
        where = f"row {number}"
        if not LOGIN.match(name):
            problems.append(f"{where}, column {NAME_COLUMN}: {name!r} is not a login name: use lowercase letters, "
                            "digits and '-', starting with a letter, at most 32 characters")
        elif name in RESERVED:
            problems.append(f"{where}, column {NAME_COLUMN}: {name!r} is a system account's name; pick another")
        elif name in seen:
            problems.append(f"{where}, column {NAME_COLUMN}: {name!r} is already on row {seen[name]}")
        else:
            seen[name] = number
        if key is not None and (message := key_problem(key)):
            problems.append(f"{where}, column {KEY_COLUMN}: {message}")
        extra = {c: v for c, v in cells.items() if c not in (NAME_COLUMN, KEY_COLUMN) and v}
        students.append(Student(name, key, extra))
    if not students and not problems:
        problems.append("it has no students")
    if problems:
        raise RosterError(source, problems)
    return Roster(source, tuple(students))


def key_problem(key: str) -> str | None:
    """Why `key` is not one OpenSSH public key line, or None."""
    parts = key.split()
    if "\n" in key or len(parts) < 2:
        return "expected one OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'"
    if parts[0] not in KEY_TYPES:
        return f"{parts[0][:40]!r} is not a public key type ({', '.join(KEY_TYPES[:3])}, ...)"
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "the key's second field is not base64"
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4:4 + length].decode("ascii", "replace") != parts[0]:
        return f"the key's data is not a {parts[0]} key (a private key or a truncated copy?)"
    return None


def new_password() -> str:
    """12 characters from a CSPRNG, no look-alikes to misread from a handout."""
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(12))


def vm_name(template: str, student: str) -> str:
    return f"{template}-{student}"


def login_secret_name(vm: str) -> str:
    return f"{vm}-login"


def vm_of_login_secret(secret: str) -> str:
    return secret.removesuffix("-login")


def expand(templates: Sequence[Mapping[str, Any]], roster: Roster, *,
           passwords: Mapping[str, str] | None = None,
           make_password: Callable[[], str] = new_password) -> list[dict[str, Any]]:
    """Every template VirtualMachine once per student, plus the login Secrets; other documents as they are.

    passwords: the passwords already given, by VM name (see `passwords_of`); students without a key
    and without one get `make_password()`.
    """
    passwords = passwords or {}
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for template in templates:
        if template.get("kind") != "VirtualMachine":
            out.append(copy.deepcopy(dict(template)))
            continue
        base = template["metadata"]["name"]
        user_data, problem = _template_user_data(template)
        if problem:
            problems.append(f"template {base}: {problem}")
            continue
        for student in roster.students:
            name = vm_name(base, student.name)
            if len(name) > MAX_VM_NAME:
                problems.append(f"student {student.name}: the VM name {name!r} is longer than {MAX_VM_NAME} "
                                "characters; shorten the template's name or the login")
                continue
            password = None if student.ssh_key else passwords.get(name) or make_password()
            cloud_config = student_cloud_config(user_data, student, password)
            out += _student_vm(template, name, student, cloud_config, password)
    if problems:
        raise RosterError(roster.source, problems)
    return out


def student_cloud_config(base: Mapping[str, Any], student: Student, password: str | None) -> str:
    """The template's cloud-config with the student's account added (and password login, when given one)."""
    config = copy.deepcopy(dict(base))
    user: dict[str, Any] = {"name": student.name, "shell": "/bin/bash", "groups": ["sudo"],
                            "sudo": "ALL=(ALL) NOPASSWD:ALL"}
    if student.ssh_key:
        user["ssh_authorized_keys"] = [student.ssh_key]
    if password is not None:
        user.update(lock_passwd=False, plain_text_passwd=password)
        config["ssh_pwauth"] = True
    config.setdefault("manage_etc_hosts", True)  # the VM's name resolves (sudo asks for it)
    users = list(config.get("users") or [])
    config["users"] = (["default"] if "default" not in users else []) + users + [user]
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _template_user_data(template: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The template's cloud-config as a mapping ({} without one), or why it cannot take a student's account."""
    volume = _cloud_init_volume(template)
    if volume is None:
        return {}, None
    source = volume["cloudInitNoCloud"]
    if source.get("secretRef") is not None or source.get("userDataBase64") is not None:
        return {}, ("its cloudInitNoCloud user data must be written out as userData (#cloud-config) so each "
                    "student's account can be added to it, not in a Secret or base64")
    text = source.get("userData")
    if text is None:
        return {}, None
    if not text.lstrip().startswith("#cloud-config"):
        return {}, "its userData must be #cloud-config (a script cannot be combined with each student's account)"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return {}, f"its userData is not YAML: {str(exc).splitlines()[0]}"
    if doc is None:
        return {}, None
    if not isinstance(doc, dict):
        return {}, f"its userData must be a cloud-config mapping, not a {type(doc).__name__}"
    if not isinstance(doc.get("users", []), list):
        return {}, "its userData's users must be a list"
    return doc, None


def _cloud_init_volume(vm: Mapping[str, Any]) -> dict[str, Any] | None:
    volumes = vm.get("spec", {}).get("template", {}).get("spec", {}).get("volumes") or []
    return next((v for v in volumes if "cloudInitNoCloud" in v), None)


def _student_vm(template: Mapping[str, Any], name: str, student: Student, cloud_config: str,
                password: str | None) -> list[dict[str, Any]]:
    vm = copy.deepcopy(dict(template))
    meta = vm["metadata"]
    meta["name"] = name
    meta.setdefault("labels", {})[STUDENT_LABEL] = student.name
    if student.extra:
        meta.setdefault("annotations", {}).update({EXTRA_PREFIX + k: v for k, v in student.extra.items()})
    tspec = vm["spec"]["template"]
    tspec.setdefault("metadata", {}).setdefault("labels", {})[STUDENT_LABEL] = student.name
    spec = tspec["spec"]
    volume = _cloud_init_volume(vm)
    if volume is None:
        disks = spec.setdefault("domain", {}).setdefault("devices", {}).setdefault("disks", [])
        taken = {d.get("name") for d in disks} | {v.get("name") for v in spec.get("volumes") or []}
        disk = next(n for n in ("cloudinit", "cloudinit-student", "cloudinit-roster") if n not in taken)
        disks.append({"name": disk, "disk": {"bus": "virtio"}})
        volume = {"name": disk, "cloudInitNoCloud": {}}
        spec.setdefault("volumes", []).append(volume)
    source = volume["cloudInitNoCloud"]
    source.pop("userData", None)
    if password is None:
        source["userData"] = cloud_config
        return [vm]
    secret_name = login_secret_name(name)
    source["secretRef"] = {"name": secret_name}
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": secret_name, "labels": {STUDENT_LABEL: student.name}},
              "type": "Opaque", "stringData": {PASSWORD_KEY: password, USERDATA_KEY: cloud_config}}
    if "namespace" in meta:
        secret["metadata"]["namespace"] = meta["namespace"]
    return [secret, vm]


def passwords_of(secrets_found: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """VM name → password, from the login Secrets a stack already has (as the API returns them)."""
    out: dict[str, str] = {}
    for secret in secrets_found:
        name = secret.get("metadata", {}).get("name", "")
        value = (secret.get("data") or {}).get(PASSWORD_KEY)
        if name.endswith("-login") and STUDENT_LABEL in (secret.get("metadata", {}).get("labels") or {}) and value:
            try:
                out[vm_of_login_secret(name)] = base64.b64decode(value).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # not one kvtool wrote: a new password replaces it
    return out


def selector(stack: str) -> str:
    """The label selector of a stack's login Secrets."""
    return f"{STACK_LABEL}={stack},{STUDENT_LABEL}"
