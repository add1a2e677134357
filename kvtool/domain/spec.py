"""Typed reads from a VMI spec (a plain dict), each failure naming the field path.

Every configure step reads the spec through these helpers, so a user sees
"spec.domain.devices.disks[1].bus: 'ide' is not one of virtio, sata, scsi"
instead of a KeyError, and nothing unchecked reaches the XML model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kvtool import errors
from kvtool.api import quantity

_MISSING: Any = object()

# Names of disks and volumes: Kubernetes DNS labels (KubeVirt validates the same: a disk name can become a
# container name). Interfaces and networks: KubeVirt's `^[A-Za-z0-9-_]+$`.
NAME = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
IFACE_NAME = r"[A-Za-z0-9_-]{1,63}"


class ConversionError(errors.KvtoolError):
    """A VMI spec, or what the launcher resolved for it, cannot become a domain. `path` names the field."""

    def __init__(self, path: str, problem: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {problem}", hint)
        self.path = path


def show(value: Any) -> str:
    """A short repr for messages; long values are cut so a pasted blob does not flood the terminal."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def mapping(value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
    """An object field; absent (None) reads as {} unless required."""
    if value is None:
        if required:
            raise ConversionError(path, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise ConversionError(path, f"expected an object, got {type(value).__name__}")
    return value


def sequence(value: Any, path: str) -> Sequence[Any]:
    """A list field; absent reads as []."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConversionError(path, f"expected a list, got {type(value).__name__}")
    return value


def named_entries(value: Any, path: str, *, pattern: str = NAME) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(entry path, name, entry) for a list of named objects (volumes, disks, networks, interfaces):
    each a mapping whose DNS-label name is used once in the list."""
    seen: dict[str, int] = {}
    for i, item in enumerate(sequence(value, path)):
        item_path = f"{path}[{i}]"
        entry = mapping(item, item_path)
        name = string(entry.get("name"), f"{item_path}.name", pattern=pattern)
        if name in seen:
            raise ConversionError(f"{item_path}.name", f"{name!r} is already used by {path}[{seen[name]}]")
        seen[name] = i
        yield item_path, name, entry


def integer(value: Any, path: str, *, default: Any = _MISSING, minimum: int | None = None,
            maximum: int | None = None) -> Any:
    if value is None:
        if default is _MISSING:
            raise ConversionError(path, "is required")
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConversionError(path, f"expected an integer, got {show(value)}")
    if minimum is not None and value < minimum:
        raise ConversionError(path, f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConversionError(path, f"{value} is above the maximum {maximum}")
    return value


def string(value: Any, path: str, *, default: Any = _MISSING, choices: Sequence[str] | None = None,
           pattern: str | None = None, max_length: int | None = None) -> Any:
    if value is None:
        if default is _MISSING:
            raise ConversionError(path, "is required")
        return default
    if not isinstance(value, str):
        raise ConversionError(path, f"expected a string, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise ConversionError(path, f"{show(value)} is not one of {', '.join(choices)}")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ConversionError(path, f"{show(value)} is not valid (must match {pattern})")
    if max_length is not None and len(value) > max_length:
        raise ConversionError(path, f"is longer than {max_length} characters")
    return value


def boolean(value: Any, path: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConversionError(path, f"expected true or false, got {show(value)}")
    return value


def one_of(obj: Mapping[str, Any], path: str, *, supported: Sequence[str], known: Sequence[str] = (),
           what: str) -> str:
    """The single key of `obj` among supported+known; a known-but-unsupported key is a clear error."""
    present = [key for key in (*supported, *known) if key in obj]
    if len(present) != 1:
        found = ", ".join(present) if present else "none"
        raise ConversionError(path, f"needs exactly one {what} ({', '.join(supported)}), found: {found}")
    if present[0] not in supported:
        raise ConversionError(f"{path}.{present[0]}", f"this {what} is not supported by kvtool",
                              hint=f"use one of {', '.join(supported)}")
    return present[0]


# --- Kubernetes quantities: kvtool.api.quantity is the one parser ---------------------------------------------
def quantity_bytes(value: Any, path: str) -> int:
    """A Kubernetes quantity ("1Gi", "512M", "134217728", "1.5Gi") as whole bytes, rounded up like Kubernetes."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConversionError(path, f"{show(value)} is not a quantity", hint="write e.g. 256Mi or 1Gi")
    try:
        size = quantity.to_bytes(value)
    except quantity.QuantityError as exc:
        raise ConversionError(path, f"{show(value)} is not a quantity", hint="write e.g. 256Mi or 1Gi") from exc
    if size < 0:
        raise ConversionError(path, f"{show(value)} is negative")
    return size
