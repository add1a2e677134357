"""The launcher's inputs: three arguments and the KVTOOL_* environment of docs/runtime.md, checked once.

Everything here ends up in file names, libvirt's config, a libvirt URI or a
domain name, so each value is validated before it is used; a bad one is a
ConfigError (exit 2) naming the variable.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from kvtool.errors import KvtoolError

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
POD_UID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
# The sockets dir is spliced into libvirtd.conf and a libvirt URI: keep to characters neither needs to quote.
SAFE_PATH = r"/[A-Za-z0-9_./+-]*"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
LIBVIRT_SOCKET_NAMES = ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock")
DEFAULT_GRACE = 30
MAX_GRACE = 24 * 3600


class ConfigError(KvtoolError):
    """Bad arguments or environment: the launcher exits 2 (docs/runtime.md)."""

    exit_code = 2


@dataclass(frozen=True)
class Config:
    namespace: str
    name: str
    uid: str
    pod_uid: str
    grace_period: int
    sockets_dir: Path
    state_dir: Path
    images_dir: Path
    cache_dir: Path | None
    volumes_dir: Path | None
    access_credentials_dir: Path | None = None  # one directory per accessCredentials Secret
    pod_name: str = ""
    pod_namespace: str = ""
    node_name: str = ""
    pod_interface: str | None = None  # the CNI's interface in the pod's namespace; None: no pod network (slirp)
    claim_sizes: Mapping[str, int] = field(default_factory=dict)  # volume -> bytes its claim asks for

    @property
    def socket_path(self) -> Path:
        return self.sockets_dir / f"{self.pod_uid}.sock"

    @property
    def libvirt_socket_dir(self) -> Path:
        return self.sockets_dir / f"{self.pod_uid}.libvirt"

    @property
    def domain_name(self) -> str:
        return f"{self.namespace}_{self.name}"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"


def load(namespace: str, name: str, uid: str, environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config or raise ConfigError with a one-line message."""
    env = os.environ if environ is None else environ
    _match(namespace, DNS_LABEL, "--namespace", "a DNS label")
    _match(name, DNS_LABEL, "--name", "a DNS label")
    try:
        uid = str(uuid.UUID(uid))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"--uid {uid!r} is not a UUID (pass the VMI's metadata.uid)") from None
    pod_uid = _required(env, "KVTOOL_POD_UID")
    _match(pod_uid, POD_UID, "KVTOOL_POD_UID", "a pod UID")
    config = Config(
        namespace=namespace, name=name, uid=uid, pod_uid=pod_uid,
        grace_period=_grace(env.get("KVTOOL_GRACE_PERIOD")),
        sockets_dir=_directory(env, "KVTOOL_SOCKETS_DIR", safe=True),
        state_dir=_directory(env, "KVTOOL_STATE_DIR"),
        images_dir=_directory(env, "KVTOOL_IMAGES"),
        cache_dir=_directory(env, "KVTOOL_CACHE_DIR", required=False),
        volumes_dir=_directory(env, "KVTOOL_VOLUMES_DIR", required=False),
        access_credentials_dir=_directory(env, "KVTOOL_ACCESS_CREDENTIALS_DIR", required=False),
        pod_name=_printable(env.get("KVTOOL_POD_NAME", "")),
        pod_namespace=_printable(env.get("KVTOOL_POD_NAMESPACE", "")),
        node_name=_printable(env.get("KVTOOL_NODE_NAME", "")),
        pod_interface=_interface(env.get("KVTOOL_POD_INTERFACE")),
        claim_sizes=_claim_sizes(env.get("KVTOOL_CLAIM_SIZES")),
    )
    longest = [config.socket_path, *(config.libvirt_socket_dir / n for n in LIBVIRT_SOCKET_NAMES)]
    for path in longest:
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ConfigError(f"KVTOOL_SOCKETS_DIR is too long: the socket {path} exceeds {UNIX_PATH_MAX} bytes")
    return config


def _required(env: Mapping[str, str], key: str) -> str:
    value = env.get(key)
    if not value:
        raise ConfigError(f"{key} is not set (see docs/runtime.md, the launcher pod's contract)")
    return value


def _match(value: str, pattern: str, what: str, kind: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise ConfigError(f"{what} {value!r} is not {kind}")


def _grace(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_GRACE
    if not re.fullmatch(r"[0-9]{1,6}", value) or int(value) > MAX_GRACE:
        raise ConfigError(f"KVTOOL_GRACE_PERIOD {value!r} is not a number of seconds between 0 and {MAX_GRACE}")
    return int(value)


@overload
def _directory(env: Mapping[str, str], key: str, *, required: Literal[True] = ..., safe: bool = ...) -> Path: ...
@overload
def _directory(env: Mapping[str, str], key: str, *, required: bool, safe: bool = ...) -> Path | None: ...
def _directory(env: Mapping[str, str], key: str, *, required: bool = True, safe: bool = False) -> Path | None:
    value = env.get(key)
    if not value:
        if required:
            raise ConfigError(f"{key} is not set (see docs/runtime.md, the launcher pod's contract)")
        return None
    if not value.startswith("/") or "\x00" in value or any(part == ".." for part in value.split("/")):
        raise ConfigError(f"{key} {value!r} is not an absolute path without '..'")
    if safe and not re.fullmatch(SAFE_PATH, value):
        raise ConfigError(f"{key} {value!r} may only contain letters, digits and _ . / + -")
    if not re.fullmatch(r"[^\x00-\x1f\x7f]+", value) or len(value) > 1024:
        raise ConfigError(f"{key} {value!r} is not a usable path")
    return Path(os.path.normpath(value))


def _interface(value: str | None) -> str | None:
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", value):
        raise ConfigError(f"KVTOOL_POD_INTERFACE {value!r} is not an interface name")
    return value


def _claim_sizes(value: str | None) -> dict[str, int]:
    """KVTOOL_CLAIM_SIZES: a JSON object, volume name -> bytes (the controller's, from each claim)."""
    if not value:
        return {}
    try:
        sizes = json.loads(value)
    except ValueError:
        sizes = None
    if not isinstance(sizes, dict) or not all(
            isinstance(k, str) and re.fullmatch(DNS_LABEL, k) and type(v) is int and 0 < v < 1 << 62
            for k, v in sizes.items()):
        raise ConfigError(f"KVTOOL_CLAIM_SIZES {value[:200]!r} is not a JSON object of volume names to "
                          "positive byte counts")
    return sizes


def _printable(value: str) -> str:
    """Informational values (logged only): control characters would forge log lines."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", value)[:253]
