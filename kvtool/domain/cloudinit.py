"""The cloud-init NoCloud seed: an ISO labelled "cidata" with meta-data, user-data and network-config.

Built with pycdlib (ISO9660 + Joliet + Rock Ridge, what `cloud-localds` makes
with genisoimage), byte-for-byte reproducible: the same inputs give the same
ISO, so the launcher can compare instead of rewrite and tests can pin it.
user-data often carries passwords and keys: it is never logged, never put in
an error message, and the file is created 0600 unless the caller asks otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import struct_time
from types import MappingProxyType, ModuleType
from typing import Any

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.pycdlib
import pycdlib.utils
import yaml

from kvtool.domain import spec as s

VOLUME_ID = "cidata"
# 2000-01-01T00:00:00Z: every timestamp in the image, so output depends only on the inputs.
FIXED_EPOCH = 946684800.0
HOSTNAME = r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
INSTANCE_ID = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}"

# Rock Ridge / Joliet name -> (ISO9660 name, Rock Ridge mode)
_FILES = {
    "meta-data": ("/META_DATA.;1", 0o100444),
    "user-data": ("/USER_DATA.;1", 0o100400),  # secrets: root only inside the guest too
    "network-config": ("/NETWORK_CONFIG.;1", 0o100444),
}


@dataclass(frozen=True)
class NoCloudPayload:
    """user-data and network-config as text, decoded from whichever spec field carried them."""

    user_data: str | None
    network_data: str | None

    def __repr__(self) -> str:  # the dataclass repr would print secrets into logs and tracebacks
        return f"NoCloudPayload(user_data={_size(self.user_data)}, network_data={_size(self.network_data)})"


def _size(text: str | None) -> str:
    return "None" if text is None else f"<{len(text)} chars>"


def nocloud_payload(source: Mapping[str, Any], path: str, *,
                    secrets: Mapping[str, Mapping[str, str]] = MappingProxyType({})) -> NoCloudPayload:
    """Decode a cloudInitNoCloud volume source (KubeVirt's fields) into text.

    `secrets` maps a Secret name to its decoded data, looked up by the caller; KubeVirt reads the keys
    userdata/userData and networkdata/networkData from it.
    """
    source = s.mapping(source, path, required=True)
    user = _one_payload(source, path, ("userData", "userDataBase64", "secretRef"), ("userdata", "userData"), secrets)
    network = _one_payload(source, path, ("networkData", "networkDataBase64", "networkDataSecretRef"),
                           ("networkdata", "networkData"), secrets)
    if user is None and network is None:
        raise s.ConversionError(path, "needs user data or network data",
                                hint="set userData, userDataBase64 or secretRef")
    return NoCloudPayload(user, network)


def _one_payload(source: Mapping[str, Any], path: str, fields: tuple[str, str, str], secret_keys: tuple[str, str],
                 secrets: Mapping[str, Mapping[str, str]]) -> str | None:
    present = [name for name in fields if source.get(name) is not None]
    if len(present) > 1:
        raise s.ConversionError(path, f"set only one of {', '.join(fields)}, found: {', '.join(present)}")
    if not present:
        return None
    field = present[0]
    value = source[field]
    if field == fields[0]:
        if not isinstance(value, str):
            raise s.ConversionError(f"{path}.{field}", f"expected a string, got {type(value).__name__}")
        return value
    if field == fields[1]:
        if not isinstance(value, str):
            raise s.ConversionError(f"{path}.{field}", f"expected a string, got {type(value).__name__}")
        try:
            return base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise s.ConversionError(f"{path}.{field}", "is not base64 of UTF-8 text") from None
    ref = s.mapping(value, f"{path}.{field}", required=True)
    name = s.string(ref.get("name"), f"{path}.{field}.name", pattern=r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
    data = secrets.get(name)
    if data is None:
        raise s.ConversionError(f"{path}.{field}.name", f"secret {name!r} was not provided")
    for key in secret_keys:
        if key in data:
            return data[key]
    raise s.ConversionError(f"{path}.{field}.name", f"secret {name!r} has no key {' or '.join(secret_keys)}")


def meta_data(instance_id: str, hostname: str, public_keys: Mapping[str, str] | None = None) -> str:
    """The meta-data document; YAML via the dumper, so odd characters are quoted, never spliced in.

    public_keys: name -> SSH public key(s), KubeVirt's accessCredentials with propagation noCloud; cloud-init
    installs them for the default user."""
    if not isinstance(instance_id, str) or not re.fullmatch(INSTANCE_ID, instance_id):
        raise s.ConversionError("cloudinit.instance_id", f"{s.show(instance_id)} is not a valid instance id")
    if not isinstance(hostname, str) or not re.fullmatch(HOSTNAME, hostname):
        raise s.ConversionError("cloudinit.hostname", f"{s.show(hostname)} is not a valid hostname")
    doc: dict[str, Any] = {"instance-id": instance_id, "local-hostname": hostname}
    if public_keys:
        doc["public-keys"] = dict(public_keys)
    return yaml.safe_dump(doc, sort_keys=False)


ISO_PADDING = 150 * 2048


def write_nocloud_iso(path: Path, *, instance_id: str, hostname: str, user_data: str | None,
                      network_data: str | None, mode: int = 0o600,
                      public_keys: Mapping[str, str] | None = None) -> Path:
    """Write the seed ISO atomically (temp file + rename) and return its path.

    `mode` is 0600 because user-data may hold secrets; pass 0644 when QEMU runs as another user
    than the writer and nothing secret is inside.
    """
    contents = {"meta-data": meta_data(instance_id, hostname, public_keys)}
    for name, value, param in (("user-data", user_data, "user_data"), ("network-config", network_data,
                                                                        "network_data")):
        if value is None:
            continue
        if not isinstance(value, str):
            raise s.ConversionError(f"cloudinit.{param}", f"expected text, got {type(value).__name__}")
        contents[name] = value
    image = _build(contents)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed what os.open granted
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _build(contents: Mapping[str, str]) -> bytes:
    iso = pycdlib.PyCdlib()
    out = io.BytesIO()
    with _frozen_clock():
        iso.new(interchange_level=3, vol_ident=VOLUME_ID, app_ident_str="kvtool", joliet=3, rock_ridge="1.09")
        for name in ("meta-data", "user-data", "network-config"):
            if name not in contents:
                continue
            data = contents[name].encode("utf-8")
            iso_path, file_mode = _FILES[name]
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path="/" + name,
                       file_mode=file_mode)
        iso.write_fp(out)
        iso.close()
    # mkisofs pads every image with 150 zero sectors; pycdlib does not. Unpadded (~66 KiB), the seed
    # is never found by busybox's findfs (its probes read past the end of the tiny disk and give up).
    return out.getvalue() + bytes(ISO_PADDING)


class _FrozenTime:
    """Stands in for the `time` module inside pycdlib while one ISO is built.

    pycdlib stamps every volume descriptor and directory record with
    time.time() in local time and has no option to pass a date; giving its
    modules this clock (UTC, fixed) is the only way to reproducible images.
    """

    def time(self) -> float:
        return FIXED_EPOCH

    def localtime(self, secs: float | None = None) -> struct_time:
        return time.gmtime(FIXED_EPOCH if secs is None else secs)

    def gmtime(self, secs: float | None = None) -> struct_time:
        return time.gmtime(FIXED_EPOCH if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_CLOCK_LOCK = threading.Lock()
_CLOCK_MODULES: tuple[ModuleType, ...] = (pycdlib.dates, pycdlib.headervd, pycdlib.pycdlib, pycdlib.utils)


@contextlib.contextmanager
def _frozen_clock() -> Iterator[None]:
    with _CLOCK_LOCK:
        saved = [(module, module.time) for module in _CLOCK_MODULES]
        frozen = _FrozenTime()
        try:
            for module, _ in saved:
                module.time = frozen  # type: ignore[attr-defined]
            yield
        finally:
            for module, original in saved:
                module.time = original  # type: ignore[attr-defined]
