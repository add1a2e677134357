"""Write a cpio "newc" archive, the format the Linux kernel unpacks as an initramfs.

Written here rather than with `cpio -o` so the archive is built from a list of
entries instead of a real directory tree: device nodes need no root, owners
are always 0, and fixed mtimes make the same inputs give the same bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative ("bin/sh"); parents must come earlier in the archive."""

    path: str
    mode: int  # file type bits included, e.g. stat.S_IFREG | 0o755
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes

    @staticmethod
    def dir(path: str, perm: int = 0o755) -> Entry:
        return Entry(path, stat.S_IFDIR | perm)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
        return Entry(path, stat.S_IFREG | perm, data)

    @staticmethod
    def symlink(path: str, target: str) -> Entry:
        return Entry(path, stat.S_IFLNK | 0o777, target.encode())

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def write(out: BinaryIO, entries: list[Entry], mtime: int = 0) -> None:
    """Write `entries` then the trailer. Paths must be relative and unique."""
    seen: set[str] = set()
    for ino, entry in enumerate(entries, start=1):
        if entry.path.startswith("/") or ".." in entry.path.split("/") or entry.path in seen:
            raise ValueError(f"bad or duplicate cpio path {entry.path!r}")
        seen.add(entry.path)
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        _member(out, entry.path, ino, entry.mode, nlink, mtime, entry.data, entry.rdev)
    _member(out, _TRAILER, 0, 0, 1, 0, b"", (0, 0))


def _member(out: BinaryIO, name: str, ino: int, mode: int, nlink: int, mtime: int, data: bytes,
            rdev: tuple[int, int]) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = _MAGIC + b"".join(b"%08x" % f for f in fields)
    out.write(header + encoded + _pad(len(header) + len(encoded)))
    out.write(data + _pad(len(data)))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)
